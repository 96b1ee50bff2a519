"""Traced inputs outside their domain (under `jit`/`vmap`): a final time `t1 ≤ t_min` or
non-finite, a `simulate` start off St(d, r) or not finite, a Rosenbrock tolerance `≤ 0`,
an experiment's point outside the domain `sweep` checks (a flow's `d` above `d_max`, not
an integer or below `k + r`, a tolerance `≤ 0`, a negative ridge or noise, a fractional
seed). Such a run cannot raise
(an `EquinoxRuntimeError` killed the whole batch: "saveat.ts must be increasing") and
must not report `SUCCESS` (`t1 = 0` did, with `ts = [0, nan, 0, …]`, and tolerances
`< 0` did, with error control off): it ends `Status.NON_FINITE` with `nan` saves and
escape times, and the other runs of its batch are bitwise those of a batch without it.
The same values concrete raise a `ValueError` naming them. And points of Python numbers
(not arrays) run.

Oracles: a batch of the good value only (the same compiled program, so bitwise), the
closed-form escape time of `√s h_3` (ridge shrinkage `s`) and the closed-form start of
a flow (`½(1 − m⁴)` for `h_2`, `m` the overlap of the drawn `W*` and `W0`). One compiled
vmap per case, small sizes: the file ran in 26 s with an empty compilation cache."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import closed_form_two_timescale

import mimflow
from mimflow import Status, links

H3 = links.hermite(3)
H2 = links.hermite(2)
KEY = jax.random.PRNGKey(0)
BAD_T1 = [1e-3, 0.0, -1.0, np.inf, np.nan]  # ≤ t_min = 1e-2, or not finite


def _batch(lanes: list[dict]) -> dict:
    return {name: jnp.array([lane[name] for lane in lanes]) for name in lanes[0]}


def _assert_failed(batch, lanes):
    """Lanes `lanes` of `batch` ended `NON_FINITE` within a few steps, not all `max_steps`
    (16 384: a bad tolerance on the reduced path's stand-in start, or a flow's `nan` start,
    took them all, holding up the batch; 4 096 for `simulate` from a `nan` start), with `nan` saves after `t = 0` and `nan`
    escape times."""
    status = np.asarray(batch.status)
    assert (status[lanes] == Status.NON_FINITE).all(), status
    assert (np.asarray(batch.num_steps)[lanes] < 100).all(), batch.num_steps
    assert np.isnan(np.asarray(batch.loss)[lanes, 1:]).all()
    assert np.isnan(np.asarray(batch.overlap)[lanes, 1:]).all()
    assert np.isnan(np.asarray(mimflow.escape_times(batch))[lanes]).all()


def _assert_lanes_equal(batch, other, b):
    """Lane `b` of two batches bitwise equal, field by field."""
    for name in ("ts", "overlap", "loss", "singular_values", "status", "num_steps", "train_loss"):
        if getattr(batch, name) is not None:
            np.testing.assert_array_equal(
                np.asarray(getattr(batch, name))[b], np.asarray(getattr(other, name))[b], name
            )


def _good_and_bad_lanes(run, good: dict, bad: list) -> "mimflow.Trajectory":
    """`jit(vmap(run))` over the good point then each bad variant of it: the bad lanes end
    `NON_FINITE`, and the good lane is bitwise the same as in a batch of good points only
    (which all succeed). Returns the mixed batch."""
    runs = jax.jit(jax.vmap(run))
    batch = runs(_batch([good] + [{**good, name: value} for name, value in bad]))
    _assert_failed(batch, slice(1, None))
    same = runs(_batch([good] * (1 + len(bad))))
    assert (np.asarray(same.status) == Status.SUCCESS).all()
    _assert_lanes_equal(batch, same, 0)
    return batch


def test_rodas_with_traced_t1_and_tolerances_outside_their_domain():
    """`simulate_reduced` with `Rodas5`, vmapped over `t1` and the solver's `rtol`: the
    bad lanes end `NON_FINITE` (`t1 = 1e-3` reported `SUCCESS`), their `ts` `nan` after
    `0`; the good lane is bitwise the same in a batch of good lanes only and escapes at
    the closed-form time."""
    m0 = 0.3

    def run(t1, rtol):
        return mimflow.simulate_reduced(H3, m0 * jnp.ones((1, 1)), t1, num_saves=4, solver=mimflow.Rodas5(rtol, 1e-12))

    t1 = jnp.array([1e3, *BAD_T1, 1e3, 1e3])
    rtol = jnp.array([1e-9] * (1 + len(BAD_T1)) + [-1e-9, 0.0])
    runs = jax.jit(jax.vmap(run))
    batch = runs(t1, rtol)
    _assert_failed(batch, slice(1, None))
    ts = np.asarray(batch.ts)[1 : 1 + len(BAD_T1)]
    assert (ts[:, 0] == 0).all() and np.isnan(ts[:, 1:]).all()
    good = runs(jnp.full_like(t1, 1e3), jnp.full_like(rtol, 1e-9))
    assert (np.asarray(good.status) == Status.SUCCESS).all()
    _assert_lanes_equal(batch, good, 0)
    assert float(mimflow.escape_times(batch)[0, 0]) == pytest.approx(closed_form_two_timescale(1.0, 3, m0), rel=1e-6)


def test_reduced_experiment_with_traced_t1_and_points_outside_their_domain():
    """`ReducedExperiment` (the default diffrax solver) built inside `vmap` with a traced
    `t1` (the whole batch was lost) and called on points with one value per lane outside
    the domain: a tolerance `≤ 0` or not finite (`rtol = −1` reported `SUCCESS`), `d < k +
    r`, a negative ridge, `rho > 1`, a fractional seed. All `NON_FINITE`; the good lane is
    bitwise the same in a batch of good lanes only and escapes at the closed-form time."""
    good = {"t1": 1e4, "seed": 2.0, "d": 20.0, "ridge": 0.1, "rho": 0.5, "rtol": 1e-9, "atol": 1e-12}
    bad = [("t1", t1) for t1 in BAD_T1[:2]] + [
        ("rtol", -1.0),
        ("atol", 0.0),
        ("rtol", np.nan),
        ("d", 1.0),
        ("ridge", -1.0),
        ("rho", 1.5),
        ("seed", 1.5),
    ]

    def run(point):
        experiment = mimflow.ReducedExperiment(H3, KEY, point["t1"], num_saves=4)
        return experiment({name: value for name, value in point.items() if name != "t1"})

    batch = _good_and_bad_lanes(run, good, bad)
    m0 = float(mimflow.sample_overlap(jax.random.fold_in(KEY, 2), 20.0, 1, 1)[0, 0])
    shrinkage = 0.5**3 / (0.5**3 + 0.1)  # ρ³ / (ρ³ + μ): the flow of `√s h_3`
    expected = closed_form_two_timescale(np.sqrt(shrinkage), 3, m0)
    assert float(mimflow.escape_times(batch)[0, 0]) == pytest.approx(expected, rel=1e-6)


def test_flow_experiment_with_traced_t1_and_points_outside_their_domain():
    """`FlowExperiment` (so `simulate`) built inside `vmap` with a traced `t1` and called
    on points outside the domain: `d` above `d_max`, not an integer, below `k + r` (all
    three reported `SUCCESS`), a negative ridge or noise, `rho > 1`, a tolerance `≤ 0`.
    All `NON_FINITE`; the good lane is bitwise the same in a batch of good lanes only,
    succeeds, and starts at `W*ᵀW0` of its inputs with the loss `½(1 − m⁴)`."""
    good = {"t1": 1.0, "seed": 0.0, "d": 6.0, "ridge": 1e-2, "rho": 0.9, "noise": 0.1, "atol": 1e-10}
    bad = [("t1", 1e-3), ("t1", np.inf), ("d", 20.0), ("d", 6.5), ("d", 1.0)]
    bad += [("ridge", -1e-3), ("noise", -0.1), ("rho", 1.5), ("atol", -1.0)]
    fit = mimflow.HermiteFeatures(2, ridge=1e-2, rho=0.9)

    def make(t1):
        return mimflow.FlowExperiment(H2, KEY, t1, d_max=8, d=6, n=16, fit=fit, num_saves=4)

    def run(point):
        return make(point["t1"])({name: value for name, value in point.items() if name != "t1"})

    batch = _good_and_bad_lanes(run, good, bad)
    target, W0, _, _ = make(1.0).inputs({name: value for name, value in good.items() if name != "t1"})
    m = float((target.W_star.T @ W0)[0, 0])
    assert float(batch.overlap[0, 0, 0, 0]) == pytest.approx(m, rel=1e-13)
    assert float(batch.loss[0, 0]) == pytest.approx(0.5 * (1 - m**4), rel=1e-13)


def test_simulate_with_traced_starts_and_t1_outside_their_domain():
    """`simulate` vmapped over `W0` and `t1`: a `nan` start took all `max_steps` (4 096
    here), rejecting every step and holding up its batch; a start off St(d, r) (scaled,
    or with equal columns) was integrated as if on it. Each now ends `NON_FINITE` within
    a short stand-in run, as does a `t1 ≤ t_min` or infinite; the good lane is bitwise
    the same in a batch of good lanes only, succeeds, and starts at the closed-form loss
    `½(1 − m⁴)` of `h_2` (`m = cos θ`, the overlap of `W0` with `W* = e₁`)."""
    d, theta = 5, 1.2
    flow = mimflow.TwoTimescaleFlow(mimflow.Target(H2, np.eye(d, 1)))
    W0 = np.zeros((d, 2))
    W0[0, 0], W0[1, 0], W0[2, 1] = np.cos(theta), np.sin(theta), 1.0
    good = {"t1": 10.0, "W0": W0}
    bad = [("W0", np.full_like(W0, np.nan)), ("W0", 2 * W0), ("W0", np.repeat(W0[:, :1], 2, axis=1))]
    bad += [("W0", W0 + np.eye(d, 2) * 1e-3), ("t1", 1e-3), ("t1", np.inf)]

    def run(point):
        return mimflow.simulate(flow, point["W0"], point["t1"], num_saves=4, max_steps=4096)

    batch = _good_and_bad_lanes(run, good, bad)
    m = np.cos(theta)
    assert float(batch.overlap[0, 0, 0, 0]) == pytest.approx(m, rel=1e-14)
    assert float(batch.loss[0, 0]) == pytest.approx(0.5 * (1 - m**4), rel=1e-14)


FITS = {
    "kernel-mehler": mimflow.KernelRidge(mimflow.Mehler(0.5), ridge=1e-2),
    "kernel-rbf": mimflow.KernelRidge(mimflow.RBF(1.0), ridge=1e-2),
    "random-relu": mimflow.RandomFeatures(10, KEY),
    "random-fourier": mimflow.RandomFeatures(10, KEY, kind="fourier"),
    "hermite": mimflow.HermiteFeatures(2, ridge=1e-2, rho=0.9),
}


@pytest.mark.parametrize("fit", FITS.values(), ids=FITS.keys())
def test_points_of_python_numbers(fit):
    """A point of Python floats and ints (`{"ridge": 0.01}`, `{"ridge": 1, "d": 6}`)
    raised `AttributeError: 'float' object has no attribute 'dtype'` with random
    features: for every kind of fit it gives the inputs (target, start, data, fit) of
    the same point as NumPy floats, leaf for leaf, and its fit fits. Eager: no solve."""
    experiment = mimflow.FlowExperiment(H2, KEY, 1.0, d_max=8, d=6, n=12, fit=fit, num_saves=4)
    mehler = isinstance(fit, mimflow.KernelRidge) and isinstance(fit.kernel, mimflow.Mehler)
    rho = {"rho": 1} if isinstance(fit, mimflow.HermiteFeatures) else {"rho": 0.25} if mehler else {}
    for point in ({"seed": 0, "ridge": 0.01, **rho}, {"seed": 1, "ridge": 1, "d": 6, "noise": 1, **rho}):
        experiment.check_point(point)
        inputs = experiment.inputs(point)
        expected = experiment.inputs({name: np.float64(value) for name, value in point.items()})
        assert jax.tree.structure(inputs) == jax.tree.structure(expected)
        for got, want in zip(jax.tree.leaves(inputs), jax.tree.leaves(expected), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        target, W0, data, fitted = inputs
        model = fitted.fit(data.X @ W0, data.y)
        assert np.isfinite(np.asarray(model(data.X @ W0))).all()


def test_a_fit_holding_a_python_number():
    """A random-feature fit whose ridge was replaced by a Python float or int
    (`eqx.tree_at`, as an experiment did) draws the features it draws with an array."""
    fit = mimflow.RandomFeatures(4, KEY, kind="fourier")
    expected = jax.tree.leaves(fit.features(2))
    for ridge in (0.01, 1):
        got = jax.tree.leaves(eqx.tree_at(lambda f: f.ridge, fit, ridge).features(2))
        for leaf, want in zip(got, expected, strict=True):
            assert leaf.dtype == want.dtype
            np.testing.assert_array_equal(leaf, want)


CONCRETE = [
    ("save-times", lambda: mimflow.save_times(1e-3, 4, 1e-2), "`t1`"),
    ("simulate-reduced", lambda: mimflow.simulate_reduced(H3, [[0.3]], 0.0), "`t1`"),
    ("simulate-reduced-rodas", lambda: mimflow.simulate_reduced(H3, [[0.3]], np.inf, solver=mimflow.Rodas5()), "`t1`"),
    ("reduced-experiment", lambda: mimflow.ReducedExperiment(H3, KEY, 1e-3, d=20.0), "`t1`"),
    (
        "simulate",
        lambda: mimflow.simulate(
            mimflow.TwoTimescaleFlow(mimflow.Target(H2, jnp.eye(4)[:, :1])), jnp.eye(4)[:, 1:2], 1e-3
        ),
        "`t1`",
    ),
    ("flow-experiment", lambda: mimflow.FlowExperiment(H2, KEY, 0.0, d_max=8, d=6), "`t1`"),
    ("rodas-rtol", lambda: mimflow.Rodas5(rtol=-1.0), "`rtol`"),
    ("point-rtol", lambda: mimflow.ReducedExperiment(H3, KEY, 10.0, d=20.0)({"rtol": -1.0}), "'rtol' has a value ≤ 0"),
    (
        "point-d",
        lambda: mimflow.FlowExperiment(H2, KEY, 1.0, d_max=8, d=6)({"d": 20}),
        "'d' must hold integers ≤ d_max = 8, got 20",
    ),
    (
        "point-rho-mehler",
        lambda: mimflow.FlowExperiment(H2, KEY, 1.0, d_max=8, d=6, n=4, fit=mimflow.KernelRidge(mimflow.Mehler(0.5)))(
            {"rho": 1.0}
        ),
        "'rho' must be < 1 for the Mehler kernel, got 1",
    ),
]


@pytest.mark.parametrize("make, words", [c[1:] for c in CONCRETE], ids=[c[0] for c in CONCRETE])
def test_concrete_values_outside_the_domain_raise(make, words):
    """The same values concrete raise a `ValueError` naming them, before any solve."""
    with pytest.raises(ValueError) as error:
        make()
    assert words in str(error.value), str(error.value)
