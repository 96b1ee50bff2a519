"""Test configuration: x64 on, deterministic PRNG keys per test, and the heaviest test
files collected first."""

import itertools
import os
import tempfile
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# One persistent compilation cache for the run: the xdist workers, and the subprocesses the
# tests start (they inherit the variable), compile many of the same programs; a program
# compiled once is loaded by the others. Keys hash the program, the options and the jax
# version, so entries of other code are never used. Set the variable to choose the folder.
_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"mimflow-tests-jax-cache-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
)


@pytest.fixture
def getkey():
    """`getkey()` returns a new PRNG key on each call; the sequence restarts in every test."""
    counter = itertools.count()
    return lambda: jax.random.PRNGKey(next(counter))


# Rough CPU seconds per file on a 2-core machine (most of it XLA compilation). With
# `--dist loadfile` each file runs on one worker, in collection order: handing out the
# longest files first keeps the workers' loads even (a long file started last would be
# the suite's critical path). Files not listed come last, in their usual order.
_FILE_COST = {
    "test_flows.py": 230,
    "test_notebooks.py": 190,
    "test_simulate.py": 180,
    "test_reliability.py": 190,
    "test_fast.py": 120,
    "test_sweep.py": 110,
    "test_notebook_05.py": 105,
    "test_gradients.py": 90,
    "test_run.py": 80,
    "test_notebook_04.py": 60,
    "test_configs_reduced.py": 60,
    "test_theory.py": 60,
    "test_reduced.py": 55,
    "test_configs_compare.py": 50,
    "test_fits.py": 45,
    "test_precision.py": 45,
    "test_properties.py": 40,
    "test_benchmarks_smoke.py": 35,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -_FILE_COST.get(item.path.name, 0))
