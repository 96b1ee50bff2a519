"""`Rodas4` and `Rodas5`, the batched Rosenbrock path of `simulate_reduced`, against
independent computations: a closed-form ODE (order of the method), quadrature of the
single-index ODE, the closed-form escape of a single index with ridge, SciPy's Radau
on a NumPy right-hand side (two-timescale, ridge, planted), and the diffrax path for
traced links and ridges."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import closed_form_two_timescale, radau_h1_h3_escapes
from scipy.integrate import quad, solve_ivp

import mimflow
from mimflow import links
from mimflow._config import build_jobs
from mimflow._fast import _jacobian, _rosenbrock_step

TIGHT4 = mimflow.Rodas4(rtol=1e-10, atol=1e-13)
TIGHT5 = mimflow.Rodas5(rtol=1e-10, atol=1e-13)
TWO = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)  # h1(z1) + h3(z2): log d, then d²


@pytest.mark.parametrize("solver, order", [(TIGHT4, 4), (TIGHT5, 5)], ids=["rodas4", "rodas5"])
def test_step_has_the_method_order_and_an_estimate_one_order_lower(solver, order):
    """Logistic `y' = y(1 − y)` (closed form) with fixed steps: the global error falls
    as h^order (or faster) and the embedded estimate of one step (the local error of the
    order − 1 solution) as h^order."""
    field = lambda y: (y[0] * (1 - y[0]), -y[1] + y[0] ** 2)
    exact = np.exp(1.0) * 0.1 / (0.9 + 0.1 * np.exp(1.0))
    errors, estimates = [], []
    for steps in (8, 16, 32):
        y = (jnp.asarray(0.1), jnp.asarray(1.0))
        for i in range(steps):
            y, estimate = _rosenbrock_step(solver.method, field, y, field(y), 1.0 / steps, _jacobian(field, y))
            if i == 0:
                estimates.append(abs(float(estimate[0])))
        errors.append(abs(float(y[0]) - exact))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    estimate_orders = np.log2(np.array(estimates[:-1]) / np.array(estimates[1:]))
    assert orders.min() > order - 0.2, orders
    assert np.all(np.abs(estimate_orders - order) < 0.3), estimate_orders


@pytest.mark.parametrize("solver", [TIGHT4, TIGHT5], ids=["rodas4", "rodas5"])
@pytest.mark.parametrize("problem", ["two-timescale", "planted"])
def test_single_index_escape_time_matches_quadrature(problem, solver):
    """h3, `ṁ = 3(1 − m²) m⁵` (two-timescale) or `3(1 − m²) m²` (planted): the time to
    reach m = ½ is `∫ dm / ṁ`, by adaptive quadrature."""
    m0 = 0.05
    rate = (lambda m: 3 * (1 - m * m) * m**5) if problem == "two-timescale" else (lambda m: 3 * (1 - m * m) * m**2)
    expected = quad(lambda m: 1 / rate(m), m0, 0.5, epsabs=0, epsrel=1e-13, limit=200)[0]
    traj = mimflow.simulate_reduced(links.hermite(3), jnp.array([[m0]]), 10 * expected, problem, solver=solver)
    assert traj.status == mimflow.Status.SUCCESS
    assert float(mimflow.escape_times(traj)[0]) == pytest.approx(expected, rel=1e-8)
    assert float(traj.loss[-1]) < 1e-12  # learned: the steady-state stop at the minimum


@pytest.fixture(scope="module", params=[TIGHT4, TIGHT5], ids=["rodas4", "rodas5"])
def batch(request):
    """Eight h1 + h3 runs at d = 100 with `Rodas4` or `Rodas5`, vmapped (the batched rule)."""
    solver = request.param
    keys = jax.random.split(jax.random.PRNGKey(3), 8)
    M0 = jax.vmap(lambda key: mimflow.sample_overlap(key, 100.0, 2, 2))(keys)
    run = jax.jit(jax.vmap(lambda m: mimflow.simulate_reduced(TWO, m, 1e5, num_saves=32, solver=solver)))
    return M0, run, run(M0), solver


def test_batch_matches_scipy_radau_on_a_numpy_right_hand_side(batch):
    M0, _, traj, _ = batch
    assert (np.asarray(traj.status) == mimflow.Status.SUCCESS).all()
    escapes = np.asarray(mimflow.escape_times(traj))
    ts = np.asarray(traj.ts[0])
    for b in range(3):
        expected, saves = radau_h1_h3_escapes(np.asarray(M0[b]), 1e5, ts)
        np.testing.assert_allclose(escapes[b], expected, rtol=1e-7)
        reached = ts <= 2 * expected[1]  # before the steady-state stop freezes the state
        np.testing.assert_allclose(np.asarray(traj.overlap[b])[reached], saves[reached], atol=1e-8)
    # singular values from the closed form equal an SVD of the saved overlaps
    np.testing.assert_allclose(
        traj.singular_values, np.linalg.svd(np.asarray(traj.overlap), compute_uv=False), atol=1e-14
    )


def test_a_divergent_element_does_not_touch_the_rest_of_the_batch(batch):
    """A NaN start and a starved step budget in a batch: those two report NON_FINITE and
    MAX_STEPS (with nan saves after the last step), the others equal the batch without them."""
    M0, run, reference, solver = batch
    bad = M0.at[2, 0, 0].set(jnp.nan)
    traj = run(bad)
    status = np.asarray(traj.status)
    assert status[2] == mimflow.Status.NON_FINITE and np.isnan(traj.loss[2]).all()
    keep = np.arange(8) != 2
    assert (status[keep] == mimflow.Status.SUCCESS).all()
    np.testing.assert_array_equal(np.asarray(traj.overlap)[keep], np.asarray(reference.overlap)[keep])
    starved = mimflow.simulate_reduced(TWO, M0[0], 1e5, num_saves=32, solver=solver, max_steps=20)
    assert starved.status == mimflow.Status.MAX_STEPS
    assert np.isnan(starved.loss[-1]) and np.isfinite(starved.loss[0])
    # one trajectory alone (a batch of one) equals its row of the vmapped batch
    alone = mimflow.simulate_reduced(TWO, M0[1], 1e5, num_saves=32, solver=solver)
    np.testing.assert_allclose(alone.overlap, reference.overlap[1], rtol=0, atol=1e-13)


@pytest.mark.optimized  # two programs (8 and 3 lanes), bitwise
def test_refilled_lanes_give_the_same_bits(batch):
    """Three lanes for eight trajectories (one with a NaN start): a lane whose trajectory
    ended takes the next one, and every output equals the batch run on eight lanes
    bitwise (whose saves and escape times are checked against Radau above)."""
    M0, run, _, tight = batch
    bad = M0.at[2, 0, 0].set(jnp.nan)
    reference = run(bad)
    solver = type(tight)(rtol=tight.rtol, atol=tight.atol, lanes=3)
    traj = jax.jit(jax.vmap(lambda m: mimflow.simulate_reduced(TWO, m, 1e5, num_saves=32, solver=solver)))(bad)
    for name in ("overlap", "loss", "singular_values", "status", "num_steps"):
        np.testing.assert_array_equal(getattr(traj, name), getattr(reference, name), err_msg=name)
    jax.tree.map(np.testing.assert_array_equal, traj.crossings, reference.crossings)
    np.testing.assert_array_equal(mimflow.escape_times(traj), mimflow.escape_times(reference))
    with pytest.raises(ValueError, match="`lanes`"):
        type(tight)(lanes=1)


RIDGE, RHO = 0.3, 0.7


def shrinkage(j):
    """`s_j = ρ^j / (ρ^j + μ)` (DESIGN §2)."""
    return RHO**j / (RHO**j + RIDGE)


def planted_two_rhs(t, y):
    """The planted ODE of h1(z1) + h3(z2) in NumPy. By Mehler, `E h_i(u_a) h_j(v_b) =
    δ_ij M_ab^i` for standard normal `u`, `v` with `E[u vᵀ] = M`, so `L_pl = 2 − M₁₁ − M₂₂³`,
    `Γ = ∇_M L_pl = −diag(1, 3 M₂₂²)` and `Ṁ = −Γ + ½ M (MᵀΓ + ΓᵀM)` (Stiefel, embedded)."""
    M = y.reshape(2, 2)
    gamma = -np.diag([1.0, 3 * M[1, 1] ** 2])
    return (-gamma + 0.5 * M @ (M.T @ gamma + gamma.T @ M)).ravel()


def staircase_ridge_rhs(t, y):
    """The two-timescale ODE of the staircase h1(z1) + z1 z2 with ridge `μ`, `ρ`, in
    NumPy: by Isserlis `E[u1 u2 v1 v2] = G₁₁G₂₂ + G₁₂G₂₁` for cross-covariance `G`, so
    the shrunk correlation is `C(G) = s₁ G₁₁ + s₂ (G₁₁G₂₂ + G₁₂G₂₁)`,
    `B = ∂C/∂G = s₁ e₁e₁ᵀ + s₂ [[G₂₂, G₂₁], [G₁₂, G₁₁]]` and `Ṁ = (I − G) B M`."""
    M = y.reshape(2, 2)
    G = M @ M.T
    B = shrinkage(1) * np.diag([1.0, 0.0]) + shrinkage(2) * np.array([[G[1, 1], G[1, 0]], [G[0, 1], G[0, 0]]])
    return ((np.eye(2) - G) @ B @ M).ravel()


M0_50 = np.array(mimflow.sample_overlap(jax.random.PRNGKey(0), 50.0, 2, 2))
CASES = {
    "planted": (mimflow.Planted(TWO), planted_two_rhs, 0.0),
    # the minimum ½(‖f*‖² − s₁ − s₂) of the shrunk loss (both tensors of norm 1)
    "ridge": (
        mimflow.TwoTimescale(links.staircase(2), RIDGE, RHO),
        staircase_ridge_rhs,
        1 - (shrinkage(1) + shrinkage(2)) / 2,
    ),
}


@functools.cache
def radau_escapes(case, ts):
    """SciPy's Radau (rtol 1e-12, atol 1e-14) on `case`'s NumPy right-hand side from
    `M0_50` to 1e3: the times the singular values of `M` cross ½ upwards, and `M` at `ts`."""
    events = []
    for i in range(2):
        event = lambda t, y, i=i: np.linalg.svd(y.reshape(2, 2), compute_uv=False)[i] - 0.5
        event.direction = 1
        events.append(event)
    rhs = CASES[case][1]
    sol = solve_ivp(rhs, (0, 1e3), M0_50.ravel(), "Radau", t_eval=ts, rtol=1e-12, atol=1e-14, events=events)
    assert sol.status == 0, sol.message
    return np.array([e[0] if len(e) else np.inf for e in sol.t_events]), sol.y.T.reshape(-1, 2, 2)


@pytest.mark.parametrize("solver", [TIGHT4, TIGHT5], ids=["rodas4", "rodas5"])
@pytest.mark.parametrize("case", CASES)
def test_planted_and_ridge_match_scipy_radau(case, solver):
    """The planted problem (h1 + h3) and ridge shrinkage (the staircase, μ = 0.3, ρ = 0.7)
    against Radau on a NumPy right-hand side written from DESIGN §2–§3."""
    problem, rhs, minimum = CASES[case]
    rng = np.random.default_rng(5)
    for _ in range(3):  # the NumPy field is the library's (measured to 6e-17)
        M = rng.uniform(-0.6, 0.6, (2, 2))
        np.testing.assert_allclose(problem.vector_field(M).ravel(), rhs(0.0, M.ravel()), rtol=0, atol=1e-15)
    traj = mimflow.simulate_reduced(problem, M0_50, 1e3, num_saves=16, solver=solver)
    assert traj.status == mimflow.Status.SUCCESS
    expected, saves = radau_escapes(case, tuple(np.asarray(traj.ts)))
    assert np.all(expected < 20)  # both directions escape well within the run
    # measured: escapes (t ≈ 0.3 to 2.3) within 2e-11 relative (Rodas4) and 1.3e-8 (Rodas5,
    # its crossing on the dense output); saves, the steady-state tail included, within 5e-11
    np.testing.assert_allclose(mimflow.escape_times(traj), expected, rtol=1e-6)
    np.testing.assert_allclose(traj.overlap, saves, rtol=0, atol=1e-9)
    assert abs(float(traj.loss[-1]) - minimum) <= 1e-11  # measured 5e-13


@pytest.mark.parametrize("solver", [TIGHT4, TIGHT5], ids=["rodas4", "rodas5"])
def test_ridge_single_index_escape_matches_closed_form(solver):
    """`α h_3` with ridge: `ℒ = ½ α² (1 − s₃ m⁶)`, i.e. the flow of `√s₃ α h_3`, whose
    escape time has a closed form (`dt = dm² / (6 s₃ α² m⁶ (1 − m²))`); the loss ends at
    `½ α² (1 − s₃)`."""
    m0, alpha = 0.1, 1.2
    expected = closed_form_two_timescale(alpha * math.sqrt(shrinkage(3)), 3, m0)
    problem = mimflow.TwoTimescale(alpha * links.hermite(3), RIDGE, RHO)
    traj = mimflow.simulate_reduced(problem, jnp.array([[m0]]), 10 * expected, solver=solver)
    assert traj.status == mimflow.Status.SUCCESS
    # measured: 2e-12 (Rodas4) and 2.3e-10 (Rodas5) relative
    assert float(mimflow.escape_times(traj)[0]) == pytest.approx(expected, rel=1e-8)
    assert abs(float(traj.loss[0]) - 0.5 * alpha**2 * (1 - shrinkage(3) * m0**6)) <= 1e-14
    assert abs(float(traj.loss[-1]) - 0.5 * alpha**2 * (1 - shrinkage(3))) <= 1e-11


@pytest.mark.slow  # 20 CPU-s each, for CI time (the only check on traced links and ridges: run with -m slow)
@pytest.mark.parametrize("solver", [TIGHT4, TIGHT5], ids=["rodas4", "rodas5"])
def test_agrees_with_the_diffrax_path_for_traced_ridge_and_links(solver):
    """Ridge shrinkage swept under vmap (traced weights) and a link passed through `jit`
    (traced tensors, no structural zeros) against Kvaerno5."""
    M0 = mimflow.sample_overlap(jax.random.PRNGKey(0), 50.0, 2, 2)
    traced = jax.jit(
        jax.vmap(
            lambda link, ridge: mimflow.simulate_reduced(link, M0, 1e4, ridge=ridge, num_saves=16, solver=solver).loss,
            in_axes=(None, 0),
        )
    )(TWO, jnp.array([0.0, 0.5]))
    for i, ridge in enumerate([0.0, 0.5]):
        slow = mimflow.simulate_reduced(TWO, M0, 1e4, ridge=ridge, num_saves=16)
        np.testing.assert_allclose(traced[i], slow.loss, atol=1e-9)


def test_experiments_sweeps_and_configs_take_rodas4(tmp_path):
    experiment = mimflow.ReducedExperiment(TWO, jax.random.PRNGKey(1), 1e5, d=100.0, num_saves=16, solver=TIGHT4)
    fast = mimflow.sweep(experiment, {"seed": range(3), "rtol": [1e-10]})
    assert (fast.status.values == mimflow.Status.SUCCESS).all()
    for seed in range(2):  # against Radau at 1e-12 on a NumPy right-hand side
        expected, _ = radau_h1_h3_escapes(fast.overlap.values[seed, 0, 0], 1e5, fast.time.values)
        np.testing.assert_allclose(fast.escape_time.values[seed, 0], expected, rtol=1e-8)
    with pytest.raises(ValueError, match="stepsize_controller"):
        mimflow.simulate_reduced(TWO, np.eye(2) * 0.1, 10.0, solver=TIGHT4, stepsize_controller=object())
    with pytest.raises(ValueError, match="rtol"):
        mimflow.Rodas4(rtol=-1.0)
    with pytest.raises(ValueError, match="reduced dynamics only"):
        mimflow.FlowExperiment(links.hermite(2), jax.random.PRNGKey(0), 1.0, d=8, d_max=8, solver=mimflow.Rodas4())
    config = mimflow.load_config("configs/quickstart.yaml", ["solver.name=rodas4"], smoke=True, out=str(tmp_path))
    assert config["solver"]["name"] == "rodas4"
    jobs = build_jobs(config)
    assert jobs and all(type(experiment.solver) is mimflow.Rodas4 for _, experiment, _ in jobs)
    with pytest.raises(mimflow.ConfigError, match="solver.name"):
        mimflow.load_config("configs/finite_vs_population.yaml", ["solver.name=rodas4"], smoke=True, out=str(tmp_path))


def test_rodas5_takes_fewer_steps_for_the_same_escape_times():
    """The benchmark's problem (h1 + h3 at d = 10³ to t1 = 10⁸, rtol 1e-6, atol 1e-9):
    `Rodas5` with its predictive controller needs at most 0.7 of `Rodas4`'s step
    attempts (the step counts are deterministic, not timings; without the predictive
    controller the d² escape rejects every other step), and both put the escapes within
    1e-4 of Radau at rtol 1e-12 on a NumPy right-hand side."""
    keys = jax.random.split(jax.random.PRNGKey(0), 16)
    M0 = jax.vmap(lambda key: mimflow.sample_overlap(key, 1e3, 2, 2))(keys)
    runs = {}
    for name, solver in (("rodas4", mimflow.Rodas4(1e-6, 1e-9)), ("rodas5", mimflow.Rodas5(1e-6, 1e-9))):
        run = jax.vmap(lambda m, solver=solver: mimflow.simulate_reduced(TWO, m, 1e8, num_saves=64, solver=solver))
        traj = jax.jit(run)(M0)
        assert (np.asarray(traj.status) == mimflow.Status.SUCCESS).all()
        runs[name] = (np.asarray(traj.num_steps), np.asarray(mimflow.escape_times(traj)))
    ratio = np.median(runs["rodas5"][0]) / np.median(runs["rodas4"][0])
    assert ratio < 0.7, ratio
    for b in range(2):
        expected, _ = radau_h1_h3_escapes(np.asarray(M0[b]), 1e8)
        for name in runs:
            np.testing.assert_allclose(runs[name][1][b], expected, rtol=1e-4, err_msg=name)


def test_experiments_keep_the_solver_class_and_its_lanes(monkeypatch, tmp_path):
    """A `ReducedExperiment` swept over `rtol` rebuilds its Rosenbrock solver with the new
    tolerances: same class, same `lanes`; configs take `solver.name: rodas5`."""
    from mimflow import _experiments

    seen = []
    original = _experiments.simulate_reduced

    def spy(*args, solver=None, **kwargs):
        seen.append(solver)
        return original(*args, solver=solver, **kwargs)

    monkeypatch.setattr(_experiments, "simulate_reduced", spy)
    solver = mimflow.Rodas5(rtol=1e-8, atol=1e-11, lanes=4)
    experiment = mimflow.ReducedExperiment(TWO, jax.random.PRNGKey(1), 1e3, d=100.0, num_saves=8, solver=solver)
    result = mimflow.sweep(experiment, {"seed": range(2), "rtol": [1e-7]})
    assert (result.status.values == mimflow.Status.SUCCESS).all()
    # the swept rtol (a tracer under the sweep's vmap) replaced the solver's own; atol kept
    assert seen and all(type(s) is mimflow.Rodas5 and s.lanes == 4 and s.rtol is not solver.rtol for s in seen)
    assert all(s.atol == solver.atol for s in seen)
    config = mimflow.load_config("configs/quickstart.yaml", ["solver.name=rodas5"], smoke=True, out=str(tmp_path))
    assert config["solver"]["name"] == "rodas5"
    assert all(type(experiment.solver) is mimflow.Rodas5 for _, experiment, _ in build_jobs(config))
    with pytest.raises(mimflow.ConfigError, match="rodas5 integrates the reduced dynamics only"):
        mimflow.load_config("configs/finite_vs_population.yaml", ["solver.name=rodas5"], smoke=True, out=str(tmp_path))
