"""Sweeps (`mimflow.sweep`): equal to the same points run one by one through the public
simulators, also chunked, padded over d and sharded; no recompilation for new values;
bad grids rejected with the axis and value named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from helpers import BACKEND_COMPILE, compile_events

import mimflow
from mimflow import links

LINK = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)
AXES = {"seed": [0, 3], "d": [50.0, 400.0], "ridge": [0.0, 0.2]}
T1, SAVES = 300.0, 12


@pytest.fixture(scope="module")
def reduced():
    experiment = mimflow.ReducedExperiment(LINK, jax.random.PRNGKey(7), T1, num_saves=SAVES)
    return experiment, mimflow.sweep(experiment, AXES)


@pytest.fixture(scope="module")
def one_by_one():
    """Each grid point through `simulate_reduced`, from the documented start:
    `sample_overlap(fold_in(key, seed), d, k, r)`."""
    results = {}
    for seed in AXES["seed"]:
        for d in AXES["d"]:
            for ridge in AXES["ridge"]:
                overlap0 = mimflow.sample_overlap(jax.random.fold_in(jax.random.PRNGKey(7), seed), d, 2, 2)
                trajectory = mimflow.simulate_reduced(LINK, overlap0, T1, ridge=ridge, num_saves=SAVES)
                results[seed, d, ridge] = trajectory, np.asarray(mimflow.escape_times(trajectory))
    return results


def _assert_matches(dataset, one_by_one, tol=1e-12):
    assert dataset.loss.dims == ("seed", "d", "ridge", "time")
    assert dataset.overlap.dims == ("seed", "d", "ridge", "time", "k", "r")
    for (seed, d, ridge), (trajectory, escape) in one_by_one.items():
        at = dataset.sel(seed=seed, d=d, ridge=ridge)
        np.testing.assert_allclose(at.overlap.values, trajectory.overlap, rtol=0, atol=tol)
        np.testing.assert_allclose(at.loss.values, trajectory.loss, rtol=0, atol=tol)
        np.testing.assert_allclose(at.singular_values.values, trajectory.singular_values, rtol=0, atol=tol)
        np.testing.assert_allclose(at.escape_time.values, escape, rtol=tol, atol=0)
        assert int(at.status) == int(trajectory.status) == mimflow.Status.SUCCESS
        assert int(at.num_steps) == int(trajectory.num_steps)
    np.testing.assert_array_equal(dataset.time.values, mimflow.save_times(T1, SAVES, 1e-2))
    # the documented grid: 0, then SAVES − 1 log-spaced times from t_min = 1e-2 (the
    # experiment's default) ending at t1 exactly (measured within 6e-16 relative)
    grid = np.r_[0.0, np.logspace(-2, np.log10(T1), SAVES - 1)]
    np.testing.assert_allclose(dataset.time.values, grid, rtol=1e-14, atol=0)
    assert dataset.time.values[0] == 0.0 and dataset.time.values[-1] == T1


def test_reduced_sweep_equals_points_one_by_one(reduced, one_by_one):
    experiment, dataset = reduced
    assert dict(dataset.sizes) == {"seed": 2, "d": 2, "ridge": 2, "time": SAVES, "direction": 2, "k": 2, "r": 2}
    np.testing.assert_array_equal(dataset.seed.values, [0, 3])
    _assert_matches(dataset, one_by_one)
    np.testing.assert_array_equal(mimflow.save_times(T1, 2, 1e-2), [0.0, T1])  # documented: just [0, t1]
    # the ridge really changes the flow (the sweep did not broadcast one point)
    assert np.abs(dataset.loss.sel(ridge=0.0) - dataset.loss.sel(ridge=0.2)).max() > 1e-3


def test_chunked_sweep_equals_points_one_by_one_and_new_values_do_not_recompile(reduced, one_by_one):
    """8 points in chunks of 3 (the last one padded) equal the one-by-one runs; a second
    sweep with the same sizes and new seeds, dimensions and ridges compiles nothing
    (counted with jax.monitoring's backend-compile events, not a timer)."""
    experiment, _ = reduced
    chunked = mimflow.sweep(experiment, AXES, batch_size=3)
    _assert_matches(chunked, one_by_one)

    with compile_events(BACKEND_COMPILE) as compiles:
        again = mimflow.sweep(experiment, {"seed": [5, 9], "d": [80.0, 900.0], "ridge": [0.05, 0.3]}, batch_size=3)
        assert compiles == []
        jax.jit(lambda x: x + 1)(np.ones(3))  # the counter does see a compilation
        assert len(compiles) == 1
    assert np.abs(again.loss.values - chunked.loss.values).max() > 1e-3  # the new values were used


def test_link_axis_sweeps_coefficients(reduced):
    """Links of one structure are stacked along an axis: each point equals its own run."""
    experiment, _ = reduced
    family = [links.hermite(1, 2, 0) + c * links.hermite(3, 2, 1) for c in (0.5, 1.5)]
    dataset = mimflow.sweep(experiment, {"link": family, "seed": [2], "d": [50.0]})
    assert dataset.loss.dims == ("link", "seed", "d", "time")
    overlap0 = mimflow.sample_overlap(jax.random.fold_in(jax.random.PRNGKey(7), 2), 50.0, 2, 2)
    for i, link in enumerate(family):
        trajectory = mimflow.simulate_reduced(link, overlap0, T1, num_saves=SAVES)
        np.testing.assert_allclose(dataset.loss.isel(link=i, seed=0, d=0).values, trajectory.loss, rtol=0, atol=1e-12)
    assert np.abs(dataset.loss.isel(link=0) - dataset.loss.isel(link=1)).max() > 1e-2


FLOW_SAVES = 10


def _flow_experiment(fit, n, noise=0.0, d_max=12):
    return mimflow.FlowExperiment(
        links.hermite(1, 2, 0) + links.hermite(2, 2, 1),
        jax.random.PRNGKey(3),
        15.0,
        d_max=d_max,
        n=n,
        fit=fit,
        noise=noise,
        num_saves=FLOW_SAVES,
    )


@pytest.mark.parametrize(
    "fit, n, dims",
    [
        (None, None, [6, 9, 12]),
        # ~42 s: the padding is the same for every data source; run with -m slow
        pytest.param(mimflow.HermiteFeatures(2, 1e-3, 0.9), 60, [6, 9, 12], marks=pytest.mark.slow),
        # the mapped chunk program of finite samples on a CPU (`_sweep._sequential`), one d
        (mimflow.HermiteFeatures(2, 1e-3, 0.9), 60, [12]),
    ],
    ids=["population", "hermite-features", "hermite-features-unpadded"],
)
def test_padded_flow_sweep_equals_unpadded_runs(fit, n, dims):
    """d is swept by zero-padding to d_max; each point equals `simulate` on the unpadded
    `W*`, `W0` and data (the first d rows of the padded draws) to 1e-10."""
    experiment = _flow_experiment(fit, n, noise=0.2 if n else 0.0)
    dataset = mimflow.sweep(experiment, {"seed": [0, 1], "d": dims})
    for seed in (0, 1):
        for d in dims:
            target, W0, data, fitted = experiment.inputs({"seed": jnp.uint32(seed), "d": jnp.float64(d)})
            # the padding is zero, and W*, W0 have orthonormal columns in ℝ^d
            assert np.all(np.asarray(target.W_star)[d:] == 0) and np.all(np.asarray(W0)[d:] == 0)
            np.testing.assert_allclose(W0[:d].T @ W0[:d], np.eye(2), atol=1e-13)
            flow = mimflow.TwoTimescaleFlow(
                mimflow.Target(target.link, target.W_star[:d], target.noise),
                fitted,
                None if n is None else mimflow.Dataset(np.asarray(data.X)[:, :d], data.y),
            )
            # the same controller as the experiment's, on the unpadded state (d_max = d)
            controller = _flow_experiment(fit, n, d_max=d).controller({"d": jnp.float64(d)})
            trajectory = mimflow.simulate(flow, W0[:d], 15.0, num_saves=FLOW_SAVES, stepsize_controller=controller)
            at = dataset.sel(seed=seed, d=d)
            assert int(at.status) == mimflow.Status.SUCCESS
            np.testing.assert_allclose(at.overlap.values, trajectory.overlap, rtol=0, atol=1e-10)
            np.testing.assert_allclose(at.loss.values, trajectory.loss, rtol=0, atol=1e-10)
            if n is not None:
                np.testing.assert_allclose(at.train_loss.values, trajectory.train_loss, rtol=0, atol=1e-10)
    assert np.all(dataset.escape_time.values[..., 0] < 15.0)  # the h1 direction is learned


def test_padded_draws_do_not_depend_on_d_max():
    """A point's `W*`, `W0` and data at dimension `d` are the same whatever `d_max`
    pads them to (the premise of the test above, whose reference slices the padded
    draws): bitwise, for `d_max = d` against 12 and 20. `padded_normal`'s rows below `d`
    are standard normal (KS test) and the rest exactly zero."""
    fit = mimflow.HermiteFeatures(2, 1e-3, 0.9)
    for d in (6, 9):
        point = {"seed": jnp.uint32(1), "d": jnp.float64(d)}
        reference = None
        for d_max in (d, 12, 20):
            target, W0, data, _ = _flow_experiment(fit, 60, noise=0.2, d_max=d_max).inputs(point)
            assert np.all(np.asarray(W0)[d:] == 0) and np.all(np.asarray(data.X)[:, d:] == 0)
            draws = [np.asarray(target.W_star)[:d], np.asarray(W0)[:d], np.asarray(data.X)[:, :d], np.asarray(data.y)]
            if reference is None:
                reference = draws
            for got, expected in zip(draws, reference, strict=True):
                np.testing.assert_array_equal(got, expected)
    draws = np.asarray(mimflow.padded_normal(jax.random.PRNGKey(4), 300.0, 400, (50,)))
    assert np.all(draws[300:] == 0)
    assert scipy.stats.kstest(draws[:300].ravel(), "norm").pvalue > 1e-3


def _reduced_experiment(**kwargs):
    return mimflow.ReducedExperiment(LINK, jax.random.PRNGKey(0), 10.0, **kwargs)


@pytest.mark.parametrize(
    "axes, words",
    [
        ({"seed": [], "d": [100.0]}, ["'seed'", "empty"]),
        ({"d": [100.0, 3.0]}, ["'d'", "3", "k + r = 4"]),
        ({"d": [100.0], "ridge": [0.1, np.nan]}, ["'ridge'", "nan"]),
        ({"d": [100.0], "rho": [np.inf]}, ["'rho'", "inf"]),
        ({"d": [100.0], "rho": [0.0]}, ["'rho'", "0"]),
        ({"d": [100.0], "ridge": [-1.0]}, ["'ridge'", "-1"]),
        ({"d": [100.0], "seed": [-1]}, ["'seed'", "-1"]),
        ({"d": [100.0], "seed": [1.5]}, ["'seed'", "1.5"]),
        ({"d": [[100.0, 200.0]]}, ["'d'", "1-D"]),
        ({"d": [100.0], "lr": [0.1]}, ["'lr'", "ReducedExperiment"]),
        ({"d": ["big"]}, ["'d'", "big"]),
        ({"d": [100.0], "link": []}, ["'link'", "empty"]),
        ({"d": [100.0], "link": [links.hermite(2)]}, ["'link'", "k=1"]),
        ({"seed": [0]}, ["'d'"]),
        ({}, ["axes"]),
    ],
)
def test_bad_reduced_grids(axes, words):
    with pytest.raises(ValueError) as error:
        mimflow.sweep(_reduced_experiment(), axes)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


@pytest.mark.parametrize(
    "experiment, axes, words",
    [
        (_flow_experiment(None, None), {"d": [6, 13]}, ["'d'", "13", "d_max = 12"]),
        (_flow_experiment(None, None), {"d": [6.5]}, ["'d'", "6.5"]),
        (_flow_experiment(None, None), {"d": [6], "noise": [0.1]}, ["'noise'", "population"]),
        (_flow_experiment(None, None), {"d": [6], "ridge": [0.1]}, ["'ridge'", "fit=None"]),
        (_flow_experiment(mimflow.KernelRidge(mimflow.Mehler(0.5)), 10), {"d": [6], "rho": [1.0]}, ["'rho'", "1"]),
        (_flow_experiment(mimflow.KernelRidge(mimflow.RBF()), 10), {"d": [6], "rho": [0.5]}, ["'rho'", "Mehler"]),
        (_reduced_experiment(problem="planted", d=100.0), {"ridge": [0.1]}, ["'ridge'", "planted"]),
    ],
)
def test_bad_flow_grids(experiment, axes, words):
    with pytest.raises(ValueError) as error:
        mimflow.sweep(experiment, axes)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_bad_sweep_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        mimflow.sweep(_reduced_experiment(d=100.0), {"seed": [0]}, batch_size=0)
    with pytest.raises(ValueError, match="escape_threshold"):
        mimflow.sweep(_reduced_experiment(d=100.0), {"seed": [0]}, escape_threshold=1.5)
    with pytest.raises(ValueError, match="experiment"):
        mimflow.sweep(lambda point: point, {"seed": [0]})
    with pytest.raises(ValueError, match="d_max"):
        mimflow.FlowExperiment(LINK, jax.random.PRNGKey(0), 1.0, d_max=3)
    with pytest.raises(ValueError, match="`n`"):
        mimflow.FlowExperiment(LINK, jax.random.PRNGKey(0), 1.0, d_max=8, n=0, fit=mimflow.HermiteFeatures(2))
    with pytest.raises(ValueError, match="t1"):
        mimflow.ReducedExperiment(LINK, jax.random.PRNGKey(0), -1.0)
    with pytest.raises(ValueError, match=r"`rtol`.*-1"):
        mimflow.ReducedExperiment(LINK, jax.random.PRNGKey(0), 1.0, rtol=-1.0)
    with pytest.raises(ValueError, match=r"`atol`.*0"):
        mimflow.FlowExperiment(LINK, jax.random.PRNGKey(0), 1.0, d_max=8, atol=0.0)
    with pytest.raises(ValueError, match=r"`solver`.*str"):
        mimflow.FlowExperiment(LINK, jax.random.PRNGKey(0), 1.0, d_max=8, solver="tsit5")


def test_grid_points_order():
    """C order, last axis fastest, the same order as the dataset's dimensions."""
    points = mimflow.grid_points({"seed": [4, 5], "d": [10.0, 20.0, 30.0]})
    np.testing.assert_array_equal(points["seed"], [4, 4, 4, 5, 5, 5])
    np.testing.assert_array_equal(points["d"], [10, 20, 30, 10, 20, 30])
    # with the experiment's checks (passed here): the same points
    experiment = mimflow.ReducedExperiment(LINK, jax.random.PRNGKey(0), 1.0)
    points = mimflow.grid_points({"seed": [4, 5], "d": [10.0, 20.0, 30.0]}, experiment)
    np.testing.assert_array_equal(points["seed"], [4, 4, 4, 5, 5, 5])
    np.testing.assert_array_equal(points["d"], [10, 20, 30, 10, 20, 30])


def test_plan_chunking_without_running():
    """The automatic batch size respects `max_batch_size`; the last chunk is padded."""
    experiment = _reduced_experiment(d=100.0)
    plan = mimflow.SweepPlan(experiment, {"seed": range(8)}, max_batch_size=3)
    assert (plan.total, plan.batch_size, plan.num_chunks) == (8, 3, 3)
    assert mimflow.SweepPlan(experiment, {"seed": range(8)}, batch_size=5, max_batch_size=3).batch_size == 5
    # NumPy integers are integers (they were refused: "must be an integer ≥ 1, got np.int64(5)")
    assert mimflow.SweepPlan(experiment, {"seed": range(8)}, batch_size=np.int64(5)).batch_size == 5
    assert mimflow.SweepPlan(experiment, {"seed": range(8)}, max_batch_size=np.int32(3)).batch_size == 3
    with pytest.raises(ValueError, match="max_batch_size.*0"):
        mimflow.SweepPlan(experiment, {"seed": range(8)}, max_batch_size=0)
    with pytest.raises(ValueError, match=r"chunk `index`.*3"):
        plan.run_chunk(3)


def test_finite_sample_flows_map_their_points_on_cpu(monkeypatch):
    """On a CPU a finite-sample flow's chunk runs its points one after another
    (`_sweep._sequential`): not population flows, reduced sweeps or accelerators. Such
    points share one working memory, so the automatic chunk holds as many as their
    outputs allow (the bitwise results, alone, chunked and sharded over 4 devices, are in
    `test_reliability.py`)."""
    from mimflow import _sweep

    sample = _flow_experiment(mimflow.HermiteFeatures(2, 1e-3, 0.9), 60, noise=0.2)
    cpu = jax.devices("cpu")[0]

    class Accelerator:
        platform = "gpu"

    assert _sweep._sequential(sample, cpu)
    assert not _sweep._sequential(sample, Accelerator())
    assert not _sweep._sequential(_flow_experiment(None, None), cpu)
    assert not _sweep._sequential(_reduced_experiment(), cpu)
    # free memory for 10 vmapped points: 4 × 10 × (working + outputs)
    outputs = 8 * FLOW_SAVES * (3 + 2 + 2 * 2)
    monkeypatch.setattr(_sweep, "_available_bytes", lambda device: 40 * (sample.working_bytes() + outputs))
    grid = {"seed": range(300), "d": [12]}
    assert mimflow.SweepPlan(sample, grid, devices=[cpu]).batch_size == 300
    assert _sweep._chunk_size(sample, 300, None, 1, None, sequential=False) == 10
    population = _flow_experiment(None, None)
    monkeypatch.setattr(_sweep, "_available_bytes", lambda device: 40 * (population.working_bytes() + outputs))
    assert mimflow.SweepPlan(population, grid, devices=[cpu]).batch_size == 10
