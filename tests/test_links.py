"""Tests of the Hermite conventions (DESIGN §1) and of `mimflow.Link` / `mimflow.links`.

Every numerical check compares the library with an independent computation
written here: `numpy.polynomial.hermite_e` for `He_n`, numpy Gauss–Hermite
quadrature (`hermegauss`, weights / √(2π)), `scipy.integrate.quad`, or closed forms.
"""

import functools
import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_orthonormal
from numpy.polynomial import hermite_e
from scipy.integrate import quad

import mimflow
from mimflow import Link, links

NUM_POINTS = 64  # one evaluation batch size everywhere, so JAX compiles few shapes
PHI0 = 1.0 / math.sqrt(2.0 * math.pi)


# --- independent reference implementations (numpy / scipy only) --------------


def h_np(n, x):
    """`He_n(x) / √(n!)` from numpy's probabilists' Hermite series."""
    return hermite_e.hermeval(np.asarray(x, dtype=float), [0.0] * n + [1.0]) / math.sqrt(math.factorial(n))


def h_alpha_np(alpha, z):
    """`h_α(z) = Π_i h_{α_i}(z_i)` for `z` of shape `(..., k)`."""
    z = np.asarray(z, dtype=float)
    return np.prod([h_np(a, z[..., i]) for i, a in enumerate(alpha)], axis=0)


def gh_grid(k, num_nodes):
    """Tensor-product Gauss–Hermite rule for `N(0, I_k)`: points `(n^k, k)`, weights `(n^k,)`."""
    nodes, weights = hermite_e.hermegauss(num_nodes)
    weights = weights / math.sqrt(2.0 * math.pi)
    points = np.array(list(itertools.product(nodes, repeat=k)))
    grid_weights = np.array([math.prod(w) for w in itertools.product(weights, repeat=k)])
    return points, grid_weights


def sym_np(tensor):
    """Average of a tensor over all permutations of its axes."""
    tensor = np.asarray(tensor, dtype=float)
    perms = list(itertools.permutations(range(tensor.ndim)))
    return sum(np.transpose(tensor, p) for p in perms) / len(perms)


def outer_power(vectors):
    """`v_1 ⊗ v_2 ⊗ … ⊗ v_j` for a list of vectors (the scalar 1 for an empty list)."""
    out = np.array(1.0)
    for v in vectors:
        out = np.multiply.outer(out, v)
    return out


def alpha_tensor(alpha):
    """`T^α = √(|α|!/α!) Sym(e_1^{⊗α_1} ⊗ … ⊗ e_k^{⊗α_k})` (DESIGN §1)."""
    k = len(alpha)
    eye = np.eye(k)
    factors = [eye[i] for i, a in enumerate(alpha) for _ in range(a)]
    scale = math.sqrt(math.factorial(sum(alpha)) / math.prod(math.factorial(a) for a in alpha))
    return scale * sym_np(outer_power(factors))


def coef_from_tensor(tensor, alpha):
    """`c_α = ⟨T, T^α⟩` for a symmetric `T` (DESIGN §1: `h_α = ⟨T^α, H_{|α|}⟩`)."""
    return float(np.sum(np.asarray(tensor) * alpha_tensor(alpha)))


@eqx.filter_jit
def _evaluate(link, z):
    return link(z)


def evaluate(link, z):
    """`link(z)` as a numpy array; jitted, since eager dispatch compiles every small op
    for every new shape (≈1 s per link structure) and one jitted call is ≈0.2 s.
    Eager evaluation is exercised separately (`test_single_point_evaluation`,
    `test_add_and_scale`)."""
    return np.asarray(_evaluate(link, jnp.asarray(z, dtype=float)))


def points(k, seed=0):
    return np.random.default_rng(seed).standard_normal((NUM_POINTS, k))


@functools.cache
def relu_oracle(n):
    """`⟨relu, h_n⟩ = ∫_0^∞ x h_n(x) φ(x) dx` by adaptive quadrature."""
    return quad(lambda x: x * h_np(n, x) * math.exp(-x * x / 2) * PHI0, 0, np.inf, epsabs=1e-14, epsrel=1e-13)[0]


@functools.cache
def sign_oracle(n):
    """`⟨sign, h_n⟩ = ∫ sign(x) h_n(x) φ(x) dx`."""
    return (
        2 * quad(lambda x: h_np(n, x) * math.exp(-x * x / 2) * PHI0, 0, np.inf, epsabs=1e-14, epsrel=1e-13)[0] * (n % 2)
    )


@functools.cache
def tanh_oracle(n):
    fn = lambda x: math.tanh(x) * h_np(n, x) * math.exp(-x * x / 2) * PHI0
    return quad(fn, -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13)[0]


def single_index_coefficients(link):
    """For a link on ℝ¹ the tensors are `(1,)*n` arrays holding `c_n` itself."""
    return np.array([float(np.asarray(link.tensors[n]).reshape(-1)[0]) for n in range(link.degree + 1)])


# --- 1. one-dimensional Hermite polynomials ----------------------------------


def test_hermite_1d_matches_numpy():
    degree = 20
    x = np.linspace(-6.0, 6.0, 241)
    values = np.asarray(mimflow.hermite_1d(degree, x))
    assert values.shape == (241, degree + 1)
    for n in range(degree + 1):
        ref = h_np(n, x)
        # Both sides are float64 recurrences with cancellation; errors ~1e-15 of the
        # column's scale were measured, 1e-12 of the scale leaves ~1000x margin.
        np.testing.assert_allclose(values[:, n], ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_hermite_1d_batch_shape():
    x = np.random.default_rng(1).standard_normal((3, 4))
    values = np.asarray(mimflow.hermite_1d(3, x))
    assert values.shape == (3, 4, 4)
    np.testing.assert_allclose(values[..., 3], h_np(3, x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dim, degree", [(2, 3), (4, 20)])  # static slices; the gather (> 4096 entries)
def test_hermite_basis_is_the_product_of_1d_polynomials(dim, degree):
    """`h_α(z) = Π_i h_{α_i}(z_i)` against NumPy's `He_n / √n!` for every multi-index."""
    from mimflow._hermite import hermite_basis, multi_indices

    z = np.random.default_rng(2).standard_normal((5, dim))
    alphas = multi_indices(dim, degree)
    values = np.asarray(jax.jit(hermite_basis, static_argnums=(0, 1))(dim, degree, jnp.asarray(z)))
    expected = np.stack([np.prod([h_np(a, z[:, i]) for i, a in enumerate(alpha)], axis=0) for alpha in alphas], -1)
    np.testing.assert_allclose(values, expected, rtol=1e-11, atol=1e-11)


def test_hermite_1d_orthonormal():
    degree = 20
    nodes, weights = hermite_e.hermegauss(30)  # exact for degree ≤ 59 ≥ 2·20
    weights = weights / math.sqrt(2.0 * math.pi)
    values = np.asarray(mimflow.hermite_1d(degree, nodes))
    gram = values.T @ (weights[:, None] * values)
    # Exact quadrature: only float64 rounding remains.
    np.testing.assert_allclose(gram, np.eye(degree + 1), atol=1e-11)


def test_multi_indices_order():
    for k, j in [(1, 3), (2, 4), (3, 3)]:
        expected = sorted((a for a in itertools.product(range(j + 1), repeat=k) if sum(a) == j), reverse=True)
        np.testing.assert_array_equal(mimflow.multi_indices(k, j), np.array(expected).reshape(-1, k))


# --- 2. Hermite tensors ------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("j", [1, 2, 3, 4])
def test_rank_one_tensor_is_ridge_hermite(k, j):
    rng = np.random.default_rng(10 * k + j)
    u = rng.standard_normal(k)
    u /= np.linalg.norm(u)
    z = points(k)
    link = Link.from_tensors({j: outer_power([u] * j)})
    # ⟨u^{⊗j}, H_j(z)⟩ = h_j(u·z); values are O(10), so 1e-11 is ~1e4 eps.
    np.testing.assert_allclose(evaluate(link, z), h_np(j, z @ u), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(float(link.norm2()), 1.0, rtol=1e-13)


@pytest.mark.parametrize("k", [2, 3])
def test_hermite_tensors_orthogonal(k):
    rng = np.random.default_rng(k)
    degrees = [1, 2, 3, 4]
    a = {j: rng.standard_normal((k,) * j) for j in degrees}  # deliberately not symmetric
    b = {j: rng.standard_normal((k,) * j) for j in degrees}
    grid, weights = gh_grid(k, 6)  # f_A f_B has degree ≤ 8 ≤ 2·6 − 1: exact
    fa = {j: evaluate(Link.from_tensors({j: a[j]}), grid) for j in degrees}
    fb = {j: evaluate(Link.from_tensors({j: b[j]}), grid) for j in degrees}
    for j in degrees:
        for l in degrees:
            got = np.sum(weights * fa[j] * fb[l])
            expected = np.sum(sym_np(a[j]) * sym_np(b[l])) if j == l else 0.0
            # exact quadrature; values O(10): 1e-10 covers the rounding of 6^k terms
            np.testing.assert_allclose(got, expected, atol=1e-10, err_msg=f"j={j}, l={l}")


@pytest.mark.parametrize("k", [2, 3])
def test_norm2_is_mean_square(k):
    rng = np.random.default_rng(20 + k)
    tensors = {j: rng.standard_normal((k,) * j) for j in [1, 2, 3]}
    link = Link.from_tensors(tensors)
    grid, weights = gh_grid(k, 6)  # f² has degree 6 ≤ 11: exact
    mean_square = np.sum(weights * evaluate(link, grid) ** 2)
    np.testing.assert_allclose(float(link.norm2()), mean_square, rtol=1e-12)
    closed_form = sum(np.sum(sym_np(t) ** 2) for t in tensors.values())
    np.testing.assert_allclose(float(link.norm2()), closed_form, rtol=1e-12)


# --- 3. from_hermite and from_tensors agree -----------------------------------


def test_from_hermite_z1z2_tensor():
    link = Link.from_hermite({(1, 1): 1.0})
    assert set(link.tensors) == {2}
    e1, e2 = np.eye(2)
    expected = (np.outer(e1, e2) + np.outer(e2, e1)) / math.sqrt(2.0)
    np.testing.assert_allclose(np.asarray(link.tensors[2]), expected, atol=1e-15)
    z = points(2)
    np.testing.assert_allclose(evaluate(link, z), z[:, 0] * z[:, 1], rtol=1e-13, atol=1e-13)


ALPHAS_3 = [(0, 0, 0), (1, 0, 0), (0, 1, 1), (2, 1, 0), (1, 1, 1), (0, 2, 2), (3, 0, 1), (0, 0, 4)]


@pytest.mark.parametrize("alpha", ALPHAS_3)
def test_from_hermite_single_alpha(alpha):
    c = 0.7
    link = Link.from_hermite({alpha: c})
    j = sum(alpha)
    assert set(link.tensors) == {j}
    expected = c * alpha_tensor(alpha)
    np.testing.assert_allclose(np.asarray(link.tensors[j]), expected, atol=1e-14)
    np.testing.assert_allclose(np.sum(alpha_tensor(alpha) ** 2), 1.0, rtol=1e-13)  # T^α has unit norm
    z = points(3)
    np.testing.assert_allclose(evaluate(link, z), c * h_alpha_np(alpha, z), rtol=1e-11, atol=1e-11)
    if j > 0:
        # the same function through from_tensors with the unsymmetrised e^{⊗α}
        eye = np.eye(3)
        raw = outer_power([eye[i] for i, a in enumerate(alpha) for _ in range(a)])
        scale = math.sqrt(math.factorial(j) / math.prod(math.factorial(a) for a in alpha))
        via_tensors = Link.from_tensors({j: c * scale * raw})
        np.testing.assert_allclose(np.asarray(via_tensors.tensors[j]), expected, atol=1e-14)
        np.testing.assert_allclose(evaluate(via_tensors, z), c * h_alpha_np(alpha, z), rtol=1e-11, atol=1e-11)


def test_from_hermite_combination_evaluates_product():
    rng = np.random.default_rng(3)
    coeffs = {alpha: float(rng.standard_normal()) for alpha in ALPHAS_3}
    link = Link.from_hermite(coeffs)
    z = points(3)
    expected = sum(c * h_alpha_np(alpha, z) for alpha, c in coeffs.items())
    np.testing.assert_allclose(evaluate(link, z), expected, rtol=1e-11, atol=1e-11)
    # orthonormality of the h_α: ‖f‖² = Σ c_α²
    np.testing.assert_allclose(float(link.norm2()), sum(c**2 for c in coeffs.values()), rtol=1e-13)
    # Link.coefficients() lists c_α in the rows of multi_indices(k, j)
    for j, values in link.coefficients().items():
        for alpha, value in zip(mimflow.multi_indices(3, j), np.asarray(values), strict=True):
            np.testing.assert_allclose(value, coeffs.get(tuple(alpha), 0.0), atol=1e-14)


def test_single_point_evaluation():
    link = Link.from_hermite({(1, 0): 1.0, (1, 1): 1.0})
    value = link(jnp.array([0.5, 2.0]))
    assert value.shape == ()
    np.testing.assert_allclose(float(value), 0.5 + 0.5 * 2.0, rtol=1e-14)
    z = np.random.default_rng(2).standard_normal((2, 3, 2))
    np.testing.assert_allclose(evaluate(link, z), z[..., 0] + z[..., 0] * z[..., 1], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("k, j", [(2, 2), (2, 4), (3, 3)])
def test_from_tensors_symmetrises(k, j):
    rng = np.random.default_rng(100 * k + j)
    tensor = rng.standard_normal((k,) * j)
    link = Link.from_tensors({j: tensor})
    np.testing.assert_allclose(np.asarray(link.tensors[j]), sym_np(tensor), atol=1e-14)


# --- 4. from_function ----------------------------------------------------------

# He_n / √(n!) written out, independent of the library's recurrence
_H_JNP = [
    lambda x: jnp.ones_like(x),
    lambda x: x,
    lambda x: (x**2 - 1) / math.sqrt(2),
    lambda x: (x**3 - 3 * x) / math.sqrt(6),
    lambda x: (x**4 - 6 * x**2 + 3) / math.sqrt(24),
]


def test_from_function_recovers_polynomial():
    rng = np.random.default_rng(4)
    alphas = [a for a in itertools.product(range(5), repeat=2) if sum(a) <= 4]
    coeffs = {a: float(rng.standard_normal()) for a in alphas}

    def fn(z):
        return sum(c * _H_JNP[a[0]](z[0]) * _H_JNP[a[1]](z[1]) for a, c in coeffs.items())

    # 10 nodes integrate degree ≤ 19 exactly; f·h_α and f² have degree ≤ 8.
    # (jit only saves the op-by-op compilation of the vmapped fn; any JAX callable works)
    link = Link.from_function(jax.jit(fn), dim=2, degree=4, num_nodes=10)
    assert set(link.tensors) == {0, 1, 2, 3, 4}
    for a, c in coeffs.items():
        np.testing.assert_allclose(coef_from_tensor(link.tensors[sum(a)], a), c, atol=1e-12, err_msg=str(a))
    for j, values in link.coefficients().items():
        expected = [coeffs[tuple(a)] for a in mimflow.multi_indices(2, j)]
        np.testing.assert_allclose(np.asarray(values), expected, atol=1e-12)
    assert abs(float(link.residual)) < 1e-12
    z = points(2)
    expected = sum(c * h_alpha_np(a, z) for a, c in coeffs.items())
    np.testing.assert_allclose(evaluate(link, z), expected, rtol=1e-10, atol=1e-10)


def test_from_function_sin_default_nodes():
    # E[f(x) He_n(x)] = E[f^{(n)}(x)], E cos x = e^{-1/2}, E sin x = 0, E sin² x = (1 − e^{-2})/2
    degree = 9  # the degree used by the other 300-node projections: shapes are reused
    link = Link.from_function(lambda z: jnp.sin(z[0]), dim=1, degree=degree)
    expected = np.array(
        [(n % 2) * (-1) ** (n // 2) * math.exp(-0.5) / math.sqrt(math.factorial(n)) for n in range(degree + 1)]
    )
    # sin is entire: 300-node Gauss–Hermite is accurate to rounding
    np.testing.assert_allclose(single_index_coefficients(link), expected, atol=1e-13)
    residual = (1 - math.exp(-2)) / 2 - np.sum(expected**2)
    np.testing.assert_allclose(float(link.residual), residual, atol=1e-13)


def test_from_function_relu_convergence():
    degree = 9
    oracle = np.array([relu_oracle(n) for n in range(degree + 1)])
    relu_fn = lambda z: jnp.maximum(z[0], 0.0)
    errors = {}
    for num_nodes in [75, 150, 300]:
        link = Link.from_function(relu_fn, dim=1, degree=degree, num_nodes=num_nodes)
        errors[num_nodes] = np.abs(single_index_coefficients(link) - oracle).max()
    # the kink at 0 gives O(1/num_nodes) quadrature error: doubling the nodes should
    # at least nearly halve it (0.6 leaves room for the odd/even-node constant)
    assert errors[150] <= 0.6 * errors[75], errors
    assert errors[300] <= 0.6 * errors[150], errors
    assert errors[300] < 1e-3, errors

    # residual = Q[relu²] − Σ c_q²; against ½ − Σ c² it differs by at most
    # |Q[relu²] − ½| + Σ |c_q − c| (|c_q| + |c|) ≤ |Q[relu²] − ½| + err Σ (2|c| + err)
    nodes, weights = hermite_e.hermegauss(300)
    quad_mean_square = np.sum(weights / math.sqrt(2 * math.pi) * np.maximum(nodes, 0) ** 2)
    bound = abs(quad_mean_square - 0.5) + errors[300] * np.sum(2 * np.abs(oracle) + errors[300])
    residual = 0.5 - np.sum(oracle**2)
    assert abs(float(link.residual) - residual) <= bound, (float(link.residual), residual, bound)


def test_from_function_residual_of_sum_is_finite():
    # A projected polynomial has residual 0 up to rounding, which may be slightly
    # negative; the residual of a sum of such links must still be a number ≈ 0.
    f = Link.from_function(lambda z: 0.7 * z[0], dim=1, degree=3, num_nodes=10)
    g = Link.from_function(lambda z: 0.3 * z[0] ** 2, dim=1, degree=3, num_nodes=10)
    for link in [f, g, f + g, f + f]:
        assert np.isfinite(float(link.residual)), float(link.residual)
        assert abs(float(link.residual)) < 1e-12


def test_residual_of_a_sum_bounds_the_sums_truncation_error():
    """`(f + g).residual` is documented as an upper bound on `E(f + g)² − Σ_j ‖T_j‖²`
    (the sum's own truncation error), `(√r_f + √r_g)²` by Cauchy–Schwarz, with
    equality for `f + f` (4 r_f). relu + sign by closed forms: `E relu² = ½`,
    `E sign² = 1`, `E relu·sign = E relu = φ(0)`; coefficients by adaptive quadrature."""
    relu_c = np.array([relu_oracle(n) for n in range(6)])
    sign_c = np.array([sign_oracle(n) for n in range(6)])
    r_relu, r_sign = 0.5 - np.sum(relu_c[:5] ** 2), 1.0 - np.sum(sign_c**2)
    truth = 0.5 + 1.0 + 2 * PHI0 - np.sum((np.append(relu_c[:5], 0.0) + sign_c) ** 2)
    total = links.relu(4) + links.sign(5)
    assert truth <= float(total.residual) + 1e-12
    # arithmetic on closed-form residuals: measured ≤ 4e-16 relative
    np.testing.assert_allclose(float(total.residual), (math.sqrt(r_relu) + math.sqrt(r_sign)) ** 2, rtol=1e-13)
    # f + f is 2f, whose truncation error is exactly 4 r_f: the bound is attained
    np.testing.assert_allclose(float((links.relu(4) + links.relu(4)).residual), 4 * r_relu, rtol=1e-13)


# --- 5. the catalogue ----------------------------------------------------------


def test_relu_closed_form():
    degree = 8
    link = links.relu(degree)
    assert link.dim == 1 and link.degree == degree
    oracle = np.array([relu_oracle(n) for n in range(degree + 1)])
    # closed form vs adaptive quadrature with epsabs 1e-14 (the tolerance; measured ≤ 6e-17)
    np.testing.assert_allclose(single_index_coefficients(link), oracle, rtol=0, atol=1e-14)
    np.testing.assert_allclose(float(link.residual), 0.5 - np.sum(oracle**2), rtol=0, atol=1e-14)


def test_sign_closed_form():
    degree = 9
    link = links.sign(degree)
    oracle = np.array([sign_oracle(n) for n in range(degree + 1)])
    coeffs = np.array(
        [float(np.asarray(link.tensors[n]).reshape(-1)[0]) if n in link.tensors else 0.0 for n in range(10)]
    )
    # closed form vs adaptive quadrature with epsabs 1e-14 (the tolerance; measured ≤ 2e-16)
    np.testing.assert_allclose(coeffs, oracle, rtol=0, atol=1e-14)
    np.testing.assert_allclose(float(link.residual), 1.0 - np.sum(oracle**2), rtol=0, atol=1e-14)


def test_tanh_quadrature():
    degree = 9
    link = links.tanh(degree)
    oracle = np.array([tanh_oracle(n) for n in range(degree + 1)])
    # tanh is analytic in the strip |Im z| < π/2, so 300-node Gauss–Hermite converges
    # geometrically (errors ~1e-16 measured); 1e-11 covers quad's own 1e-13 tolerance
    np.testing.assert_allclose(single_index_coefficients(link), oracle, atol=1e-11)
    mean_square = quad(lambda x: math.tanh(x) ** 2 * math.exp(-x * x / 2) * PHI0, -np.inf, np.inf, epsabs=1e-14)[0]
    np.testing.assert_allclose(float(link.residual), mean_square - np.sum(oracle**2), atol=1e-11)


def test_single_index_links_on_other_coordinates():
    z = points(2)
    relu = links.relu(8, dim=2, index=1)
    expected = sum(relu_oracle(n) * h_np(n, z[:, 1]) for n in range(9))
    # values up to ~2; measured ≤ 8e-16 absolute (relu, sign, tanh)
    np.testing.assert_allclose(evaluate(relu, z), expected, rtol=0, atol=5e-14)
    sign = links.sign(9, dim=2, index=1)
    expected = sum(sign_oracle(n) * h_np(n, z[:, 1]) for n in range(10))
    np.testing.assert_allclose(evaluate(sign, z), expected, rtol=0, atol=5e-14)
    tanh = links.tanh(9, dim=2, index=0)
    expected = sum(tanh_oracle(n) * h_np(n, z[:, 0]) for n in range(10))
    np.testing.assert_allclose(evaluate(tanh, z), expected, rtol=0, atol=5e-14)


@pytest.mark.parametrize("j, dim, index", [(1, 1, 0), (2, 1, 0), (3, 2, 1), (4, 3, 2), (2, 3, 0)])
def test_hermite_link(j, dim, index):
    link = links.hermite(j, dim=dim, index=index)
    assert link.dim == dim
    z = points(dim)
    np.testing.assert_allclose(evaluate(link, z), h_np(j, z[:, index]), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(float(link.norm2()), 1.0, rtol=1e-13)


def test_degree_zero_catalogue_links():
    # `hermite` and `relu` accept degree 0 (their checks allow it); h_0 = 1 and the
    # degree-0 truncation of relu is the constant φ(0) with residual ½ − φ(0)².
    z = points(2)
    one = links.hermite(0, dim=2, index=1)
    np.testing.assert_allclose(evaluate(one, z), np.ones(NUM_POINTS), rtol=1e-14)
    relu0 = links.relu(0)
    np.testing.assert_allclose(evaluate(relu0, z[:, :1]), np.full(NUM_POINTS, PHI0), rtol=1e-14)
    np.testing.assert_allclose(float(relu0.residual), 0.5 - PHI0**2, rtol=1e-14)


def test_embed():
    base = Link.from_hermite({(1, 0): 1.0, (1, 1): 1.0})  # w1 + w1 w2
    link = links.embed(base, 4, (3, 1))
    assert link.dim == 4
    z = points(4)
    np.testing.assert_allclose(evaluate(link, z), z[:, 3] + z[:, 3] * z[:, 1], rtol=1e-12, atol=1e-12)
    single = links.embed(links.hermite(3), 4, 2)
    np.testing.assert_allclose(evaluate(single, z), h_np(3, z[:, 2]), rtol=1e-11, atol=1e-11)


def test_largest_links_build():
    """The largest degree, 63 (64 was accepted and then failed in NumPy: a 65-axis
    index array), evaluates to `He_63/√63!` (numpy's series) on `|x| ≤ 2`, where both
    recurrences are stable; and a constant placed on `ℝ^{2^20}` builds without the
    `2^20 × 2^20` identity `embed` used to allocate (a `MemoryError`)."""
    top = links.hermite(63)
    x = np.linspace(-2.0, 2.0, 9)[:, None]
    np.testing.assert_allclose(evaluate(top, x), h_np(63, x[:, 0]), rtol=0, atol=5e-14)  # measured 5e-16
    constant = links.hermite(0, dim=2**20, index=5)
    assert constant.dim == 2**20 and float(constant.tensors[0]) == 1.0
    placed = links.embed(links.staircase(2), 6, (4, 1))  # columns (4, 1) of the identity
    np.testing.assert_array_equal(np.argwhere(np.asarray(placed.tensors[1])), [[4]])
    np.testing.assert_array_equal(np.argwhere(np.asarray(placed.tensors[2])), [[1, 4], [4, 1]])


def test_staircase():
    link = links.staircase(3)
    z = points(3)
    expected = z[:, 0] + z[:, 0] * z[:, 1] + z[:, 0] * z[:, 1] * z[:, 2]
    np.testing.assert_allclose(evaluate(link, z), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(link.norm2()), 3.0, rtol=1e-13)


@pytest.mark.parametrize("j, phase", [(1, 0.0), (2, 0.0), (3, 0.0), (3, 0.4), (4, 1.1)])
def test_harmonic(j, phase):
    link = links.harmonic(j, phase)
    assert link.dim == 2 and set(link.tensors) == {j}
    np.testing.assert_allclose(float(link.norm2()), 1.0, rtol=1e-13)
    grid, weights = gh_grid(2, j + 1)  # f² has degree 2j ≤ 2(j+1) − 1: exact
    np.testing.assert_allclose(np.sum(weights * evaluate(link, grid) ** 2), 1.0, rtol=1e-12)

    z = points(2)
    w = z[:, 0] + 1j * z[:, 1]
    shape = np.real(np.exp(-1j * phase) * w**j)
    # w = z1 + i z2 has E|w|^{2j} = 2^j j! and E w^{2j} = 0, so E Re(e^{-iφ} w^j)² = 2^{j−1} j!
    expected = shape / math.sqrt(2 ** (j - 1) * math.factorial(j))
    np.testing.assert_allclose(evaluate(link, z), expected, rtol=1e-11, atol=1e-11)
    # the least-squares constant relating the two is 1/√(2^{j−1} j!) and the fit is exact
    scale = np.dot(shape, evaluate(link, z)) / np.dot(shape, shape)
    np.testing.assert_allclose(scale, 1 / math.sqrt(2 ** (j - 1) * math.factorial(j)), rtol=1e-11)

    angle = 2 * math.pi / j
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rotated = link.transform(rotation)
    np.testing.assert_allclose(evaluate(rotated, z), expected, rtol=1e-11, atol=1e-11)


def test_harmonic_not_invariant_under_other_rotations():
    # guards the invariance test against a trivially invariant (e.g. radial) link
    link = links.harmonic(3)
    angle = 2 * math.pi / 5
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    z = points(2)
    assert np.max(np.abs(evaluate(link.transform(rotation), z) - evaluate(link, z))) > 0.1


def test_transform_rotation_and_embedding():
    rng = np.random.default_rng(5)
    coeffs = {(1, 0, 0): 0.5, (0, 2, 0): -1.0, (1, 1, 1): 0.8, (0, 1, 3): 0.3, (2, 0, 0): 0.2}
    link = Link.from_hermite(coeffs)
    f_np = lambda x: sum(c * h_alpha_np(a, x) for a, c in coeffs.items())

    q = random_orthonormal(rng, 3, 3)
    z = points(3)
    # row-wise Qᵀ z is z @ Q
    np.testing.assert_allclose(evaluate(link.transform(q), z), f_np(z @ q), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(float(link.transform(q).norm2()), float(link.norm2()), rtol=1e-12)

    a = random_orthonormal(rng, 4, 3)  # embedding ℝ³ → ℝ⁴
    embedded = link.transform(a)
    assert embedded.dim == 4
    z4 = points(4)
    np.testing.assert_allclose(evaluate(embedded, z4), f_np(z4 @ a), rtol=1e-10, atol=1e-10)


# --- 6. algebra ----------------------------------------------------------------


def test_add_and_scale():
    f = Link.from_hermite({(1, 0): 1.0, (1, 1): 1.0})  # z1 + z1 z2
    g = Link.from_hermite({(2, 0): -1.0, (0, 3): 0.5})  # −h2(z1) + ½ h3(z2)
    z = points(2)
    f_np = z[:, 0] + z[:, 0] * z[:, 1]
    g_np = -h_np(2, z[:, 0]) + 0.5 * h_np(3, z[:, 1])
    np.testing.assert_allclose(np.asarray((f + g)(z)), f_np + g_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray((2.0 * f)(z)), 2 * f_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray((f * 2.0)(z)), 2 * f_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray((f * jnp.asarray(-3.0))(z)), -3 * f_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray((f + (-1) * g)(z)), f_np - g_np, rtol=1e-12, atol=1e-12)
    # distinct h_α are orthonormal: ‖f + g‖² = 1 + 1 + 1 + ¼
    np.testing.assert_allclose(float((f + g).norm2()), 3.25, rtol=1e-13)
    # scaling multiplies the truncation residual by scale²
    relu = links.relu(4)
    oracle = np.array([relu_oracle(n) for n in range(5)])
    # against quadrature with epsabs 1e-14
    np.testing.assert_allclose(float((2.0 * relu).residual), 4 * (0.5 - np.sum(oracle**2)), rtol=0, atol=1e-14)


@eqx.filter_jit
def _arithmetic(f, g, h, z):
    """Values and norms of links built by `-`, `/` and `sum`, in one compiled call (eager
    dispatch compiles each op separately); the scalars are Python and NumPy numbers and a
    concrete JAX array, so the checks on them run as they do outside `jit`."""
    built = [f - g, g - f, -g, f / 2, f / -0.25, f / jnp.asarray(4.0), f / np.float32(8.0)]
    built += [sum([f, g, h]), sum([f, -g, h / 4])]
    return [link(z) for link in built], [(f - g).norm2(), (f / 2).norm2(), (f - f).norm2()]


def test_subtract_negate_divide_and_sum():
    f = Link.from_hermite({(1, 0): 1.0, (1, 1): 1.0})  # z1 + z1 z2
    g = Link.from_hermite({(2, 0): -1.0, (0, 3): 0.5})  # −h2(z1) + ½ h3(z2): degrees f lacks
    h = Link.from_hermite({(0, 0): 0.25, (1, 1): -2.0})  # ¼ − 2 z1 z2
    z = points(2, seed=7)
    f_np = z[:, 0] + z[:, 0] * z[:, 1]
    g_np = -h_np(2, z[:, 0]) + 0.5 * h_np(3, z[:, 1])
    h_np_ = 0.25 - 2.0 * z[:, 0] * z[:, 1]
    expected = [f_np - g_np, g_np - f_np, -g_np, f_np / 2, -4 * f_np, f_np / 4, f_np / 8]
    expected += [f_np + g_np + h_np_, f_np - g_np + h_np_ / 4]
    values, norms = _arithmetic(f, g, h, jnp.asarray(z))
    for got, want in zip(values, expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
    # ‖f − g‖² = ‖f‖² + ‖g‖² = 2 + 1.25 (orthogonal), ‖f / 2‖² = ‖f‖² / 4, and f − f = 0
    np.testing.assert_allclose(np.asarray(norms), [3.25, 0.5, 0.0], rtol=1e-13, atol=1e-30)
    # the start value 0 of `sum` is the only scalar a link adds to
    assert sum([f]) is f and 0.0 + f is f and np.int64(0) + f is f
    for scalar in [1, 0.5, True, False]:
        with pytest.raises(TypeError):
            scalar + f


def test_residual_of_differences_negations_and_quotients():
    """`f − g` bounds its truncation error as `f + g` does, `(√r_f + √r_g)²` (Cauchy–
    Schwarz on the error `e_f − e_g`); `−f` keeps `r_f` and `f / c` has `r_f / c²`.
    relu − sign by closed forms: `E relu² = ½`, `E sign² = 1`, `E relu·sign = φ(0)`."""
    relu_c = np.array([relu_oracle(n) for n in range(6)])
    sign_c = np.array([sign_oracle(n) for n in range(6)])
    r_relu, r_sign = 0.5 - np.sum(relu_c[:5] ** 2), 1.0 - np.sum(sign_c**2)
    relu, sign = links.relu(4), links.sign(5)
    bound = (math.sqrt(r_relu) + math.sqrt(r_sign)) ** 2
    truth = 0.5 + 1.0 - 2 * PHI0 - np.sum((np.append(relu_c[:5], 0.0) - sign_c) ** 2)
    difference = relu - sign
    assert truth <= float(difference.residual) + 1e-12
    # arithmetic on closed-form residuals: measured ≤ 5e-16 relative
    np.testing.assert_allclose(float(difference.residual), bound, rtol=1e-13)
    np.testing.assert_allclose(float((sign - relu).residual), bound, rtol=1e-13)
    np.testing.assert_allclose(float((-relu).residual), r_relu, rtol=1e-13)
    np.testing.assert_allclose(float((relu / 2).residual), r_relu / 4, rtol=1e-13)
    np.testing.assert_allclose(float((relu / jnp.asarray(-0.5)).residual), 4 * r_relu, rtol=1e-13)
    # `sum` chains `+`: (√r + √r_s + √r)² for relu + sign + relu
    total = sum([relu, sign, relu])
    np.testing.assert_allclose(float(total.residual), (2 * math.sqrt(r_relu) + math.sqrt(r_sign)) ** 2, rtol=1e-13)
    # f − f is the zero function, but the bound is kept (documented): 4 r_f
    np.testing.assert_allclose(float((relu - relu).residual), 4 * r_relu, rtol=1e-13)


def test_arithmetic_with_traced_scalars():
    f = Link.from_hermite({(1, 0): 1.0, (0, 2): 0.5})  # ‖f‖² = 1.25
    g = Link.from_hermite({(1, 0): 2.0, (1, 1): 1.0})  # ⟨f, g⟩ = 2
    # ‖c f − g‖² = 1.25 c² − 4 c + 5 and ‖f / c‖² = 1.25 / c²
    grad = jax.jit(jax.grad(lambda c: (c * f - g).norm2()))(3.0)
    np.testing.assert_allclose(float(grad), 2 * 1.25 * 3.0 - 4.0, rtol=1e-12)
    grad = jax.jit(jax.grad(lambda c: (f / c).norm2()))(2.0)
    np.testing.assert_allclose(float(grad), -2 * 1.25 / 2.0**3, rtol=1e-12)
    norms = jax.jit(jax.vmap(lambda c: sum([f / c, -g]).norm2()))(jnp.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(np.asarray(norms), [1.25 / c**2 - 4 / c + 5 for c in [1.0, 2.0, 4.0]], rtol=1e-12)
    # residual (|c| √r_relu + √r_sign)² of c·relu − sign, differentiated through `_safe_sqrt`
    r_relu = 0.5 - sum(relu_oracle(n) ** 2 for n in range(5))
    r_sign = 1.0 - sum(sign_oracle(n) ** 2 for n in range(6))
    relu, sign = links.relu(4), links.sign(5)
    grad = jax.jit(jax.grad(lambda c: (c * relu - sign).residual))(2.0)
    expected = 2 * (2 * math.sqrt(r_relu) + math.sqrt(r_sign)) * math.sqrt(r_relu)
    np.testing.assert_allclose(float(grad), expected, rtol=1e-8)


def test_with_degrees():
    f = Link.from_hermite({(1, 0): 1.0, (1, 1): 1.0})
    padded = f.with_degrees([0, 2, 5])
    assert set(padded.tensors) == {0, 1, 2, 5}
    assert np.asarray(padded.tensors[0]).shape == ()
    assert np.asarray(padded.tensors[5]).shape == (2,) * 5
    assert not np.any(np.asarray(padded.tensors[5])) and float(padded.tensors[0]) == 0.0
    z = points(2)
    np.testing.assert_allclose(evaluate(padded, z), z[:, 0] + z[:, 0] * z[:, 1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(padded.norm2()), 2.0, rtol=1e-13)


def test_stack_vmap():
    members = [
        links.hermite(1, dim=2, index=0),
        links.staircase(2),
        links.harmonic(3, 0.2),
        links.relu(4, dim=2, index=1),
        Link.from_hermite({(0, 0): 0.5, (2, 2): -1.0}),
    ]
    stacked = links.stack(members)
    z = points(2)
    batched = np.asarray(jax.jit(jax.vmap(lambda f: f(z)))(stacked))
    assert batched.shape == (len(members), NUM_POINTS)
    norms = np.asarray(jax.jit(jax.vmap(lambda f: f.norm2()))(stacked))
    for i, member in enumerate(members):
        np.testing.assert_allclose(batched[i], evaluate(member, z), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(norms[i], float(member.norm2()), rtol=1e-13)
        np.testing.assert_allclose(float(stacked.residual[i]), float(member.residual), rtol=1e-13)
    # and against plain formulas for two of them
    np.testing.assert_allclose(batched[1], z[:, 0] + z[:, 0] * z[:, 1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batched[4], 0.5 - h_np(2, z[:, 0]) * h_np(2, z[:, 1]), rtol=1e-12, atol=1e-12)


@functools.cache
def _staircase2():
    return links.staircase(2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda f: f * True, r"`scale` must be a real number, not a bool, got True"),
        (lambda f: False * f, r"`scale` must be a real number, not a bool, got False"),
        (lambda f: f * np.bool_(True), r"`scale`.*not a bool"),
        (lambda f: f * jnp.asarray(True), r"`scale`.*not a bool"),
        (lambda f: jax.jit(lambda b: (f * b).norm2())(True), r"`scale`.*not a bool"),  # traced bool
        (lambda f: f / True, r"`divisor` must be a real number, not a bool, got True"),
        (lambda f: f * 1j, r"`scale` must be a real number, not complex, got 1j"),
        (lambda f: (1 + 0j) * f, r"`scale`.*not complex"),
        (lambda f: f * jnp.asarray(2j), r"`scale`.*not complex"),
        (lambda f: f / 1j, r"`divisor`.*not complex"),
        (lambda f: f * np.nan, r"`scale` must be finite, got nan"),
        (lambda f: f / np.nan, r"`divisor` must be finite, got nan"),
        (lambda f: f / -np.inf, r"`divisor` must be finite, got -inf"),
        (lambda f: f / jnp.asarray(np.inf), r"`divisor` must be finite, got inf"),
        (lambda f: f / 0, r"`divisor` must be nonzero, got 0"),
        (lambda f: f / -0.0, r"`divisor` must be nonzero, got -0.0"),
        (lambda f: f / jnp.asarray(0.0), r"`divisor` must be nonzero"),
        (lambda f: f * "2", r"`scale` must be a real number, got str '2'"),
        (lambda f: f / None, r"`divisor` must be a real number, got NoneType None"),
        (lambda f: f * f, r"`scale`.*only by scalars, got a Link"),
        (lambda f: f / f, r"`divisor`.*only by scalars, got a Link"),
        (lambda f: f * np.ones(2), r"`scale` must be a scalar, got shape \(2,\)"),
        (lambda f: f / jnp.ones((1,)), r"`divisor` must be a scalar, got shape \(1,\)"),
        (lambda f: f - Link({1: jnp.ones(3)}, 3), r"cannot subtract links of dimensions 2 and 3"),
    ],
)
def test_link_arithmetic_refuses(make, match):
    """Links scale and divide by one finite real number only: bools (even traced),
    complex numbers, NaN, ±inf, zero divisors, non-numbers, links and arrays are refused."""
    with pytest.raises(ValueError, match=match):
        make(_staircase2())


# --- 7. bad input --------------------------------------------------------------


def _nan_fn(z):
    return jnp.where(z[0] > 0, jnp.nan, z[0])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Link.from_tensors({2: np.ones((2, 3))}), r"tensors\[2\].*shape \(2, 2\)"),
        (lambda: Link.from_tensors({1: np.ones(2), 2: np.ones((3, 3))}), r"dimensions \[2, 3\]"),
        (lambda: Link.from_tensors({1: np.array([1.0, np.nan])}), r"tensors\[1\].*finite"),
        (lambda: Link.from_tensors({1: np.array([1.0, np.inf])}), r"tensors\[1\].*finite"),
        (lambda: Link.from_tensors({1: np.ones(2), -1: 1.0}), r"keys.*degrees in \[0, 63\].*-1"),
        (lambda: Link.from_tensors({}), r"`tensors`"),
        (lambda: Link.from_hermite({(1, 0): 1.0, (1,): 1.0}), r"`coefficients`.*one length"),
        (lambda: Link.from_hermite({(1, -1): 1.0}), r"\(1, -1\)"),
        (lambda: Link.from_hermite({(1, 0): np.nan}), r"coefficients\[\(1, 0\)\].*finite"),
        (lambda: Link.from_hermite({}), r"`coefficients`"),
        (lambda: Link.from_function(jnp.sum, dim=0, degree=2), r"`dim`.*got 0"),
        (lambda: Link.from_function(jnp.sum, dim=1, degree=-1), r"`degree`.*got -1"),
        (lambda: Link.from_function(jnp.sum, dim=1, degree=2, num_nodes=301), r"`num_nodes`.*got 301"),
        (lambda: Link.from_function(jnp.sum, dim=1, degree=4, num_nodes=4), r"`num_nodes`.*degree \+ 1 = 5.*got 4"),
        (lambda: Link.from_function(_nan_fn, dim=1, degree=2, num_nodes=10), r"`fn.*finite"),
        (lambda: Link.from_function("not a function", dim=1, degree=2), r"`fn`"),
        (lambda: links.staircase(2)(np.zeros((5, 3))), r"`z`.*\(\.\.\., 2\).*\(5, 3\)"),
        (lambda: links.staircase(2)(np.float64(1.0)), r"`z`"),
        (lambda: links.staircase(2) + links.staircase(3), r"dimensions 2 and 3"),
        (lambda: links.staircase(2).transform(np.array([[1.0, 0.0], [0.0, 2.0]])), r"`matrix`.*orthonormal"),
        (lambda: links.staircase(2).transform(np.eye(3)), r"`matrix`.*shape"),
        (lambda: links.staircase(2).transform(np.array([[1.0, np.nan], [0.0, 1.0]])), r"`matrix`.*finite"),
        (lambda: links.staircase(2) * np.inf, r"`scale`"),
        (lambda: links.staircase(2).with_degrees([-2]), r"`degrees`.*-2"),
        (lambda: links.stack([]), r"`links`.*empty"),
        (lambda: links.stack([links.staircase(2), links.staircase(3)]), r"`links`.*dimensions \[2, 3\]"),
        (lambda: links.hermite(-1), r"`degree`.*-1"),
        (lambda: links.hermite(1.5), r"`degree`.*1.5"),
        (lambda: links.hermite(2, dim=2, index=2), r"`index`.*\[0, 2\).*got 2"),
        (lambda: links.relu(-1), r"`degree`.*-1"),
        (lambda: links.sign(0), r"`degree`.*\[1, 63\].*0"),
        (lambda: links.tanh(-2), r"`degree`.*-2"),
        (lambda: links.staircase(0), r"`k`.*0"),
        (lambda: links.harmonic(0), r"`degree`.*0"),
        (lambda: links.embed(links.staircase(2), 3, (0, 0)), r"`axes`.*\(0, 0\)"),
        (lambda: links.embed(links.staircase(2), 0, (0, 1)), r"`dim`"),
    ],
)
def test_bad_input_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()
