"""Property-based tests (hypothesis) of the Hermite conventions (DESIGN §1), the
retractions and tangent projections (§4), the overlap sampler and principal angles,
and config parsing.

Every property is checked against an independent computation written here with
NumPy/SciPy only: `numpy.polynomial.hermite_e.hermeval` for `h_n = He_n/√(n!)`, the
Wick (Isserlis) formula for the Hermite tensor `H_j(z)`, tensor Gauss–Hermite
quadrature (`hermegauss`, weights / √(2π)), NumPy QR/SVD, dense Taylor coefficients of
each retraction and `scipy.linalg.expm` for the Grassmann geodesic. Examples are
derandomized (reproducible in CI) and shapes come from small sets, since JAX compiles
once per shape.
"""

import copy
import itertools
import math
import re
import sys
import tempfile
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from numpy.polynomial import hermite_e

import mimflow
from mimflow import ConfigError, Link
from mimflow._config import _TOP


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


seeds = st.integers(0, 2**32 - 1)
_evaluate = eqx.filter_jit(lambda link, z: link(z))


def evaluate(link: Link, z: np.ndarray) -> np.ndarray:
    """`link(z)`, compiled once per `k`: the link is padded with zero tensors to degrees ≤ 4."""
    return np.asarray(_evaluate(link.with_degrees(range(5)), jnp.asarray(z)))


# ---------------------------------------------------------------------------
# NumPy oracles
# ---------------------------------------------------------------------------


def np_h(n: int, x: np.ndarray) -> np.ndarray:
    """`h_n(x) = He_n(x)/√(n!)` by `hermeval`."""
    return hermite_e.hermeval(x, np.eye(n + 1)[n]) / math.sqrt(math.factorial(n))


def np_h_alpha(alpha: tuple[int, ...], z: np.ndarray) -> np.ndarray:
    """`h_α(z) = Π_i h_{α_i}(z_i)` for points `z` of shape `(N, k)`."""
    return np.prod([np_h(a, z[:, i]) for i, a in enumerate(alpha)], axis=0)


def np_sym(tensor: np.ndarray) -> np.ndarray:
    """The mean of a tensor over all permutations of its axes."""
    perms = list(itertools.permutations(range(tensor.ndim)))
    return sum(np.transpose(tensor, p) for p in perms) / len(perms)


def np_t_alpha(alpha: tuple[int, ...]) -> np.ndarray:
    """`T^α = √(|α|!/α!) Sym(e_1^{⊗α_1} ⊗ … ⊗ e_k^{⊗α_k})` (DESIGN §1)."""
    k, j = len(alpha), sum(alpha)
    unit = np.zeros((k,) * j)
    unit[tuple(i for i, a in enumerate(alpha) for _ in range(a))] = 1.0
    return math.sqrt(math.factorial(j) / math.prod(math.factorial(a) for a in alpha)) * np_sym(unit)


def np_matchings(positions: tuple[int, ...]):
    """Every partial matching (a list of disjoint pairs) of `positions`."""
    if not positions:
        yield []
        return
    first, rest = positions[0], positions[1:]
    yield from np_matchings(rest)
    for i, other in enumerate(rest):
        for matching in np_matchings(rest[:i] + rest[i + 1 :]):
            yield [(first, other), *matching]


def np_hermite_tensor(j: int, z: np.ndarray) -> np.ndarray:
    """`H_j(z) = He_j(z)/√(j!)` for points `z` of shape `(N, k)`, shape `(N, k, …, k)`, by
    Wick's formula `He_j(z)[t] = Σ_m (−1)^{|m|} Π_{(a,b)∈m} δ_{t_a t_b} Π_{c∉m} z_{t_c}`
    over the partial matchings `m` of the `j` positions of the index tuple `t`."""
    num, k = z.shape
    out = np.zeros((num,) + (k,) * j)
    matchings = list(np_matchings(tuple(range(j))))
    for t in itertools.product(range(k), repeat=j):
        for matching in matchings:
            if all(t[a] == t[b] for a, b in matching):
                paired = {p for pair in matching for p in pair}
                out[(slice(None), *t)] += (-1) ** len(matching) * np.prod(
                    [z[:, t[c]] for c in range(j) if c not in paired] + [np.ones(num)], axis=0
                )
    return out / math.sqrt(math.factorial(j))


def np_gauss_hermite_grid(k: int, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor Gauss–Hermite grid for `N(0, I_k)`: `hermegauss` nodes, weights / √(2π)."""
    nodes, weights = hermite_e.hermegauss(num_nodes)
    weights = weights / math.sqrt(2 * math.pi)
    points = np.array(list(itertools.product(nodes, repeat=k)))
    grid_weights = np.array([math.prod(w) for w in itertools.product(weights, repeat=k)])
    return points, grid_weights


def np_stiefel(rng: np.random.Generator, d: int, r: int) -> np.ndarray:
    """A point of St(d, r): the Q factor of a Gaussian matrix."""
    return np.linalg.qr(rng.standard_normal((d, r)))[0]


def np_sym_part(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def np_tangent(W: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Stiefel tangent projection (embedded metric): `Z − W sym(WᵀZ)`."""
    return Z - W @ np_sym_part(W.T @ Z)


# ---------------------------------------------------------------------------
# 1. Hermite polynomials and tensors
# ---------------------------------------------------------------------------


@st.composite
def multi_index(draw, k: int | None = None, max_degree: int = 4) -> tuple[int, ...]:
    """A multi-index `α ∈ ℕ^k` with `|α| ≤ max_degree`, `k ∈ {1, 2, 3}` unless given."""
    k = draw(st.integers(1, 3)) if k is None else k
    alpha = []
    for _ in range(k):
        alpha.append(draw(st.integers(0, max_degree - sum(alpha))))
    return tuple(draw(st.permutations(alpha)))


# |x| ≥ 1e-300 or 0: XLA's CPU code flushes subnormal results to zero, and for x within a
# few orders of the smallest normal the recurrence's products (0.7·x for He_3) are
# subnormal (CI found x = 2.2250738585072014e-308, the smallest normal, giving −0 for He_3)
_NORMAL_X = st.floats(-6, 6, allow_subnormal=False).filter(lambda v: v == 0 or abs(v) >= 1e-300)


@_settings(60)
@given(st.integers(0, 12), st.lists(_NORMAL_X, min_size=5, max_size=5))
def test_hermite_1d_matches_hermeval(degree, x):
    """`hermite_1d(D, x)[..., n] = He_n(x)/√(n!)` (oracle: `hermeval`; no `x` whose
    recurrence passes through subnormals, which XLA flushes to zero: above). Both
    recurrences err by a few ulps of the largest term, so the tolerance at each point is
    1e-13 times `Σ_i |c_i| |x|^i / √(n!)` (`c_i` the power-basis coefficients of `He_n`)."""
    x = np.array(x)
    table = np.asarray(mimflow.hermite_1d(degree, jnp.asarray(x)))
    assert table.shape == (5, degree + 1)
    for n in range(degree + 1):
        coefficients = hermite_e.herme2poly(np.eye(n + 1)[n])
        scale = np.polynomial.polynomial.polyval(np.abs(x), np.abs(coefficients)) / math.sqrt(math.factorial(n))
        assert np.all(np.abs(table[:, n] - np_h(n, x)) <= 1e-13 * scale), n


@_settings(40)
@given(multi_index(), seeds)
def test_hermite_tensor_of_a_multi_index(alpha, seed):
    """`Link.from_hermite({α: 1})` stores `T^α`: symmetric under every permutation of its
    axes, unit Frobenius norm, equal to `√(|α|!/α!) Sym(e_1^{⊗α_1} ⊗ …)` built in NumPy;
    `⟨T^α, H_j(z)⟩` (Wick's formula) and the link's value both equal `Π_i h_{α_i}(z_i)`
    (`hermeval`)."""
    k, j = len(alpha), sum(alpha)
    link = Link.from_hermite({alpha: 1.0})
    tensor = np.asarray(link.tensors[j])
    assert set(link.tensors) == {j} and tensor.shape == (k,) * j
    for perm in itertools.permutations(range(j)):
        np.testing.assert_array_equal(np.transpose(tensor, perm), tensor)
    assert abs(np.linalg.norm(tensor) - 1.0) < 1e-14
    np.testing.assert_allclose(tensor, np_t_alpha(alpha), rtol=0, atol=1e-15)
    z = np.random.default_rng(seed).standard_normal((4, k))
    expected = np_h_alpha(alpha, z)
    wick = np.tensordot(np_hermite_tensor(j, z), tensor, axes=j)
    np.testing.assert_allclose(wick, expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(evaluate(link, z), expected, rtol=1e-13, atol=1e-13)


@_settings(2)
@given(st.integers(21, 40), seeds)
def test_high_degree_hermite_link(degree, seed):
    """Degrees beyond 20 (where `α!` overflows int64): `Link.from_hermite({(j,): 1})` has
    unit norm and evaluates to `He_j(x)/√(j!)` (`hermeval`). On `|x| ≤ 3`, `|h_j| ≲ e^{x²/4}
    < 10` and both recurrences are stable (error ~ j ulps of that), hence `atol = 1e-11`."""
    link = Link.from_hermite({(degree,): 1.0})
    assert float(link.norm2()) == pytest.approx(1.0, rel=1e-14)
    x = np.random.default_rng(seed).uniform(-3, 3, (4, 1))
    np.testing.assert_allclose(_evaluate(link, jnp.asarray(x)), np_h(degree, x[:, 0]), rtol=0, atol=1e-11)


@_settings(12)
@given(st.integers(1, 3), st.integers(0, 4))
def test_hermite_tensors_of_one_degree_are_orthonormal(k, j):
    """The tensors `T^α` of every `α ∈ ℕ^k` with `|α| = j` (enumerated here with
    itertools) are orthonormal: their Gram matrix is the identity, as the `h_α` are in
    `L²(N(0, I_k))`."""
    alphas = [a for a in itertools.product(range(j + 1), repeat=k) if sum(a) == j]
    tensors = np.array([np.asarray(Link.from_hermite({a: 1.0}).tensors[j]).reshape(-1) for a in alphas])
    np.testing.assert_allclose(tensors @ tensors.T, np.eye(len(alphas)), rtol=0, atol=1e-14)


@st.composite
def hermite_tables(draw) -> dict[tuple[int, ...], float]:
    """`{α: c_α}`: up to 6 multi-indices of one `k ∈ {1, 2, 3}`, degrees ≤ 4."""
    k = draw(st.integers(1, 3))
    alphas = draw(st.lists(multi_index(k), min_size=1, max_size=6, unique=True))
    return {alpha: draw(st.floats(-2, 2)) for alpha in alphas}


@_settings(40)
@given(hermite_tables(), seeds)
def test_hermite_link_norm_and_values(table, seed):
    """For `f = Σ_α c_α h_α`: `‖f‖² = Σ_j ‖T_j‖_F² = Σ_α c_α²` and equals `E f(z)²` by
    tensor Gauss–Hermite quadrature of `f` evaluated in NumPy as `Σ c_α Π h_{α_i}(z_i)`
    (6 nodes per axis: exact for `f²` of degree ≤ 8 per axis); `f(z)` at random points
    equals that NumPy sum."""
    k = len(next(iter(table)))
    link = Link.from_hermite(table)

    def f(z):
        return sum(c * np_h_alpha(alpha, z) for alpha, c in table.items())

    points, weights = np_gauss_hermite_grid(k, 6)
    mean_square = weights @ f(points) ** 2
    norm2 = float(link.norm2())
    assert norm2 == pytest.approx(sum(np.sum(np.asarray(t) ** 2) for t in link.tensors.values()), rel=1e-14, abs=1e-14)
    assert norm2 == pytest.approx(sum(c**2 for c in table.values()), rel=1e-13, abs=1e-14)
    assert norm2 == pytest.approx(mean_square, rel=1e-12, abs=1e-13)
    z = 2.0 * np.random.default_rng(seed).standard_normal((4, k))
    np.testing.assert_allclose(evaluate(link, z), f(z), rtol=1e-12, atol=1e-12)


@_settings(30)
@given(st.integers(1, 3), st.sets(st.integers(0, 4), min_size=1), seeds)
def test_tensor_link_norm_and_values(k, degrees, seed):
    """For random (non-symmetric) tensors `T_j`, `Link.from_tensors` stores `Sym T_j` (the
    mean over axis permutations, NumPy), `‖f‖² = Σ_j ‖Sym T_j‖²` equals `E f(z)²` by
    Gauss–Hermite quadrature of `f(z) = Σ_j ⟨Sym T_j, H_j(z)⟩` with `H_j` from Wick's
    formula, and the link's value at random points equals that sum."""
    rng = np.random.default_rng(seed)
    tensors = {j: rng.standard_normal((k,) * j) for j in sorted(degrees)}
    link = Link.from_tensors(tensors, dim=k)
    sym = {j: np_sym(t) for j, t in tensors.items()}
    for j in degrees:
        np.testing.assert_allclose(link.tensors[j], sym[j], rtol=0, atol=1e-14)

    def f(z):
        return sum(np.tensordot(np_hermite_tensor(j, z), t, axes=j) for j, t in sym.items())

    points, weights = np_gauss_hermite_grid(k, 6)
    norm2 = sum(np.sum(t**2) for t in sym.values())
    assert float(link.norm2()) == pytest.approx(norm2, rel=1e-13)
    assert weights @ f(points) ** 2 == pytest.approx(norm2, rel=1e-12)
    z = rng.standard_normal((4, k))
    np.testing.assert_allclose(evaluate(link, z), f(z), rtol=1e-12, atol=1e-12)


@_settings(30)
@given(st.integers(1, 3), st.integers(0, 4), seeds)
def test_ridge_tensor_is_hermite_of_projection(k, j, seed):
    """`⟨u^{⊗j}, H_j(z)⟩ = h_j(u·z)` for a unit `u` (DESIGN §1): the link with tensor
    `u^{⊗j}` evaluates to `He_j(u·z)/√(j!)` (`hermeval`); so does Wick's `H_j` (a check of
    the oracle itself)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(k)
    u /= np.linalg.norm(u)
    tensor = np.array(1.0)
    for _ in range(j):
        tensor = np.multiply.outer(tensor, u)
    z = 2.0 * rng.standard_normal((4, k))
    expected = np_h(j, z @ u)
    link = Link.from_tensors({j: tensor}, dim=k)
    np.testing.assert_allclose(evaluate(link, z), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.tensordot(np_hermite_tensor(j, z), tensor, axes=j), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# 2. Stiefel manifold: retractions, tangent projections, Haar points
# ---------------------------------------------------------------------------

SHAPES = [(3, 1), (3, 3), (8, 3)]  # a column, a square, a generic one: JAX compiles per shape
METHODS = ("qr", "polar", "cayley")


@st.composite
def stiefel_tangents(draw, shapes=SHAPES, horizontal: bool = False):
    """`(W, ξ)`: `W ∈ St(d, r)` from a NumPy QR, `ξ = Z − W sym(WᵀZ)` a Stiefel tangent
    (`(I − WWᵀ)Z` if `horizontal`) of a Gaussian `Z`, scaled to `‖ξ‖_F = 1`."""
    d, r = draw(st.sampled_from(shapes))
    rng = np.random.default_rng(draw(seeds))
    W = np_stiefel(rng, d, r)
    Z = rng.standard_normal((d, r))
    xi = Z - W @ (W.T @ Z) if horizontal else np_tangent(W, Z)
    return W, xi / np.linalg.norm(xi)


_retract_jit = jax.jit(mimflow.retract, static_argnames="method")  # one program per shape and method
_haar_jit = jax.jit(mimflow.haar_stiefel, static_argnums=(1, 2))


def _retract(W, step, method):
    return np.asarray(_retract_jit(jnp.asarray(W), jnp.asarray(step), method=method))


def second_order_term(W: np.ndarray, xi: np.ndarray, method: str) -> np.ndarray:
    """`a` in `R(W, tξ) = W + tξ + t² a + O(t³)` for a Stiefel tangent `ξ` (`S = ξᵀξ`):
    - polar: `(I + t²S)^{−1/2} = I − t²S/2 + …`, so `a = −W S/2`;
    - QR: `R = I + t²U + …` with `U` upper triangular and `U + Uᵀ = S`, so `a = −W U`;
    - Cayley: `(I − tA/2)^{−1}(I + tA/2) W = W + tAW + t²A²W/2 + …` with `AW = ξ`, so
      `a = Aξ/2`, `A = PξWᵀ − WξᵀP`, `P = I − WWᵀ/2` (dense, d × d)."""
    S = xi.T @ xi
    if method == "polar":
        return -0.5 * W @ S
    if method == "qr":
        return -W @ (np.triu(S, 1) + 0.5 * np.diag(np.diag(S)))
    P = np.eye(W.shape[0]) - 0.5 * W @ W.T
    A = P @ xi @ W.T - W @ xi.T @ P
    return 0.5 * A @ xi


@_settings(40)
@given(stiefel_tangents(), st.floats(0.0, 2.0), st.sampled_from(METHODS))
def test_retraction_lands_on_stiefel(point, t, method):
    """`R(W, tξ)` has orthonormal columns (`‖RᵀR − I‖_F ≤ 1e-12`: one factorisation of a
    matrix with singular values in [1, √5]) and `R(W, 0) = W`."""
    W, xi = point
    R = _retract(W, t * xi, method)
    assert R.shape == W.shape
    assert np.linalg.norm(R.T @ R - np.eye(W.shape[1])) < 1e-12
    np.testing.assert_allclose(_retract(W, np.zeros_like(W), method), W, rtol=0, atol=1e-14)


# For ‖ξ‖_F = 1 the t³ coefficients are at most 2 (polar: ‖ξS‖/2 ≤ 1/2; QR: ‖ξU‖ ≤ 1;
# Cayley: ‖A³W‖/4 ≤ 2 since ‖A‖₂ ≤ 2‖ξ‖), and for t ≤ 0.05 the higher terms add little:
# C₃ = 4 bounds every O(t³) remainder below.
C3 = 4.0


@_settings(60)
@given(stiefel_tangents(), st.floats(1e-3, 5e-2), st.sampled_from(METHODS))
def test_retraction_taylor_expansion(point, t, method):
    """First order for every method: `‖R(W, tξ) − W − tξ‖ ≤ (‖a‖ + C₃t) t²`, with the
    second-order term `a` of each method derived in closed form (`second_order_term`),
    and indeed `‖R(W, tξ) − W − tξ − t²a‖ ≤ C₃ t³`. Since `‖a‖ ≥ ‖sym(Wᵀa)‖ = ‖ξᵀξ‖/2 > 0`
    (every method's normal part), the t² term is really there (a wrong `a` fails)."""
    W, xi = point
    a = second_order_term(W, xi, method)
    remainder = _retract(W, t * xi, method) - W - t * xi
    assert np.linalg.norm(remainder) <= (np.linalg.norm(a) + C3 * t) * t**2
    assert np.linalg.norm(remainder - t**2 * a) <= C3 * t**3
    assert np.linalg.norm(np_sym_part(W.T @ a)) == pytest.approx(0.5 * np.linalg.norm(xi.T @ xi), rel=1e-12)


@_settings(60)
@given(stiefel_tangents(), st.booleans(), st.floats(1e-3, 5e-2), st.sampled_from(METHODS))
def test_retraction_second_order(point, horizontal, t, method):
    """Second order (the tangent component of `R(W, tξ) − W − tξ` is O(t³), i.e. the
    curve's acceleration is normal) exactly where the theory says so:
    - polar: for every Stiefel tangent (`a = −W ξᵀξ/2` is normal);
    - Cayley: for horizontal tangents (`Wᵀξ = 0`); otherwise its tangent component is
      `t² (I − WWᵀ) ξ Wᵀξ / 2 + O(t³)`;
    - QR: never in general: its tangent component is `−t² W skew(U) + O(t³)`, a rotation
      within span(W) (`U` as in `second_order_term`). QR is second order on the
      Grassmannian only (next test).
    The expected O(t²) tangent parts are NumPy closed forms."""
    W, xi = point
    if horizontal:
        assume(W.shape[0] > W.shape[1])  # St(d, d) has no horizontal tangent
        xi = xi - W @ (W.T @ xi)
        xi = xi / np.linalg.norm(xi)
    tangent_part = np_tangent(W, _retract(W, t * xi, method) - W - t * xi)
    S = xi.T @ xi
    expected = {
        "polar": np.zeros_like(W),
        "cayley": 0.5 * (xi - W @ (W.T @ xi)) @ (W.T @ xi),
        "qr": -W @ (0.5 * (np.triu(S, 1) - np.tril(S, -1))),
    }[method]
    assert np.linalg.norm(tangent_part - t**2 * expected) <= C3 * t**3


@_settings(40)
@given(stiefel_tangents(shapes=[(3, 1), (8, 3)], horizontal=True), st.sampled_from(METHODS))
def test_retraction_second_order_on_grassmann(point, method):
    """All three retractions are second order on the Grassmannian: for a horizontal `ξ`
    the projector `RRᵀ` of `R(W, tξ)` agrees with that of the geodesic
    `expm(t(ξWᵀ − Wξᵀ)) W` (SciPy) up to O(t³): the error drops ≥ 6× when t halves
    (8× for an exact t³ law; a first-order retraction gives 4×)."""
    W, xi = point

    def error(t):
        R = _retract(W, t * xi, method)
        G = scipy.linalg.expm(t * (xi @ W.T - W @ xi.T)) @ W
        return np.linalg.norm(R @ R.T - G @ G.T)

    t = 2e-2
    assert error(t) <= C3 * t**3
    assert error(t) > 1e-12 and error(t) / error(t / 2) > 6  # far above round-off


@_settings(40)
@given(st.sampled_from(SHAPES), seeds, st.sampled_from(["stiefel", "grassmann"]))
def test_project_tangent(shape, seed, metric):
    """`project_tangent` equals the NumPy formula (`Z − W sym(WᵀZ)`, or `(I − WWᵀ)Z`),
    is idempotent, gives `WᵀΞ` skew (zero for Grassmann), and is orthogonal: the removed
    part `Z − Ξ` is orthogonal to every tangent vector (here `Ξ` itself)."""
    rng = np.random.default_rng(seed)
    W = np_stiefel(rng, *shape)
    Z = rng.standard_normal(shape)
    project = mimflow.project_tangent
    Xi = np.asarray(project(jnp.asarray(W), jnp.asarray(Z), metric))
    expected = np_tangent(W, Z) if metric == "stiefel" else Z - W @ (W.T @ Z)
    np.testing.assert_allclose(Xi, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(project(jnp.asarray(W), jnp.asarray(Xi), metric), Xi, rtol=0, atol=1e-12)
    inner = W.T @ Xi
    assert np.linalg.norm(inner + inner.T) < 1e-12
    if metric == "grassmann":
        assert np.linalg.norm(inner) < 1e-12
    assert abs(np.sum((Z - Xi) * Xi)) < 1e-11 * np.linalg.norm(Z) ** 2


@_settings(30)
@given(st.sampled_from(SHAPES), seeds)
def test_haar_stiefel_is_signed_qr_of_its_gaussian(shape, seed):
    """`haar_stiefel(key, d, r)` has orthonormal columns and is the Q factor, with positive
    `diag(R)`, of the Gaussian `jax.random.normal(key, (d, r))` (its documented
    construction): `R = WᵀG` is upper triangular with a positive diagonal and `WR = G`."""
    d, r = shape
    key = jax.random.PRNGKey(seed)
    W = np.asarray(_haar_jit(key, d, r))
    G = np.asarray(jax.random.normal(key, (d, r)))
    assert W.shape == (d, r)
    assert np.linalg.norm(W.T @ W - np.eye(r)) < 1e-13
    upper = W.T @ G
    np.testing.assert_allclose(np.tril(upper, -1), 0.0, rtol=0, atol=1e-12)
    assert np.all(np.diag(upper) > 0)
    np.testing.assert_allclose(W @ upper, G, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# 3. Overlap sampler and principal angles
# ---------------------------------------------------------------------------


@_settings(40)
@given(st.integers(1, 3), st.sampled_from([0.0, 0.5, 3.0, 1e2, 1e6]), seeds)
def test_sample_overlap_cosines(k, extra, seed):
    """`sample_overlap(key, d, k, r)` for `d = k + r + extra` (also non-integer `d`), with
    `r = 2` (the Bartlett sampler compiles its gamma draws once per `r`, seconds each):
    shape `(k, r)`, finite; `principal_cosines` are its singular values (NumPy SVD),
    largest first, in `[0, 1]` (up to the SVD's rounding) and positive
    (`W*ᵀW0` has full rank for Haar `W0` and `d ≥ k + r`)."""
    r = 2
    d = k + r + extra
    M = np.asarray(mimflow.sample_overlap(jax.random.PRNGKey(seed), d, k, r))
    assert M.shape == (k, r) and np.all(np.isfinite(M))
    cosines = np.asarray(mimflow.principal_cosines(jnp.asarray(M)))
    expected = np.linalg.svd(M, compute_uv=False)
    assert cosines.shape == (min(k, r),)
    np.testing.assert_allclose(cosines, expected, rtol=0, atol=1e-14)
    assert np.all(np.diff(cosines) <= 0)
    assert np.all(cosines > 0) and np.all(cosines <= 1 + 1e-14)


@_settings(20)
@given(st.integers(1, 3), st.integers(1, 3), st.floats(0.0, 1.0, exclude_max=True))
def test_sample_overlap_rejects_small_d(k, r, fraction):
    """`d < k + r` (no room for a Haar start) raises a `ValueError` naming `d`."""
    with pytest.raises(ValueError, match="`d`"):
        mimflow.sample_overlap(jax.random.PRNGKey(0), fraction * (k + r), k, r)


@_settings(40)
@given(st.sampled_from([(3, 2, 2), (5, 1, 3), (5, 3, 4), (8, 3, 2)]), seeds)
def test_principal_angles(shape, seed):
    """`principal_angles(W, U)` between NumPy-QR subspaces: `p = min(r, s)` angles in
    `[0, π/2]`, smallest first, symmetric in `(W, U)`; their cosines are the singular
    values of `WᵀU` (NumPy SVD, = `principal_cosines(WᵀU)`) and their sines those of
    `(I − WWᵀ)U`, so the angles are `arccos(cosines)` (checked where arccos is well
    conditioned, cosine ≤ 0.999); at least `r + s − d` of them are zero (the subspaces
    meet in that dimension)."""
    d, r, s = shape
    rng = np.random.default_rng(seed)
    W, U = np_stiefel(rng, d, r), np_stiefel(rng, d, s)
    angles = np.asarray(mimflow.principal_angles(jnp.asarray(W), jnp.asarray(U)))
    p = min(r, s)
    assert angles.shape == (p,)
    assert np.all(angles >= 0) and np.all(angles <= np.pi / 2 + 1e-15) and np.all(np.diff(angles) >= 0)
    np.testing.assert_allclose(mimflow.principal_angles(jnp.asarray(U), jnp.asarray(W)), angles, rtol=0, atol=1e-13)
    cosines = np.linalg.svd(W.T @ U, compute_uv=False)
    big, small = (W, U) if r >= s else (U, W)
    sines = np.sort(np.linalg.svd(small - big @ (big.T @ small), compute_uv=False))
    np.testing.assert_allclose(np.cos(angles), cosines, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.sin(angles), sines, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.cos(angles), mimflow.principal_cosines(jnp.asarray(W.T @ U)), rtol=0, atol=1e-13)
    conditioned = cosines <= 0.999
    np.testing.assert_allclose(angles[conditioned], np.arccos(cosines[conditioned]), rtol=0, atol=1e-12)
    assert np.sum(angles < 1e-7) >= r + s - d


# ---------------------------------------------------------------------------
# 4. Config parsing
# ---------------------------------------------------------------------------

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
KEYS = [
    *_TOP, "link", "degree", "dim", "index", "k", "hermite", "scale", "phase", "kind", "kernel", "t1",
    "num_saves", "t_min", "rtol", "atol", "max_steps", "batch_size", "dir", "escape_threshold", "lengthscale",
    "offset", "num_features", "features",
]  # fmt: skip
BAD_VALUES = [
    None, True, False, "x", "", "nan", "1e400", "-1", [], {}, [1], [[]], {"a": 1}, float("nan"), float("inf"),
    float("-inf"), -1, -0.5, 0, 0.5, 1e-300, -1e300, 1e300, 10**400, -(10**400), 2**63, 2**64 + 1,
]  # fmt: skip
# `path: …` where path is a field (`target[0].degree`, `sweep.link[1][0].dim`,
# `target.hermite['1,0']`), a file (`/tmp/…/config.yaml`), or a key set by `--set` or by
# the smoke section (`smoke sweep.d`)
_FIELD = r"[A-Za-z_]\w*(?:\[[^\]]+\]|\.\w+)*"
_PATH = re.compile(rf"^((?:smoke|--set) [^:]+|--set|/[^:]+\.yaml|{_FIELD}): ")


def _scalars():
    return st.one_of(
        st.sampled_from(BAD_VALUES),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["hermite", "relu", "staircase", "harmonic", "reduced", "planted", "finite-sample", "1,0"]),
        st.text(max_size=8),
    )


def _documents():
    """Nested dicts (under the schema's keys) and lists of scalars, valid and not."""
    return st.recursive(
        _scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
        ),
        max_leaves=16,
    )


def _check_error(error: ConfigError, raw: object = None) -> None:
    """A config error is one line that starts with the path of the field (or file) at
    fault: its root is a top-level field of the schema, or an unknown key of `raw`."""
    message = str(error)
    assert message and "\n" not in message, message
    assert _PATH.match(message), message
    where = _PATH.match(message).group(1)
    if re.fullmatch(_FIELD, where):
        # a field of the schema, or an unknown key of the document or of its smoke section
        raw = raw if isinstance(raw, dict) else {}
        smoke = raw.get("smoke") if isinstance(raw.get("smoke"), dict) else {}
        roots = {*_TOP, *raw, *(str(key).split(".")[0] for key in smoke)}
        assert re.split(r"[.\[]", where)[0] in roots, message


def _load(raw, directory: str, **kwargs) -> dict | None:
    """`load_config` of `raw` written as YAML: the config, or None after a well-formed
    `ConfigError`; any other exception fails the test."""
    path = Path(directory) / "config.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    try:
        config = mimflow.load_config(path, **kwargs)
    except ConfigError as error:
        _check_error(error, raw)
        event("ConfigError")
        return None
    event("parsed")
    return config


@_settings(80)
@given(st.dictionaries(st.sampled_from(KEYS), _documents(), max_size=5), st.sampled_from([None, *CONFIGS]))
def test_random_documents_load_or_raise_config_error(raw, base):
    """Random nested documents (alone, or merged over a shipped config): `load_config`
    returns a config or raises a one-line `ConfigError` that starts with the field's path
    (checked by a regular expression); nothing else escapes (no TypeError, KeyError,
    OverflowError, MemoryError). Extends `test_config`'s random-config test with huge
    and non-finite numbers, strings and files."""
    if base is not None:
        raw = {**yaml.safe_load(base.read_text()), **raw}
    with tempfile.TemporaryDirectory() as directory:
        _load(raw, directory)


@_settings(40)
@given(st.text(alphabet=st.sampled_from(list("ab01 :-,.[]{}\n\t'\"!&*#|>?%@`e+")), max_size=60))
def test_random_text_loads_or_raises_config_error(text):
    """Random text (YAML punctuation, tags, anchors): a `ConfigError` naming the file, or
    the field at fault when the text parses; nothing else escapes."""
    with tempfile.TemporaryDirectory() as directory:
        _load(text, directory)


def _paths(node, prefix=()):
    """Every path of a nested dict/list document (not the root)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _field_path(path: tuple) -> str:
    """`('sweep', 'link', 1, 0, 'degree')` as the configs name it: `sweep.link[1][0].degree`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_float(value) -> bool:
    """A number that is finite as a float (not NaN, ±inf, or an integer beyond float range)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_number(value) and abs(value) <= sys.float_info.max


@_settings(100)
@given(st.sampled_from(CONFIGS), st.data())
def test_mutated_shipped_configs(path, data):
    """A shipped config with one field dropped or replaced by a wrong type, NaN, a negative,
    huge or tiny number, an empty list…: `load_config` (plain and `smoke`) returns a config
    or raises a one-line `ConfigError` naming a field; when a number is replaced by a
    value that is not a number (or a non-finite one, or one beyond float range), the
    error names exactly that field."""
    raw = yaml.safe_load(path.read_text())
    paths = list(_paths(raw))
    where = data.draw(st.sampled_from(paths))
    value = data.draw(st.sampled_from(["<drop>", *BAD_VALUES]))
    mutated = copy.deepcopy(raw)
    parent = mutated
    for part in where[:-1]:
        parent = parent[part]
    old = parent[where[-1]]
    if value == "<drop>":
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    smoke = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as directory:
        file = Path(directory) / "config.yaml"
        file.write_text(yaml.safe_dump(mutated))
        try:
            mimflow.load_config(file, smoke=smoke)
        except ConfigError as error:
            _check_error(error, mutated)
            not_a_number = value is not None and value != "<drop>" and not _is_float(value)
            if _is_number(old) and not_a_number and where[0] != "smoke":
                assert re.match(rf"{re.escape(_field_path(where))}[.\[:]", str(error)), (str(error), where)
                event("ConfigError naming the mutated number")
            event("ConfigError")
            return
    event("parsed")  # the mutation was harmless (an optional field, a valid value)


@_settings(40)
@given(st.sampled_from(CONFIGS), st.sampled_from(KEYS), st.sampled_from(KEYS), _scalars())
def test_random_overrides_load_or_raise_config_error(path, first, second, value):
    """`--set key.path=value` overrides with random keys and values (written as YAML
    text): a config or a one-line `ConfigError` naming the field (or the override)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()
    try:
        mimflow.load_config(path, [f"{first}.{second}={text}"])
    except ConfigError as error:
        _check_error(error, {first: value})
