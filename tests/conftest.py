"""Test configuration: x64 on, deterministic PRNG keys per test, and the heaviest test
files collected first."""

import itertools

import jax
import pytest

jax.config.update("jax_enable_x64", True)


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
    "test_flows.py": 300,
    "test_sweep.py": 220,
    "test_simulate.py": 140,
    "test_notebooks.py": 150,
    "test_notebook_04.py": 80,
    "test_notebook_05.py": 110,
    "test_gradients.py": 80,
    "test_fast.py": 90,
    "test_run.py": 80,
    "test_configs_reduced.py": 60,
    "test_theory.py": 60,
    "test_configs_compare.py": 50,
    "test_reduced.py": 55,
    "test_fits.py": 45,
    "test_precision.py": 40,
    "test_reliability.py": 150,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -_FILE_COST.get(item.path.name, 0))
