"""Kernels and closed-form link fits (DESIGN §4) against independent computations.

Every oracle is written here with NumPy/SciPy only: Hermite polynomials from
`numpy.polynomial.hermite_e`, kernels from their textbook formulas (the Mehler kernel
also from its series, the arc-cosine kernel also from its defining Gaussian integral
by `scipy.integrate.quad`), ridge solutions from `scipy.linalg.solve`, gradients by
central finite differences of the NumPy value function, Hermite coefficients by
Gauss–Hermite quadrature. The random-feature weights are the library's (drawn from
its key); the features themselves are recomputed here.
"""

import functools
import itertools
import math
import pathlib
import subprocess
import sys
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
from numpy.polynomial import hermite_e
from scipy.integrate import quad

import mimflow
from mimflow._flows import _with_transpose

# ---------------------------------------------------------------------------
# Independent helpers (NumPy / SciPy only)
# ---------------------------------------------------------------------------


def h_table(x, degree):
    """`h_n(x) = He_n(x)/√(n!)` for n = 0..degree, shape `(len(x), degree + 1)`."""
    scale = np.sqrt(np.array([float(math.factorial(k)) for k in range(degree + 1)]))
    return hermite_e.hermevander(np.asarray(x, dtype=float), degree) / scale


def h_alpha(alpha, Z):
    """`h_α(z) = Π_i h_{α_i}(z_i)` for rows of `Z`."""
    return np.prod([h_table(Z[:, i], a)[:, a] for i, a in enumerate(alpha)], axis=0)


def all_alphas(r, degree):
    """All multi-indices `α ∈ ℕ^r` with `|α| ≤ degree`."""
    return [a for a in itertools.product(range(degree + 1), repeat=r) if sum(a) <= degree]


def mehler_series(A, B, rho, terms=150):
    """`Σ_α ρ^{|α|} h_α(a) h_α(b)`, each coordinate's series truncated at `terms`
    (= Π_i Σ_{n ≤ terms} ρ^n h_n(a_i) h_n(b_i))."""
    weights = rho ** np.arange(terms + 1)
    out = np.ones((A.shape[0], B.shape[0]))
    for i in range(A.shape[1]):
        out *= (h_table(A[:, i], terms) * weights) @ h_table(B[:, i], terms).T
    return out


def mehler_np(A, B, rho):
    """Mehler's formula, one coordinate at a time:
    `Π_i (1−ρ²)^{−½} exp(−(ρ²a_i² − 2ρ a_i b_i + ρ²b_i²) / (2(1−ρ²)))`."""
    out = np.ones((A.shape[0], B.shape[0]))
    for i in range(A.shape[1]):
        a, b = A[:, i][:, None], B[:, i][None, :]
        out *= np.exp(-(rho**2 * a**2 - 2 * rho * a * b + rho**2 * b**2) / (2 * (1 - rho**2))) / np.sqrt(1 - rho**2)
    return out


def rbf_np(A, B, lengthscale):
    return np.exp(-scipy.spatial.distance.cdist(A, B, "sqeuclidean") / (2 * lengthscale**2))


def polynomial_np(A, B, degree, offset):
    return (A @ B.T + offset) ** degree


def with_bias(A):
    return np.concatenate([A, np.ones((A.shape[0], 1))], axis=1)


def arccos_np(A, B):
    """Cho & Saul's arc-cosine kernel of order 1 on the inputs with a bias `(z, 1)`:
    `(1/π)‖a‖‖b‖(sin θ + (π − θ) cos θ)`."""
    A, B = with_bias(A), with_bias(B)
    na, nb = np.linalg.norm(A, axis=1)[:, None], np.linalg.norm(B, axis=1)[None, :]
    theta = np.arccos(np.clip(A @ B.T / (na * nb), -1.0, 1.0))
    return na * nb * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / np.pi


def arccos_integral(a, b):
    """`2 E_w[relu(wᵀa) relu(wᵀb)]`, `w ~ N(0, I)`: the projection of `w` on span(a, b)
    is a standard 2-D Gaussian; in polar coordinates the radial integral is
    `∫ρ³e^{−ρ²/2}dρ / (2π) = 1/π`, leaving one angular integral for `quad`."""
    e1 = a / np.linalg.norm(a)
    rest = b - (b @ e1) * e1
    e2 = rest / np.linalg.norm(rest)
    pa, pb = np.array([a @ e1, a @ e2]), np.array([b @ e1, b @ e2])
    relu = lambda p, phi: max(p[0] * np.cos(phi) + p[1] * np.sin(phi), 0.0)
    kinks = sorted({(np.arctan2(p[1], p[0]) + s) % (2 * np.pi) for p in (pa, pb) for s in (np.pi / 2, -np.pi / 2)})
    value, error = quad(lambda phi: relu(pa, phi) * relu(pb, phi), 0, 2 * np.pi, points=kinks, epsabs=1e-14)
    assert error < 1e-12
    return 2 * value / np.pi


def hermite_design(Z, degree, rho):
    """`√(ρ^{|α|}) h_α(z)` for all `|α| ≤ degree` (columns in our own order)."""
    return np.stack([math.sqrt(rho ** sum(a)) * h_alpha(a, Z) for a in all_alphas(Z.shape[1], degree)], axis=1)


def relu_features_np(Z, features):
    A, b = np.asarray(features.weights), np.asarray(features.biases)
    return np.maximum(Z @ A + b, 0.0) / math.sqrt(len(b))


def fourier_features_np(Z, features):
    Omega, phases = np.asarray(features.frequencies), np.asarray(features.phases)
    return math.sqrt(2.0 / len(phases)) * np.cos(Z @ Omega + phases)


def hermite_recurrence_np(x, degree):
    """`h_k(x)`, k = 0..degree, by the three-term recurrence of the orthonormal
    probabilists' Hermite polynomials, `h_{k+1} = (x h_k − √k h_{k−1}) / √(k+1)`;
    shape `x.shape + (degree + 1,)`."""
    x = np.asarray(x, dtype=float)
    table = [np.ones_like(x), x][: degree + 1]
    for k in range(1, degree):
        table.append((x * table[k] - math.sqrt(k) * table[k - 1]) / math.sqrt(k + 1))
    return np.stack(table, axis=-1)


def hermite_feature_alphas(r, degree):
    """The Hermite design's columns: by total degree j = 0..degree, and within degree j
    the multi-indices `|α| = j` in lexicographically decreasing order (`(j, 0, …)` first)."""
    return [
        alpha
        for j in range(degree + 1)
        for alpha in sorted((a for a in itertools.product(range(j + 1), repeat=r) if sum(a) == j), reverse=True)
    ]


def hermite_expansion_np(Z, theta, degree, rho):
    """`Σ_α θ_α √(ρ^{|α|}) Π_l h_{α_l}(z_l)` over `hermite_feature_alphas` and its
    gradient in `z`, by `h_k′ = √k h_{k−1}`: `∂_m = Σ_α θ_α √(ρ^{|α|}) h′_{α_m}(z_m)
    Π_{l≠m} h_{α_l}(z_l)`."""
    r = Z.shape[-1]
    H = hermite_recurrence_np(Z, degree)  # (..., r, degree + 1)
    dH = np.concatenate([np.zeros_like(H[..., :1]), np.sqrt(np.arange(1, degree + 1)) * H[..., :-1]], axis=-1)
    values, grads = np.zeros(Z.shape[:-1]), np.zeros(Z.shape)
    for theta_alpha, alpha in zip(theta, hermite_feature_alphas(r, degree), strict=True):
        c = theta_alpha * math.sqrt(rho ** sum(alpha))
        factors = [H[..., l, a] for l, a in enumerate(alpha)]
        values += c * np.prod(factors, axis=0)
        for m in range(r):
            others = [f for l, f in enumerate(factors) if l != m]
            grads[..., m] += c * dH[..., m, alpha[m]] * np.prod(others, axis=0)
    return values, grads


def random_features_expansion_np(Z, theta, features):
    """`φ(z)ᵀθ` and its gradient for random features, from the library's drawn weights:
    Fourier `√(2/p) Σ_k θ_k cos(zᵀω_k + b_k)`, gradient `−√(2/p) Σ_k θ_k sin(zᵀω_k + b_k) ω_k`;
    ReLU `p^{−½} Σ_k θ_k relu(zᵀa_k + b_k)`, gradient `p^{−½} Σ_k θ_k 1[zᵀa_k + b_k > 0] a_k`."""
    if hasattr(features, "frequencies"):
        Omega, b = np.asarray(features.frequencies), np.asarray(features.phases)
        angle, scale = Z @ Omega + b, math.sqrt(2.0 / len(b))
        return scale * np.cos(angle) @ theta, -(scale * np.sin(angle) * theta) @ Omega.T
    A, b = np.asarray(features.weights), np.asarray(features.biases)
    pre, scale = Z @ A + b, 1.0 / math.sqrt(len(b))
    return scale * np.maximum(pre, 0.0) @ theta, (scale * (pre > 0) * theta) @ A.T


def kernel_np(kernel):
    """The NumPy formula of a library kernel object (its parameters read back)."""
    if isinstance(kernel, mimflow.Mehler):
        return lambda A, B: mehler_np(A, B, float(kernel.rho))
    if isinstance(kernel, mimflow.RBF):
        return lambda A, B: rbf_np(A, B, float(kernel.lengthscale))
    if isinstance(kernel, mimflow.Polynomial):
        return lambda A, B: polynomial_np(A, B, kernel.degree, float(kernel.offset))
    if isinstance(kernel, mimflow.ArcCosine):
        return arccos_np
    raise TypeError(kernel)


class Oracle:
    """The closed-form ridge fit in NumPy/SciPy: `predict(Z_new)` and the objective.

    - kernel ridge, dual `(K + nμI) a = y`, `f̂ = K(·, Z) a`, penalty `aᵀKa`;
    - feature fits, primal `(ΦᵀΦ + nμI) θ = Φᵀy` (always primal, also when the
      library takes its dual branch p > n), `f̂ = φ(·)ᵀθ`, penalty `‖θ‖²`.
    """

    def __init__(self, fit, Z, y, features=None):
        n, r = Z.shape
        mu = float(fit.ridge)
        self.fit, self.Z, self.y, self.mu = fit, Z, y, mu
        if isinstance(fit, mimflow.KernelRidge):
            k = kernel_np(fit.kernel)
            self.K = k(Z, Z)
            self.a = scipy.linalg.solve(self.K + n * mu * np.eye(n), y, assume_a="pos")
            self.predict = lambda X: k(X, Z) @ self.a
            self.penalty = self.a @ self.K @ self.a
        else:
            if isinstance(fit, mimflow.HermiteFeatures):
                phi = lambda X: hermite_design(X, fit.degree, float(fit.rho))
            else:
                features = fit.features(r) if features is None else features
                make = relu_features_np if fit.kind == "relu" else fourier_features_np
                phi = lambda X: make(X, features)
            Phi = phi(Z)
            self.Phi = Phi
            self.theta = scipy.linalg.solve(Phi.T @ Phi + n * mu * np.eye(Phi.shape[1]), Phi.T @ y, assume_a="pos")
            self.predict = lambda X: phi(X) @ self.theta
            self.penalty = self.theta @ self.theta

    def objective(self):
        return 0.5 * np.mean((self.y - self.predict(self.Z)) ** 2) + 0.5 * self.mu * self.penalty


@eqx.filter_jit
def fit_eval(fit, Z, y, points):
    """The library's fit on `(Z, y)`, compiled once per fit type and shape (eager
    dispatch of the many small ops costs seconds per new shape): the fitted link,
    `f̂(points)`, `value_and_grad(points)` and the objective at the fit."""
    fitted = fit.fit(Z, y)
    values, grads = fitted.value_and_grad(points)
    return fitted, fitted(points), values, grads, fit.objective(fitted, Z, y)


def rel_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


KERNELS = {
    "mehler": lambda: mimflow.Mehler(0.6),
    "rbf": lambda: mimflow.RBF(1.3),
    "polynomial": lambda: mimflow.Polynomial(3, 0.5),
    "arccos": lambda: mimflow.ArcCosine(),
}

FITS = {
    "krr-mehler": lambda: mimflow.KernelRidge(mimflow.Mehler(0.5), 1e-2),
    "krr-rbf": lambda: mimflow.KernelRidge(mimflow.RBF(1.5), 1e-2),
    "krr-polynomial": lambda: mimflow.KernelRidge(mimflow.Polynomial(3, 1.0), 1e-2),
    "krr-arccos": lambda: mimflow.KernelRidge(mimflow.ArcCosine(), 1e-2),
    "rf-relu": lambda: mimflow.RandomFeatures(100, jax.random.PRNGKey(42), 1e-2, "relu"),
    "rf-fourier": lambda: mimflow.RandomFeatures(100, jax.random.PRNGKey(43), 1e-2, "fourier", 1.5),
    "hf": lambda: mimflow.HermiteFeatures(3, 1e-2, 0.7),
}


def test_closed_form_feature_gradients_equal_autodiff():
    """The feature maps' closed-form `value_and_grad` (`h_k′ = √k h_{k−1}`, the ReLU mask,
    `cos′ = −sin`) against `jax.vjp` of `φ(z)ᵀθ` with the hand-coded derivative left out,
    and against the NumPy expansions and gradients written out above, in r = 3 (the
    finite-difference test below covers r = 2)."""
    from mimflow._fits import AbstractFeatures

    r = 3
    rng = np.random.default_rng(23)
    z = jnp.asarray(rng.standard_normal((40, r)))
    for fit in (FITS["hf"](), FITS["rf-relu"](), FITS["rf-fourier"]()):
        features = fit.features(r)
        weights = jnp.asarray(rng.standard_normal(features(z).shape[1]))
        values, grads = eqx.filter_jit(type(features).value_and_grad)(features, z, weights)
        expected_values, expected_grads = eqx.filter_jit(AbstractFeatures.value_and_grad)(features, z, weights)
        np.testing.assert_allclose(values, expected_values, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(grads, expected_grads, rtol=1e-13, atol=1e-13)
        if isinstance(fit, mimflow.HermiteFeatures):
            np_values, np_grads = hermite_expansion_np(np.asarray(z), np.asarray(weights), fit.degree, float(fit.rho))
        else:
            np_values, np_grads = random_features_expansion_np(np.asarray(z), np.asarray(weights), features)
        # measured ≤ 5e-16 of the largest entry (entries up to ~15)
        np.testing.assert_allclose(values, np_values, rtol=0, atol=1e-13 * np.abs(np_values).max())
        np.testing.assert_allclose(grads, np_grads, rtol=0, atol=1e-13 * np.abs(np_grads).max())


@pytest.mark.parametrize("degree", [0, 1, 2, 4])
@pytest.mark.parametrize("r", [1, 2, 3, 4])
@pytest.mark.parametrize("unrolled", [True, False], ids=["term-by-term", "designs"])
def test_hermite_feature_gradients_against_numpy(r, degree, unrolled, monkeypatch):
    """Hermite features' `value_and_grad` — the expansion `Σ_α θ_α √(ρ^{|α|}) h_α(z)` and
    its gradient — against NumPy (`hermite_expansion_np`: its own recurrence, `h_k′ =
    √k h_{k−1}`, the columns in the order `hermite_feature_alphas` states, checked here
    against `multi_indices` and against the design itself), on both of the library's
    paths: term by term, and designs times `θ` (`_UNROLL_TERMS` patched to 0)."""
    import mimflow._hermite as hermite

    if not unrolled:
        monkeypatch.setattr(hermite, "_UNROLL_TERMS", 0)
    alphas = hermite_feature_alphas(r, degree)
    assert alphas == [tuple(a) for j in range(degree + 1) for a in mimflow.multi_indices(r, j).tolist()]
    rng = np.random.default_rng(100 + 10 * r + degree)
    rho = 0.6
    features = mimflow.HermiteFeatures(degree, ridge=1e-3, rho=rho).features(r)
    z = rng.standard_normal((40, r))
    theta = rng.standard_normal(len(alphas))
    # a new function each time: jit's cache would otherwise keep the other path's trace
    design, (values, grads) = jax.jit(lambda f, z, w: (f(z), f.value_and_grad(z, w)))(
        features, jnp.asarray(z), jnp.asarray(theta)
    )
    np_values, np_grads = hermite_expansion_np(z, theta, degree, rho)
    # the design's column α is the expansion with θ = e_α
    unit_values = np.stack([hermite_expansion_np(z, e, degree, rho)[0] for e in np.eye(len(alphas))], axis=1)
    np.testing.assert_allclose(design, unit_values, rtol=0, atol=1e-13 * np.abs(unit_values).max())
    # measured ≤ 6e-16 of the largest entry (up to ~20) over the 32 cases, design included
    np.testing.assert_allclose(values, np_values, rtol=0, atol=1e-13 * np.abs(np_values).max())
    if degree == 0:
        np.testing.assert_array_equal(grads, 0.0)
    else:
        np.testing.assert_allclose(grads, np_grads, rtol=0, atol=1e-13 * np.abs(np_grads).max())


@pytest.mark.parametrize(("r", "degree"), [(1, 0), (1, 4), (2, 1), (3, 2), (4, 3)])
@pytest.mark.parametrize("unrolled", [True, False], ids=["term-by-term", "designs"])
def test_hermite_feature_gradients_both_ways(r, degree, unrolled, monkeypatch):
    """Hermite features' `value_and_grad`, written out term by term (up to
    `_UNROLL_TERMS`) or as designs times `θ` (above), against `jax.vjp` of the design
    `φ(z)ᵀθ` (the hand-coded derivative left out), for degrees 0 to 4 and r = 1 to 4 (a
    batch of rows `(2, 20, r)` too). The term-by-term program has no matrix product."""
    import mimflow._hermite as hermite
    from mimflow._fits import AbstractFeatures

    if not unrolled:
        monkeypatch.setattr(hermite, "_UNROLL_TERMS", 0)
    rng = np.random.default_rng(10 * r + degree)
    features = mimflow.HermiteFeatures(degree, ridge=1e-3, rho=0.6).features(r)
    # a new function each time: jit's cache would otherwise keep the other branch's trace
    closed = jax.jit(lambda features, z, weights: features.value_and_grad(z, weights))
    for shape in [(40, r), (2, 20, r)]:
        z = jnp.asarray(rng.standard_normal(shape))
        weights = jnp.asarray(rng.standard_normal(features(z).shape[-1]))
        values, grads = closed(features, z, weights)
        expected_values, expected_grads = jax.jit(AbstractFeatures.value_and_grad)(features, z, weights)
        assert values.shape == shape[:-1] and grads.shape == shape
        np.testing.assert_allclose(values, expected_values, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grads, expected_grads, rtol=1e-12, atol=1e-12)
    program = closed.lower(features, z, weights).compile().as_text()
    assert (" dot(" in program) == (not unrolled and degree > 0)


def test_fourier_flow_step_computes_its_cosines_once():
    """In a flow step the fit builds the Fourier design `√(2/p) cos(ZΩ + b)` and the
    back-projection needs it again at the same `Z`: XLA's optimized program of the vector
    field holds one cosine and one sine over the `n × p` entries (before `value_and_grad`
    wrote the design as the fit does, two cosines: ≈ a quarter of a step)."""
    import re

    n, d, p = 64, 6, 16
    target = mimflow.Target(mimflow.links.hermite(2), mimflow.haar_stiefel(jax.random.PRNGKey(0), d, 1), noise=0.1)
    data = target.sample(jax.random.PRNGKey(1), n)
    flow = mimflow.TwoTimescaleFlow(target, mimflow.RandomFeatures(p, jax.random.PRNGKey(2), kind="fourier"), data)
    W = mimflow.haar_stiefel(jax.random.PRNGKey(3), d, 1)
    program = jax.jit(lambda W: flow.vector_field(0.0, W)).lower(W).compile().as_text()
    shape = rf"f64\[{n},{p}\]\S* "
    assert len(re.findall(shape + r"cosine\(", program)) == 1
    assert len(re.findall(shape + r"sine\(", program)) == 1


# ---------------------------------------------------------------------------
# 1. Kernels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("rho", [0.3, 0.7])
def test_mehler_against_series(r, rho):
    """Mehler's closed form against `Σ_α ρ^{|α|} h_α(z) h_α(z')` truncated at degree
    150 per coordinate (the tail is ≤ 0.7^150 ≈ 1e-23 times bounded terms). The series
    sums terms of both signs of size up to ~e^{z²/4}, so its own round-off is ~1e-14
    relative; 1e-12 is safe."""
    rng = np.random.default_rng(int(10 * rho) + r)
    A, B = rng.standard_normal((6, r)), rng.standard_normal((5, r))
    gram = np.asarray(mimflow.Mehler(rho)(jnp.asarray(A), jnp.asarray(B)))
    series = mehler_series(A, B, rho)
    np.testing.assert_allclose(gram, series, rtol=1e-12)
    np.testing.assert_allclose(gram, mehler_np(A, B, rho), rtol=1e-13)


def test_mehler_eigenfunctions():
    """`E_{z'}[k_ρ(z, z') h_α(z')] = ρ^{|α|} h_α(z)` (Gauss–Hermite with 60 nodes per
    axis; the integrand is a Gaussian times a polynomial, integrated to round-off)."""
    rho = 0.6
    nodes, weights = hermite_e.hermegauss(60)
    weights = weights / math.sqrt(2 * math.pi)
    grid = np.array(list(itertools.product(nodes, repeat=2)))
    grid_w = np.array([a * b for a, b in itertools.product(weights, repeat=2)])
    Z = np.random.default_rng(0).standard_normal((5, 2))
    gram = np.asarray(mimflow.Mehler(rho)(jnp.asarray(Z), jnp.asarray(grid)))
    for alpha in [(0, 0), (1, 0), (1, 1), (0, 3), (2, 2)]:
        np.testing.assert_allclose(
            gram @ (grid_w * h_alpha(alpha, grid)), rho ** sum(alpha) * h_alpha(alpha, Z), atol=1e-12
        )


@pytest.mark.parametrize("r", [1, 3])
def test_rbf_polynomial_arccos_formulas(r):
    """RBF, polynomial and arc-cosine Gram matrices against NumPy; the arc-cosine
    kernel also against its Gaussian integral `2E[relu(wᵀẑ) relu(wᵀẑ')]` (Cho & Saul,
    order 1, with the bias input `ẑ = (z, 1)`). Tolerances: a few float64 operations
    per entry (1e-13); RBF's expanded `‖z‖² + ‖z'‖² − 2zᵀz'` loses ≈ eps·‖z‖²/ℓ² in
    the exponent; the quadrature is converged to 1e-12 (checked by `quad`)."""
    rng = np.random.default_rng(r)
    A, B = 1.5 * rng.standard_normal((7, r)), rng.standard_normal((6, r))
    Aj, Bj = jnp.asarray(A), jnp.asarray(B)
    for lengthscale in (0.5, 2.0):
        np.testing.assert_allclose(mimflow.RBF(lengthscale)(Aj, Bj), rbf_np(A, B, lengthscale), rtol=1e-12)
    np.testing.assert_allclose(mimflow.RBF(0.7)(Aj, Aj).diagonal(), 1.0, rtol=1e-15)
    for degree, offset in [(1, 0.0), (2, 1.0), (4, 0.3)]:
        np.testing.assert_allclose(
            mimflow.Polynomial(degree, offset)(Aj, Bj), polynomial_np(A, B, degree, offset), rtol=1e-13
        )
    gram = np.asarray(mimflow.ArcCosine()(Aj, Bj))
    np.testing.assert_allclose(gram, arccos_np(A, B), rtol=1e-13)
    for i, j in [(0, 0), (1, 3), (4, 5), (6, 2)]:
        np.testing.assert_allclose(gram[i, j], arccos_integral(with_bias(A)[i], with_bias(B)[j]), rtol=1e-11)
    # on the diagonal (θ = 0) the kernel is ‖ẑ‖²
    diagonal = np.asarray(mimflow.ArcCosine()(Aj, Aj)).diagonal()
    np.testing.assert_allclose(diagonal, 1.0 + np.sum(A**2, axis=1), rtol=1e-13)


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_gram_psd_symmetric(name):
    """Gram matrices on 50 points are symmetric and positive semi-definite: the
    smallest eigenvalue is ≥ −1e-11·λ_max (eigh's backward error is ~n·eps·‖K‖, and
    the polynomial kernel has rank 10 < 50, so zero eigenvalues do occur)."""
    kernel = KERNELS[name]()
    Z = jnp.asarray(np.random.default_rng(11).standard_normal((50, 2)))
    gram = np.asarray(kernel(Z, Z))
    np.testing.assert_allclose(gram, gram.T, rtol=1e-14, atol=0)
    values = np.linalg.eigvalsh(gram)
    assert values[0] >= -1e-11 * values[-1], (name, values[0], values[-1])


def test_random_features_approximate_their_kernels():
    """With many features, `φ(z)ᵀφ(z')` is a Monte Carlo estimate of the kernel: the
    RBF kernel of lengthscale ℓ for Fourier features, and half the arc-cosine kernel
    for ReLU features (`w = (a, b) ~ N(0, I_{r+1})` acting on `(z, 1)`). Tolerance:
    five standard errors, estimated from the per-feature products."""
    p = 20_000
    Z = np.random.default_rng(12).standard_normal((6, 2))
    for kind, lengthscale in [("fourier", 0.7), ("relu", 1.0)]:
        fit = mimflow.RandomFeatures(p, jax.random.PRNGKey(5), kind=kind, lengthscale=lengthscale)
        features = fit.features(2)
        Phi = (relu_features_np if kind == "relu" else fourier_features_np)(Z, features)
        products = p * Phi[:, None, :] * Phi[None, :, :]  # per-feature terms, mean = estimate
        estimate, stderr = products.mean(-1), products.std(-1) / math.sqrt(p)
        target = rbf_np(Z, Z, lengthscale) if kind == "fourier" else 0.5 * arccos_np(Z, Z)
        assert np.all(np.abs(estimate - target) < 5 * stderr + 1e-12), kind
        # and the library's own design matrix is the one recomputed here
        np.testing.assert_allclose(features(jnp.asarray(Z)), Phi, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# 2. Fits against the closed-form oracle
# ---------------------------------------------------------------------------


@pytest.mark.optimized  # jit against eager to 1e-12
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_ridge_against_oracle(name):
    """Predictions on new points, dual coefficients and the objective against
    `scipy.linalg.solve((K + nμI), y)`. The system has condition number ≲ ‖K‖/(nμ) ~
    1e2–5e3 here, so the float64 solutions agree to ~1e-14 (measured against the same
    solve with the jitter added); what is left is the library's Cholesky jitter (1e-12 ×
    the mean of diag K, added to nμ = 0.6), a deterministic bias: measured ≤ 8e-12
    (predictions), 1e-10 (dual coefficients, the polynomial kernel's mean diagonal is
    ~50), 6e-16 (the objective, stationary at the solution). Tolerances ~10× those."""
    rng = np.random.default_rng(13)
    n, r = 60, 2
    Z, Znew = rng.standard_normal((n, r)), rng.standard_normal((30, r))
    y = np.sin(Z[:, 0]) + Z[:, 0] * Z[:, 1] + 0.1 * rng.standard_normal(n)
    fit = mimflow.KernelRidge(KERNELS[name](), ridge=1e-2)
    fitted, predictions, _, _, objective = fit_eval(fit, jnp.asarray(Z), jnp.asarray(y), jnp.asarray(Znew))
    oracle = Oracle(fit, Z, y)
    assert rel_error(predictions, oracle.predict(Znew)) < 1e-10
    assert rel_error(fitted.coefficients, oracle.a) < 1e-9
    assert rel_error(objective, oracle.objective()) < 1e-13
    # the eager call gives the same fit
    np.testing.assert_allclose(fit.fit(jnp.asarray(Z), jnp.asarray(y)).coefficients, fitted.coefficients, rtol=1e-12)


@pytest.mark.parametrize(
    "kind, p, n",
    [("relu", 40, 100), ("relu", 150, 60), ("fourier", 40, 100), ("fourier", 150, 60)],
    ids=["relu-primal", "relu-dual", "fourier-primal", "fourier-dual"],
)
def test_random_features_against_oracle(kind, p, n):
    """Primal `(ΦᵀΦ + nμI)θ = Φᵀy` with Φ recomputed in NumPy from the library's
    random weights; for p > n the library solves the dual instead — the same θ.
    Condition numbers ≲ 1e2; the jitter's bias dominates as for kernel ridge: measured
    ≤ 4e-13 (predictions), 2e-12 (θ), 3e-16 (objective)."""
    rng = np.random.default_rng(14)
    r = 2
    Z, Znew = rng.standard_normal((n, r)), rng.standard_normal((30, r))
    y = np.tanh(Z[:, 0] - Z[:, 1]) + 0.1 * rng.standard_normal(n)
    fit = mimflow.RandomFeatures(p, jax.random.PRNGKey(7), ridge=1e-2, kind=kind, lengthscale=0.8)
    fitted, predictions, _, _, objective = fit_eval(fit, jnp.asarray(Z), jnp.asarray(y), jnp.asarray(Znew))
    oracle = Oracle(fit, Z, y)
    assert rel_error(predictions, oracle.predict(Znew)) < 1e-11
    assert rel_error(fitted.weights, oracle.theta) < 1e-10
    assert rel_error(objective, oracle.objective()) < 1e-13


@pytest.mark.parametrize(
    "n, block", [(1000, 64), (1024, 64), (40, 16)], ids=["remainder", "whole-blocks", "two-blocks-and-a-half"]
)
def test_relu_features_by_row_blocks(n, block, monkeypatch):
    """On a CPU from `_ROW_BLOCK_MIN_ROWS` rows on (patched to 0 here, blocks of 64
    rows, or 16), the ReLU-feature fit sums `ΦᵀΦ` and `yᵀΦ` over row blocks and
    `value_and_grad` runs block by block (then the `n mod block` rows left): the fit
    against the NumPy/SciPy primal solve, the values and gradients against NumPy's `relu`
    and its mask, the two-timescale vector field against NumPy, alone and vmapped over 3
    starts sharing the data; and the compiled program does loop over blocks (default
    threshold: it does not)."""
    from mimflow import _fits

    rng = np.random.default_rng(31)
    r, d, p, mu = 2, 6, 24, 1e-2
    w_star = np.linalg.qr(rng.standard_normal((d, r)))[0]
    target = mimflow.Target(mimflow.links.hermite(1, 2, 0) + mimflow.links.hermite(3, 2, 1), w_star, noise=0.2)
    data = target.sample(jax.random.PRNGKey(31), n)
    X, y = np.asarray(data.X), np.asarray(data.y)
    Ws = np.stack([np.linalg.qr(rng.standard_normal((d, r)))[0] for _ in range(3)])
    fit = mimflow.RandomFeatures(p, jax.random.PRNGKey(32), ridge=mu, kind="relu")
    A, b = np.asarray(fit.features(r).weights), np.asarray(fit.features(r).biases)

    def step_np(W):
        """fit, values, gradients and vector field in NumPy (primal ridge, relative jitter
        1e-12·mean diag as the library's Cholesky: a 1e-12 relative change)."""
        Z = X @ W
        pre = Z @ A + b
        design = np.maximum(pre, 0) / math.sqrt(p)
        gram = design.T @ design
        jitter = 1e-12 * max(np.mean(np.diag(gram)), 1.0)
        theta = scipy.linalg.solve(gram + (n * mu + jitter) * np.eye(p), design.T @ y, assume_a="pos")
        grads = ((pre > 0) * theta / math.sqrt(p)) @ A.T
        G = X.T @ ((design @ theta - y)[:, None] * grads) / n
        return theta, design @ theta, grads, -(G - W @ (W.T @ G))

    def step(W):
        Z = data.X @ W
        fitted = fit.fit(Z, data.y)
        values, grads = fitted.value_and_grad(Z)
        return fitted.weights, values, grads, mimflow.TwoTimescaleFlow(target, fit, data).vector_field(0.0, W)

    # (drawing the random features has loops of its own; a new function each time, or
    # jit's cache would keep the first trace)
    loops = lambda: jax.jit(lambda W: step(W)).lower(jnp.asarray(Ws[0])).as_text().count("stablehlo.while")
    whole = loops()  # fewer rows than the default `_ROW_BLOCK_MIN_ROWS`: whole
    monkeypatch.setattr(_fits, "_ROW_BLOCK_MIN_ROWS", 0)
    monkeypatch.setattr(_fits, "_ROW_BLOCK", block)
    jax.clear_caches()  # jax ≥ 0.12 keeps traced jaxprs of the fit's inner functions across jit calls
    assert loops() == whole + 4  # the fit's scan and the gradient's map, in `step` and in the field
    alone = jax.jit(lambda W: step(W))(jnp.asarray(Ws[0]))
    batched = jax.jit(jax.vmap(lambda W: step(W)))(jnp.asarray(Ws))
    for i, got in [(0, alone)] + [(i, jax.tree.map(lambda a, i=i: a[i], batched)) for i in range(3)]:
        for name, actual, expected in zip(["θ", "values", "gradients", "field"], got, step_np(Ws[i]), strict=True):
            scale = np.max(np.abs(expected))
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-11 * scale, err_msg=f"{name}, start {i}")


@pytest.mark.parametrize("r", [1, 3, 5])
def test_relu_features_by_row_blocks_any_number_of_directions(r, monkeypatch):
    """In row blocks ReLU features write `Aᵀz + b` and the gradient's `C A` as r-term
    sums for r ≤ 4 directions and keep XLA's products above (r = 5): a fit on n = 8·16 + 5
    rows by blocks of 16 (the fit's `ΦᵀΦ`, `yᵀΦ` and `value_and_grad`; also `vmap`ped
    over 2 starts), against the NumPy/SciPy primal solve, NumPy's `relu` and its mask."""
    from mimflow import _fits

    monkeypatch.setattr(_fits, "_ROW_BLOCK_MIN_ROWS", 0)
    monkeypatch.setattr(_fits, "_ROW_BLOCK", 16)
    rng = np.random.default_rng(47 + r)
    n, p, mu = 8 * 16 + 5, 20, 1e-2
    Zs = rng.standard_normal((2, n, r))
    y = np.tanh(Zs[0] @ rng.standard_normal(r)) + 0.1 * rng.standard_normal(n)
    fit = mimflow.RandomFeatures(p, jax.random.PRNGKey(11), ridge=mu, kind="relu")
    features = fit.features(r)
    A, b = np.asarray(features.weights), np.asarray(features.biases)

    def expected(Z):
        pre = Z @ A + b
        design = np.maximum(pre, 0) / math.sqrt(p)
        theta = Oracle(fit, Z, y).theta
        return theta, design @ theta, ((pre > 0) * theta / math.sqrt(p)) @ A.T

    def step(Z):
        fitted = fit.fit(Z, jnp.asarray(y))
        return (fitted.weights, *fitted.value_and_grad(Z))

    loops = lambda f, Z: f.lower(Z).as_text().count("stablehlo.while")  # noqa: E731
    draws = loops(jax.jit(lambda Z: fit.features(Z.shape[1])), jnp.asarray(Zs[0]))  # drawing A, b loops too
    assert loops(jax.jit(step), jnp.asarray(Zs[0])) == draws + 2  # the fit's scan, the gradient's map
    alone = jax.jit(step)(jnp.asarray(Zs[0]))
    batched = jax.jit(jax.vmap(step))(jnp.asarray(Zs))
    for i, got in [(0, alone), (0, [a[0] for a in batched]), (1, [a[1] for a in batched])]:
        for name, actual, want in zip(["θ", "values", "gradients"], got, expected(Zs[i]), strict=True):
            assert rel_error(actual, want) < 1e-9, (name, i)


@pytest.mark.parametrize("name", ["hermite", "relu", "fourier"])
def test_fits_vmapped_over_starts_by_row_blocks(name, monkeypatch):
    """Fits `vmap`ped over starts sharing the data (`Z` batched, `y` not) build their
    designs over blocks of rows on a CPU (Hermite and ReLU features; `_ROW_BLOCK` patched
    to 16, n = 8·16 + 5 rows: whole blocks and a remainder); random Fourier features, and
    one fit alone, stay whole. Each start's fit against the NumPy/SciPy primal solve, its
    Jacobian in `Z` (forward and reverse mode through the vmapped fit) against central
    differences of that solve."""
    from mimflow import _fits

    monkeypatch.setattr(_fits, "_ROW_BLOCK", 16)
    rng = np.random.default_rng(41)
    B, n, r, mu = 3, 8 * 16 + 5, 2, 1e-2
    Zs, y, Znew = rng.standard_normal((B, n, r)), rng.standard_normal(n), rng.standard_normal((7, r))
    fit = {
        "hermite": mimflow.HermiteFeatures(3, ridge=mu, rho=0.8),
        "relu": mimflow.RandomFeatures(12, jax.random.PRNGKey(3), ridge=mu, kind="relu"),
        "fourier": mimflow.RandomFeatures(12, jax.random.PRNGKey(3), ridge=mu, kind="fourier"),
    }[name]
    predict = lambda Z: fit.fit(Z, jnp.asarray(y))(jnp.asarray(Znew))  # noqa: E731
    batched = jax.jit(jax.vmap(predict))
    loops = lambda f, Z: f.lower(Z).as_text().count("stablehlo.while")  # noqa: E731
    alone = loops(jax.jit(predict), jnp.asarray(Zs[0]))  # drawing random features has loops of its own
    assert loops(batched, jnp.asarray(Zs)) == alone + (0 if name == "fourier" else 1)
    got = np.asarray(batched(jnp.asarray(Zs)))
    for i in range(B):
        assert rel_error(got[i], Oracle(fit, Zs[i], y).predict(Znew)) < 1e-8, i
    # d f̂(z_new) / d Z[0, 0] for each start: forward and reverse mode against differences
    h, unit = 1e-5, np.zeros((n, r))
    unit[0, 0] = 1.0
    expected = np.stack(
        [
            (Oracle(fit, Z + h * unit, y).predict(Znew) - Oracle(fit, Z - h * unit, y).predict(Znew)) / (2 * h)
            for Z in Zs
        ]
    )
    forward = jax.jit(jax.vmap(lambda Z: jax.jvp(predict, (Z,), (jnp.asarray(unit),))[1]))(jnp.asarray(Zs))
    reverse = jax.jit(jax.vmap(jax.jacrev(predict)))(jnp.asarray(Zs))[:, :, 0, 0]
    for actual in (forward, reverse):
        assert rel_error(actual, expected) < 1e-6


@pytest.mark.parametrize("shared_weights", [False, True], ids=["own-weights", "shared-weights"])
def test_relu_value_and_grad_vmapped_over_starts_by_row_blocks(shared_weights, monkeypatch):
    """A ReLU-feature link's `value_and_grad` `vmap`ped over starts sharing the features
    (`z` batched; `θ` batched or not) runs over blocks of rows on a CPU (`_ROW_BLOCK`
    patched to 16, n = 8·16 + 5 rows: whole blocks and a remainder; alone, and with the
    features batched too, it stays whole). Values and gradients against NumPy's `relu` and
    its mask; the gradient of a scalar of both outputs in `z` and `θ` (reverse mode through
    the vmapped call, and forward mode along a direction) against its closed form."""
    from mimflow import _fits

    monkeypatch.setattr(_fits, "_ROW_BLOCK", 16)
    rng = np.random.default_rng(43)
    B, n, r, p = 3, 8 * 16 + 5, 2, 12
    features = mimflow.RandomFeatures(p, jax.random.PRNGKey(5), kind="relu").features(r)
    A, b = np.asarray(features.weights), np.asarray(features.biases)
    Zs = rng.standard_normal((B, n, r))
    thetas = rng.standard_normal(p) if shared_weights else rng.standard_normal((B, p))
    c, E = rng.standard_normal(n), rng.standard_normal((n, r))  # the scalar's coefficients

    def expected(Z, theta):
        """values, gradients, and ∂L/∂Z, ∂L/∂θ of L = c·values + Σ E ∘ gradients"""
        pre = Z @ A + b
        mask = (pre > 0) / math.sqrt(p)
        grads = (mask * theta) @ A.T
        values = np.maximum(pre, 0) / math.sqrt(p) @ theta
        # values are piecewise linear, gradients piecewise constant in z (a.e.)
        d_Z = c[:, None] * grads
        d_theta = c @ (np.maximum(pre, 0) / math.sqrt(p)) + np.einsum("ik,ij,kj->j", E, mask, A)
        return values, grads, d_Z, d_theta

    theta_axis = None if shared_weights else 0
    call = jax.jit(jax.vmap(lambda z, t: features.value_and_grad(z, t), in_axes=(0, theta_axis)))
    loops = lambda f, *a: f.lower(*a).as_text().count("stablehlo.while")  # noqa: E731
    assert loops(call, jnp.asarray(Zs), jnp.asarray(thetas)) == 1
    theta0 = thetas if shared_weights else thetas[0]
    alone = jax.jit(lambda z, t: features.value_and_grad(z, t))
    assert loops(alone, jnp.asarray(Zs[0]), jnp.asarray(theta0)) == 0
    own = jax.jit(jax.vmap(lambda f, z, t: f.value_and_grad(z, t), in_axes=(0, 0, theta_axis)))
    stacked = jax.tree.map(lambda a: jnp.stack([a] * B), features)
    assert loops(own, stacked, jnp.asarray(Zs), jnp.asarray(thetas)) == 0  # features batched: whole

    def scalar(Z, theta):
        values, grads = features.value_and_grad(Z, theta)
        return jnp.dot(jnp.asarray(c), values) + jnp.sum(jnp.asarray(E) * grads)

    values, grads = call(jnp.asarray(Zs), jnp.asarray(thetas))
    reverse = jax.jit(jax.vmap(jax.grad(scalar, argnums=(0, 1)), in_axes=(0, theta_axis)))(
        jnp.asarray(Zs), jnp.asarray(thetas)
    )
    dZ, dtheta = rng.standard_normal((n, r)), rng.standard_normal(p)
    forward = jax.jit(
        jax.vmap(
            lambda Z, t: jax.jvp(scalar, (Z, t), (jnp.asarray(dZ), jnp.asarray(dtheta)))[1], in_axes=(0, theta_axis)
        )
    )(jnp.asarray(Zs), jnp.asarray(thetas))
    for i in range(B):
        theta = thetas if shared_weights else thetas[i]
        v, g, d_Z, d_theta = expected(Zs[i], theta)
        np.testing.assert_allclose(values[i], v, rtol=0, atol=1e-13 * np.abs(v).max())
        np.testing.assert_allclose(grads[i], g, rtol=0, atol=1e-13 * np.abs(g).max())
        np.testing.assert_allclose(reverse[0][i], d_Z, rtol=0, atol=1e-13 * np.abs(d_Z).max())
        np.testing.assert_allclose(reverse[1][i], d_theta, rtol=0, atol=1e-12 * np.abs(d_theta).max())
        directional = np.sum(d_Z * dZ) + d_theta @ dtheta
        assert abs(forward[i] - directional) < 1e-12 * (np.abs(d_Z * dZ).sum() + np.abs(d_theta * dtheta).sum())


@pytest.mark.parametrize(
    "degree, rho, n, r", [(0, 1.0, 30, 2), (3, 0.6, 80, 2), (6, 0.5, 20, 2), (2, 0.8, 15, 3)], ids=str
)
def test_hermite_features_against_oracle(degree, rho, n, r):
    """Hermite features `√(ρ^{|α|}) h_α(z)` built with `hermite_e`; (6, n=20) has
    p = 28 > n (the library's dual branch), the others p ≤ n (primal). The library orders the
    columns its own way, so we compare the design through `ΦΦᵀ` (order-free) and the
    fit through its predictions."""
    rng = np.random.default_rng(15 + degree)
    Z, Znew = rng.standard_normal((n, r)), rng.standard_normal((30, r))
    y = Z[:, 0] ** 2 - Z[:, -1] + 0.1 * rng.standard_normal(n)
    fit = mimflow.HermiteFeatures(degree, ridge=1e-2, rho=rho)
    features = fit.features(r)
    design = np.asarray(jax.jit(lambda z: features(z))(jnp.asarray(Z)))
    Phi = hermite_design(Z, degree, rho)
    assert design.shape == Phi.shape
    np.testing.assert_allclose(design @ design.T, Phi @ Phi.T, rtol=1e-12, atol=1e-12)
    _, predictions, _, _, objective = fit_eval(fit, jnp.asarray(Z), jnp.asarray(y), jnp.asarray(Znew))
    oracle = Oracle(fit, Z, y)
    # measured ≤ 1.1e-11 (predictions, the jitter's bias) and 6e-16 (objective)
    assert rel_error(predictions, oracle.predict(Znew)) < 1e-10
    assert rel_error(objective, oracle.objective()) < 1e-13


def test_hermite_features_are_the_truncated_mehler_kernel():
    """`φ(z)ᵀφ(z')` is the Mehler series truncated at total degree D, so for ρ^{D+1}
    below round-off it is the Mehler kernel (ρ = 0.04, D = 11: the tail is
    ~(D+2)ρ^{D+1}h² ≈ 1e-15 relative; 1e-12 is safe). Compiled once (jit): the
    eager feature map of degree D dispatches O(D) separately compiled ops."""
    Z = np.random.default_rng(16).standard_normal((5, 2))
    features = mimflow.HermiteFeatures(11, rho=0.04).features(2)
    Phi = np.asarray(jax.jit(lambda z: features(z))(jnp.asarray(Z)))
    np.testing.assert_allclose(Phi @ Phi.T, mehler_np(Z, Z, 0.04), rtol=1e-12)


# ---------------------------------------------------------------------------
# 3. The envelope gradient
# ---------------------------------------------------------------------------

D, R, N = 10, 2, 200


@functools.cache
def problem():
    """A two-index target in d = 10 and n = 200 samples; a random student W."""
    rng = np.random.default_rng(17)
    W_star = np.linalg.qr(rng.standard_normal((D, R)))[0]
    W = np.linalg.qr(rng.standard_normal((D, R)))[0]
    link = mimflow.Link.from_hermite({(1, 0): 1.0, (1, 1): 1.0, (0, 2): 0.5})
    target = mimflow.Target(link, jnp.asarray(W_star))
    data = eqx.filter_jit(lambda target, key: target.sample(key, N))(target, jax.random.PRNGKey(3))  # eager: 5 s
    return target, data, W


@eqx.filter_jit
def library_gradients(flow, W):
    """From the library (compiled once per fit): `f̂(z_i)`, `∇f̂(z_i)` of the fit at W;
    `V̂(W) = objective(fit(XW, y), XW, y)` and its `jax.grad` through the solve; and
    `TwoTimescaleFlow.gradient(W)`."""
    fit, data = flow.fit, flow.data

    def value(W):
        Z = data.X @ W
        return fit.objective(fit.fit(Z, data.y), Z, data.y)

    values, grads = fit.fit(data.X @ W, data.y).value_and_grad(data.X @ W)
    # as `simulate` runs it: `Xᵀ R` from the `(d, n)` copy of X made outside the solver loop
    transposed = eqx.tree_at(lambda f: f.data, flow, _with_transpose(flow.data))
    return values, grads, value(W), jax.grad(value)(W), flow.gradient(W), transposed.gradient(W)


def value_function_np(fit, X, y, W):
    """V̂(W) = min_f Ĵ(f, W) from the NumPy oracle."""
    return Oracle(fit, X @ W, y).objective()


@pytest.mark.parametrize("name", FITS)
def test_envelope_gradient(name):
    """`n⁻¹ Σ (f̂(z_i) − y_i) x_i ∇f̂(z_i)ᵀ` (fit held fixed) equals the derivative of the
    value function `V̂(W)`: (a) `jax.grad` through the closed-form solve (1e-8 relative;
    the two agree up to the 1e-12 Cholesky jitter and round-off), (b)
    `TwoTimescaleFlow.gradient` (the same, also from a `(d, n)` copy of X, the layout
    `simulate` uses on a CPU), (c) central differences of the NumPy
    oracle's `V̂` along random unit directions E, to 1e-6·‖∇V̂‖. Step h = 1e-5:
    truncation h²·V'''/6 ≈ 1e-11; round-off ≈ eps·(largest term of V̂)/h, and the
    cubic-polynomial Gram entries reach 1e4, so ≲ 1e-7 (measured ≤ 3e-9 at h = 1e-5,
    7e-8 at h = 1e-6; h = 1e-4 already crosses ReLU kinks)."""
    target, data, W = problem()
    X, y = np.asarray(data.X), np.asarray(data.y)
    fit = FITS[name]()

    flow = mimflow.TwoTimescaleFlow(target, fit, data)
    values, grads, value, autodiff, flow_gradient, transposed = library_gradients(flow, jnp.asarray(W))
    envelope = X.T @ ((np.asarray(values) - y)[:, None] * np.asarray(grads)) / N
    assert np.all(np.isfinite(envelope)), f"{name}: envelope gradient has NaN/inf"
    np.testing.assert_allclose(value, value_function_np(fit, X, y, W), rtol=1e-10)
    assert rel_error(envelope, autodiff) < 1e-8
    assert rel_error(flow_gradient, autodiff) < 1e-8
    assert rel_error(transposed, autodiff) < 1e-8

    rng = np.random.default_rng(18)
    h = 1e-5
    for _ in range(2):
        E = rng.standard_normal((D, R))
        E /= np.linalg.norm(E)
        fd = (value_function_np(fit, X, y, W + h * E) - value_function_np(fit, X, y, W - h * E)) / (2 * h)
        assert abs(np.sum(envelope * E) - fd) < 1e-6 * np.linalg.norm(envelope)


def test_transposed_copy_of_X_only_for_datasets_on_cpu():
    """`simulate`'s `(d, n)` copy of X (for the CPU back-projection `Xᵀ R`): the same
    values as `X.T`, made once (a second call returns its input), for datasets on a CPU
    only (on accelerators the data come back unchanged)."""
    _, data, _ = problem()
    assert data._XT is None and "_XT" not in repr(data)
    transposed = _with_transpose(data)
    if jax.default_backend() != "cpu":
        assert transposed is data
        return
    np.testing.assert_array_equal(transposed._XT, np.asarray(data.X).T)
    assert transposed.X is data.X and transposed.y is data.y
    assert _with_transpose(transposed) is transposed
    # the envelope gradient reads `Xᵀ R` from the copy when there is one
    target, _, W = problem()
    poisoned = eqx.tree_at(lambda d: d._XT, transposed, jnp.zeros_like(transposed._XT))
    fit = mimflow.HermiteFeatures(2, ridge=1e-3)
    assert jnp.any(mimflow.TwoTimescaleFlow(target, fit, transposed).gradient(jnp.asarray(W)) != 0)
    assert jnp.all(mimflow.TwoTimescaleFlow(target, fit, poisoned).gradient(jnp.asarray(W)) == 0)
    for other in (mimflow.Population(), mimflow.Online(8, jax.random.PRNGKey(0))):
        assert _with_transpose(other) is other


@pytest.mark.parametrize("name", FITS)
def test_value_and_grad_finite_differences(name):
    """`f̂.value_and_grad` at new points and at the training points (the centres, for
    kernel ridge) against central differences of the NumPy oracle's `f̂`, h = 1e-5:
    truncation h²·f'''/6 and round-off eps·|f̂|/h are both ≲ 1e-9 relative (measured
    ≤ 6e-10); ReLU features are piecewise linear, so there the difference is exact
    unless a kink lies within h. Tolerance 1e-6 relative to the largest entry."""
    rng = np.random.default_rng(19)
    n, r = 80, 2
    Z = rng.standard_normal((n, r))
    y = np.cos(Z[:, 0]) * Z[:, 1] + 0.1 * rng.standard_normal(n)
    fit = FITS[name]()
    oracle = Oracle(fit, Z, y)
    points = np.concatenate([rng.standard_normal((10, r)), Z[:10]])
    _, predictions, values, grads, _ = fit_eval(fit, jnp.asarray(Z), jnp.asarray(y), jnp.asarray(points))
    # ReLU features compute the value as zᵀ∇f̂ + Σ_j c_j b_j: rounding of those O(1) terms
    np.testing.assert_allclose(values, predictions, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(values, oracle.predict(points), rtol=1e-8, atol=1e-10)
    h = 1e-5
    fd = np.stack(
        [(oracle.predict(points + h * e) - oracle.predict(points - h * e)) / (2 * h) for e in np.eye(r)], axis=1
    )
    grads = np.asarray(grads)
    assert np.all(np.isfinite(grads)), f"{name}: NaN/inf gradient at rows {np.where(~np.isfinite(grads))[0]}"
    assert rel_error(grads, fd) < 1e-6


# ---------------------------------------------------------------------------
# 4. Population limit: ridge shrinkage of the Hermite coefficients
# ---------------------------------------------------------------------------

SHRINK_RHO, SHRINK_MU = 0.5, 0.1
# f* = 0.3 + h1(z1) + h1(z1)h1(z2) + ½ h2(z2) + 0.4 h2(z1)h1(z2)
SHRINK_COEFFS = {(0, 0): 0.3, (1, 0): 1.0, (1, 1): 1.0, (0, 2): 0.5, (2, 1): 0.4}


def shrinkage_errors(fit, n, seeds):
    """Root-mean-square over `|α| ≤ 3` of `ĉ_α − ρ^{|α|}/(ρ^{|α|} + μ) c_α` (and of `ĉ_α − c_α`,
    no shrinkage), per seed; `ĉ_α = E[f̂(z) h_α(z)]` by a 60²-node Gauss–Hermite rule
    (f̂ is a polynomial for Hermite features; for Mehler kernel ridge a sum of Gaussians
    whose decay keeps the rule converged to round-off)."""
    nodes, weights = hermite_e.hermegauss(60)
    weights = weights / math.sqrt(2 * math.pi)
    grid = np.array(list(itertools.product(nodes, repeat=2)))
    grid_w = np.array([a * b for a, b in itertools.product(weights, repeat=2)])
    alphas = all_alphas(2, 3)
    basis = np.stack([h_alpha(a, grid) for a in alphas], axis=1)
    true = np.array([SHRINK_COEFFS.get(a, 0.0) for a in alphas])
    q = SHRINK_RHO ** np.array([sum(a) for a in alphas], dtype=float)
    shrunk = q / (q + SHRINK_MU) * true
    to_shrunk, to_true = [], []
    for seed in seeds:
        Z = np.random.default_rng(seed).standard_normal((n, 2))
        y = sum(c * h_alpha(a, Z) for a, c in SHRINK_COEFFS.items())
        values = np.asarray(fit_eval(fit, jnp.asarray(Z), jnp.asarray(y), jnp.asarray(grid))[1])
        coefficients = (grid_w * values) @ basis
        to_shrunk.append(np.sqrt(np.mean((coefficients - shrunk) ** 2)))
        to_true.append(np.sqrt(np.mean((coefficients - true) ** 2)))
    return np.array(to_shrunk), np.array(to_true)


@pytest.mark.parametrize("name", ["krr-mehler", "hf"])
def test_population_shrinkage(name):
    """As n grows the fitted Hermite coefficients approach `q_j/(q_j + μ) c_α`,
    `q_j = ρ^j`. The fluctuation is ~n^{-1/2}, so multiplying n by 8 should divide the
    error by √8 ≈ 2.8 (ratio 0.35). Hermite features: n = 500 → 4000; Mehler kernel
    ridge: n = 250 → 2000 (the same factor; a 4000² Cholesky costs seconds per seed).
    Errors are RMS over seeds (8 small, 4 large; one seed alone fluctuates by ~2×);
    measured ratios 0.35 (HF) and 0.43 (KRR), asserted < 0.6. The large-n fits must
    also be far closer to the shrunk coefficients than to the unshrunk ones (which
    differ from them by ≈ 0.13–0.16 in this RMS): < 0.05 and < ⅓ of the unshrunk distance."""
    if name == "krr-mehler":
        fit, small_n = mimflow.KernelRidge(mimflow.Mehler(SHRINK_RHO), SHRINK_MU), 250
    else:
        fit, small_n = mimflow.HermiteFeatures(3, SHRINK_MU, SHRINK_RHO), 500
    small, _ = shrinkage_errors(fit, small_n, range(8))
    large, large_true = shrinkage_errors(fit, 8 * small_n, range(100, 104))
    rms = lambda e: np.sqrt(np.mean(e**2))
    assert rms(large) < 0.6 * rms(small), (small, large)
    assert np.all(large < 0.05), large
    assert np.all(large_true > 3 * large), (large, large_true)


# ---------------------------------------------------------------------------
# 5. float32
# ---------------------------------------------------------------------------


FLOAT32_FITS = ["krr-mehler", "krr-rbf", "krr-arccos", "rf-relu", "rf-fourier", "hf"]

# Run in a fresh interpreter with JAX's default float32 (conftest turns x64 on for
# this process). Toggling `jax.enable_x64(False)` inside a process that already ran
# the same indexing code in float64 trips a JAX cache (gather indices int64 vs int32:
# "lax.add requires arguments to have the same dtypes"), which is not what a float32
# user runs into.
FLOAT32_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[1])
import test_fits as T
assert not jax.config.read("jax_enable_x64")
Z, y, Znew = T.float32_data()
out = {}
for name in T.FLOAT32_FITS:
    fit = T.FITS[name]()
    _, predictions, _, grads, _ = T.fit_eval(fit, jnp.asarray(Z), jnp.asarray(y), jnp.asarray(Znew))
    out[name + "/dtypes"] = np.array([str(fit.ridge.dtype), str(predictions.dtype), str(grads.dtype)])
    out[name + "/predictions"], out[name + "/grads"] = np.asarray(predictions), np.asarray(grads)
    if isinstance(fit, mimflow.RandomFeatures):
        for field, value in vars(fit.features(2)).items():
            out[name + "/features/" + field] = np.asarray(value)
Z, y, Znew, _ = T.tiny_ridge_data()
for name, fit in T.tiny_ridge_fits().items():
    out["tiny/" + name] = np.asarray(eqx.filter_jit(lambda fit, Z, y, Znew: fit.fit(Z, y)(Znew))(fit, Z, y, Znew))
np.savez(sys.argv[2], **out)
""".replace("mimflow.", "T.mimflow.").replace("import jax,", "import equinox as eqx, jax,")


def float32_data():
    rng = np.random.default_rng(20)
    Z, Znew = rng.standard_normal((100, 2)).astype(np.float32), rng.standard_normal((30, 2)).astype(np.float32)
    y = (np.sin(2 * Z[:, 0]) + Z[:, 1] ** 2).astype(np.float32)
    return Z, y, Znew


def tiny_ridge_data():
    """1 024 float32 points of `sin(2z₁) + z₂²` and that function at 200 new points."""
    rng = np.random.default_rng(21)
    Z, Znew = rng.standard_normal((1024, 2)).astype(np.float32), rng.standard_normal((200, 2)).astype(np.float32)
    target = lambda Z: np.sin(2 * Z[:, 0].astype(np.float64)) + Z[:, 1].astype(np.float64) ** 2
    return Z, target(Z).astype(np.float32), Znew, target(Znew)


def tiny_ridge_fits():
    """Fits with a ridge below what float32 resolves (`n·eps ≈ 1.2e-4` on 1 024 points)."""
    key = jax.random.PRNGKey(1)
    return {
        "krr-mehler-0": mimflow.KernelRidge(mimflow.Mehler(0.5), 0.0),
        "krr-rbf-0": mimflow.KernelRidge(mimflow.RBF(1.5), 0.0),
        "krr-rbf-1e-9": mimflow.KernelRidge(mimflow.RBF(1.5), 1e-9),
        "rf-relu-dual-0": mimflow.RandomFeatures(2048, key, ridge=0.0),
        "rf-relu-primal-0": mimflow.RandomFeatures(256, key, ridge=0.0),
    }


@pytest.fixture(scope="module")
def float32_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("float32") / "results.npz"
    tests_dir = str(pathlib.Path(__file__).parent)
    subprocess.run([sys.executable, "-c", FLOAT32_SCRIPT, tests_dir, str(path)], check=True, timeout=300)
    return dict(np.load(path))


@pytest.mark.parametrize("name", FLOAT32_FITS)
def test_float32(name, float32_results):
    """In float32 (JAX's default precision) the fits run without NaN, and predictions
    agree with the float64 NumPy oracle on the same (float32-rounded) data and random
    features to 1e-3 relative: the solves have condition number ≲ 1e3 (ridge nμ = 1),
    so float32 (eps ≈ 6e-8) loses ≲ 1e-4."""
    dtypes = float32_results[name + "/dtypes"]
    assert list(dtypes) == ["float32"] * 3, dtypes
    predictions, grads = float32_results[name + "/predictions"], float32_results[name + "/grads"]
    assert np.all(np.isfinite(predictions)) and np.all(np.isfinite(grads))
    Z, y, Znew = (x.astype(np.float64) for x in float32_data())
    prefix = name + "/features/"
    fields = {k[len(prefix) :]: v.astype(np.float64) for k, v in float32_results.items() if k.startswith(prefix)}
    fit = FITS[name]()
    oracle = Oracle(fit, Z, y, features=types.SimpleNamespace(**fields) if fields else None)
    assert rel_error(predictions, oracle.predict(Znew)) < 1e-3


@pytest.mark.parametrize("name", list(tiny_ridge_fits()))
def test_float32_tiny_ridge(name, float32_results):
    """A ridge below float32's resolution (0, or 1e-9 on 1 024 points) gave `nan`
    predictions silently: the Cholesky jitter (1e-6 of the mean diagonal) was below the
    Gram matrix's rounding errors (≈ n·eps relative). With a jitter of at least `n·eps`
    the fits are finite, and as close to the target function at new points as the
    float64 NumPy fit (the oracle) with the ridge float32 does resolve, `μ = 1e-6`, to
    within 2× (measured 0.69×, 0.60×, 0.60×, 1.10×, 1.50× for the five fits)."""
    predictions = float32_results["tiny/" + name]
    assert predictions.dtype == np.float32 and np.all(np.isfinite(predictions))
    Z, y, Znew, target = (x.astype(np.float64) for x in tiny_ridge_data())
    oracle = Oracle(eqx.tree_at(lambda fit: fit.ridge, tiny_ridge_fits()[name], jnp.asarray(1e-6)), Z, y)
    assert rel_error(predictions, target) < 2 * rel_error(oracle.predict(Znew), target)


# ---------------------------------------------------------------------------
# 6. Bad input
# ---------------------------------------------------------------------------


def test_bad_input():
    key = jax.random.PRNGKey(0)
    Z, y = jnp.ones((10, 2)), jnp.ones(9)
    fits = [
        mimflow.KernelRidge(mimflow.RBF()),
        mimflow.RandomFeatures(5, key),
        mimflow.HermiteFeatures(2),
    ]
    for fit in fits:
        with pytest.raises(ValueError, match=r"\(9,\)"):
            fit.fit(Z, y)
        with pytest.raises(ValueError, match=r"\(10, 1\)"):
            fit.fit(Z, jnp.ones((10, 1)))
    for make in [
        lambda: mimflow.KernelRidge(mimflow.RBF(), ridge=-1.0),
        lambda: mimflow.RandomFeatures(5, key, ridge=-1.0),
        lambda: mimflow.HermiteFeatures(2, ridge=-1.0),
    ]:
        with pytest.raises(ValueError, match="ridge"):
            make()
    with pytest.raises(ValueError, match="num_features.*0"):
        mimflow.RandomFeatures(0, key)
    with pytest.raises(ValueError, match="num_features"):
        mimflow.RandomFeatures(2.5, key)
    with pytest.raises(ValueError, match="'tanh'"):
        mimflow.RandomFeatures(5, key, kind="tanh")
    with pytest.raises(ValueError, match="lengthscale"):
        mimflow.RandomFeatures(5, key, kind="fourier", lengthscale=-1.0)
    for rho in (0.0, 1.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="rho"):
            mimflow.Mehler(rho)
    for lengthscale in (-1.0, 0.0):
        with pytest.raises(ValueError, match="lengthscale"):
            mimflow.RBF(lengthscale)
    for degree in (0, 2.5):
        with pytest.raises(ValueError, match="degree"):
            mimflow.Polynomial(degree)
    with pytest.raises(ValueError, match="offset"):
        mimflow.Polynomial(2, offset=-1.0)
    with pytest.raises(ValueError, match="degree.*-1"):
        mimflow.HermiteFeatures(-1)
    with pytest.raises(ValueError, match="rho"):
        mimflow.HermiteFeatures(2, rho=0.0)
    for kernel in ("rbf", lambda a, b: a @ b.T, mimflow.HermiteFeatures(2)):
        with pytest.raises(ValueError, match="kernel"):
            mimflow.KernelRidge(kernel)
