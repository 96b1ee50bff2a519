"""The accelerator's programs (run with `pytest -m gpu` on a machine with a GPU; skipped
by default and wherever JAX has no accelerator).

On an accelerator `sweep` runs differently from CI's CPU: every reduced trajectory gets
its own lane (no refilling), a finite-sample chunk's points are vmapped in lock-step
(`_sweep._sequential` is false), the chunk size comes from the device's free memory, and
XLA's GPU kernels round differently. These tests check those programs against
independent computations: SciPy's Radau on a NumPy right-hand side (the reduced ODE),
a NumPy flow step (the two-timescale vector field), and the CPU's own mapped program
(itself checked against NumPy and SciPy in the other files).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import hermite, radau_h1_h3_escapes

import mimflow
from mimflow import links

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() == "cpu", reason="needs an accelerator"),
]

TWO = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)  # h1(z1) + h3(z2): log d, then d²


def test_reduced_sweep_of_thousands_matches_scipy_radau():
    """2 × 2048 trajectories in one sweep (d = 10², 10³), each in its own lane: every one
    succeeds; an escape time is infinite exactly where the singular value is still below
    ½ at t1 (386 of the 4 096 second directions on a CPU and an H100: the heavy tail of
    the d² saddle; seed 24 at d = 10² is one), never NaN; and the escape times of 4 seeds per d, one of them
    infinite, equal Radau's on a NumPy right-hand side to 1e-7 (Rodas4 at rtol 1e-10)
    and the default solver's to 1e-4."""
    key, t1, seeds = jax.random.PRNGKey(11), 1e8, 2048
    tight = mimflow.ReducedExperiment(TWO, key, t1, num_saves=32, solver=mimflow.Rodas4(rtol=1e-10, atol=1e-13))
    default = mimflow.ReducedExperiment(TWO, key, t1, num_saves=32)
    grid = {"d": [1e2, 1e3], "seed": range(seeds)}
    results = {name: mimflow.sweep(experiment, grid) for name, experiment in [("tight", tight), ("default", default)]}
    for dataset in results.values():
        assert (dataset.status.values == mimflow.Status.SUCCESS).all()
        escape = dataset.escape_time.values
        assert not np.isnan(escape).any()
        below = dataset.singular_values.values[:, :, -1, :] < 0.5
        np.testing.assert_array_equal(np.isinf(escape), below)
        assert 0 < below.sum() < 0.1 * below.size and not below[..., 0].any()
    for d, seed in itertools.product([1e2, 1e3], [0, 1, 24, seeds - 1]):
        # the documented start of a point: sample_overlap(fold_in(key, seed), d, k, r)
        M0 = np.asarray(mimflow.sample_overlap(jax.random.fold_in(key, seed), d, 2, 2))
        expected, _ = radau_h1_h3_escapes(M0, t1)
        got = results["tight"].escape_time.sel(d=d, seed=seed).values
        np.testing.assert_allclose(got, expected, rtol=1e-7)
        np.testing.assert_allclose(results["default"].escape_time.sel(d=d, seed=seed).values, expected, rtol=1e-4)
    assert np.isinf(results["tight"].escape_time.sel(d=1e2, seed=24).values[1])


def _numpy_vector_field(X, y, W, features, ridge):
    """The two-timescale vector field in NumPy: `Z = XW`; ridge fit `(ΦᵀΦ + nμI)θ = Φᵀy`
    (with the library's relative jitter 1e-12·mean diag, a 1e-12 relative change); the
    envelope gradient `G = Xᵀ((Φθ − y) ∇f̂(Z)) / n`; `−(I − WWᵀ)G`."""
    n = X.shape[0]
    Z = X @ W
    phi, dphi = features(Z)
    gram = phi.T @ phi
    jitter = 1e-12 * max(float(np.mean(np.diag(gram))), 1.0)
    theta = np.linalg.solve(gram + (n * ridge + jitter) * np.eye(gram.shape[0]), phi.T @ y)
    G = X.T @ ((phi @ theta - y)[:, None] * np.einsum("npr,p->nr", dphi, theta)) / n
    return -(G - W @ (W.T @ G))


@pytest.mark.parametrize("kind", ["hermite", "relu"])
def test_flow_vector_field_matches_numpy(kind):
    """One two-timescale vector field at n = 2¹⁵, d = 256 (the GPU kernels: the two big
    products, the fit, the closed-form feature gradients), alone and vmapped over 8
    starts sharing the data, against NumPy to 1e-10 relative."""
    n, d, degree, ridge = 2**15, 256, 3, 1e-3
    target = mimflow.Target(TWO, mimflow.haar_stiefel(jax.random.PRNGKey(1), d, 2), noise=0.1)
    data = target.sample(jax.random.PRNGKey(2), n)
    Ws = jax.vmap(lambda k: mimflow.haar_stiefel(k, d, 2))(jax.random.split(jax.random.PRNGKey(3), 8))
    if kind == "hermite":
        fit = mimflow.HermiteFeatures(degree, ridge=ridge)
        alphas = [(a, b) for a, b in itertools.product(range(degree + 1), repeat=2) if a + b <= degree]
        first, second = (np.array(column) for column in zip(*alphas, strict=True))
        scale = np.sqrt(float(fit.rho) ** (first + second))

        def features(Z):
            table = np.stack([hermite(k, Z) for k in range(degree + 1)], axis=-1)  # (n, 2, D + 1)
            slope = np.concatenate(
                [np.zeros_like(table[..., :1]), table[..., :-1] * np.sqrt(np.arange(1, degree + 1))], -1
            )
            phi = scale * table[:, 0, first] * table[:, 1, second]
            dphi = np.stack([slope[:, 0, first] * table[:, 1, second], table[:, 0, first] * slope[:, 1, second]], -1)
            return phi, scale[None, :, None] * dphi
    else:
        fit = mimflow.RandomFeatures(32, jax.random.PRNGKey(4), ridge=ridge, kind="relu")
        relu = fit.features(2)
        A, bias = np.asarray(relu.weights), np.asarray(relu.biases)

        def features(Z):
            pre = Z @ A + bias
            scale = 1 / math.sqrt(bias.shape[0])
            return scale * np.maximum(pre, 0), scale * (pre > 0)[:, :, None] * A.T[None]

    flow = mimflow.TwoTimescaleFlow(target, fit, data)
    one = jax.jit(lambda W: flow.vector_field(0.0, W))
    many = jax.jit(jax.vmap(lambda W: flow.vector_field(0.0, W)))(Ws)
    X, y = np.asarray(data.X), np.asarray(data.y)
    for i in (0, 7):
        expected = _numpy_vector_field(X, y, np.asarray(Ws[i]), features, ridge)
        size = np.linalg.norm(expected)
        assert size > 1e-3  # a real gradient, not a fixed point
        assert np.linalg.norm(np.asarray(one(Ws[i])) - expected) <= 1e-10 * size
        assert np.linalg.norm(np.asarray(many[i]) - expected) <= 1e-10 * size


def test_vmapped_flow_sweep_equals_the_cpu_mapped_sweep():
    """A finite-sample sweep (Hermite features, 16 seeds, each with its own data) runs
    vmapped on the accelerator and mapped on the CPU; at rtol 1e-10 the two agree to 1e-7
    (adaptive steps from differently rounded fields), every point succeeds, and the
    first direction is learned."""
    experiment = mimflow.FlowExperiment(
        links.hermite(1, 2, 0) + links.hermite(2, 2, 1),
        jax.random.PRNGKey(5),
        15.0,
        d_max=24,
        n=400,
        fit=mimflow.HermiteFeatures(2, 1e-3),
        noise=0.1,
        num_saves=12,
        rtol=1e-10,
        atol=1e-12,
    )
    grid = {"seed": range(16), "d": [16, 24]}
    accelerator = mimflow.sweep(experiment, grid)
    cpu = mimflow.sweep(experiment, grid, devices=jax.devices("cpu")[:1])
    assert (accelerator.status.values == mimflow.Status.SUCCESS).all()
    assert (cpu.status.values == mimflow.Status.SUCCESS).all()
    for name in ("loss", "train_loss", "overlap"):
        np.testing.assert_allclose(accelerator[name].values, cpu[name].values, rtol=0, atol=1e-7, err_msg=name)
    assert np.all(accelerator.escape_time.values[..., 0] < 15.0)
    # the two programs really ran on two platforms
    assert jnp.zeros(()).devices().pop().platform != "cpu"
