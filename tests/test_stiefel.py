"""`haar_stiefel`, retractions, tangent projections, principal angles and `Stiefel`
(DESIGN §4) against independent computations.

Every oracle is written here with NumPy/SciPy only: `numpy.linalg.qr` with a sign fix,
`scipy.linalg.sqrtm` for the polar factor, a dense `numpy.linalg.solve` for the Cayley
transform, `scipy.linalg.expm` for the geodesic, `scipy.linalg.subspace_angles`, and
exact Beta laws (`scipy.stats`) for the Haar measure.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from helpers import random_orthonormal

import mimflow

METHODS = ("qr", "polar", "cayley")

# ---------------------------------------------------------------------------
# Independent helpers (NumPy only)
# ---------------------------------------------------------------------------


def np_horizontal(rng, W, scale=1.0):
    """A random horizontal (Grassmann) tangent vector: `WᵀV = 0`, `‖V‖_F = scale`."""
    V = rng.standard_normal(W.shape)
    V = V - W @ (W.T @ V)
    return scale * V / np.linalg.norm(V)


def np_stiefel_tangent(rng, W, scale=1.0):
    """A random Stiefel tangent vector `V = W S + V_⊥` with `S` skew and a non-zero
    skew part (so it is *not* horizontal), `‖V‖_F = scale`."""
    r = W.shape[1]
    S = rng.standard_normal((r, r))
    S = S - S.T
    V = W @ S + np_horizontal(rng, W)
    return scale * V / np.linalg.norm(V)


def orthonormality_error(W):
    W = np.asarray(W)
    return np.max(np.abs(W.T @ W - np.eye(W.shape[1])))


def np_qr_positive(M):
    q, upper = np.linalg.qr(M)
    return q * np.sign(np.diag(upper))


def geodesic(W, V, t):
    """Grassmann geodesic from `W` along a horizontal `V`: `expm(t(VWᵀ − WVᵀ)) W`."""
    return scipy.linalg.expm(t * (V @ W.T - W @ V.T)) @ W


# ---------------------------------------------------------------------------
# 1. Haar sampling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("d, r", [(1, 1), (5, 2), (8, 8), (30, 7)])
def test_haar_orthonormal(getkey, d, r):
    W = mimflow.haar_stiefel(getkey(), d, r)
    assert W.shape == (d, r)
    assert W.dtype == jnp.float64
    # a Householder QR in float64 is orthonormal to a few ulps times √d
    assert orthonormality_error(W) < 1e-13
    point = mimflow.Stiefel.haar(getkey(), d, r)
    assert isinstance(point, mimflow.Stiefel)
    assert orthonormality_error(point.W) < 1e-13


def test_haar_law(getkey):
    """Each column of a Haar `W ∈ St(d, r)` is uniform on S^{d−1}, so an entry `w` has
    `(1 + w)/2 ~ Beta((d−1)/2, (d−1)/2)` and `w² ~ Beta(½, (d−1)/2)`; the law is also
    invariant under `W ↦ Q W` (Q ∈ O(d)) and `W ↦ W O` (O ∈ O(r)).

    KS tests at level 1e-3 on fixed keys (the test is deterministic; nine tests at
    1e-3 would fail a correct sampler with probability < 1%).
    """
    d, r, num = 6, 3, 4000
    sample = lambda key: jax.vmap(lambda k: mimflow.haar_stiefel(k, d, r))(jax.random.split(key, num))
    Ws = np.asarray(sample(getkey()))
    half = scipy.stats.beta((d - 1) / 2, (d - 1) / 2)
    for i, j in [(0, 0), (3, 1), (5, 2)]:
        # the signed entry: a wrong sign fix (e.g. diag(R) < 0 kept) would bias it
        assert scipy.stats.kstest((1 + Ws[:, i, j]) / 2, half.cdf).pvalue > 1e-3
    for i, j in [(0, 0), (2, 2)]:
        assert scipy.stats.kstest(Ws[:, i, j] ** 2, scipy.stats.beta(0.5, (d - 1) / 2).cdf).pvalue > 1e-3
    # invariance in law: a fixed linear statistic of W, of Q W and of W O (independent samples)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((d, r))
    Q, O = random_orthonormal(rng, d, d), random_orthonormal(rng, r, r)
    stat = lambda Ws: np.einsum("ij,nij->n", A, Ws)
    other = np.asarray(sample(getkey()))
    assert scipy.stats.ks_2samp(stat(Ws), stat(Q @ other)).pvalue > 1e-3
    other = np.asarray(sample(getkey()))
    assert scipy.stats.ks_2samp(stat(Ws), stat(other @ O)).pvalue > 1e-3
    # E[W Wᵀ] = (r/d) I: each entry is a mean of `num` terms bounded by 1, so its
    # standard error is ≤ 1/√num ≈ 0.016; 0.08 is five of them
    assert np.max(np.abs(np.mean(Ws @ Ws.transpose(0, 2, 1), axis=0) - r / d * np.eye(d))) < 0.08


# ---------------------------------------------------------------------------
# 2. Retractions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_retraction_orthonormal(method):
    rng = np.random.default_rng(1)
    W = random_orthonormal(rng, 7, 3)
    steps = [
        np_horizontal(rng, W, 0.7),
        np_stiefel_tangent(rng, W, 0.7),
        0.5 * rng.standard_normal(W.shape),  # not tangent at all
        np.zeros_like(W),
    ]
    for V in steps:
        R = mimflow.retract(jnp.asarray(W), jnp.asarray(V), method)
        assert R.shape == W.shape
        # one factorisation of a well-conditioned 7 × 3 matrix: a few ulps
        assert orthonormality_error(R) < 1e-13
    # a zero step stays put (QR: R = I already has a positive diagonal)
    np.testing.assert_allclose(mimflow.retract(jnp.asarray(W), jnp.zeros_like(W), method), W, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_retraction_second_order_grassmann(method):
    """For a horizontal `V`, the retracted subspace agrees with the Grassmann geodesic
    `expm(t(VWᵀ − WVᵀ)) W` to second order: the error is O(t³), so shrinking t tenfold
    divides it by ≈ 1000 (a first-order retraction would give ≈ 100; we ask for > 300).
    The subspaces are compared through their projectors `RRᵀ` (the Grassmann point)."""
    rng = np.random.default_rng(2)
    W = random_orthonormal(rng, 8, 3)
    V = np_horizontal(rng, W)
    errors = []
    for t in (1e-1, 1e-2):
        R = np.asarray(mimflow.retract(jnp.asarray(W), jnp.asarray(t * V), method))
        G = geodesic(W, V, t)
        errors.append(np.linalg.norm(R @ R.T - G @ G.T))
    # at t = 1e-2 the error is ~1e-6, far above round-off (1e-15), so the ratio is clean
    assert errors[1] > 1e-10
    assert errors[0] / errors[1] > 300, errors


@pytest.mark.parametrize("method", ["polar", "cayley"])
def test_retraction_second_order_matrix(method):
    """Polar and Cayley also agree with the geodesic as matrices (not only as
    subspaces) to second order for horizontal `V`: error O(t³), ratio ≈ 1000.
    (QR does not: `qr(W + tV) = G(t) + t² W S + O(t³)` with `S` skew — a rotation
    within the subspace — which is why the QR check above uses projectors.)"""
    rng = np.random.default_rng(3)
    W = random_orthonormal(rng, 8, 3)
    V = np_horizontal(rng, W)
    errors = [
        np.linalg.norm(np.asarray(mimflow.retract(jnp.asarray(W), jnp.asarray(t * V), method)) - geodesic(W, V, t))
        for t in (1e-1, 1e-2)
    ]
    assert errors[0] / errors[1] > 300, errors


@pytest.mark.parametrize("method", METHODS)
def test_retraction_first_order_stiefel(method):
    """Every retraction satisfies `R(W, tV) = W + tV + O(t²)` for any tangent `V`
    (`WᵀV` skew), which the planted flow (Stiefel metric) relies on. A correct
    retraction gives an error ratio ≈ 100 when t shrinks tenfold; an O(t) defect gives
    ≈ 10, so we ask for > 50."""
    rng = np.random.default_rng(4)
    W = random_orthonormal(rng, 6, 3)
    V = np_stiefel_tangent(rng, W)
    assert np.linalg.norm(W.T @ V + V.T @ W) < 1e-14 and np.linalg.norm(W.T @ V) > 0.1
    errors = [
        np.linalg.norm(np.asarray(mimflow.retract(jnp.asarray(W), jnp.asarray(t * V), method)) - (W + t * V))
        for t in (1e-2, 1e-3)
    ]
    assert errors[0] / errors[1] > 50, errors


def test_retraction_formulas():
    """Each retraction against its defining formula computed densely with NumPy/SciPy,
    for a generic (non-tangent) step. Every matrix is well conditioned (σ(W + V) ∈
    [0.5, 1.7] here), so 1e-12 leaves two orders of magnitude over float64 round-off."""
    rng = np.random.default_rng(5)
    d, r = 7, 3
    W = random_orthonormal(rng, d, r)
    V = 0.3 * rng.standard_normal((d, r))
    M = W + V
    Wj, Vj = jnp.asarray(W), jnp.asarray(V)

    # QR with positive diag(R)
    Q = np.asarray(mimflow.retract(Wj, Vj, "qr"))
    np.testing.assert_allclose(Q, np_qr_positive(M), atol=1e-12)
    upper = Q.T @ M  # R factor: upper triangular with a positive diagonal
    np.testing.assert_allclose(np.tril(upper, -1), 0.0, atol=1e-12)
    assert np.all(np.diag(upper) > 0)

    # polar factor (W+V)((W+V)ᵀ(W+V))^{-1/2}
    polar = M @ np.linalg.inv(scipy.linalg.sqrtm(M.T @ M).real)
    np.testing.assert_allclose(mimflow.retract(Wj, Vj, "polar"), polar, atol=1e-12)

    # Cayley (Wen & Yin) (I − A/2)^{-1}(I + A/2) W with A = PVWᵀ − WVᵀP, P = I − ½WWᵀ, dense d × d
    P = np.eye(d) - 0.5 * W @ W.T
    A = P @ V @ W.T - W @ V.T @ P
    cayley = np.linalg.solve(np.eye(d) - A / 2, (np.eye(d) + A / 2) @ W)
    np.testing.assert_allclose(mimflow.retract(Wj, Vj, "cayley"), cayley, atol=1e-12)


@jax.jit
def _retracted_walk(W0, steps):
    """Returns, per method, the largest ‖WᵀW − I‖ over a walk of retracted steps
    (each a random ambient direction projected on the Stiefel tangent space), and the
    final point."""

    def walk(method):
        def body(W, noise):
            W = mimflow.retract(W, mimflow.project_tangent(W, noise, "stiefel"), method)
            return W, jnp.max(jnp.abs(W.T @ W - jnp.eye(W.shape[1])))

        W, errors = jax.lax.scan(body, W0, steps)
        return jnp.max(errors), W

    return {method: walk(method) for method in METHODS}


def test_retraction_long_walk_stays_orthonormal(getkey):
    """10⁴ successive retracted steps (one `lax.scan` per method): the columns stay
    orthonormal to 1e-10 in float64 (round-off must not accumulate: QR and polar
    re-orthonormalise; Cayley applies an exactly orthogonal map, whose rounding could
    only grow like a random walk, ~1e-14 after 10⁴ steps)."""
    d, r, num = 6, 2, 10_000
    W0 = mimflow.haar_stiefel(getkey(), d, r)
    steps = 0.05 * jax.random.normal(getkey(), (num, d, r))
    for method, (error, W) in _retracted_walk(W0, steps).items():
        assert error < 1e-10, method
        # the walk really moved (a no-op retraction would pass trivially)
        assert np.linalg.norm(np.asarray(W) - np.asarray(W0)) > 0.5, method


# ---------------------------------------------------------------------------
# 3. Tangent projections
# ---------------------------------------------------------------------------


def projection_matrix(W, metric):
    """The linear map `vec(V) ↦ vec(P_W(V))` as a `dr × dr` matrix, column by column."""
    d, r = W.shape
    basis = jnp.eye(d * r).reshape(d * r, d, r)
    columns = jax.vmap(lambda E: mimflow.project_tangent(W, E, metric))(basis)
    return np.asarray(columns.reshape(d * r, d * r).T)


@pytest.mark.parametrize("metric", ["grassmann", "stiefel"])
def test_tangent_projection(metric):
    rng = np.random.default_rng(6)
    d, r = 7, 3
    W = random_orthonormal(rng, d, r)
    V, U = rng.standard_normal((d, r)), rng.standard_normal((d, r))
    P = lambda X: np.asarray(mimflow.project_tangent(jnp.asarray(W), jnp.asarray(X), metric))
    PV, PU = P(V), P(U)
    # tolerances: O(1) matrices, a handful of products, so a few ulps; 1e-13 is safe
    if metric == "grassmann":
        np.testing.assert_allclose(W.T @ PV, 0.0, atol=1e-13)
    else:
        np.testing.assert_allclose(W.T @ PV + PV.T @ W, 0.0, atol=1e-13)
    np.testing.assert_allclose(P(PV), PV, atol=1e-13)  # idempotent
    # orthogonal for the embedded (Frobenius) metric: the residual is normal
    assert abs(np.sum((V - PV) * PU)) < 1e-13
    # tangent vectors are left unchanged
    tangent = np_horizontal(rng, W) if metric == "grassmann" else np_stiefel_tangent(rng, W)
    np.testing.assert_allclose(P(tangent), tangent, atol=1e-13)

    # as a dr × dr matrix: a symmetric idempotent of rank dim(tangent space),
    # r(d − r) for the Grassmann horizontal space and dr − r(r+1)/2 for St(d, r)
    matrix = projection_matrix(jnp.asarray(W), metric)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-13)
    np.testing.assert_allclose(matrix @ matrix, matrix, atol=1e-13)
    rank = r * (d - r) if metric == "grassmann" else d * r - r * (r + 1) // 2
    assert np.linalg.matrix_rank(matrix, tol=1e-8) == rank


def test_stiefel_projection_is_nearest_tangent():
    """The Stiefel projection is the Frobenius-nearest tangent vector: compare with a
    NumPy least-squares solve over an explicit basis of the tangent space
    `{W S + W_⊥ B : S skew}`."""
    rng = np.random.default_rng(7)
    d, r = 5, 2
    W = random_orthonormal(rng, d, r)
    complement = scipy.linalg.null_space(W.T)
    basis = []
    for i in range(r):
        for j in range(i + 1, r):
            S = np.zeros((r, r))
            S[i, j], S[j, i] = 1.0, -1.0
            basis.append(W @ S)
    for i in range(d - r):
        for j in range(r):
            B = np.zeros((d - r, r))
            B[i, j] = 1.0
            basis.append(complement @ B)
    B = np.stack([b.ravel() for b in basis], axis=1)
    V = rng.standard_normal((d, r))
    coefficients = np.linalg.lstsq(B, V.ravel(), rcond=None)[0]
    nearest = (B @ coefficients).reshape(d, r)
    np.testing.assert_allclose(mimflow.project_tangent(jnp.asarray(W), jnp.asarray(V), "stiefel"), nearest, atol=1e-13)


# ---------------------------------------------------------------------------
# 4. Principal angles
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("r, s", [(3, 2), (2, 4), (3, 3), (1, 1)])
def test_principal_angles_against_scipy(r, s):
    rng = np.random.default_rng(8 + r + 10 * s)
    d = 9
    W, U = random_orthonormal(rng, d, r), random_orthonormal(rng, d, s)
    angles = np.asarray(mimflow.principal_angles(jnp.asarray(W), jnp.asarray(U)))
    reference = np.sort(scipy.linalg.subspace_angles(W, U))  # SciPy: largest first
    assert angles.shape == (min(r, s),)
    assert np.all(np.diff(angles) >= 0)  # smallest first
    # random subspaces of R^9: every angle is well away from 0 (arccos well conditioned
    # there, error ≈ eps / sin θ), so 1e-12 is generous
    assert np.min(reference) > 1e-2
    np.testing.assert_allclose(angles, reference, atol=1e-12)

    point = mimflow.Stiefel(W)
    np.testing.assert_allclose(point.principal_angles(mimflow.Stiefel(U)), reference, atol=1e-12)
    np.testing.assert_allclose(point.principal_angles(U), reference, atol=1e-12)


def test_principal_angles_known():
    """Subspaces built with prescribed angles: span(e1, e2) against
    span(cos θ1 e1 + sin θ1 e3, cos θ2 e2 + sin θ2 e4); plus orthogonal subspaces
    (identical ones in generic position: `test_principal_angles_generic_small`)."""
    d = 6
    E = np.eye(d)
    theta = np.array([0.3, 1.1])
    W = E[:, :2]
    U = np.stack(
        [np.cos(theta[0]) * E[0] + np.sin(theta[0]) * E[2], np.cos(theta[1]) * E[1] + np.sin(theta[1]) * E[3]], 1
    )
    np.testing.assert_allclose(mimflow.principal_angles(jnp.asarray(W), jnp.asarray(U)), theta, atol=1e-13)
    np.testing.assert_allclose(mimflow.principal_angles(jnp.asarray(W), jnp.asarray(E[:, 2:4])), np.pi / 2, atol=1e-13)


def test_principal_angles_small():
    """Small angles, as a converging flow produces (W → W*): SciPy's `subspace_angles`
    resolves them to ~1e-16 absolute (it uses sines for small angles); an `arccos` of
    cosines loses everything below √eps ≈ 1e-8 (cos θ rounds to 1). We ask for the
    float64 accuracy SciPy achieves: 1e-12 absolute."""
    d = 6
    E = np.eye(d)
    theta = np.array([1e-9, 1e-6, 1e-3])
    W = E[:, :3]
    U = np.stack([np.cos(t) * E[i] + np.sin(t) * E[3 + i] for i, t in enumerate(theta)], 1)
    reference = np.sort(scipy.linalg.subspace_angles(W, U))
    np.testing.assert_allclose(reference, theta, rtol=1e-10)  # the oracle itself is exact here
    angles = np.asarray(mimflow.principal_angles(jnp.asarray(W), jnp.asarray(U)))
    np.testing.assert_allclose(angles, theta, atol=1e-12, rtol=0)


def test_principal_angles_generic_small():
    """Identical and nearly identical subspaces in generic position (not spanned by
    coordinate axes, where even `arccos` of the cosines is exact): `span(Q)` against
    `span(QO)` for a random orthonormal `Q` (NumPy QR) and a random rotation `O` of its
    columns, angles 0; and `W = B[:, :2]` against `U = cos θ_i B[:, i] + sin θ_i B[:, 2+i]`
    (`B` random orthonormal, θ = 1e-9, 1e-5), each mixed by a random rotation. Floating
    point resolves these angles to ~eps absolute (measured over 200 seeds: ≤ 1.3e-15 for
    identical subspaces, ≤ 1.7e-16 on θ), which sines give; `arccos` of the cosines alone
    loses everything below √eps (measured: ~5e-8 for identical subspaces, errors 4e-8
    and 8e-11 on θ). Tolerance 1e-14 absolute: relative 1e-5 and 1e-9 on θ."""
    rng = np.random.default_rng(31)
    for d, r in [(9, 2), (9, 3), (12, 4)]:
        Q, O = random_orthonormal(rng, d, r), random_orthonormal(rng, r, r)
        angles = np.asarray(mimflow.principal_angles(jnp.asarray(Q), jnp.asarray(Q @ O)))
        assert angles.shape == (r,)
        np.testing.assert_array_less(np.abs(angles), 1e-14)
    theta = np.array([1e-9, 1e-5])
    B = random_orthonormal(rng, 7, 4)
    W, U = B[:, :2], np.cos(theta) * B[:, :2] + np.sin(theta) * B[:, 2:]
    W, U = W @ random_orthonormal(rng, 2, 2), U @ random_orthonormal(rng, 2, 2)
    angles = np.asarray(mimflow.principal_angles(jnp.asarray(W), jnp.asarray(U)))
    np.testing.assert_allclose(angles, theta, rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------
# 5. The Stiefel module
# ---------------------------------------------------------------------------


def test_stiefel_module(getkey):
    rng = np.random.default_rng(9)
    d, r = 8, 3
    point = mimflow.Stiefel.haar(getkey(), d, r)
    W = np.asarray(point.W)
    V = rng.standard_normal((d, r))
    # default metric is Grassmann: (I − WWᵀ)V
    np.testing.assert_allclose(point.project(jnp.asarray(V)), V - W @ (W.T @ V), atol=1e-13)
    S = W.T @ V
    np.testing.assert_allclose(point.project(jnp.asarray(V), "stiefel"), V - W @ (S + S.T) / 2, atol=1e-13)
    step = 0.1 * np_horizontal(rng, W)
    moved = point.retract(jnp.asarray(step))
    assert isinstance(moved, mimflow.Stiefel)
    np.testing.assert_allclose(moved.W, np_qr_positive(W + step), atol=1e-13)  # default: QR
    np.testing.assert_allclose(point.retract(jnp.asarray(step), "polar").W, retract_polar_np(W, step), atol=1e-12)
    # a plain list is accepted and stored as a float64 array
    listed = mimflow.Stiefel(np.eye(3)[:, :2].tolist())
    assert listed.W.dtype == jnp.float64 and listed.W.shape == (3, 2)


def retract_polar_np(W, V):
    M = W + V
    return M @ np.linalg.inv(scipy.linalg.sqrtm(M.T @ M).real)


# ---------------------------------------------------------------------------
# 6. Bad input
# ---------------------------------------------------------------------------


def test_bad_input(getkey):
    key = getkey()
    W = jnp.asarray(random_orthonormal(np.random.default_rng(10), 5, 2))
    with pytest.raises(ValueError, match=r"d=3, r=5"):
        mimflow.haar_stiefel(key, 3, 5)
    with pytest.raises(ValueError, match=r"d=4\.0"):
        mimflow.haar_stiefel(key, 4.0, 2)
    with pytest.raises(ValueError, match=r"r=0"):
        mimflow.haar_stiefel(key, 4, 0)
    with pytest.raises(ValueError, match="'exp'"):
        mimflow.retract(W, W, "exp")
    with pytest.raises(ValueError, match="'euclidean'"):
        mimflow.project_tangent(W, W, "euclidean")
    with pytest.raises(ValueError, match="`W`"):
        mimflow.Stiefel(np.full((4, 2), math.nan))
    with pytest.raises(ValueError, match=r"`W`.*\(4,\)"):
        mimflow.Stiefel(np.ones(4))
    with pytest.raises(ValueError, match=r"d=2, r=3"):
        mimflow.Stiefel(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="'exp'"):
        mimflow.Stiefel(W).retract(W, "exp")
    with pytest.raises(ValueError, match="'euclidean'"):
        mimflow.Stiefel(W).project(W, "euclidean")
