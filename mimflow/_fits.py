"""The fast timescale: closed-form ridge fits of the link on `Z = X W` (DESIGN §4).

Every fit minimises `½ n⁻¹ Σ_i (y_i − f(z_i))² + (μ/2) ‖f‖²_H` over its function
space `H`, which does not depend on `W`; so by the envelope theorem the gradient
of the value function `V̂(W)` is that of the data term with the fitted function
held fixed (`mimflow.flows`).
"""

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._batching import with_batching_rule
from ._checks import check_finite, check_int, check_key, check_range, is_concrete
from ._hermite import expansion_value_and_grad, hermite_1d, hermite_basis, multi_indices


def _jitter(dtype: jnp.dtype, size: int) -> float:
    """The smallest shift, relative to the mean diagonal, that keeps a Cholesky
    factorisation of a PSD `size × size` matrix finite: its rounding errors are about
    `size·eps` relative, which the fixed `1e-6` of float32 fell below (a kernel ridge
    with `ridge ≤ 1e-9` on 2 048 points gave `nan` silently)."""
    return max(1e-12 if dtype == jnp.float64 else 1e-6, size * float(jnp.finfo(dtype).eps))


def _cholesky_solve(matrix: Float[Array, "m m"], rhs: Float[Array, " m"], shift: Array) -> Float[Array, " m"]:
    """Solve `(A + shift·I) x = rhs` for PSD `A` by Cholesky, with a relative jitter."""
    scale = jnp.maximum(jnp.mean(jnp.diagonal(matrix)), 1.0)
    jitter = _jitter(matrix.dtype, matrix.shape[0]) * scale
    regular = matrix + (shift + jitter) * jnp.eye(matrix.shape[0], dtype=matrix.dtype)
    return jsl.cho_solve(jsl.cho_factor(regular, lower=True), rhs)


# --- kernels ------------------------------------------------------------------


class AbstractKernel(eqx.Module):
    """A positive-definite kernel on `ℝ^r`; `kernel(Z1, Z2)` is the `(n, m)` Gram matrix."""

    def __call__(self, left: Float[Array, "n r"], right: Float[Array, "m r"]) -> Float[Array, "n m"]:
        raise NotImplementedError


class Mehler(AbstractKernel):
    """The isotropic Hermite (Mehler) kernel `k_ρ(z, z') = Σ_α ρ^{|α|} h_α(z) h_α(z')`,
    in closed form `Π_i (1−ρ²)^{−1/2} exp((2ρ z_i z'_i − ρ²(z_i² + z'_i²)) / (2(1−ρ²)))`;
    its eigenvalue on Hermite degree `j` is `q_j = ρ^j`; `rho` is `ρ ∈ (0, 1)` (default ½)."""

    rho: Float[Array, ""]

    def __init__(self, rho: float = 0.5):
        check_range("rho", rho, low=0.0, high=1.0, low_open=True)
        if is_concrete(rho) and np.asarray(rho) == 1.0:  # a traced `rho` (jit, vmap) is not checked
            raise ValueError(f"`rho` must be < 1 for the Mehler kernel, got {float(rho)!r}")
        self.rho = jnp.asarray(rho, dtype=float)

    def __call__(self, left, right):
        rho = self.rho
        cross = left @ right.T
        squares = jnp.sum(left**2, axis=1)[:, None] + jnp.sum(right**2, axis=1)[None, :]
        exponent = (2.0 * rho * cross - rho**2 * squares) / (2.0 * (1.0 - rho**2))
        return (1.0 - rho**2) ** (-0.5 * left.shape[1]) * jnp.exp(exponent)


class RBF(AbstractKernel):
    """The Gaussian kernel `exp(−‖z − z'‖² / (2 ℓ²))`; `lengthscale` is `ℓ > 0` (default 1)."""

    lengthscale: Float[Array, ""]

    def __init__(self, lengthscale: float = 1.0):
        check_range("lengthscale", lengthscale, low=0.0, low_open=True)
        self.lengthscale = jnp.asarray(lengthscale, dtype=float)

    def __call__(self, left, right):
        squares = jnp.sum(left**2, axis=1)[:, None] + jnp.sum(right**2, axis=1)[None, :] - 2.0 * left @ right.T
        return jnp.exp(-jnp.maximum(squares, 0.0) / (2.0 * self.lengthscale**2))


class Polynomial(AbstractKernel):
    """The polynomial kernel `(zᵀz' + c)^p`; `degree` is `p` (default 3), `offset` is
    `c ≥ 0` (default 1)."""

    degree: int = eqx.field(static=True)
    offset: Float[Array, ""]

    def __init__(self, degree: int = 3, offset: float = 1.0):
        degree = check_int("degree", degree, 1)
        check_range("offset", offset, low=0.0)
        self.degree = degree
        self.offset = jnp.asarray(offset, dtype=float)

    def __call__(self, left, right):
        return (left @ right.T + self.offset) ** self.degree


@jax.custom_jvp
def _arc_cosine_j1(cosine: Array) -> Array:
    """`J1(θ) = sin θ + (π − θ) cos θ` as a function of `c = cos θ`; its derivative
    `dJ1/dc = π − θ` is finite at `c = ±1`, where `arccos` and `√(1 − c²)` are not."""
    return jnp.sqrt(jnp.maximum(1.0 - cosine**2, 0.0)) + (jnp.pi - jnp.arccos(cosine)) * cosine


@_arc_cosine_j1.defjvp
def _arc_cosine_j1_jvp(primals, tangents):
    (cosine,), (tangent,) = primals, tangents
    return _arc_cosine_j1(cosine), (jnp.pi - jnp.arccos(cosine)) * tangent


class ArcCosine(AbstractKernel):
    """The arc-cosine kernel of order 1 (infinitely wide ReLU network, Cho & Saul):
    `k(z, z') = (1/π) ‖ẑ‖ ‖ẑ'‖ (sin θ + (π − θ) cos θ)` with `ẑ = (z, 1)` (a bias input,
    which keeps the kernel smooth at `z = 0`) and `θ` the angle between `ẑ` and `ẑ'`."""

    def __call__(self, left, right):
        left = jnp.concatenate([left, jnp.ones_like(left[:, :1])], axis=1)
        right = jnp.concatenate([right, jnp.ones_like(right[:, :1])], axis=1)
        norms = jnp.sqrt(jnp.sum(left**2, axis=1))[:, None] * jnp.sqrt(jnp.sum(right**2, axis=1))[None, :]
        cosine = jnp.clip(left @ right.T / norms, -1.0, 1.0)
        return norms * _arc_cosine_j1(cosine) / jnp.pi


# --- row blocks (CPU) --------------------------------------------------------------

# A ReLU-feature fit and its gradient go over blocks of this many rows on a CPU, from
# `_ROW_BLOCK_MIN_ROWS` rows on (see `ReLUFeatures._row_block`).
_ROW_BLOCK = 1024
_ROW_BLOCK_MIN_ROWS = 2 * _ROW_BLOCK
# up to this many directions r, ReLU features in row blocks unroll their r-term sums
# (`ReLUFeatures._preactivation`)
_UNROLLED_MAX_DIRECTIONS = 4


def _by_row_blocks(fn, z: Float[Array, "n r"], block: int):
    """`fn(z)` for a row-wise `fn` (each output row depends on its input row alone),
    evaluated over blocks of `block` rows one after another (`lax.map`), then the
    remaining `n mod block` rows."""
    n, r = z.shape
    k = n // block
    head = jax.lax.map(fn, z[: k * block].reshape(k, block, r))
    head = jax.tree.map(lambda a: a.reshape(k * block, *a.shape[2:]), head)
    if k * block == n:
        return head
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), head, fn(z[k * block :]))


def _normal_equations_by_row_blocks(
    features: "AbstractFeatures", Z: Float[Array, "n r"], y: Float[Array, " n"], block: int
) -> tuple[Float[Array, "p p"], Float[Array, " p"]]:
    """`ΦᵀΦ` and `yᵀΦ` summed over blocks of `block` rows (`lax.scan`), the design of one
    block at a time, after the remaining `n mod block` rows."""
    n, r = Z.shape
    k = n // block
    tail = features(Z[k * block :])  # (n mod block, p): empty when block divides n

    def add(sums, rows):
        design = features._block_design(rows[0])
        return (sums[0] + design.T @ design, sums[1] + rows[1] @ design), None

    rows = (Z[: k * block].reshape(k, block, r), y[: k * block].reshape(k, block))
    return jax.lax.scan(add, (tail.T @ tail, y[k * block :] @ tail), rows)[0]


def _normal_equations_plain(
    features: "AbstractFeatures", Z: Float[Array, "n r"], y: Float[Array, " n"]
) -> tuple[Float[Array, "p p"], Float[Array, " p"]]:
    block = features._row_block(Z.shape[0])
    if block is not None:
        return _normal_equations_by_row_blocks(features, Z, y, block)
    design = features(Z)
    # `y @ Φ`, not `Φᵀ y`: XLA's CPU matrix-vector product is several times slower on the
    # transposed operand, more so with the features fused into it
    return design.T @ design, y @ design


def _by_row_blocks_when_shared(plain, by_row_blocks):
    """The `vmap` rule (`with_batching_rule`) of `plain(features, z, other)`, row-wise in
    `z`: with `z` batched and the features shared (starts sharing the data),
    `by_row_blocks(features, z, other, block)` for each batch element, over blocks of
    `features._batched_row_block(n)` rows; otherwise `plain` for each. The B elements'
    `(B, n, p)` designs leave a CPU's caches; `B·block·p` entries at a time they stay
    in them (`benchmarks/RESULTS.md` §2)."""

    def rule(axis_size, in_batched, features, z, other):
        features_batched, z_batched, other_batched = in_batched
        axes = (jax.tree.map(lambda b: 0 if b else None, features_batched), 0 if z_batched else None)
        axes += (0 if other_batched else None,)
        shared = not any(jax.tree.leaves(features_batched))
        block = features._batched_row_block(z.shape[-2]) if z_batched and z.ndim == 3 and shared else None
        each = plain if block is None else (lambda features, z, other: by_row_blocks(features, z, other, block))
        return jax.vmap(each, in_axes=axes)(features, z, other)

    return rule


# `ΦᵀΦ` and `yᵀΦ`; under `vmap` over `Z` on a CPU, by blocks of rows
_normal_equations = with_batching_rule(
    _normal_equations_plain, _by_row_blocks_when_shared(_normal_equations_plain, _normal_equations_by_row_blocks)
)


# --- fitted link models ------------------------------------------------------------


def _rowwise_value_and_grad(fn, z: Float[Array, "n r"]) -> tuple[Float[Array, " n"], Float[Array, "n r"]]:
    """`fn(z)` and each row's gradient of a row-wise `fn: (n, r) → (n,)`, by one `vjp`
    (rows are independent, so the pullback of ones gives each row's gradient)."""
    values, pullback = jax.vjp(fn, z)
    return values, pullback(jnp.ones_like(values))[0]


def _check_points(z: Float[ArrayLike, "n r"], r: int) -> Float[Array, "n r"]:
    """`z` as an array; a `ValueError` unless it has shape `(n, r)` and, when concrete, is finite."""
    check_finite("z", z)
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[1] != r:
        raise ValueError(f"`z` must have shape (n, r={r}) for a link fitted on r = {r} directions, got shape {z.shape}")
    return z


class AbstractFittedLink(eqx.Module):
    """A fitted link `f̂: ℝ^r → ℝ`; `f̂(Z)` evaluates it on rows `Z` of shape `(n, r)`."""

    def __call__(self, z: Float[Array, "n r"]) -> Float[Array, " n"]:
        raise NotImplementedError

    def value_and_grad(self, z: Float[Array, "n r"]) -> tuple[Float[Array, " n"], Float[Array, "n r"]]:
        """`f̂(z_i)` and `∇f̂(z_i)` for each row."""
        return _rowwise_value_and_grad(self, z)


class KernelModel(AbstractFittedLink):
    """`f̂(z) = Σ_j a_j k(z, c_j)` with centres `c_j` (the training inputs)."""

    kernel: AbstractKernel
    centres: Float[Array, "n r"]
    coefficients: Float[Array, " n"]

    def __call__(self, z):
        return self.kernel(_check_points(z, self.centres.shape[1]), self.centres) @ self.coefficients


class AbstractFeatures(eqx.Module):
    """A feature map `φ: ℝ^r → ℝ^p`; `features(Z)` is the `(n, p)` design matrix."""

    def __call__(self, z: Float[Array, "n r"]) -> Float[Array, "n p"]:
        raise NotImplementedError

    @property
    def num_inputs(self) -> int:
        """`r`, the dimension of the points the map takes."""
        raise NotImplementedError

    def value_and_grad(
        self, z: Float[Array, "n r"], weights: Float[Array, " p"]
    ) -> tuple[Float[Array, " n"], Float[Array, "n r"]]:
        """`φ(z_i)ᵀθ` and its gradient in `z_i` for each row: by `vjp` here; the feature
        maps below override it with closed forms (one pass, no scatter in the pullback)."""
        return _rowwise_value_and_grad(lambda z: self(z) @ weights, z)

    def _row_block(self, n: int) -> int | None:
        """Rows per block in which a fit on `n` rows builds its design (and the fitted
        link's `value_and_grad` runs), or `None`: all rows at once (the default)."""
        return None

    def _block_design(self, rows: Float[Array, "m r"]) -> Float[Array, "m p"]:
        """The design of one block of rows, inside a loop over blocks (the feature map's
        parameters are then the loop's constants, computed before it): `self(rows)`."""
        return self(rows)

    def _batched_row_block(self, n: int) -> int | None:
        """Rows per block in which fits on `n` rows `vmap`ped over `Z` (starts sharing
        the data) build their designs (and ReLU features' `value_and_grad` runs), or
        `None`: as one fit does (`_row_block`)."""
        return None


class FeatureModel(AbstractFittedLink):
    """`f̂(z) = φ(z)ᵀ θ`."""

    features: AbstractFeatures
    weights: Float[Array, " p"]

    def __call__(self, z):
        return self.features(_check_points(z, self.features.num_inputs)) @ self.weights

    def value_and_grad(self, z):
        return self.features.value_and_grad(_check_points(z, self.features.num_inputs), self.weights)


class ReLUFeatures(AbstractFeatures):
    """`φ(z) = relu(Aᵀz + b) / √p`, `A ~ N(0, I)` of shape `(r, p)`, `b ~ N(0, 1)`."""

    weights: Float[Array, "r p"]
    biases: Float[Array, " p"]

    @property
    def num_inputs(self):
        return self.weights.shape[-2]

    def __call__(self, z):
        return self._design(z, unrolled=False)

    def _block_design(self, rows):
        return self._design(rows, unrolled=True)

    def _design(self, z: Float[Array, "n r"], unrolled: bool) -> Float[Array, "n p"]:
        return jax.nn.relu(self._preactivation(z, unrolled)) / math.sqrt(self.biases.shape[0])

    def _unrolls(self, unrolled: bool) -> bool:
        """Whether a row block's r-term sums are written out: `unrolled` asked, r ≤ 4."""
        return unrolled and self.weights.shape[0] <= _UNROLLED_MAX_DIRECTIONS

    def _preactivation(self, z: Float[Array, "n r"], unrolled: bool) -> Float[Array, "n p"]:
        """`Aᵀz + b` for each row; `unrolled` (for row blocks, `r ≤ 4` directions): as
        `b + Σ_k z_k A_k`, the r terms written out. XLA's CPU dot with r = 2 contracted
        terms ran 2.9× slower than these multiply–adds (65 536 × 32: 1.18 against 0.41 ms),
        but XLA fuses elementwise work into them: outside a loop over blocks, also the
        last steps of drawing `A` and `b` (`RandomFeatures`), then redone for each of the
        n·p entries (a flow step at 2¹⁴ rows 2× slower), so whole designs keep the dot."""
        if not self._unrolls(unrolled):
            return z @ self.weights + self.biases
        out = self.biases
        for k in range(self.weights.shape[0]):  # the r ≤ 4 directions, not samples
            out = out + z[..., k, None] * self.weights[k]
        return out

    def _row_block(self, n):
        # On a CPU, from 2 048 rows on, in blocks of 1 024 rows: a whole design `(n, p)`
        # leaves the caches, more so under `vmap` over B starts sharing the data (`(B, n,
        # p)`: 5–10 ns an entry against ≈ 0.5 in cache), and in blocks the r-term sums run
        # unrolled (`_preactivation`). One start's flow step ran 1.1× faster at n = 2¹⁶
        # blocked with XLA's dots; with the sums unrolled and blocks from 2 048 rows, one
        # call 1.7–2.5× faster at n = 2¹²–2¹⁵ (1.2–1.4× from 2¹⁶), a step in a solve's loop
        # 1.2–1.45× at n = 2¹⁴–2¹⁷ (d = 64, 256; 32 features). Accelerators take the whole
        # design at full speed (`benchmarks/RESULTS.md` §2).
        if jax.default_backend() != "cpu" or n < _ROW_BLOCK_MIN_ROWS or self.biases.shape[0] > n:
            return None
        return _ROW_BLOCK

    def _batched_row_block(self, n):
        # B = 16 starts sharing the data: flow step 1.15–1.24× faster at n = 2¹²–2¹⁴ with
        # the fit by blocks, 1.4–2.2× more at 2¹²–2¹⁵ with `value_and_grad` by blocks too
        # (`benchmarks/RESULTS.md` §2)
        cpu = jax.default_backend() == "cpu"
        return _ROW_BLOCK if cpu and n >= 2 * _ROW_BLOCK and self.biases.shape[0] <= n else None

    def value_and_grad(self, z, weights):
        return _relu_value_and_grad(self, z, weights)

    def _value_and_grad(self, z, weights, unrolled=False):
        # With c_j = θ_j 1[a_jᵀz + b_j > 0] / √p (relu′(0) = 0, as in `jax.nn.relu`):
        # ∇f = Σ_j c_j a_j and f = Σ_j c_j (a_jᵀz + b_j) = zᵀ∇f + Σ_j c_j b_j, both from C =
        # (c_j) times A and b (on a CPU, XLA runs `relu(·) @ θ` and `(·) @ Aᵀ` side by side
        # about 4× slower). Whole: one product with [Aᵀ | b]; `unrolled` (row blocks, r ≤ 4):
        # r + 1 matrix–vector products, which XLA's CPU backend ran 2× faster (1 024 × 32)
        active = jnp.where(self._preactivation(z, unrolled) > 0, weights / math.sqrt(self.biases.shape[0]), 0.0)
        if not self._unrolls(unrolled):
            out = active @ jnp.concatenate([self.weights.T, self.biases[:, None]], axis=1)
            grads = out[..., :-1]
            return jnp.sum(z * grads, axis=-1) + out[..., -1], grads
        columns = [active @ a_k for a_k in self.weights]  # the r ≤ 4 directions
        values = active @ self.biases
        for k, column in enumerate(columns):
            values = values + z[..., k] * column
        return values, jnp.stack(columns, axis=-1)


def _relu_value_and_grad_by_row_blocks(
    features: ReLUFeatures, z: Float[Array, "n r"], weights: Float[Array, " p"], block: int
) -> tuple[Float[Array, " n"], Float[Array, "n r"]]:
    return _by_row_blocks(lambda rows: features._value_and_grad(rows, weights, unrolled=True), z, block)


def _relu_value_and_grad_plain(
    features: ReLUFeatures, z: Float[Array, "n r"], weights: Float[Array, " p"]
) -> tuple[Float[Array, " n"], Float[Array, "n r"]]:
    block = features._row_block(z.shape[0]) if z.ndim == 2 else None
    if block is not None:
        return _relu_value_and_grad_by_row_blocks(features, z, weights, block)
    return features._value_and_grad(z, weights)


# a ReLU-feature link's values and gradients; under `vmap` over starts on a CPU, by
# blocks of rows, as the fit's normal equations
_relu_value_and_grad = with_batching_rule(
    _relu_value_and_grad_plain,
    _by_row_blocks_when_shared(_relu_value_and_grad_plain, _relu_value_and_grad_by_row_blocks),
)


class FourierFeatures(AbstractFeatures):
    """Random Fourier features of the RBF kernel: `φ(z) = √(2/p) cos(Ωᵀz / ℓ + b)`,
    `Ω ~ N(0, I)`, `b ~ U[0, 2π)`."""

    frequencies: Float[Array, "r p"]
    phases: Float[Array, " p"]

    @property
    def num_inputs(self):
        return self.frequencies.shape[-2]

    def __call__(self, z):
        return math.sqrt(2.0 / self.phases.shape[0]) * jnp.cos(z @ self.frequencies + self.phases)

    def value_and_grad(self, z, weights):
        angle = z @ self.frequencies + self.phases
        scale = math.sqrt(2.0 / self.phases.shape[0])
        # the design written as `__call__` writes it: a flow's fit has just computed it on
        # the same `z`, and XLA then computes the cosines once (written as `cos(angle) @
        # (scale · weights)` they were computed twice, ≈ a quarter of a flow step)
        design = scale * jnp.cos(angle)
        return design @ weights, -(scale * jnp.sin(angle) * weights) @ self.frequencies.T


class HermiteFeatureMap(AbstractFeatures):
    """`φ_α(z) = √(q_{|α|}) h_α(z)` for `|α| ≤ D`, `q_j = ρ^j`: the Mehler kernel
    truncated at degree `D`."""

    dim: int = eqx.field(static=True)
    degree: int = eqx.field(static=True)
    rho: Float[Array, ""]

    @property
    def num_inputs(self):
        return self.dim

    def __call__(self, z):
        table = hermite_1d(self.degree, z)  # (*batch, r, D + 1), shared by every degree
        columns = [jnp.sqrt(self.rho**j) * hermite_basis(self.dim, j, None, table) for j in range(self.degree + 1)]
        return jnp.concatenate(columns, axis=-1)

    def value_and_grad(self, z, weights):
        # θ split into the design's column blocks, one per degree, each scaled by √(ρ^j):
        # the expansion `Σ_α θ_α √(ρ^{|α|}) h_α(z)`, and its gradient by `h_k′ = √k h_{k−1}`
        degrees = range(self.degree + 1)
        starts = np.cumsum([0] + [len(multi_indices(self.dim, j)) for j in degrees])
        coefficients = {j: jnp.sqrt(self.rho**j) * weights[starts[j] : starts[j + 1]] for j in degrees}
        return expansion_value_and_grad(coefficients, self.dim, z)

    def _batched_row_block(self, n):
        # B = 16 starts sharing the data: flow step 1.37–1.43× faster at n = 2¹⁴–2¹⁶,
        # 0.96× at 2¹² (`benchmarks/RESULTS.md` §2)
        return _ROW_BLOCK if jax.default_backend() == "cpu" and n >= 8 * _ROW_BLOCK else None


# --- fits ---------------------------------------------------------------------------


def _check_data(Z: Float[ArrayLike, "n r"], y: Float[ArrayLike, " n"]) -> tuple[Array, Array]:
    check_finite("Z", Z)
    check_finite("y", y)
    Z, y = jnp.asarray(Z), jnp.asarray(y)
    if Z.ndim != 2 or y.ndim != 1 or Z.shape[0] != y.shape[0]:
        raise ValueError(f"need Z of shape (n, r) and y of shape (n,), got Z {Z.shape} and y {y.shape}")
    if 0 in Z.shape:  # no rows fitted the zero function, with a `nan` objective
        raise ValueError(f"need Z of shape (n, r) with n ≥ 1 and r ≥ 1, got Z {Z.shape}")
    return Z, y


class AbstractFit(eqx.Module):
    """A closed-form ridge fit of the link: `fit(Z, y)` returns the minimiser of
    `½ n⁻¹ Σ_i (y_i − f(z_i))² + (μ/2) ‖f‖²_H` as an `AbstractFittedLink`."""

    ridge: eqx.AbstractVar[Float[Array, ""]]

    def fit(self, Z: Float[ArrayLike, "n r"], y: Float[ArrayLike, " n"]) -> AbstractFittedLink:
        """The minimiser `f̂` of the objective on projected inputs `Z` `(n, r)` and labels
        `y` `(n,)`, in closed form; differentiable in `Z`, `y` and the hyperparameters.
        The linear solve adds a jitter of `max(1e-12, m·eps)` (float32: `max(1e-6, m·eps)`)
        times the mean diagonal (at least 1) of its `m × m` matrix, so a ridge below what
        the precision resolves (`0`, say) gives the fit at that floor rather than `nan`."""
        raise NotImplementedError

    def objective(self, fitted: AbstractFittedLink, Z: Float[Array, "n r"], y: Float[Array, " n"]) -> Float[Array, ""]:
        """The value `½ n⁻¹ Σ (y_i − f̂(z_i))² + (μ/2)‖f̂‖²_H` at a fitted link."""
        raise NotImplementedError


class KernelRidge(AbstractFit):
    """Kernel ridge regression, solved in the dual: `(K + nμI) a = y`.

    **Example:** `KernelRidge(Mehler(0.5), ridge=1e-3).fit(X @ W, y)`.
    """

    kernel: AbstractKernel
    ridge: Float[Array, ""]

    def __init__(self, kernel: AbstractKernel, ridge: float = 1e-3):
        if not isinstance(kernel, AbstractKernel):
            raise ValueError(f"`kernel` must be a mimflow kernel (Mehler, RBF, ...), got {kernel!r}")
        check_range("ridge", ridge, low=0.0)
        self.kernel = kernel
        self.ridge = jnp.asarray(ridge, dtype=float)

    def fit(self, Z, y):
        Z, y = _check_data(Z, y)
        gram = self.kernel(Z, Z)
        coefficients = _cholesky_solve(gram, y, y.shape[0] * self.ridge)
        return KernelModel(self.kernel, Z, coefficients)

    def objective(self, fitted, Z, y):
        residual = y - fitted(Z)
        norm2 = fitted.coefficients @ (self.kernel(fitted.centres, fitted.centres) @ fitted.coefficients)
        return 0.5 * jnp.mean(residual**2) + 0.5 * self.ridge * norm2


class AbstractFeatureFit(AbstractFit):
    """A ridge fit on an explicit feature map, `‖f‖²_H = ‖θ‖²`; solved in the primal
    `(ΦᵀΦ + nμI) θ = Φᵀy` when `p ≤ n`, else in the dual `θ = Φᵀ(ΦΦᵀ + nμI)⁻¹ y`."""

    def features(self, r: int) -> AbstractFeatures:
        """The feature map on `ℝ^r`."""
        raise NotImplementedError

    def fit(self, Z, y):
        Z, y = _check_data(Z, y)
        features = self.features(Z.shape[1])
        n, p = jax.eval_shape(features, Z).shape
        if p <= n or features._row_block(n) is not None:  # the primal system
            gram, rhs = _normal_equations(features, Z, y)
            return FeatureModel(features, _cholesky_solve(gram, rhs, n * self.ridge))
        design = features(Z)
        return FeatureModel(features, _cholesky_solve(design @ design.T, y, n * self.ridge) @ design)

    def objective(self, fitted, Z, y):
        return 0.5 * jnp.mean((y - fitted(Z)) ** 2) + 0.5 * self.ridge * jnp.sum(fitted.weights**2)


class RandomFeatures(AbstractFeatureFit):
    """Ridge regression on `num_features` random features drawn from `key`:
    `kind="relu"` (ReLU with random biases) or `"fourier"` (random Fourier features
    of the RBF kernel of lengthscale `lengthscale`)."""

    num_features: int = eqx.field(static=True)
    kind: Literal["relu", "fourier"] = eqx.field(static=True)
    key: PRNGKeyArray
    ridge: Float[Array, ""]
    lengthscale: Float[Array, ""]

    def __init__(
        self,
        num_features: int,
        key: PRNGKeyArray,
        ridge: float = 1e-3,
        kind: Literal["relu", "fourier"] = "relu",
        lengthscale: float = 1.0,
    ):
        num_features = check_int("num_features", num_features, 1)
        if kind not in ("relu", "fourier"):
            raise ValueError(f"`kind` must be 'relu' or 'fourier', got {kind!r}")
        check_key("key", key)
        check_range("ridge", ridge, low=0.0)
        check_range("lengthscale", lengthscale, low=0.0, low_open=True)
        self.num_features, self.kind, self.key = num_features, kind, key
        self.ridge = jnp.asarray(ridge, dtype=float)
        self.lengthscale = jnp.asarray(lengthscale, dtype=float)

    def features(self, r):
        key_w, key_b = jax.random.split(self.key)
        # the ridge's float type: a Python float or int put in the field (`eqx.tree_at`) has no `dtype`
        dtype = jnp.result_type(self.ridge, float)
        weights = jax.random.normal(key_w, (r, self.num_features), dtype)
        if self.kind == "relu":
            return ReLUFeatures(weights, jax.random.normal(key_b, (self.num_features,), dtype))
        phases = jax.random.uniform(key_b, (self.num_features,), dtype, 0.0, 2.0 * jnp.pi)
        return FourierFeatures(weights / self.lengthscale, phases)


class HermiteFeatures(AbstractFeatureFit):
    """Ridge regression on the Hermite features `√(ρ^{|α|}) h_α(z)`, `|α| ≤ degree`
    (the Mehler kernel truncated at `degree`): the closest finite-`n` match to the
    reduced dynamics, whose population limit has shrinkage `ρ^j / (ρ^j + μ)` for
    `j ≤ degree` and `0` above. `ridge` is `μ` (default 0), `rho` is `ρ ∈ (0, 1]`
    (default 1: no shrinkage by degree)."""

    degree: int = eqx.field(static=True)
    rho: Float[Array, ""]
    ridge: Float[Array, ""]

    def __init__(self, degree: int, ridge: float = 0.0, rho: float = 1.0):
        degree = check_int("degree", degree, 0)
        check_range("ridge", ridge, low=0.0)
        check_range("rho", rho, low=0.0, high=1.0, low_open=True)
        self.degree = degree
        self.rho = jnp.asarray(rho, dtype=float)
        self.ridge = jnp.asarray(ridge, dtype=float)

    def features(self, r):
        return HermiteFeatureMap(r, self.degree, self.rho)
