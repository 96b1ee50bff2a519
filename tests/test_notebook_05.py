"""Notebook 05 (differentiable sweeps) at its reduced size: a file of its own so that
the test workers share the notebooks out."""

import pytest
from notebook_smoke import run_at_reduced_size


@pytest.mark.optimized  # runs long enough that optimised code pays for its compile
def test_notebook_05_runs_at_reduced_size():
    run_at_reduced_size("05_differentiable_sweeps")
