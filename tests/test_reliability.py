"""Issue 9: numerical failure inside batches and bitwise reproducibility.

One bad element of a batch (a NaN start, a link whose flow overflows, a fixed step far
past stability, a tolerance no step can meet) must end with a status of its own, and
every other element must come out exactly as it does without it. Oracles: the lone
run of each good element (bitwise), and the closed-form escape time of `α h_3`.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import closed_form_two_timescale, random_orthonormal

import mimflow
from mimflow import Status, links

# The tests of batches and reproducibility are marked `optimized`: their subject is the
# optimised machine code users run (tests/conftest.py). The input-handling tests at the
# end are not: they compile little, and without optimisation.
SOLVERS = {"kvaerno5": None, "rodas4": mimflow.Rodas4()}
M0 = [0.3, 0.2, 0.1]
T1 = 2000.0


def _reduced(solver, coefficient, m0):
    kwargs = {} if solver is None else {"solver": solver}
    return mimflow.simulate_reduced(coefficient * links.hermite(3), jnp.reshape(m0, (1, 1)), T1, **kwargs)


def _assert_rows_equal(batch, b, lone, bitwise):
    """Row `b` of `batch` against a lone run: bitwise, or to rounding (`1e-13`)."""
    for name in ("overlap", "loss", "singular_values", "status"):
        got, want = np.asarray(getattr(batch, name))[b], np.asarray(getattr(lone, name))
        if bitwise:
            np.testing.assert_array_equal(got, want, name)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-13, err_msg=name)


@pytest.mark.optimized
@pytest.mark.parametrize("solver", SOLVERS.values(), ids=SOLVERS.keys())
@pytest.mark.parametrize("failure", ["nan-start", "overflow"])
def test_failing_element_of_a_reduced_batch(solver, failure):
    """A NaN initial overlap gives `NON_FINITE` (the default path integrates a finite
    stand-in instead, so as not to disturb the batch, and masks its saves); a link
    scaled by 1e160 in one element (its vector field overflows on the first step)
    gives `STEP_SIZE_COLLAPSED` within a few steps rather than spending the step
    budget. Either way its saves and escape time are `nan`, never a number. The other
    rows equal their lone runs (bitwise with `Rodas4` when only `M0` is batched; to
    rounding otherwise, as XLA compiles a batched program differently), and their
    escape times match the closed form (`dt = dm²/(6 α² m⁶ (1 − m²))`)."""
    m0 = jnp.asarray(M0)
    if failure == "nan-start":
        batch = jax.vmap(lambda m: _reduced(solver, 1.0, m))(m0.at[1].set(jnp.nan))
    else:
        batch = jax.vmap(lambda c, m: _reduced(solver, c, m))(jnp.array([1.0, 1e160, 1.0]), m0)
    expected = Status.NON_FINITE if failure == "nan-start" else Status.STEP_SIZE_COLLAPSED
    assert int(batch.status[1]) == expected, batch.status
    if failure == "overflow":
        assert int(batch.num_steps[1]) < 64, batch.num_steps
    assert np.isnan(np.asarray(batch.overlap)[1, 1:]).all() and np.isnan(np.asarray(batch.loss)[1, 1:]).all()
    escapes = np.asarray(mimflow.escape_times(batch))[:, 0]
    assert np.isnan(escapes[1])  # not `inf`: whether it would have escaped is unknown
    for b in (0, 2):
        lone = _reduced(solver, 1.0, M0[b])
        assert int(lone.status) == int(batch.status[b]) == Status.SUCCESS
        _assert_rows_equal(batch, b, lone, bitwise=solver is not None and failure == "nan-start")
        assert escapes[b] == pytest.approx(closed_form_two_timescale(1.0, 3, M0[b]), rel=1e-6)


@pytest.mark.optimized
def test_divergent_fixed_step_element_of_a_flow_batch():
    """Fixed steps (`ConstantStepSize`) far past the explicit solver's stability limit
    in one element of a vmapped flow: that element ends `NON_FINITE` with `nan` saves
    after it diverged; the others succeed, equal their lone runs (to rounding: the
    target is shared, so XLA batches its products differently) and follow the reduced
    ODE in closed form (the population flow's overlap *is* the reduced state, DESIGN §4):
    for h1, `ṁ = (1 − m²) m`, so `y = m²` is logistic, `y(t) = y0 e^{2t} / (1 − y0 + y0 e^{2t})`,
    and the loss is `½(1 − m²)`."""
    rng = np.random.default_rng(0)
    d = 6
    target = mimflow.Target(links.hermite(1), random_orthonormal(rng, d, 1))
    flow = mimflow.TwoTimescaleFlow(target)
    W0 = np.stack([random_orthonormal(rng, d, 1) for _ in range(3)])
    W0[:, :, 0] *= np.sign(np.asarray(target.W_star)[:, 0] @ W0[:, :, 0].T)[:, None]  # positive overlaps
    dt0 = jnp.array([0.01, 50.0, 0.01])

    def run(W, dt):
        return mimflow.simulate(flow, W, 8.0, num_saves=8, stepsize_controller=diffrax.ConstantStepSize(), dt0=dt)

    batch = jax.vmap(run)(jnp.asarray(W0), dt0)
    assert [int(s) for s in batch.status] == [Status.SUCCESS, Status.NON_FINITE, Status.SUCCESS]
    assert np.isnan(np.asarray(batch.loss)[1, -1])
    for b in (0, 2):
        lone = run(W0[b], 0.01)
        np.testing.assert_allclose(batch.overlap[b], lone.overlap, rtol=0, atol=1e-14)
        np.testing.assert_allclose(batch.loss[b], lone.loss, rtol=0, atol=1e-14)
        y0 = float(np.asarray(target.W_star)[:, 0] @ W0[b, :, 0]) ** 2
        growth = np.exp(2 * np.asarray(batch.ts[b]))
        exact = np.sqrt(y0 * growth / (1 - y0 + y0 * growth))
        # Tsit5 at dt = 0.01 (5th order): measured 9e-15 (overlap) and 3e-15 (loss)
        np.testing.assert_allclose(np.asarray(batch.overlap[b])[:, 0, 0], exact, rtol=0, atol=1e-13)
        np.testing.assert_allclose(batch.loss[b], 0.5 * (1 - exact**2), rtol=0, atol=1e-13)


@pytest.mark.optimized
def test_sweep_with_an_unreachable_tolerance_point():
    """A sweep over `rtol` where one point (seed 0 at 1e-14: 520 steps) cannot finish
    within a 300-step budget: that point ends `MAX_STEPS` with `nan` after its last
    step; the others succeed and are bitwise what a sweep of each point alone gives, and
    what a larger grid (another compiled batch size) gives. With the default (Kvaerno5)
    solver and `k·r = 1` that needs the reduced sweeps' chunks of a multiple of 16 points:
    alone (a batch of 2) and in this grid (4) they differed by 5e-15 relative."""
    experiment = mimflow.ReducedExperiment(
        links.hermite(3), jax.random.PRNGKey(0), T1, d=50.0, num_saves=32, max_steps=300
    )
    results = mimflow.sweep(experiment, {"seed": [0, 1], "rtol": [1e-8, 1e-14]})
    np.testing.assert_array_equal(results.status.values, [[Status.SUCCESS, Status.MAX_STEPS], [Status.SUCCESS] * 2])
    assert np.isnan(results.loss.values[0, 1, -1]) and np.isfinite(results.loss.values[1]).all()
    # 18 points, compiled as one batch of 32 (`_sweep._width`), in another order
    larger = mimflow.sweep(experiment, {"seed": [3, 0, 1, 2, 4, 5, 6, 7, 8], "rtol": [1e-14, 1e-8]})
    for seed, rtol in ((0, 1e-8), (1, 1e-8), (1, 1e-14)):
        alone = mimflow.sweep(experiment, {"seed": [seed], "rtol": [rtol]})
        for name in alone.data_vars:
            want = alone[name].values[0, 0]
            for other in (results, larger):
                got = other[name].sel(seed=seed, rtol=rtol).values
                np.testing.assert_array_equal(got, want, name)


@pytest.mark.optimized
def test_rodas4_runs_bitwise_alone_and_vmapped():
    """`simulate_reduced` with `Rodas4`, one start alone and in `vmap` batches of 1, 2
    and 5: the same bits (its batching rule runs a batch of one as two, see
    `_fast.solve_rodas4`)."""
    solver = SOLVERS["rodas4"]
    m0 = jnp.asarray([0.3, 0.25, 0.2, 0.15, 0.1])
    five = jax.vmap(lambda m: _reduced(solver, 1.0, m))(m0)
    two = jax.vmap(lambda m: _reduced(solver, 1.0, m))(m0[3:])
    one = jax.vmap(lambda m: _reduced(solver, 1.0, m))(m0[3:4])
    alone = _reduced(solver, 1.0, m0[3])
    for batch, b in ((five, 3), (two, 0), (one, 0)):
        _assert_rows_equal(batch, b, alone, bitwise=True)


WITHOUT_FMA = textwrap.dedent(
    """
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import mimflow
    from mimflow import links
    link = links.hermite(3)
    M0 = jax.vmap(lambda key: mimflow.sample_overlap(key, 100.0, 1, 1))(jax.random.split(jax.random.PRNGKey(0), 5))
    run = lambda m: mimflow.simulate_reduced(link, m, 1e4, num_saves=16)
    alone = [jax.jit(run)(m) for m in M0]
    worst = 0.0
    for size in (2, 3, 5):
        batch = jax.jit(jax.vmap(run))(M0[:size])
        for b in range(size):
            assert int(batch.status[b]) == 0 and int(batch.num_steps[b]) == int(alone[b].num_steps)
            for name in ("overlap", "loss", "singular_values", "forced_error"):
                got, want = np.asarray(getattr(batch, name)[b]), np.asarray(getattr(alone[b], name))
                worst = max(worst, float(np.max(np.abs(got - want))))
    print(worst)
    """
)


@pytest.mark.optimized
@pytest.mark.parametrize("flags", [pytest.param("", marks=pytest.mark.slow), "--xla_cpu_max_isa=AVX"])  # slow: CI time
def test_default_solver_alone_and_vmapped_without_fma(flags):
    """`simulate_reduced` with the default solver and `k·r = 1`, five starts alone and in
    `vmap` batches of 2, 3 and 5. With XLA's CPU code limited to AVX (no fused multiply-add:
    `XLA_FLAGS=--xla_cpu_max_isa=AVX`, README "Reproducibility") the same bits; without
    it, where the CPU has FMA, equal to rounding (vectorised and scalar code contract
    multiply-adds differently: 3e-16 measured)."""
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", WITHOUT_FMA], env=env, capture_output=True, text=True, timeout=600)
    if "Unknown flag" in result.stderr:
        pytest.skip(f"this XLA has no {flags}")
    assert result.returncode == 0, result.stderr[-3000:]
    worst = float(result.stdout.split()[-1])
    assert worst == 0.0 if flags else worst <= 1e-13, worst


REPRODUCIBLE = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import mimflow
    from mimflow import links
    from mimflow._sweep import _points, _run, _sequential, check_grid
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    assert len(jax.devices()) == 4, jax.devices()
    link = links.hermite(1, 2, 0) + links.hermite(2, 2, 1)
    key = jax.random.PRNGKey(3)
    reduced = {"seed": [0, 1, 2], "d": [1e2, 1e3]}
    cases = {
        "population-flow": (mimflow.FlowExperiment(link, key, 15.0, d_max=10, num_saves=8), {"seed": [0, 1, 2], "d": [6, 10]}),
        # points one after another (`lax.map`; `shard_map` over the devices): `_sweep._sequential`
        "sample-flow": (
            mimflow.FlowExperiment(link, key, 15.0, d_max=10, n=60, fit=mimflow.HermiteFeatures(2, 1e-3, 0.9),
                                   noise=0.2, num_saves=8),
            {"seed": [0, 1, 2], "d": [6, 10]},
        ),
        "reduced-rodas4": (mimflow.ReducedExperiment(link, key, 1e3, num_saves=16, solver=mimflow.Rodas4()), reduced),
        # the default solver with k·r = 1: bitwise through `_sweep._width`'s chunks of 16 points per device
        "reduced-default": (mimflow.ReducedExperiment(links.hermite(3), key, 1e4, num_saves=16), reduced),
    }
    one = jax.devices()[:1]
    name = sys.argv[1]
    for experiment, axes in [cases[name]]:
        whole = mimflow.sweep(experiment, axes, devices=one)     # the grid in one vmapped call
        runs = {
            "sharded": mimflow.sweep(experiment, axes),          # 6 points over 4 devices
            "chunked": mimflow.sweep(experiment, axes, batch_size=2, devices=one),
        }
        for point in ({a: v[0] for a, v in axes.items()}, {a: v[-1] for a, v in axes.items()}):
            runs[f"alone {point}"] = mimflow.sweep(experiment, {a: [v] for a, v in point.items()}, devices=one)
        assert (whole.status.values == 0).all(), (name, whole.status.values)
        for label, other in runs.items():
            for var in whole.data_vars:
                got = other[var].values
                want = whole[var].sel({a: other[a].values for a in axes}).values
                assert np.array_equal(got, want, equal_nan=True), (name, label, var, np.nanmax(np.abs(got - want)))
    # the work is split: each device holds one slice of the batch (8 points: the sharded
    # sweep's program)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    points = jax.device_put(_points(check_grid(axes), np.arange(8) % 6), NamedSharding(mesh, P("batch")))
    out = _run(experiment, points, 0.5, _sequential(experiment, jax.devices()[0]), mesh)
    assert len(out["loss"].sharding.device_set) == 4 and not out["loss"].sharding.is_fully_replicated
    print("ok")
    """
)


# jax ≥ 0.12 (0.12.0.1 is what pip installs on Python ≥ 3.12; this repo's CI runs 0.10.2)
# partitions a sharded reduced sweep's program so that XLA's CPU code contracts some
# multiply-adds into fused multiply-adds differently from the one-device program: escape
# times (and, with the default solver, some late overlaps) then differ in the last bit.
# With the CPU code kept off FMA (`--xla_cpu_max_isa=AVX`, README "Reproducibility") the
# bits agree again, so there the reduced cases run without FMA.
_NO_FMA_FOR_SHARDED_REDUCED = jax.__version_info__ >= (0, 12)


@pytest.mark.optimized
@pytest.mark.parametrize(
    "case",
    [
        "reduced-rodas4",
        "reduced-default",
        "sample-flow",
        pytest.param("population-flow", marks=pytest.mark.slow),  # slow: 45 CPU-s
    ],
)
def test_sweeps_bitwise_alone_whole_chunked_sharded(case):
    """On 4 forced host CPU devices, for the reduced ODE with `Rodas4` and with the default
    solver, a population flow and a finite-sample flow: a sweep's results are bitwise the
    same whether a point runs alone, with the whole grid in one call, in chunks, or
    sharded over the devices (every device gets at least two points, `_sweep._chunk_size`,
    a reduced sweep's a multiple of 16, `_sweep._width`, and a finite-sample flow's
    points run one after another on each device, `_sweep._sequential`)."""
    flags = "--xla_force_host_platform_device_count=4"
    if _NO_FMA_FOR_SHARDED_REDUCED and case.startswith("reduced"):
        flags += " --xla_cpu_max_isa=AVX"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-c", REPRODUCIBLE, case]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


# --- Input handling (issue 9): values a run cannot use give a `ValueError` naming them when
# concrete, and a status of their own when traced; legitimate edge cases run.

H2 = links.hermite(2)  # ℒ(m) = ½(1 − s m⁴), s = ρ²/(ρ² + μ), for the two-timescale problem
KEY = jax.random.key(0)
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
EDGE_SOLVERS = {"kvaerno5": None, "rodas5": mimflow.Rodas5()}


def _h2_loss(m, ridge=0.0, rho=1.0):
    return 0.5 * (1.0 - rho**2 / (rho**2 + ridge) * m**4)


@pytest.mark.parametrize("solver", EDGE_SOLVERS.values(), ids=EDGE_SOLVERS.keys())
def test_start_at_the_minimum_succeeds_with_every_save_at_the_start(solver):
    """A start where nothing is left to learn (the steady-state event holds at `t = 0`):
    `h_2` at `m = 1`, the zero link, a ridge so large that the fit is zero. It succeeds
    and every save is the start, at the closed-form loss (the default solver reported
    `NON_FINITE`, with no save at `t = 0`)."""
    cases = [(H2, 1.0, 0.0, _h2_loss(1.0)), (0.0 * H2, 0.6, 0.0, 0.0), (H2, 0.6, 1e308, 0.5)]
    for link, m0, ridge, loss in cases:
        traj = mimflow.simulate_reduced(link, [[m0]], 10.0, num_saves=4, ridge=ridge, solver=solver)
        assert int(traj.status) == Status.SUCCESS, (m0, ridge, traj.status)
        np.testing.assert_array_equal(traj.overlap, np.full((4, 1, 1), m0))
        np.testing.assert_allclose(traj.loss, np.full(4, loss), rtol=0, atol=1e-15)


def test_sweep_point_at_the_minimum_succeeds():
    """The same in a sweep (default solver) over a link and zero times it: the zero
    link's point succeeds, every save `sample_overlap`'s start at loss 0, and the other
    point is unaffected (it escapes: `m → 1`)."""
    h1 = links.hermite(1)
    experiment = mimflow.ReducedExperiment(h1, KEY, 10.0, d=10.0, num_saves=4)
    results = mimflow.sweep(experiment, {"link": [h1, 0.0 * h1]})
    assert results.status.values.tolist() == [Status.SUCCESS, Status.SUCCESS]
    m0 = float(mimflow.sample_overlap(jax.random.fold_in(KEY, 0), 10.0, 1, 1)[0, 0])
    np.testing.assert_allclose(results.overlap.values[1].ravel(), np.full(4, m0), rtol=1e-15)
    np.testing.assert_array_equal(results.loss.values[1], np.zeros(4))
    assert results.overlap.values[0, 0, 0, 0] == pytest.approx(m0, rel=1e-15)
    assert abs(results.overlap.values[0, -1, 0, 0]) > 0.999


def test_numpy_integer_step_budgets_run_as_python_integers():
    """`max_steps` (and an experiment's `r`, `d_max`, `n`, `d`) as a NumPy integer is that
    integer: the same run as with the Python int (it was traced into the solve and
    failed there, or rejected as "not an integer")."""
    run = lambda steps: mimflow.simulate_reduced(H2, [[0.1]], 1.0, num_saves=4, max_steps=steps)  # noqa: E731
    numpy_int, python_int = run(np.int64(16384)), run(16384)  # the program of the tests above
    for name in ("overlap", "loss", "status", "num_steps"):
        np.testing.assert_array_equal(getattr(numpy_int, name), getattr(python_int, name), name)
    reduced = mimflow.ReducedExperiment(H2, KEY, 1.0, d=10.0, r=np.int64(1), max_steps=np.int64(100))
    fit = mimflow.HermiteFeatures(2, 1e-3, 0.9)
    flow = mimflow.FlowExperiment(
        H2, KEY, 1.0, d_max=np.int64(8), d=np.int32(6), n=np.int64(4), fit=fit, max_steps=np.uint16(100)
    )
    fields = (reduced.r, reduced.max_steps, flow.d_max, flow.n, flow.max_steps)
    assert fields == (1, 100, 8, 4, 100) and all(type(v) is int for v in fields), fields
    assert float(flow.d) == 6.0


def test_numpy_integer_step_budget_of_a_flow():
    """As above for `simulate`: the same run with `max_steps` a NumPy or a Python int."""
    flow = mimflow.TwoTimescaleFlow(mimflow.Target(H2, mimflow.haar_stiefel(KEY, 4, 1)))
    W0 = mimflow.haar_stiefel(jax.random.key(1), 4, 1)
    numpy_int = mimflow.simulate(flow, W0, 1.0, num_saves=4, max_steps=np.int64(100))
    np.testing.assert_array_equal(numpy_int.loss, mimflow.simulate(flow, W0, 1.0, num_saves=4, max_steps=100).loss)


def test_summaries_of_a_batch_are_those_of_each_trajectory():
    """`loss_area` and `smooth_escape_time` of trajectories with leading batch axes (as
    `vmap` returns them; here `(2, 3)`) against the trapezoid rule in `log t` per
    trajectory, by NumPy (they raised, or returned one wrong `(n,)` array)."""
    rng = np.random.default_rng(0)
    n = 6
    ts = np.concatenate([[0.0], np.logspace(-2, 2, n - 1)])
    values = rng.uniform(0.0, 1.0, (2, 3, n))
    batch = mimflow.Trajectory(
        ts=jnp.broadcast_to(ts, (2, 3, n)),
        overlap=jnp.asarray(values[..., None, None]),
        loss=jnp.asarray(values[::-1]),
        singular_values=jnp.asarray(values[..., None]),
        status=jnp.zeros((2, 3), int),
        num_steps=jnp.ones((2, 3), int),
    )
    log_t = np.log(ts[1:])
    area = np.trapezoid(values[::-1][..., 1:], log_t, axis=-1)
    below = 1.0 / (1.0 + np.exp(-(0.5 - values[..., 1:]) / 0.02))
    escape = ts[1] * np.exp(np.trapezoid(below, log_t, axis=-1))
    np.testing.assert_allclose(mimflow.loss_area(batch), area, rtol=1e-14)
    np.testing.assert_allclose(mimflow.smooth_escape_time(batch), escape, rtol=1e-13)


EXPERIMENT = mimflow.ReducedExperiment(links.hermite(1), KEY, 10.0, d=10.0, num_saves=4)
FLOW_EXPERIMENT = mimflow.FlowExperiment(H2, KEY, 1.0, d_max=8, d=6, num_saves=4)
BAD_POINTS = [
    ("seed-fraction", EXPERIMENT, {"seed": 1.5}, ["`point`", "'seed'", "1.5"]),
    ("seed-negative", EXPERIMENT, {"seed": -1}, ["`point`", "'seed'", "-1"]),
    ("axis-typo", EXPERIMENT, {"seed": 1, "ridg": 5.0}, ["`point`", "'ridg'"]),
    ("axis-of-flows", EXPERIMENT, {"noise": 5.0}, ["`point`", "'noise'"]),
    ("link-dimension", EXPERIMENT, {"link": links.staircase(2)}, ["`point`", "'link'", "k=2"]),
    ("ridge-negative", EXPERIMENT, {"ridge": -1.0}, ["`point`", "'ridge'", "-1"]),
    ("not-a-dict", EXPERIMENT, [1, 2], ["`point`", "list"]),
    ("not-a-scalar", EXPERIMENT, {"seed": np.arange(2)}, ["`point`", "'seed'", "(2,)"]),
    ("flow-d-below", FLOW_EXPERIMENT, {"d": 1}, ["`point`", "'d'", "k + r = 2", "1"]),
    ("flow-d-fraction", FLOW_EXPERIMENT, {"d": 6.5}, ["`point`", "'d'", "6.5"]),
    ("flow-ridge-without-fit", FLOW_EXPERIMENT, {"ridge": 0.1}, ["`point`", "'ridge'", "fit"]),
]


@pytest.mark.parametrize("experiment, point, words", [c[1:] for c in BAD_POINTS], ids=[c[0] for c in BAD_POINTS])
def test_direct_call_on_a_concrete_point_checks_it_as_a_sweep_does(experiment, point, words):
    """An experiment called on a point of numbers checks it as `grid_points` and `sweep`
    do (it ran a fractional seed as its floor, ignored an unknown axis, ran a link of
    another `k`, a `d < k + r`, a negative ridge). Before anything is compiled."""
    with pytest.raises(ValueError) as error:
        experiment(point)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_traced_points_are_not_checked_again(monkeypatch):
    """Under `vmap` over `grid_points` (which checked the grid) the experiment's program is
    exactly the one without the point check: nothing more to compile or run."""
    points = mimflow.grid_points({"seed": [0, 1], "ridge": [0.0, 0.1]}, EXPERIMENT)
    checked = str(jax.make_jaxpr(jax.vmap(EXPERIMENT))(points))
    monkeypatch.setattr(mimflow.ReducedExperiment, "check_point", lambda self, point: None)
    assert str(jax.make_jaxpr(jax.vmap(EXPERIMENT))(points)) == checked


@pytest.mark.parametrize("solver", EDGE_SOLVERS.values(), ids=EDGE_SOLVERS.keys())
def test_traced_inputs_outside_their_domain_end_non_finite(solver):
    """Under `jit`, a start with a singular value above 1 or a ridge or `rho` outside its
    domain cannot raise: the run ends `NON_FINITE` with `nan` saves (as a traced
    `d < k + r` does), where it used to succeed with a negative loss or a loss above
    `½‖f‖²`. In-domain values in the same compiled program run, at the closed-form loss."""

    @jax.jit
    def run(m0, ridge, rho):
        return mimflow.simulate_reduced(
            H2, m0 * jnp.ones((1, 1)), 10.0, num_saves=4, ridge=ridge, rho=rho, solver=solver
        )

    for m0, ridge, rho in ((3.0, 0.0, 1.0), (0.3, -10.0, 1.0), (0.3, 0.0, 0.0), (0.3, 0.0, 1.5), (0.3, np.inf, 1.0)):
        traj = run(m0, ridge, rho)
        assert int(traj.status) == Status.NON_FINITE, (m0, ridge, rho, traj.status)
        assert np.isnan(np.asarray(traj.loss)).all()
    traj = run(0.3, 0.1, 0.5)
    assert int(traj.status) == Status.SUCCESS
    assert float(traj.loss[0]) == pytest.approx(_h2_loss(0.3, 0.1, 0.5), rel=1e-14)


def test_concrete_overlaps_above_one_are_rejected():
    """A concrete overlap with a singular value above 1 is no overlap: `reduced_loss` and
    `reduced_vector_field` raise naming it (they returned −312 and −6000 at `m = 5`).
    One from orthonormal matrices, off by rounding, is accepted."""
    for function in (mimflow.reduced_loss, mimflow.reduced_vector_field):
        with pytest.raises(ValueError, match=r"`M`.*singular values ≤ 1.*got largest 5"):
            function(H2, [[5.0]])
    with pytest.raises(ValueError, match=r"`M`.*got largest 1\.5"):
        mimflow.reduced_loss(links.staircase(2), [[1.2, 0.0], [0.0, 1.5]], "planted")
    rotation = random_orthonormal(np.random.default_rng(0), 2, 2) * (1 + 1e-12)
    assert float(mimflow.reduced_loss(links.staircase(2), rotation)) == pytest.approx(0.0, abs=1e-10)


BAD_STEP_BUDGETS = [
    ("simulate-reduced", lambda: mimflow.simulate_reduced(H2, [[0.1]], 1.0, max_steps=10**20), "`max_steps`"),
    ("reduced-experiment", lambda: mimflow.ReducedExperiment(H2, KEY, 1.0, max_steps=2**31), "`max_steps`"),
    ("config", lambda: mimflow.load_config(CONFIG, ["solver.max_steps=1e20"]), "solver.max_steps"),
]


@pytest.mark.parametrize("make, name", [c[1:] for c in BAD_STEP_BUDGETS], ids=[c[0] for c in BAD_STEP_BUDGETS])
def test_step_budgets_beyond_32_bits_are_rejected(make, name):
    """A step budget above `2³¹ − 1` (the solvers count steps in 32 bits) raises naming
    it, with the bound (it overflowed inside the solve, or passed a config's check and
    crashed the run with a traceback)."""
    with pytest.raises(ValueError) as error:
        make()
    assert name in str(error.value) and "2147483647" in str(error.value), str(error.value)
