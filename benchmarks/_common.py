"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so importable as `_common`)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_state() -> dict:
    """The commit measured and whether the library's files differed from it (None outside git)."""

    def git(*command):
        try:
            return subprocess.run(
                ["git", *command], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--", "mimflow")
    return {"git_commit": git("rev-parse", "HEAD"), "mimflow_modified": None if status is None else bool(status)}
