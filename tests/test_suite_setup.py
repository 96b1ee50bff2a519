"""The suite's own set-up (tests/conftest.py): tests compile without most of XLA's
optimisations unless marked `optimized` (or `MIMFLOW_TEST_OPTIMIZATION=full`), in this
process and in the subprocesses they start."""

import os
import subprocess
import sys

import jax
import pytest

FULL = os.environ.get("MIMFLOW_TEST_OPTIMIZATION", "") == "full"
READ_FLAG = "import jax; print(jax.config.values['jax_disable_most_optimizations'])"


def _state():
    child = subprocess.run([sys.executable, "-c", READ_FLAG], capture_output=True, text=True, check=True)
    return jax.config.values["jax_disable_most_optimizations"], child.stdout.strip()


def test_unmarked_tests_compile_without_most_optimizations():
    assert _state() == ((False, "False") if FULL else (True, "True"))


@pytest.mark.optimized
def test_marked_tests_compile_as_users_do():
    assert _state() == (False, "False")
