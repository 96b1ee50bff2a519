"""Test configuration: x64 on, and deterministic PRNG keys per test."""

import itertools

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """`getkey()` returns a new PRNG key on each call; the sequence restarts in every test."""
    counter = itertools.count()
    return lambda: jax.random.PRNGKey(next(counter))
