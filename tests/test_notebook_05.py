"""Notebook 05 (differentiable sweeps) at its reduced size: a file of its own so that
the test workers share the notebooks out."""

from notebook_smoke import run_at_reduced_size


def test_notebook_05_runs_at_reduced_size():
    run_at_reduced_size("05_differentiable_sweeps")
