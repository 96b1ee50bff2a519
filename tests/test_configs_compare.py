"""The shipped configs that compare dynamics (planted against two-timescale, finite
samples against the population), each run at its smoke size through `mimflow run`."""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mimflow._cli import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def run(name: str, out: Path) -> tuple[xr.Dataset, dict]:
    assert main(["run", str(CONFIGS / f"{name}.yaml"), "--smoke", "--quiet", "--out", str(out)]) == 0
    # escape times against d need two d or more
    assert {"loss.png", "singular_values.png"} <= {p.name for p in (out / "figures").iterdir()}
    return xr.load_dataset(out / "results.nc", engine="scipy"), json.loads((out / "summary.json").read_text())


@pytest.mark.slow  # CI time: notebooks/03_planted_vs_two_timescale (run by test_notebooks.py) checks the same config at the same size
def test_planted_traps_where_two_timescale_converges(tmp_path):
    """From the same starts (equal overlaps at t = 0), every two-timescale run learns the
    target (loss → 0) while some planted runs stop at a spurious minimum: a steady
    state (status SUCCESS, loss no longer moving) with loss bounded away from 0, where
    W spans the right plane in a wrong orientation (M orthogonal, M ≠ I)."""
    results, summary = run("planted_vs_two_timescale", tmp_path)
    assert (tmp_path / "figures" / "escape_times.png").exists()
    assert results.loss.dims == ("problem", "d", "seed", "time")
    assert list(results.problem.values) == ["two-timescale", "planted"]
    start = results.overlap.isel(time=0)
    np.testing.assert_array_equal(start.sel(problem="planted").values, start.sel(problem="two-timescale").values)
    assert np.all(results.status.values == 0)
    two, planted = (results.loss.sel(problem=p) for p in ("two-timescale", "planted"))
    assert np.all(two.isel(time=-1).values < 1e-8)
    final = planted.isel(time=-1).values
    trapped = final > 0.1
    assert trapped.any() and not trapped.all()
    np.testing.assert_allclose(final[trapped], planted.isel(time=-2).values[trapped], rtol=1e-8)
    # trapped on the right plane in the wrong orientation: M orthogonal (σ = 1) but not I
    overlap = results.overlap.sel(problem="planted").isel(time=-1).values[trapped]
    np.testing.assert_allclose(
        results.singular_values.sel(problem="planted").isel(time=-1).values[trapped], 1.0, atol=1e-6
    )
    assert np.all(np.linalg.norm(overlap - np.eye(2), axis=(-2, -1)) > 0.5)
    assert [g["label"] for g in summary["groups"]] == ["problem=two-timescale", "problem=planted"]
    # the summary's fraction at the predicted final loss (0 for both problems) is the untrapped one
    assert summary["groups"][0]["reached_final_loss"] == [1.0, 1.0]
    np.testing.assert_allclose(summary["groups"][1]["reached_final_loss"], 1 - trapped.mean(axis=1), rtol=1e-12)


@pytest.mark.slow  # CI time: notebooks/04_finite_samples (run by test_notebooks.py) checks the same config at the same size
def test_finite_samples_against_population(tmp_path):
    """n = 200 samples and the population (n = inf) from the same W*, W0: train_loss is
    finite for samples and absent (nan) for the population. The population ends at the
    value of its fit at W = W*: Hermite features with ridge μ (ρ = 1) fit w·h2 with
    w = 1/(1 + μ), so ½(1 − w)² + ½μw² = ½μ/(1 + μ) (the objective includes the ridge)."""
    results, summary = run("finite_vs_population", tmp_path)
    assert not (tmp_path / "figures" / "escape_times.png").exists()  # one d
    assert results.loss.dims == ("n", "seed", "time")
    np.testing.assert_array_equal(results.n.values, [200.0, np.inf])
    assert "train_loss" in results.data_vars
    assert np.all(np.isfinite(results.train_loss.sel(n=200.0).values))
    assert np.all(np.isnan(results.train_loss.sel(n=np.inf).values))
    start = results.overlap.isel(time=0)
    np.testing.assert_array_equal(start.sel(n=200.0).values, start.sel(n=np.inf).values)
    assert np.all(results.status.values == 0)
    population_final = results.loss.sel(n=np.inf).isel(time=-1).values
    mu = 1e-3
    np.testing.assert_allclose(population_final, 0.5 * mu / (1 + mu), rtol=1e-6)
    assert summary["groups"][1]["predicted_final_loss"] == pytest.approx(0.5 * mu / (1 + mu), rel=1e-12)
    # at d = 8 the finite-sample runs learn the direction by t1 too (|overlap| → 1)
    final_overlap = np.abs(results.overlap.sel(n=200.0).isel(time=-1).values[..., 0, 0])
    assert np.all(final_overlap > 0.9)
