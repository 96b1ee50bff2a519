"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so importable as `_common`)."""

import datetime
import json
import os
import platform
import subprocess
import sys
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


def write_json(path, results: dict) -> None:
    """Write a benchmark's results as JSON (no NaN: a missing figure is `null`)."""
    with open(path, "w") as file:
        json.dump(results, file, indent=1, allow_nan=False)
        file.write("\n")
    print(f"wrote {path}")


def run_meta(benchmark: str, *, smoke: bool, dtype: str = "float64", **extra) -> dict:
    """The fields every benchmark's JSON starts with: what ran, on which device and
    software (`cpu_count`: the cores this process may use, so `taskset` runs say so),
    when, with which arguments, on which commit; then `extra`."""
    import jax  # not at import: a script may configure jax first, or keep it out of a process

    device = jax.devices()[0]
    return {
        "benchmark": benchmark,
        "device": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "dtype": dtype,
        "date": datetime.date.today().isoformat(),
        "smoke": smoke,
        "argv": sys.argv[1:],
        **extra,
        **git_state(),
    }
