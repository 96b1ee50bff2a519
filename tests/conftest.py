"""Test configuration: x64 on, XLA's optimisations mostly off except for the tests
marked `optimized`, deterministic PRNG keys per test, and the heaviest test files
collected first."""

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


# Most of the suite's time is XLA compiling small runs, and most of that is LLVM
# optimising machine code that then runs for milliseconds. The suite therefore compiles
# with `jax_disable_most_optimizations` (XLA's backend optimisation level 0, no
# expensive LLVM passes). Two clean-clone runs back to back on 2 cores, every test
# optimised and then as here: 15 min 47 s -> 11 min 36 s (28.7 -> 21.7 CPU-minutes;
# the gain is in compile-heavy files such as test_fits, test_simulate and the notebooks,
# not in test_fast or test_flows). XLA's optimised HLO is the same either way (checked on a ReLU and a
# Hermite-feature flow step and a reduced-ODE solve: identical text); only the machine
# code differs, by rounding. Tests whose subject is the optimised machine code, bitwise
# equality of two different programs (alone, vmapped, chunked, sharded, lanes refilled,
# no FMA) or jit against eager to 1e-12, are marked `optimized` and compile as users'
# programs do, as do runs long enough that optimised code pays for its compile.
# `MIMFLOW_TEST_OPTIMIZATION=full` compiles every test that way.
_FULL_OPTIMIZATION = os.environ.get("MIMFLOW_TEST_OPTIMIZATION", "") == "full"


def _set_optimization(optimized: bool) -> None:
    """Compile from now on with (`True`) or without XLA's optimisations, here and in the
    subprocesses tests start. jit's in-memory caches do not key on the setting, so they
    are cleared when it changes; the persistent cache does key on it."""
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if optimized else "1"
    if jax.config.values["jax_disable_most_optimizations"] == optimized:
        jax.clear_caches()
        jax.config.update("jax_disable_most_optimizations", not optimized)


_set_optimization(_FULL_OPTIMIZATION)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # before the test's own fixtures are set up, so that they compile as the test does (a
    # module's fixtures set up for an earlier test keep their values; the functions they
    # return recompile, jit's caches having been cleared)
    _set_optimization(_FULL_OPTIMIZATION or item.get_closest_marker("optimized") is not None)


@pytest.fixture
def getkey():
    """`getkey()` returns a new PRNG key on each call; the sequence restarts in every test."""
    counter = itertools.count()
    return lambda: jax.random.PRNGKey(next(counter))


# Rough CPU seconds per file on a 2-core machine (most of it XLA compilation). With
# `--dist loadfile` each file runs on one worker, in collection order: handing out the
# longest files first keeps the workers' loads even (a long file started last would be
# the suite's critical path). Files not listed come last, in their usual order. Within a
# file the order stays pytest's (tests sharing a parametrized fixture together): moving
# the `optimized` tests last set such fixtures up twice, which cost more than the extra
# switches of XLA's optimisations (programs that took over 0.5 s to compile either way
# before load from the persistent cache).
_FILE_COST = {  # seconds per file in a clean-clone run as the suite runs now (2026-11-24, 923 tests)
    "test_reliability.py": 260,
    "test_fast.py": 190,
    "test_flows.py": 160,
    "test_notebooks.py": 140,
    "test_fits.py": 135,
    "test_simulate.py": 130,
    "test_gradients.py": 75,
    "test_sweep.py": 70,
    "test_reduced.py": 70,
    "test_run.py": 65,
    "test_notebook_05.py": 50,
    "test_precision.py": 45,
    "test_notebook_04.py": 30,
    "test_traced_domain.py": 26,
    "test_links.py": 25,
    "test_properties.py": 25,
    "test_products.py": 15,
    "test_theory.py": 15,
    "test_validation.py": 12,
    "test_config.py": 12,
    "test_stiefel.py": 10,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -_FILE_COST.get(item.path.name, 0))
