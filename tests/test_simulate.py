"""`sample_overlap`, `simulate_reduced` and `escape_times` against independent oracles.

Every number the library produces is compared with something computed here without
it: brute-force Haar sampling (NumPy QR) and exact Beta laws for the overlap; SciPy
quadrature of `dt = dm / ṁ(m)` and closed-form antiderivatives for single-index
escape times; SciPy's Radau on a hand-derived 2×2 ODE for the saddle-to-saddle
dynamics. The only library-versus-library comparisons are consistency properties
(vmap equals a loop, a truncated run equals the prefix of a full run).

Compilation dominates the run time (each new link structure, shape or static option
recompiles the diffrax solve and the escape-time root find), so single-index cases
are padded to one common set of degrees and run as one vmapped batch per problem.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from helpers import closed_form_two_timescale
from scipy.integrate import quad, solve_ivp

import mimflow
from mimflow import Link, Status, links
from mimflow._integrate import FORCED_ERROR_LIMIT

# --------------------------------------------------------------------------------------
# Independent oracles for the single-index flows (DESIGN §2–§3)
# --------------------------------------------------------------------------------------

PROBLEMS = ("two-timescale", "planted")
DEGREES = (1, 2, 3, 4)  # every single-index link is padded to these degrees: one compile


def rate(alphas, m, problem):
    """ṁ for `f* = Σ_j α_j h_j`: two-timescale `(1 − m²) Σ j α_j² m^{2j−1}`,
    planted `(1 − m²) Σ j α_j² m^{j−1}` (DESIGN §2, §3)."""
    power = 2 if problem == "two-timescale" else 1
    return (1.0 - m * m) * sum(j * a * a * m ** (power * j - 1) for j, a in alphas.items())


def quad_time(alphas, m0, m1, problem):
    """`∫_{m0}^{m1} dm / ṁ(m)` by adaptive quadrature in `u = log m` (the integrand
    `m / ṁ` is smooth in u, whereas `1/ṁ` blows up like `m^{1−2s}` at small m)."""
    value, error = quad(
        lambda u: math.exp(u) / rate(alphas, math.exp(u), problem),
        math.log(m0),
        math.log(m1),
        epsabs=0.0,
        epsrel=1e-13,
        limit=500,
    )
    assert error <= 1e-11 * abs(value)
    return value


def escape_oracle(alphas, m0, problem):
    return quad_time(alphas, m0, 0.5, problem)


def asymptotic_law(alpha, s, d, problem):
    """The DESIGN §2–§3 timescales from `m0 = d^{−1/2}`."""
    if problem == "two-timescale":
        return math.log(d) / (2 * alpha**2) if s == 1 else d ** (s - 1) / (2 * s * (s - 1) * alpha**2)
    assert s >= 3
    return d ** (s / 2 - 1) / (s * (s - 2) * alpha**2)


def single_link(alphas):
    return Link.from_hermite({(j,): a for j, a in alphas.items()}).with_degrees(DEGREES)


QUAD_LINKS = [{1: 1.0}, {2: 1.0}, {3: 1.0}, {4: 1.0}, {2: 0.3, 3: 1.0}]  # s = 1…4, 0.3 h2 + h3
QUAD_M0 = [0.2, 0.05, 0.01]
LAW_ALPHA = 0.7  # ≠ 1 so that the α-dependence of the laws is tested too
LAW_DIMS = {
    "two-timescale": {
        1: [1e2, 1e4, 1e6, 1e8, 1e10, 1e12],
        2: [1e2, 1e4, 1e6, 1e8, 1e10, 1e12],
        3: [1e2, 1e4, 1e6],
        4: [1e2, 1e3, 1e4],
    },
    "planted": {3: [1e2, 1e4, 1e6, 1e8, 1e10, 1e12], 4: [1e2, 1e4, 1e6, 1e8, 1e10, 1e12]},
}


def quad_cases():
    return [{"alphas": a, "m0": m0} for a in QUAD_LINKS for m0 in QUAD_M0]


def law_cases(problem):
    return [
        {"alphas": {s: LAW_ALPHA}, "m0": d**-0.5, "s": s, "d": d} for s, dims in LAW_DIMS[problem].items() for d in dims
    ]


@eqx.filter_jit
def run_batch(link, M0, t1, problem, num_saves):
    """vmap of `escape_times(simulate_reduced(…))` over links, initial overlaps and t1."""

    def one(link, M0, t1):
        traj = mimflow.simulate_reduced(link, M0, t1, problem, num_saves=num_saves)
        return traj, mimflow.escape_times(traj)

    return jax.vmap(one)(link, M0, t1)


def run_cases(cases, problem, num_saves=256):
    for case in cases:
        case["oracle"] = escape_oracle(case["alphas"], case["m0"], problem)
    # t1 = 4× the escape time: the crossing lies well inside the horizon, and the
    # largest horizon stays ≤ 10¹⁴.
    t1 = jnp.array([4.0 * case["oracle"] for case in cases])
    stacked = links.stack([single_link(case["alphas"]) for case in cases])
    M0 = jnp.array([[[case["m0"]]] for case in cases])
    traj, escape = run_batch(stacked, M0, t1, problem, num_saves)
    return traj, np.asarray(escape[:, 0])


@pytest.fixture(scope="module", params=PROBLEMS)
def single_index(request):
    problem = request.param
    cases = quad_cases() + law_cases(problem)
    traj, escape = run_cases(cases, problem)
    return problem, cases, traj, escape


# --------------------------------------------------------------------------------------
# 1. The exact overlap sampler against brute-force Haar sampling
# --------------------------------------------------------------------------------------


def haar_overlaps(rng, n, d, k, r):
    """`M = W*ᵀ W0` with `W* = [e_1 … e_k]`, `W0` Haar on St(d, r) by QR of a Gaussian
    matrix with the sign fix `diag(R) > 0`."""
    Z = rng.standard_normal((n, d, r))
    Q, R = np.linalg.qr(Z)
    Q = Q * np.sign(np.diagonal(R, axis1=1, axis2=2))[:, None, :]
    return Q[:, :k, :]


SAMPLE_BATCH = 2000  # one batch size for every sampler call: the gamma sampler compiles per shape


def library_overlaps(key, n, d, k, r):
    """`n` library samples, `SAMPLE_BATCH` at a time through one vmap over keys and d."""
    assert n % SAMPLE_BATCH == 0
    chunks = []
    for subkey in jax.random.split(key, n // SAMPLE_BATCH):
        keys = jax.random.split(subkey, SAMPLE_BATCH)
        chunks.append(sample_batch(keys, jnp.full(SAMPLE_BATCH, d), k, r))
    return np.concatenate(chunks)


def sample_batch(keys, dims, k, r):
    return np.asarray(jax.vmap(lambda key, d: mimflow.sample_overlap(key, d, k, r))(keys, dims))


@pytest.mark.parametrize(("d", "k", "r"), [(6, 2, 2), (20, 2, 2), (50, 1, 1), (40, 3, 2), (100, 2, 3)])
def test_sample_overlap_singular_values_match_haar_qr(d, k, r):
    n = 2000
    ours = np.linalg.svd(library_overlaps(jax.random.PRNGKey(d + 7 * k + 13 * r), n, float(d), k, r), compute_uv=False)
    ref = np.linalg.svd(haar_overlaps(np.random.default_rng(d + 7 * k + 13 * r), n, d, k, r), compute_uv=False)
    assert ours.shape == ref.shape == (n, min(k, r))
    for i in range(min(k, r)):
        # Fixed seeds, so deterministic; 1e-3 is a conventional KS threshold.
        assert scipy.stats.ks_2samp(ours[:, i], ref[:, i]).pvalue > 1e-3, f"singular value {i}"


def test_sample_overlap_ks_has_power():
    """The KS comparison above can tell d = 20 from d = 12 (so passing it means something)."""
    ours = np.linalg.svd(library_overlaps(jax.random.PRNGKey(0), 2000, 20.0, 2, 2), compute_uv=False)
    ref = np.linalg.svd(haar_overlaps(np.random.default_rng(0), 2000, 12, 2, 2), compute_uv=False)
    assert scipy.stats.ks_2samp(ours[:, 0], ref[:, 0]).pvalue < 1e-6


@pytest.mark.parametrize("d", [5.0, 10.0, 1e6])
def test_sample_overlap_entries_exact_beta_law(d):
    """Each entry `M_ij = e_iᵀ (W0 e_j)` is a coordinate of a uniform unit vector in ℝ^d,
    so `M_ij² ~ Beta(½, (d − 1)/2)` exactly, and `E[d M_ij²] = 1` (≈ N(0, 1/d) entries)."""
    n = 20000
    M = library_overlaps(jax.random.PRNGKey(int(d)), n, d, 2, 2)
    law = scipy.stats.beta(0.5, (d - 1) / 2)
    for i in range(2):
        for j in range(2):
            assert scipy.stats.kstest(M[:, i, j] ** 2, law.cdf).pvalue > 1e-3
    # Var(d M²) ≤ 2 and the 4 entries of one matrix are at worst fully correlated:
    # std of the mean ≤ √(2 / n) ≈ 0.01, so 0.05 is a 5σ bound.
    assert abs(np.mean(d * M**2) - 1.0) < 0.05
    if d >= 1e6:  # Gaussian limit: √d M ≈ N(0, 1) (corrections O(1/d))
        assert scipy.stats.kstest((np.sqrt(d) * M).ravel(), "norm").pvalue > 1e-3


def test_sample_overlap_traced_d_equals_python_float():
    key = jax.random.PRNGKey(3)
    dims = [4.0, 5.5, 10.0, 1e3, 1e6, 1e12]  # a traced d need not be an integer
    # the shared batch shape, holding the 6 dims (with one key) repeated
    batched = sample_batch(jnp.tile(key, (SAMPLE_BATCH, 1)), jnp.resize(jnp.array(dims), SAMPLE_BATCH), 2, 2)
    for i, d in enumerate(dims):
        single = mimflow.sample_overlap(key, d, 2, 2)
        # Same key, same arithmetic: equal up to rounding.
        np.testing.assert_allclose(batched[i], single, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(batched[i + len(dims)], single, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("d", "k", "r", "name"),
    [
        (3.0, 2, 2, "d"),
        (4.9, 2, 3, "d"),
        (float("nan"), 1, 1, "d"),
        (10.0, 0, 2, "k"),
        (10.0, 2, 0, "r"),
        (10.0, 1.5, 2, "k"),
        (10.0, 2, 2.0, "r"),
        (10.0, -1, 2, "k"),
    ],
)
def test_sample_overlap_rejects_bad_input(d, k, r, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        mimflow.sample_overlap(jax.random.PRNGKey(0), d, k, r)


# --------------------------------------------------------------------------------------
# 2. Single-index escape times against quadrature and the asymptotic laws
# --------------------------------------------------------------------------------------


def test_quadrature_oracle_matches_closed_form():
    """The quadrature oracle itself, against the partial-fraction antiderivative."""
    for s in DEGREES:
        for m0 in [0.3, 1e-2, 1e-4, 1e-6]:
            if s == 4 and m0 < 1e-4:
                continue
            exact = closed_form_two_timescale(0.7, s, m0)
            assert escape_oracle({s: 0.7}, m0, "two-timescale") == pytest.approx(exact, rel=1e-10)
    # planted s = 1: ṁ = α² (1 − m²), t = (atanh ½ − atanh m0) / α²
    assert escape_oracle({1: 0.7}, 0.1, "planted") == pytest.approx(
        (math.atanh(0.5) - math.atanh(0.1)) / 0.49, rel=1e-12
    )


def test_single_index_escape_matches_quadrature(single_index):
    problem, cases, traj, escape = single_index
    assert bool(traj.succeeded.all()), traj.status
    errors = {}
    for i, case in enumerate(cases[: len(quad_cases())]):
        errors[f"{case['alphas']} m0={case['m0']}"] = abs(escape[i] / case["oracle"] - 1.0)
    # Solver tolerances are rtol 1e-8, atol 1e-11; measured ≤ 2.5e-7 here.
    assert max(errors.values()) <= 1e-6, errors


def test_single_index_trajectory_matches_quadrature(single_index):
    """Not only the crossing: every save with `2 m0 ≤ m(t) ≤ 0.9` satisfies
    `t = ∫_{m0}^{m(t)} dm / ṁ` (away from m0, where `m − m0` cancels, and from 1,
    where ṁ → 0 makes t ill-conditioned in m). The saved loss and singular value
    match their closed forms in m."""
    problem, cases, traj, _ = single_index
    worst, checked = 0.0, 0
    for i, case in enumerate(cases[: len(quad_cases())]):
        m = np.asarray(traj.overlap[i, :, 0, 0])
        ts = np.asarray(traj.ts[i])
        alphas = case["alphas"]
        if problem == "two-timescale":
            loss = 0.5 * sum(a * a * (1 - m ** (2 * j)) for j, a in alphas.items())
        else:
            loss = sum(a * a * (1 - m**j) for j, a in alphas.items())
        np.testing.assert_allclose(traj.loss[i], loss, rtol=0, atol=1e-12)
        np.testing.assert_allclose(traj.singular_values[i, :, 0], np.abs(m), rtol=0, atol=1e-15)
        inside = np.nonzero((m >= 2 * case["m0"]) & (m <= 0.9))[0]
        for j in inside[:: max(1, len(inside) // 8)]:
            worst = max(worst, abs(quad_time(alphas, case["m0"], m[j], problem) / ts[j] - 1.0))
            checked += 1
    assert checked >= 60
    assert worst <= 1e-6, worst


def test_asymptotic_law_of_quadrature(single_index):
    """The exact time from m0 = d^{−1/2}, divided by the DESIGN law, tends to 1 as d grows
    (two-timescale s = 1 slowly: from the closed form, the ratio is exactly
    `1 + (log(1 − 1/d) − log 3) / log d`)."""
    problem, cases, _, _ = single_index
    laws = cases[len(quad_cases()) :]
    for s in LAW_DIMS[problem]:
        group = [c for c in laws if c["s"] == s]
        ratios = np.array([c["oracle"] / asymptotic_law(LAW_ALPHA, s, c["d"], problem) for c in group])
        gaps = np.abs(ratios - 1.0)
        assert np.all(np.diff(gaps) < 0), (s, ratios)
        assert gaps[-1] < (0.05 if s == 1 else 1e-3), (s, ratios)
        if problem == "two-timescale" and s == 1:
            d = np.array([c["d"] for c in group])
            np.testing.assert_allclose(ratios - 1.0, (np.log1p(-1 / d) - math.log(3)) / np.log(d), rtol=1e-8)


def test_asymptotic_law_of_simulation(single_index):
    problem, cases, _, escape = single_index
    offset = len(quad_cases())
    laws = cases[offset:]
    for i, case in enumerate(laws):
        # Down to m0 = 10⁻⁶ the absolute tolerance atol = 1e-11 is 1e-5 of the state,
        # so the quadrature agreement is looser here (measured ≤ 1.1e-6).
        assert escape[offset + i] == pytest.approx(case["oracle"], rel=1e-5), case
    for s in LAW_DIMS[problem]:
        idx = [offset + i for i, c in enumerate(laws) if c["s"] == s]
        law = np.array([asymptotic_law(LAW_ALPHA, s, cases[i]["d"], problem) for i in idx])
        oracle = np.array([cases[i]["oracle"] for i in idx])
        gaps = np.abs(escape[idx] / law - 1.0)
        assert gaps[-1] < (0.05 if s == 1 else 1e-3), (s, gaps)
        # |ratio − 1| decreases with d wherever the asymptotic gap (≥ 1e-4) is resolved
        # above the ≤ 1e-5 simulation error.
        resolved = np.abs(oracle / law - 1.0) > 1e-4
        assert resolved.sum() >= 2 and np.all(np.diff(gaps[resolved]) < 0), (s, gaps)


def test_escape_times_direct_call_and_never():
    """The plain (un-vmapped) call path, with the link unpadded and M0 a nested list;
    and `inf` when the horizon ends before the crossing."""
    link = links.hermite(3)
    exact = escape_oracle({3: 1.0}, 0.05, "two-timescale")  # ≈ 1.34e4
    traj = mimflow.simulate_reduced(link, [[0.05]], 1e6)
    assert int(traj.status) == Status.SUCCESS
    (escape,) = np.asarray(mimflow.escape_times(traj))
    assert escape == pytest.approx(exact, rel=1e-6)
    short = mimflow.simulate_reduced(link, [[0.05]], 0.5 * exact)
    assert int(short.status) == Status.SUCCESS
    assert np.isinf(np.asarray(mimflow.escape_times(short))).all()


def test_recorded_crossing_step_against_reintegration_and_quadrature():
    """At ½ the crossing is found inside the solver step recorded during the solve; at
    any other threshold (and with the record dropped) by re-integrating from the save
    before it. Both against the quadrature of `dt = dm / ṁ`, for `h3` from `m0 = 0.05`."""
    link = links.hermite(3)
    traj = mimflow.simulate_reduced(link, [[0.05]], 1e6, num_saves=64)
    assert traj.crossings is not None and traj.crossings.threshold == 0.5
    recorded = float(mimflow.escape_times(traj)[0])
    reintegrated = float(
        mimflow.escape_times(eqx.tree_at(lambda t: t.crossings, traj, None, is_leaf=lambda x: x is None))[0]
    )
    assert recorded == pytest.approx(escape_oracle({3: 1.0}, 0.05, "two-timescale"), rel=1e-7)
    assert reintegrated == pytest.approx(recorded, rel=1e-7)
    # the recorded step brackets the crossing, and it lies between the two saves around it
    steps = traj.crossings
    assert float(steps.t0[0]) < recorded <= float(steps.t1[0])
    later = float(mimflow.escape_times(traj, 0.8)[0])
    assert later == pytest.approx(quad_time({3: 1.0}, 0.05, 0.8, "two-timescale"), rel=1e-7)
    # a traced threshold (inside jit) takes the re-integration path, at ½ too
    traced = jax.jit(lambda threshold: mimflow.escape_times(traj, threshold))
    assert float(traced(0.8)[0]) == pytest.approx(later, rel=1e-7)
    assert float(traced(0.5)[0]) == pytest.approx(recorded, rel=1e-7)
    # already above at the start: the time is 0 on both paths
    start = mimflow.simulate_reduced(link, [[0.9]], 10.0, num_saves=64)
    assert float(mimflow.escape_times(start)[0]) == 0.0
    assert float(mimflow.escape_times(start, 0.7)[0]) == 0.0


# --------------------------------------------------------------------------------------
# 3. Saddle-to-saddle: h1(z1) + h3(z2) at d = 10³
# --------------------------------------------------------------------------------------

SADDLE_D = 1e3
SADDLE_T1 = 1e8
# h1(z1) + h3(z2), padded with a zero degree-2 tensor so that it shares one compiled
# solve with the staircase h1(z1) + z1 z2 (degrees 1, 2), padded with a zero degree 3.
SADDLE_LINK = (links.hermite(1, dim=2, index=0) + links.hermite(3, dim=2, index=1)).with_degrees((1, 2, 3))
STAIRCASE = links.staircase(2).with_degrees((1, 2, 3))


def saddle_rhs(t, y):
    """`Ṁ = (I − G) B(G) M` with, derived by hand for h1(z1) + h3(z2)
    (`T_1 = e1`, `T_3 = e2⊗e2⊗e2`): `B(G) = e1 e1ᵀ + 3 G22² e2 e2ᵀ`."""
    M = y.reshape(2, 2)
    G = M @ M.T
    B = np.diag([1.0, 3.0 * G[1, 1] ** 2])
    return ((np.eye(2) - G) @ B @ M).ravel()


def saddle_oracle(M0, t1):
    """Both crossings `σ_i(M(t)) = ½`, by SciPy's LSODA at rtol 1e-12 (it agreed with
    Radau and DOP853 to ≤ 4e-10 relative on these runs, and is 10× faster)."""

    def crossing(i):
        event = lambda t, y: np.linalg.svd(y.reshape(2, 2), compute_uv=False)[i] - 0.5  # noqa: E731
        event.direction = 1
        event.terminal = i == 1
        return event

    sol = solve_ivp(
        saddle_rhs,
        (0.0, t1),
        np.asarray(M0).ravel(),
        method="LSODA",
        rtol=1e-12,
        atol=1e-15,
        events=[crossing(0), crossing(1)],
    )
    assert sol.status == 1  # stopped at the second crossing
    return np.array([sol.t_events[0][0], sol.t_events[1][0]])


@pytest.fixture(scope="module")
def saddle():
    keys = jax.random.split(jax.random.PRNGKey(2024), 4)
    M0 = jax.vmap(lambda key: mimflow.sample_overlap(key, SADDLE_D, 2, 2))(keys)
    traj = jax.vmap(lambda m: mimflow.simulate_reduced(SADDLE_LINK, m, SADDLE_T1))(M0)
    escape = mimflow.escape_times(traj)  # the batched Trajectory, directly
    return M0, traj, np.asarray(escape)


@pytest.fixture(scope="module")
def saddle_singles(saddle):
    M0 = saddle[0]
    singles = [mimflow.simulate_reduced(SADDLE_LINK, M0[b], SADDLE_T1) for b in range(M0.shape[0])]
    return singles, [np.asarray(mimflow.escape_times(traj)) for traj in singles]


def test_saddle_to_saddle_escape_times(saddle):
    M0, traj, escape = saddle
    assert bool(traj.succeeded.all())
    for b in range(M0.shape[0]):
        oracle = saddle_oracle(M0[b], SADDLE_T1)
        # The oracle is ≤ 1e-9 accurate; the library (rtol 1e-8) measured ≤ 6e-8.
        np.testing.assert_allclose(escape[b], oracle, rtol=1e-6)
        tau1, tau2 = escape[b]
        assert tau1 < math.log(SADDLE_D)  # O(log d): law log(d)/2 ≈ 3.45 for one h1 direction
        assert tau2 > SADDLE_D and tau2 > 100 * tau1  # polynomial in d, after the first


def test_saddle_to_saddle_loss_plateau(saddle):
    """Between the escapes the loss sits at ½‖h3‖² = ½; the saved loss equals
    `½ (2 − G11 − G22³)` computed from the saved overlap; the loss never increases
    and `log det G` never decreases (DESIGN §2); at t1 both directions are learned."""
    M0, traj, escape = saddle
    for b in range(M0.shape[0]):
        ts, loss = np.asarray(traj.ts[b]), np.asarray(traj.loss[b])
        M = np.asarray(traj.overlap[b])
        G = M @ np.swapaxes(M, 1, 2)
        np.testing.assert_allclose(loss, 0.5 * (2.0 - G[:, 0, 0] - G[:, 1, 1] ** 3), rtol=0, atol=1e-12)
        tau1, tau2 = escape[b]
        plateau = (ts > 10 * tau1) & (ts < 0.1 * tau2)
        assert plateau.sum() >= 10
        assert np.abs(loss[plateau] - 0.5).max() < 1e-3
        # Up to the solver's atol (1e-11): near convergence M overshoots ‖M‖ = 1 by
        # ~1e-12 and the loss dips to −2e-12 (measured), so monotone to 1e-10.
        assert np.all(np.diff(loss) <= 1e-10)
        assert np.all(np.diff(np.log(np.linalg.det(G))) >= -1e-10)
        assert loss[-1] < 1e-10
        np.testing.assert_allclose(traj.singular_values[b, -1], [1.0, 1.0], atol=1e-8)


# --------------------------------------------------------------------------------------
# 4. Escape times are located between saves, not at the nearest save
# --------------------------------------------------------------------------------------


def test_escape_time_interpolated_on_coarse_grid():
    """15 log-spaced saves over up to 14 decades: the crossing must still be located to
    solver accuracy (the same 1e-6 as on the default grid), not at a save."""
    cases = quad_cases()
    traj, escape = run_cases(cases, "two-timescale", num_saves=16)
    assert bool(traj.succeeded.all())
    ts = np.asarray(traj.ts)
    errors, nearest_save_errors = {}, []
    for i, case in enumerate(cases):
        errors[f"{case['alphas']} m0={case['m0']}"] = abs(escape[i] / case["oracle"] - 1.0)
        nearest = ts[i][np.argmin(np.abs(ts[i] - case["oracle"]))]
        nearest_save_errors.append(abs(nearest / case["oracle"] - 1.0))
    # The grid is coarse: returning the nearest save would be off by > 1e-3 in every case.
    assert min(nearest_save_errors) > 1e-3, nearest_save_errors
    assert max(errors.values()) <= 1e-6, errors


# --------------------------------------------------------------------------------------
# 5. vmap equals a Python loop
# --------------------------------------------------------------------------------------


def test_vmap_over_initial_overlaps_equals_loop(saddle, saddle_singles):
    M0, traj, escape = saddle
    singles, single_escape = saddle_singles
    for b, single in enumerate(singles):
        assert int(single.status) == int(traj.status[b]) == Status.SUCCESS
        np.testing.assert_allclose(traj.overlap[b], single.overlap, rtol=0, atol=1e-10)
        np.testing.assert_allclose(traj.loss[b], single.loss, rtol=0, atol=1e-10)
        np.testing.assert_allclose(escape[b], single_escape[b], rtol=1e-10)


def test_vmap_over_dimension_equals_loop(saddle_singles):
    """d traced through `sample_overlap` inside the vmapped function."""
    keys = jax.random.split(jax.random.PRNGKey(5), 4)
    dims = [30.0, 1e2, 1e3, 1e4]
    t1 = 1e10
    run = lambda key, d: mimflow.simulate_reduced(SADDLE_LINK, mimflow.sample_overlap(key, d, 2, 2), t1)  # noqa: E731
    traj = jax.vmap(run)(keys, jnp.array(dims))
    escape = np.asarray(mimflow.escape_times(traj))
    assert bool(traj.succeeded.all()) and np.isfinite(escape).all()
    for b, d in enumerate(dims):
        single = run(keys[b], d)
        np.testing.assert_allclose(traj.overlap[b], single.overlap, rtol=0, atol=1e-10)
        np.testing.assert_allclose(escape[b], mimflow.escape_times(single), rtol=1e-10)


# --------------------------------------------------------------------------------------
# 6. Long horizons are cheap (step counts, not wall time)
# --------------------------------------------------------------------------------------


def test_long_horizon_single_index_h3():
    traj = mimflow.simulate_reduced(links.hermite(3), [[SADDLE_D**-0.5]], 1e8)
    assert int(traj.status) == Status.SUCCESS and bool(traj.succeeded)
    assert int(traj.num_steps) < 5000  # measured ≈ 1.8e3; explicit Tsit5 needs ~10⁸
    assert np.isfinite(traj.overlap).all()
    assert float(traj.loss[-1]) < 1e-10  # converged: ½(1 − m⁶) → 0
    np.testing.assert_allclose(traj.ts, np.concatenate([[0.0], np.logspace(-2, 8, 255)]), rtol=1e-12)


def test_long_horizon_staircase():
    M0 = mimflow.sample_overlap(jax.random.PRNGKey(11), SADDLE_D, 2, 2)
    traj = mimflow.simulate_reduced(STAIRCASE, M0, 1e8)
    assert int(traj.status) == Status.SUCCESS
    assert int(traj.num_steps) < 5000  # measured ≈ 0.9e3
    assert float(traj.loss[-1]) < 1e-10
    np.testing.assert_allclose(traj.singular_values[-1], [1.0, 1.0], atol=1e-8)


# --------------------------------------------------------------------------------------
# 7. Failures are reported, not raised
# --------------------------------------------------------------------------------------


def test_max_steps_reported_with_partial_saves():
    link, m0, t1 = links.hermite(3), 0.05, 1e6
    traj = mimflow.simulate_reduced(link, [[m0]], t1, max_steps=20)
    assert int(traj.status) == Status.MAX_STEPS and not bool(traj.succeeded)
    m = np.asarray(traj.overlap[:, 0, 0])
    reached = np.isfinite(m)
    count = int(reached.sum())
    assert 2 <= count < len(m)
    assert reached[:count].all() and np.isnan(m[count:]).all()  # a prefix, then NaN
    assert np.isnan(traj.loss[count:]).all() and np.isnan(traj.singular_values[count:]).all()
    assert np.isfinite(traj.loss[:count]).all()

    full = mimflow.simulate_reduced(link, [[m0]], t1)
    assert int(full.status) == Status.SUCCESS
    # Same controller, same first 20 steps: the reached saves are the full run's.
    np.testing.assert_allclose(m[:count], full.overlap[:count, 0, 0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(traj.loss[:count], 0.5 * (1 - m[:count] ** 6), rtol=0, atol=1e-14)


def test_saved_states_accurate():
    """Saved states against SciPy Radau at rtol 1e-13 on ṁ = 3 m⁵ (1 − m²). The
    solver runs at rtol 1e-8; allowing for accumulation over the run, the saves
    should be within 10 × rtol = 1e-7 relative. (The step endpoints themselves
    measured 3e-11; what is saved between them comes from the solver's dense
    interpolation.)"""
    m0 = 0.05
    traj = mimflow.simulate_reduced(links.hermite(3), [[m0]], 1e6)
    ts, m = np.asarray(traj.ts), np.asarray(traj.overlap[:, 0, 0])
    keep = ts <= 2e5  # up to m ≈ 0.99, past the escape at 1.34e4
    ref = solve_ivp(
        lambda t, y: rate({3: 1.0}, y, "two-timescale"),
        (0.0, ts[keep][-1]),
        [m0],
        method="Radau",
        t_eval=ts[keep],
        rtol=1e-13,
        atol=1e-18,
    )
    errors = np.abs(m[keep] / ref.y[0] - 1.0)
    assert errors.max() <= 1e-7, (errors.max(), ts[keep][np.argmax(errors)])


def test_custom_stepsize_controller_with_array_tolerances():
    """`stepsize_controller` is a documented argument; a diffrax controller whose
    tolerances are JAX arrays (as when they come from a config or a sweep) must work
    through `escape_times`, and give the same escape time as the default."""
    controller = diffrax.PIDController(rtol=jnp.asarray(1e-8), atol=jnp.asarray(1e-11))
    traj = mimflow.simulate_reduced(links.hermite(3), [[0.05]], 1e6, stepsize_controller=controller)
    assert int(traj.status) == Status.SUCCESS
    (escape,) = np.asarray(mimflow.escape_times(traj))
    assert escape == pytest.approx(escape_oracle({3: 1.0}, 0.05, "two-timescale"), rel=1e-6)


def test_non_finite_element_in_vmapped_batch(saddle, saddle_singles):
    """Inside vmap the input check cannot run: a NaN M0 must be reported through the
    status of its own element, and leave the other elements exactly as their single
    runs (the same ≤ 1e-10 standard as vmap-equals-loop)."""
    M0 = saddle[0].at[1, 0, 0].set(jnp.nan)
    traj = jax.vmap(lambda m: mimflow.simulate_reduced(SADDLE_LINK, m, SADDLE_T1))(M0)
    escape = np.asarray(mimflow.escape_times(traj))
    singles, single_escape = saddle_singles
    assert int(traj.status[1]) != Status.SUCCESS
    for b in (0, 2, 3):
        assert int(traj.status[b]) == Status.SUCCESS
        np.testing.assert_allclose(traj.overlap[b], singles[b].overlap, rtol=0, atol=1e-10)
        np.testing.assert_allclose(escape[b], single_escape[b], rtol=1e-10)


# --------------------------------------------------------------------------------------
# 8. Bad input raises a ValueError naming the value
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "M0", "kwargs", "name"),
    [
        (links.hermite(3), [[0.1]], {"t1": 1e-2}, "t1"),  # t1 = t_min
        (links.hermite(3), [[0.1]], {"t1": 1e-3}, "t1"),  # t1 < t_min
        (links.hermite(3), [[0.1]], {"t1": -5.0}, "t1"),
        (links.hermite(3), [[0.1]], {"t1": float("nan")}, "t1"),
        (links.hermite(3), [[0.1]], {"t1": 10.0, "t_min": 0.0}, "t_min"),
        (links.hermite(3), [[0.1]], {"t1": 10.0, "num_saves": 1}, "num_saves"),
        (links.hermite(3), [[0.1]], {"t1": 10.0, "max_steps": 0}, "max_steps"),
        (links.hermite(3), [[0.1]], {"t1": 10.0, "problem": "three-timescale"}, "problem"),
        (links.hermite(3), [0.1], {"t1": 10.0}, "M0"),
        (links.hermite(3), [[0.1], [0.2]], {"t1": 10.0}, "M0"),
        (links.hermite(3), [[float("nan")]], {"t1": 10.0}, "M0"),
        (links.hermite(3), [[float("inf")]], {"t1": 10.0}, "M0"),
        (links.staircase(2), np.zeros((3, 2)), {"t1": 10.0}, "M0"),
        (links.staircase(2), np.zeros((2, 3)), {"t1": 10.0, "problem": "planted"}, "M0"),
    ],
)
def test_simulate_reduced_rejects_bad_input(link, M0, kwargs, name):
    kwargs = dict(kwargs)
    t1 = kwargs.pop("t1")
    with pytest.raises(ValueError, match=f"`?{name}`?"):
        mimflow.simulate_reduced(link, M0, t1, **kwargs)


def _h4_crossing(m0, threshold=0.5):
    """h4 single index, ṁ = 4 m⁷ (1 − m²): ∫ dm / (4m⁷(1 − m²)) by partial fractions."""
    F = lambda m: -1 / (6 * m**6) - 1 / (4 * m**4) - 1 / (2 * m**2) + math.log(m) - 0.5 * math.log(1 - m**2)
    return (F(threshold) - F(m0)) / 4


def test_late_escape_after_a_learned_direction_and_steady_state_stop():
    """h4(z1) + h4(z2) from a diagonal M0 decouples into two single-index flows with closed
    forms (B(G) is diagonal for diagonal G when the degree is ≥ 2): the first direction
    is learned at t ≈ 6·10¹³, the second escapes at t ≈ 10¹⁵, where float64 time resolves
    only steps ≳ 0.1 (the README's limit). Both escape times match the closed form, the
    run ends in SUCCESS by the steady-state stop, and every save after it holds the
    learned state (loss 0, singular values 1)."""
    m_a, m_b = 3e-3, (24 * 1e15) ** (-1 / 6)
    link = links.hermite(4, 2, 0) + links.hermite(4, 2, 1)
    traj = mimflow.simulate_reduced(link, jnp.diag(jnp.array([m_a, m_b])), 1e20, num_saves=96)
    assert int(traj.status) == Status.SUCCESS
    expected = [_h4_crossing(m_a), _h4_crossing(m_b)]
    assert expected[1] > 5e14
    np.testing.assert_allclose(mimflow.escape_times(traj), expected, rtol=1e-6)
    tail = np.asarray(traj.ts) > 2 * expected[1]
    np.testing.assert_allclose(np.asarray(traj.singular_values)[tail], 1.0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(traj.loss)[tail], 0.0, atol=1e-10)


# A start from benchmarks/precision.py's catalogue (h4 at d = 10⁵, seed 2): its escape at
# 5.8·10¹⁴, over which Rodas4's steps are forced at the time floor, ended in SUCCESS with
# the overlap at −1 instead of +1 before `Status.TIME_UNRESOLVED` existed.
FLIPPED_START = 0.0020393954948952553


def _h4_start(escape):
    """The `m0` whose h4 escape time is `escape` (bisection on the closed form)."""
    lo, hi = 1e-6, 0.4
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if _h4_crossing(mid) > escape else (lo, mid)
    return lo


@pytest.mark.parametrize("solver", ["rodas4", "default"])
def test_steps_forced_over_late_escapes_never_end_in_a_silent_success(solver):
    """h4 single index from starts whose closed-form escapes span 10¹³ … 3·10¹⁶, where
    float64 time resolves only steps of 0.02 … 50 while the escape lasts O(1): every run
    that ends in SUCCESS has the closed-form escape time and its overlap at +1 (the flow
    keeps m > 0), and the runs flagged TIME_UNRESOLVED are those with a forced step's error
    above the limit. The catalogue start that Rodas4 flipped to −1 is not a SUCCESS."""
    escapes = np.logspace(13, 16.5, 8 if solver == "rodas4" else 4)
    m0 = np.array([_h4_start(t) for t in escapes] + [FLIPPED_START])
    expected = np.array([_h4_crossing(m) for m in m0])
    choice = mimflow.Rodas4() if solver == "rodas4" else None

    def one(m, t1):
        traj = mimflow.simulate_reduced(links.hermite(4), m, t1, num_saves=48, solver=choice)
        return traj, mimflow.escape_times(traj)

    traj, escape = eqx.filter_jit(jax.vmap(one))(jnp.asarray(m0).reshape(-1, 1, 1), jnp.asarray(4 * expected))
    status, forced = np.asarray(traj.status), np.asarray(traj.forced_error)
    success = status == Status.SUCCESS
    assert success.sum() >= 2 and (forced[success] > 0).any()  # forced steps within the limit exist
    np.testing.assert_allclose(np.asarray(escape)[success, 0], expected[success], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(traj.overlap)[success, -1, 0, 0], 1.0, atol=1e-9)
    reached = success | (status == Status.TIME_UNRESOLVED)
    assert np.array_equal(status[reached] == Status.TIME_UNRESOLVED, forced[reached] > FORCED_ERROR_LIMIT)
    if solver == "rodas4":
        assert status[-1] == Status.TIME_UNRESOLVED
        assert (status == Status.TIME_UNRESOLVED).sum() >= 2


def _h2_time(alpha, m0, m):
    """h2 single index, u = m², u̇ = 4α² u²(1 − u): t(u) = [−1/u + log(u/(1 − u))]/(4α²) from u0."""
    F = lambda u: -1 / u + math.log(u / (1 - u))
    return (F(m**2) - F(m0**2)) / (4 * alpha**2)


def test_converged_tail_to_huge_t1_succeeds():
    """h2(z1) + 0.8 h2(z2) from a diagonal start to t1 = 10²⁴ (such tails stalled in
    MAX_STEPS before the steady-state stop): SUCCESS, both escape times equal the closed
    form, and the saves of the tail hold the learned state."""
    m0 = 1e-2
    link = links.hermite(2, 2, 0) + links.hermite(2, 2, 1) * 0.8
    traj = mimflow.simulate_reduced(link, m0 * jnp.eye(2), 1e24, num_saves=64)
    assert int(traj.status) == Status.SUCCESS
    expected = [_h2_time(1.0, m0, 0.5), _h2_time(0.8, m0, 0.5)]
    # solver rtol 1e-9, amplified near the escape
    np.testing.assert_allclose(mimflow.escape_times(traj), expected, rtol=1e-7)
    tail = np.asarray(traj.ts) > 1e6
    np.testing.assert_allclose(np.asarray(traj.singular_values)[tail], 1.0, atol=1e-9)


def test_two_crossings_in_one_save_bracket_are_told_apart():
    """With saves at 0, 10⁻², ~3, 1000 both directions of h2(z1) + 0.9 h2(z2) cross ½ in the
    last bracket: each escape time is its own closed-form crossing (an event on the
    determinant of MMᵀ − ¼I stopped at the first for both)."""
    m0 = 0.05
    link = links.hermite(2, 2, 0) + links.hermite(2, 2, 1) * 0.9
    traj = mimflow.simulate_reduced(link, m0 * jnp.eye(2), 1000.0, num_saves=4)
    expected = [_h2_time(1.0, m0, 0.5), _h2_time(0.9, m0, 0.5)]
    assert float(traj.ts[2]) < expected[0] < expected[1] < 1000.0
    # solver rtol 1e-9, amplified near the escape
    np.testing.assert_allclose(mimflow.escape_times(traj), expected, rtol=1e-7)
