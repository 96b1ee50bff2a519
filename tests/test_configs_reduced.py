"""The shipped configs of the reduced dynamics, each run at its smoke size through
`mimflow run`: outputs load back with the expected variables and dims, and the numbers
match closed forms (DESIGN §2) or a direct call of the public API."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

import mimflow
from mimflow._cli import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
VARIABLES = {"loss", "singular_values", "overlap", "escape_time", "status", "num_steps"}


def run(name: str, out: Path) -> tuple[xr.Dataset, dict]:
    assert main(["run", str(CONFIGS / f"{name}.yaml"), "--smoke", "--quiet", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "figures").iterdir())[:2] == ["escape_times.png", "loss.png"]
    return xr.load_dataset(out / "results.nc", engine="scipy"), json.loads((out / "summary.json").read_text())


@pytest.mark.slow  # CI time: notebooks/01_saddle_to_saddle (run by test_notebooks.py) checks the staircase's plateaus and order
def test_staircase(tmp_path):
    """Three directions learned one after the other; the start sits on the first plateau
    (½‖f‖² = 3/2 up to O(k r / d)); the starts are the documented draws of each seed."""
    results, summary = run("staircase", tmp_path)
    assert set(results.data_vars) == VARIABLES
    assert results.loss.dims == ("d", "seed", "time") and dict(results.sizes)["direction"] == 3
    assert [s["plateau_loss"] for s in summary["groups"][0]["saddles"]] == pytest.approx([1.5, 1.0, 0.5], abs=1e-12)
    escape = results.escape_time.values
    assert np.all(np.isfinite(escape)) and np.all(np.diff(escape, axis=-1) > 0)
    d = results.d.values[:, None]
    assert np.all(np.abs(results.loss.isel(time=0).values - 1.5) < 10 / d)
    assert np.all(results.loss.isel(time=-1).values < 1e-8)
    # the config runs what it says: the start of seed j at d is sample_overlap(fold_in(key(0), j), d)
    for seed in (0, 1):
        overlap0 = mimflow.sample_overlap(jax.random.fold_in(jax.random.key(0), seed), 1000.0, 3, 3)
        np.testing.assert_array_equal(results.overlap.sel(d=1000.0, seed=seed).isel(time=0).values, overlap0)


@pytest.mark.slow  # CI time: notebooks/02_escape_time_scaling (run by test_notebooks.py) checks h1…h4 at the same size
def test_escape_scaling(tmp_path):
    """h1..h4: laws log d, d, d², d³ with constants ½ and 1/(2(s−1)s) (DESIGN §2, α_s = 1);
    the median escape times lie within an O(1) factor of them, and the slopes of h1..h3
    agree already at the smoke size."""
    results, summary = run("escape_scaling", tmp_path)
    assert dict(results.sizes) == {"link": 4, "d": 2, "seed": 3, "time": 160, "direction": 1, "k": 1, "r": 1}
    assert list(results.link_label.values) == [f"hermite(degree={s})" for s in (1, 2, 3, 4)]
    dims = results.d.values
    for s, group in enumerate(summary["groups"], start=1):
        (saddle,) = group["saddles"]
        assert saddle["law"] == ("log d" if s == 1 else f"d^{s - 1}")
        constant = 0.5 if s == 1 else 1 / (2 * (s - 1) * s)
        assert saddle["constant"] == pytest.approx(constant, rel=1e-12)
        median = np.median(results.escape_time.isel(link=s - 1, direction=0).values, axis=1)
        law = np.log(dims) if s == 1 else dims ** (s - 1)
        assert np.all((0.3 < median / (constant * law)) & (median / (constant * law) < 3)), median / (constant * law)
        if s <= 3:
            assert saddle["agrees"], saddle["slope"]


# ~22 s; notebook 05 checks the same time rescaling c = ρ³/(ρ³ + μ) (its gradient against the closed form) in the default run
@pytest.mark.slow
def test_ridge_shrinkage(tmp_path):
    """A Mehler ridge μ at ρ = 0.8 scales degree j by w_j = ρ^j / (ρ^j + μ): the log d
    saddle (degree 1) lasts 1/w_1 = 2.25 times longer at μ = 1, the d² saddle (degree 3)
    1/w_3 = 2.953 times longer; the laws stay the same."""
    results, summary = run("ridge_shrinkage", tmp_path)
    assert results.loss.dims == ("ridge", "d", "seed", "time")
    np.testing.assert_array_equal(results.ridge.values, [0.0, 1.0])
    escape = results.escape_time.values  # (ridge, d, seed, direction)
    durations = np.stack([escape[..., 0], escape[..., 1] - escape[..., 0]], axis=-1)
    ratio = np.median(durations[1], axis=1) / np.median(durations[0], axis=1)  # (d, saddle)
    rho, mu = 0.8, 1.0
    expected = [(rho + mu) / rho, (rho**3 + mu) / rho**3]
    np.testing.assert_allclose(ratio, np.broadcast_to(expected, ratio.shape), rtol=0.05)
    laws = [[s["law"] for s in group["saddles"]] for group in summary["groups"]]
    assert laws == [["log d", "d^2"], ["log d", "d^2"]]
    assert [g["saddles"][0]["constant"] for g in summary["groups"]] == pytest.approx([0.5, 0.5 * (rho + mu) / rho])
