#!/usr/bin/env python3
"""The project's two entry points, each self-contained on a machine with Python ≥ 3.11:

    python3 tasks.py run   [ARGS...]   # the quickstart experiment (mimflow run configs/quickstart.yaml ARGS)
    python3 tasks.py test  [ARGS...]   # the test suite on every core (pytest -n auto ARGS)

Both create (or reuse) the virtual environment `.venv` and install the package with
its test extra into it, again whenever `pyproject.toml` changes.
"""

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
STAMP = VENV / ".mimflow-installed"


def ensure_environment() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"mimflow needs Python ≥ 3.11, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != digest:
        print("installing mimflow and its test dependencies into .venv", flush=True)
        pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
        STAMP.write_text(digest)


def main(argv: list[str]) -> int:
    # the suite runs on every core (pytest-xdist), a test file per worker so that files
    # sharing compiled programs stay in one process
    commands = {
        "run": ["-m", "mimflow", "run", "configs/quickstart.yaml"],
        "test": ["-m", "pytest", "-n", "auto", "--dist", "loadfile"],
    }
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    ensure_environment()
    return subprocess.run([str(PYTHON), *commands[argv[0]], *argv[1:]], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
