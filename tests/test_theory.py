"""`mimflow.theory`: saddle sequences against the hand-derived catalogue of DESIGN §2,
escape-time constants and slopes against reduced-ODE simulations, plateau levels
against closed forms and simulated plateaus, and the slope fit against NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_orthonormal

import mimflow
from mimflow import links, theory

h = links.hermite
E1, E2, E3 = np.eye(3)

# (name, link, [(s̃, basis of the directions learned)], plateau levels) — derived by hand
# from DESIGN §2: after U is learned, s̃ is the lowest degree in the ⊥ variables.
CATALOGUE = [
    ("h1(z1)+h2(z2)", h(1, 2, 0) + h(2, 2, 1), [(1, [[1, 0]]), (2, [[0, 1]])], [1.0, 0.5]),
    ("staircase", links.staircase(2), [(1, [[1, 0]]), (1, [[0, 1]])], [1.0, 0.5]),
    ("h1(z1)+h3(z2)", h(1, 2, 0) + h(3, 2, 1), [(1, [[1, 0]]), (3, [[0, 1]])], [1.0, 0.5]),
    ("h2(z1)+h3(z2)", h(2, 2, 0) + h(3, 2, 1), [(2, [[1, 0]]), (3, [[0, 1]])], [1.0, 0.5]),
    ("h4(z1)+h4(z2)", h(4, 2, 0) + h(4, 2, 1), [(4, [[1, 0], [0, 1]])], [1.0]),
    ("three-step staircase", links.staircase(3), [(1, [E1]), (1, [E2]), (1, [E3])], [1.5, 1.0, 0.5]),
]
LAW = {1: "log d", 2: "d^1", 3: "d^2", 4: "d^3"}


def _projector(basis):
    basis = np.asarray(basis, dtype=float)
    q, _ = np.linalg.qr(basis)
    return q @ q.T


@pytest.mark.parametrize("rotate", [False, True], ids=["aligned", "rotated"])
@pytest.mark.parametrize(("name", "link", "expected", "levels"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_catalogue_saddle_sequence(name, link, expected, levels, rotate):
    """Exponents, laws, directions (as subspaces) and plateau levels of the DESIGN
    catalogue; a random rotation Q of the link rotates the directions by Q and
    changes nothing else."""
    rotation = random_orthonormal(np.random.default_rng(len(name)), link.dim, link.dim) if rotate else np.eye(link.dim)
    prediction = theory.predict(link.transform(rotation) if rotate else link)
    assert prediction.information_exponent == expected[0][0]
    assert [s.relative_exponent for s in prediction.saddles] == [s for s, _ in expected]
    assert [s.law for s in prediction.saddles] == [LAW[s] for s, _ in expected]
    for saddle, (_, rows) in zip(prediction.saddles, expected, strict=True):
        basis = rotation @ np.asarray(rows, dtype=float).T
        np.testing.assert_allclose(_projector(saddle.directions), _projector(basis), atol=1e-12)
    np.testing.assert_allclose([s.loss for s in prediction.saddles], levels, atol=1e-12)
    assert prediction.final_loss == pytest.approx(0.0, abs=1e-12)
    assert prediction.irrelevant.shape[1] == 0 and prediction.unreachable.shape[1] == 0
    assert all(law in str(prediction) for law in {LAW[s] for s, _ in expected})


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_single_index_constants_are_the_papers(s):
    """`log d / (2α_1²)` and `d^{s−1} / (2 s (s−1) α_s²)` (DESIGN §2), and the planted
    laws for a link `α h_s + 0.3 h_{s+1}`, derived from `ṁ ≈ s α² m^{s−1} (1 − m²)`
    (DESIGN §3) near the start: s = 1, `m = tanh(α² t)` reaches ½ at `atanh(½)/α²`
    whatever d; s = 2, `m = m0 e^{2α² t}` from `m0 = d^{−1/2}` at `log d / (4α²)`;
    s ≥ 3, `d^{s/2−1}` with the constant `1/(s(s−2)α²)`."""
    alpha = 0.7
    link = h(s) * alpha + h(s + 1) * 0.3
    saddle = theory.predict(link).saddles[0]
    expected = 1 / (2 * alpha**2) if s == 1 else 1 / (2 * s * (s - 1) * alpha**2)
    assert saddle.constant == pytest.approx(expected, rel=1e-13)
    assert saddle.time(1e6) == pytest.approx(expected * (np.log(1e6) if s == 1 else 1e6 ** (s - 1)), rel=1e-13)
    planted = theory.predict(link, "planted").saddles[0]
    if s >= 3:
        assert planted.law == f"d^{s / 2 - 1:g}"
        assert planted.constant == pytest.approx(1 / (s * (s - 2) * alpha**2), rel=1e-13)
    elif s == 1:
        assert planted.law == "1" and planted.time(1e6) == planted.time(10.0)
        assert planted.constant == pytest.approx(math.atanh(0.5) / alpha**2, rel=1e-13)
    else:
        assert planted.law == "log d"
        assert planted.constant == pytest.approx(1 / (4 * alpha**2), rel=1e-13)


def test_planted_h1_escape_time_is_atanh_half():
    """The planted flow of `α h1` from `m = 0` is `m = tanh(α² t)`: it passes ½ at
    `atanh(½)/α²`, the predicted constant (law "1"), here simulated."""
    alpha = 0.7
    simulated = _escape_from([h(1) * alpha], jnp.zeros((1, 1)), "planted", t1=5.0)[0]
    assert simulated == pytest.approx(math.atanh(0.5) / alpha**2, rel=1e-6)
    assert theory.predict(h(1) * alpha, "planted").saddles[0].time(1e4) == pytest.approx(simulated, rel=1e-6)


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_saddle_of_two_directions_escapes_with_the_weaker(c):
    """`h2(z1) + c h2(z2)`: both directions escape the first saddle (s = 2), each along
    `ṁ_i = 2 c_i² m_i³ (1 − m_i²)` from a diagonal start, in `≈ d / (4 c_i²)`; the saddle
    ends with the weaker one, so the constant is `1 / (4 min(1, c)²)`."""
    saddle = theory.predict(h(2, 2, 0) + h(2, 2, 1) * c).saddles[0]
    assert saddle.num_directions == 2 and saddle.law == "d^1"
    np.testing.assert_allclose(saddle.strengths, sorted([2.0, 2 * c**2], reverse=True), rtol=1e-12)
    assert saddle.constant == pytest.approx(1 / (4 * min(1.0, c) ** 2), rel=1e-12)


def _escape_from(link, m0, problem, t1):
    """Escape time of a single-index flow from the deterministic start m0 (all links batched)."""
    run = jax.vmap(lambda f: mimflow.escape_times(mimflow.simulate_reduced(f, m0, t1, problem, num_saves=96))[0])
    return np.asarray(jax.jit(run)(links.stack(link)))


# ~17 s; notebook 02 checks the same constants and laws (h1…h4) in the default run; test_fast checks escapes against quadrature
@pytest.mark.slow
def test_single_index_escape_times_match_constants_at_d_1e5():
    """From m0 = d^{−1/2} at d = 10⁵, the simulated escape time (first |m| ≥ ½) over
    the predicted `constant · law(d)` is within 10% of 1 for s = 1…4 (two-timescale)
    and s = 2…4 (planted)."""
    d = 1e5
    m0 = jnp.full((1, 1), d**-0.5)
    two = [h(1), h(2) * 0.8, h(3) * 1.3, h(4)]
    measured = _escape_from(two, m0, "two-timescale", 1e18)
    predicted = [theory.predict(f).saddles[0].time(d) for f in two]
    np.testing.assert_allclose(measured / np.asarray(predicted), 1.0, atol=0.10)
    planted = [h(2), h(3) * 0.8, h(4)]
    measured = _escape_from(planted, m0, "planted", 1e8)
    predicted = [theory.predict(f, "planted").saddles[0].time(d) for f in planted]
    np.testing.assert_allclose(measured / np.asarray(predicted), 1.0, atol=0.10)


def _catalogue_escapes(cat, dims, seeds=8, max_steps=4096):
    """Escape times of shape (links, dims, seeds, k) from Haar starts, one key per seed
    shared across d (common random numbers), one compiled call; and the runs' statuses
    (links, dims, seeds)."""
    k = cat[0].dim

    def one(link, d, key):
        traj = mimflow.simulate_reduced(
            link, mimflow.sample_overlap(key, d, k, k), 1e20, num_saves=64, max_steps=max_steps
        )
        return mimflow.escape_times(traj), traj.status

    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    run = jax.vmap(jax.vmap(jax.vmap(one, (None, None, 0)), (None, 0, None)), (0, None, None))
    escapes, status = jax.jit(run)(links.stack(cat), jnp.asarray(dims), keys)
    return np.asarray(escapes), np.asarray(status)


@pytest.mark.parametrize(
    ("names", "dims"),
    [
        # 40–50 s each on 2 cores: run with -m slow; the default suite checks the same laws
        # at smaller sizes through configs/quickstart.yaml, staircase.yaml, escape_scaling.yaml
        pytest.param(
            ["h1(z1)+h2(z2)", "staircase", "h1(z1)+h3(z2)", "h2(z1)+h3(z2)"],
            [1e2, 1e3, 1e4, 1e5],
            marks=pytest.mark.slow,
        ),
        pytest.param(["three-step staircase"], [1e2, 1e3, 1e4, 1e5], marks=pytest.mark.slow),
        # d³ escapes: from d = 3·10³ a start with a small second singular value escapes near
        # t = 10¹⁶, where an O(1) escape needs steps below float64's time resolution
        # (STEP_SIZE_COLLAPSED); up to d = 10³ the slowest of these 8 escapes at 6·10¹⁴
        pytest.param(["h4(z1)+h4(z2)"], [1e2, 2e2, 5e2, 1e3], marks=pytest.mark.slow),  # 50 s: CI time
    ],
    ids=["two-direction", "three-step", "d-cubed"],
)
def test_simulated_slopes_agree_with_predicted_laws(names, dims):
    """Median time on each saddle over 8 Haar starts against d: the log–log slope is
    within ±0.15 of `s̃ − 1` for power laws and below 0.3 for `log d` saddles. Every run
    must succeed: `compare` drops a failed run's `nan`, which would bias the medians."""
    cat = [link for name, link, _, _ in CATALOGUE if name in names]
    escapes, status = _catalogue_escapes(cat, dims)
    assert np.all(status == int(mimflow.Status.SUCCESS)), np.argwhere(status != int(mimflow.Status.SUCCESS))
    for link, times in zip(cat, escapes, strict=True):
        prediction = theory.predict(link)
        comparison = theory.compare(prediction, dims, times, num_bootstrap=500)
        for saddle, fit in zip(prediction.saddles, comparison.fits, strict=True):
            if saddle.logarithmic:
                assert fit.slope < 0.3, str(comparison)
            else:
                assert abs(fit.slope - saddle.exponent) <= 0.15, str(comparison)
        assert comparison.all_agree and "DISAGREES" not in str(comparison)


@pytest.mark.slow  # CI time: notebooks/01_saddle_to_saddle (run by test_notebooks.py) checks the plateau levels
def test_plateau_levels_match_simulated_plateaus():
    """The loss simulated mid-plateau (geometric mean of successive escape times) equals
    the predicted level to O(d^{−1/2}) (a `log d` plateau is a ramp: the incoming overlap
    grows from d^{−1/2} throughout), for h1(z1)+h3(z2) at d = 10⁶ and with ridge shrinkage."""
    d = 1e6
    for problem in (mimflow.TwoTimescale(h(1, 2, 0) + h(3, 2, 1)), mimflow.TwoTimescale(links.staircase(2), 0.3, 0.6)):
        prediction = theory.predict(problem)
        M0 = mimflow.sample_overlap(jax.random.PRNGKey(3), d, 2, 2)
        traj = mimflow.simulate_reduced(problem, M0, 1e16, num_saves=400)
        escapes = np.asarray(mimflow.escape_times(traj))
        assert np.all(np.isfinite(escapes))
        middles = np.sqrt(np.concatenate([[1.0], escapes[:-1]]) * escapes)
        simulated = np.interp(np.log(middles), np.log(np.asarray(traj.ts[1:])), np.asarray(traj.loss[1:]))
        np.testing.assert_allclose(simulated, [s.loss for s in prediction.saddles], atol=1 / np.sqrt(d))
        assert float(traj.loss[-1]) == pytest.approx(prediction.final_loss, abs=1e-9)


def test_ridge_shrinks_constants_and_levels():
    """With Mehler ridge (μ, ρ), degree j is shrunk by s_j = ρ^j/(ρ^j + μ): the constants
    scale by 1/s_j and the levels are ½(‖f‖² − Σ_learned s_j ‖T_j‖²)."""
    mu, rho = 0.5, 0.5
    s1, s3 = rho / (rho + mu), rho**3 / (rho**3 + mu)
    prediction = theory.predict(h(1, 2, 0) + h(3, 2, 1), ridge=mu, rho=rho)
    assert [s.constant for s in prediction.saddles] == pytest.approx([1 / (2 * s1), 1 / (12 * s3)], rel=1e-13)
    assert [s.loss for s in prediction.saddles] == pytest.approx([1.0, 1 - s1 / 2], rel=1e-13)
    assert prediction.final_loss == pytest.approx(1 - (s1 + s3) / 2, rel=1e-13)


def test_degenerate_egop_is_reported_not_a_plateau():
    """A link on k = 2 that depends on one direction: one saddle, the other direction
    reported as irrelevant; and the simulation never learns it (no plateau ends)."""
    for link, used in [
        (h(3, 2, 0), [1, 0]),
        (h(1, 2, 0) + h(1, 2, 1), [1, 1]),
        (links.embed(links.staircase(2), 3, (0, 2)), None),
    ]:
        prediction = theory.predict(link)
        unused = prediction.irrelevant
        assert unused.shape[1] == link.dim - prediction.learned.shape[1]
        if used is not None:
            assert len(prediction.saddles) == 1
            np.testing.assert_allclose(_projector(prediction.learned), _projector(np.c_[used]), atol=1e-12)
        else:
            np.testing.assert_allclose(_projector(unused), _projector(np.c_[E2]), atol=1e-12)
        assert "does not depend" in str(prediction)
    escapes = mimflow.escape_times(
        mimflow.simulate_reduced(h(3, 2, 0), mimflow.sample_overlap(jax.random.PRNGKey(0), 100.0, 2, 2), 1e12)
    )
    assert np.isfinite(escapes[0]) and np.isinf(escapes[1])


def test_projected_links_tolerate_quadrature_noise():
    """The staircase projected by quadrature, and a polynomial with 1e-13 noise on every
    tensor entry, give the exact sequence; the noise is below `tol`."""
    projected = mimflow.Link.from_function(lambda z: z[0] + z[0] * z[1], dim=2, degree=4)
    noisy = mimflow.Link.from_tensors(
        {
            j: t + 1e-13 * np.random.default_rng(j).standard_normal(t.shape)
            for j, t in (h(1, 2, 0) + h(3, 2, 1)).with_degrees(range(5)).tensors.items()
        }
    )
    for link, exponents in [(projected, [1, 1]), (noisy, [1, 3])]:
        prediction = theory.predict(link)
        assert [s.relative_exponent for s in prediction.saddles] == exponents
        assert prediction.irrelevant.shape[1] == 0


def test_small_student_and_planted_multi_index():
    """r < k learns only r directions and reports the rest as unreachable; the planted
    problem with k > 1 predicts the first escape only, with a note."""
    prediction = theory.predict(h(1, 2, 0) + h(2, 2, 1), r=1)
    assert [s.law for s in prediction.saddles] == ["log d"]
    np.testing.assert_allclose(_projector(prediction.unreachable), _projector(np.c_[[0.0, 1.0]]), atol=1e-12)
    assert prediction.final_loss == pytest.approx(0.5, abs=1e-12)
    planted = theory.predict(links.harmonic(3) + links.harmonic(4), "planted")
    assert len(planted.saddles) == 1 and planted.saddles[0].law == "d^0.5"
    assert planted.saddles[0].num_directions == 2
    assert any("only the first escape" in note for note in planted.notes)
    assert planted.saddles[0].loss == pytest.approx(2.0, abs=1e-12)  # ‖f‖², M = 0


def test_constant_link_has_no_saddles():
    prediction = theory.predict(h(0, 2) * 2.0)
    assert prediction.saddles == () and prediction.information_exponent is None
    assert prediction.times(np.array([10.0, 100.0])).shape == (2, 0)


def test_fit_scaling_against_numpy():
    """Slope and intercept equal NumPy's least squares on the log medians; the bootstrap
    interval covers the true exponent; nan runs are dropped and inf medians give nan."""
    rng = np.random.default_rng(0)
    dims = np.array([1e2, 1e3, 1e4, 1e5])
    times = 0.3 * dims[:, None] ** 1.7 * rng.lognormal(0.0, 0.4, size=(4, 15))
    fit = theory.fit_scaling(dims, times, num_bootstrap=1000)
    slope, intercept = np.polyfit(np.log(dims), np.log(np.median(times, axis=1)), 1)
    assert fit.slope == pytest.approx(slope, rel=1e-12) and fit.intercept == pytest.approx(intercept, rel=1e-12)
    assert fit.interval[0] < 1.7 < fit.interval[1]
    with_nan = np.concatenate([times, np.full((4, 1), np.nan)], axis=1)
    assert theory.fit_scaling(dims, with_nan).slope == pytest.approx(fit.slope, rel=1e-12)
    never = times.copy()
    never[-1, :] = np.inf
    assert np.isnan(theory.fit_scaling(dims, never).slope)
    assert np.all(theory.fit_scaling(dims, never).escaped == [1, 1, 1, 0])


def test_fit_scaling_bootstrap_interval_against_a_numpy_loop():
    """The interval is the percentile interval at `level` of slopes refitted (`np.polyfit`)
    to the medians of resampled seeds, the resamples drawn by `default_rng(seed)`: redone
    here one resample at a time. A 50% interval is inside the 95% one."""
    rng = np.random.default_rng(1)
    dims = np.array([1e2, 1e3, 1e4])
    times = 2.0 * dims[:, None] * rng.lognormal(0.0, 0.5, size=(3, 9))
    columns = np.random.default_rng(7).integers(0, 9, size=(300, 9))
    slopes = np.array([np.polyfit(np.log(dims), np.log(np.median(times[:, c], axis=1)), 1)[0] for c in columns])
    for level in (0.95, 0.5):
        fit = theory.fit_scaling(dims, times, num_bootstrap=300, level=level, seed=7)
        tail = 50 * (1 - level)
        expected = np.percentile(slopes, [tail, 100 - tail], method="nearest")
        np.testing.assert_allclose(fit.interval, expected, rtol=1e-12)
        assert fit.level == level
    wide, narrow = (theory.fit_scaling(dims, times, num_bootstrap=300, level=v, seed=7).interval for v in (0.95, 0.5))
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_compare_against_numpy():
    """`compare` on synthetic escape times of `h1(z1) + h2(z2)` (saddles `log d`, then `d¹`): each saddle's slope is NumPy's least squares of the log medians of the
    durations, `ratios` the medians over `constant · law(d)`, `agrees` the stated rule for
    tolerances either side of the measured slope; a failed run (`nan`) is left out of the
    medians, counted in `failed` and named below the table."""
    rng = np.random.default_rng(3)
    dims = np.array([1e2, 1e3, 1e4])
    factors = rng.lognormal(0.0, 0.3, size=(2, 11))  # per seed, shared across d
    first = 0.5 * np.log(dims)[:, None] * factors[0]
    second = 0.5 * dims[:, None] ** 1.1 * factors[1]  # a slope of 1.1 against the law's 1
    times = np.stack([first, first + second], axis=-1)  # (D, S, 2) escape times
    prediction = theory.predict(h(1, 2, 0) + h(2, 2, 1))
    assert [s.law for s in prediction.saddles] == ["log d", "d^1"]
    durations = [first, second]
    slopes = [np.polyfit(np.log(dims), np.log(np.median(x, axis=1)), 1)[0] for x in durations]
    assert slopes[1] == pytest.approx(1.1, rel=1e-12)
    comparison = theory.compare(prediction, dims, times, num_bootstrap=50)
    np.testing.assert_allclose([f.slope for f in comparison.fits], slopes, rtol=1e-12)
    laws = [0.5 * np.log(dims), 0.25 * dims]  # DESIGN §2: ½ log d, then d^{s̃−1}/(2 s̃ (s̃ − 1)) = d/4
    np.testing.assert_allclose([s.time(dims) for s in prediction.saddles], laws, rtol=1e-12)
    expected = np.stack([np.median(x, axis=1) / law for x, law in zip(durations, laws, strict=True)], axis=-1)
    np.testing.assert_allclose(comparison.ratios, expected, rtol=1e-12)
    for tolerance, log_slope_max in [(0.15, 0.3), (0.05, 0.3), (0.15, slopes[0] - 1e-3), (0.15, slopes[0] + 1e-3)]:
        agrees = theory.compare(
            prediction, dims, times, tolerance=tolerance, log_slope_max=log_slope_max, num_bootstrap=10
        ).agrees
        assert agrees == (slopes[0] < log_slope_max, abs(slopes[1] - 1.0) <= tolerance)
    assert not np.any(comparison.failed) and "failed" not in str(comparison)
    failed = times.copy()
    failed[2, 4, 1] = np.nan  # the second direction of seed 4 at d = 10⁴ never finished
    comparison = theory.compare(prediction, dims, failed, num_bootstrap=50)
    np.testing.assert_array_equal(comparison.failed, [[0, 0], [0, 0], [0, 1]])
    kept = np.delete(second[2], 4)
    assert comparison.ratios[2, 1] == pytest.approx(np.median(kept) / laws[1][2], rel=1e-12)
    assert "failed runs" in str(comparison) and "1 at d=10000" in str(comparison)


def test_saddle_durations_from_escape_times():
    prediction = theory.predict(links.staircase(3))
    durations = theory.saddle_durations(prediction, np.array([[1.0, 3.0, 7.0], [2.0, np.inf, np.inf]]))
    np.testing.assert_array_equal(durations, [[1.0, 2.0, 4.0], [2.0, np.inf, np.inf]])
    four = theory.predict(h(4, 2, 0) + h(4, 2, 1))  # one saddle of two directions ends with the second
    np.testing.assert_array_equal(theory.saddle_durations(four, np.array([5.0, 9.0])), [9.0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: theory.predict(h(2), r=0), "`r`"),
        (lambda: theory.predict(h(2, 2, 0), "planted", r=1), "r = k"),
        (lambda: theory.predict(h(2), tol=2.0), "`tol`"),
        (lambda: theory.predict(h(2), "wrong"), "`problem`"),
        (lambda: theory.predict(links.stack([h(1), h(2)])), "stacked"),
        (lambda: theory.fit_scaling([10.0], [[1.0]]), "`dims`"),
        (lambda: theory.fit_scaling([10.0, 10.0], [[1.0], [2.0]]), "`dims`"),
        (lambda: theory.fit_scaling([10.0, 100.0], [[1.0, 2.0]]), "`times`"),
        (lambda: theory.fit_scaling([10.0, 100.0], [[-1.0], [2.0]]), "`times`"),
        (lambda: theory.fit_scaling([10.0, 100.0], [[1.0], [2.0]], level=1.5), "`level`"),
        (lambda: theory.compare(theory.predict(links.staircase(2)), [10.0, 100.0], np.ones((2, 3, 1))), "at least 2"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()
