"""Notebook 04 (finite samples against the population) at its reduced size: a file of
its own so that the test workers share the notebooks out."""

from notebook_smoke import run_at_reduced_size


def test_notebook_04_runs_at_reduced_size():
    run_at_reduced_size("04_finite_samples")
