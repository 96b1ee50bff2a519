"""Orthonormal Hermite polynomials, Hermite tensors and Gauss–Hermite grids.

Conventions (DESIGN §1): `h_n = He_n / √(n!)`; for a multi-index `α`,
`h_α(z) = Π_i h_{α_i}(z_i)`; the orthonormal Hermite tensor `H_j(z)` has entries
`H_j(z)[t] = √(α(t)!/j!) · h_{α(t)}(z)`, where `α(t)` counts how often each
coordinate appears in the index tuple `t`. A symmetric tensor `T_j` and the
coefficients `c_α = ⟨f, h_α⟩` of `⟨T_j, H_j(z)⟩` are related by
`c_α = √(α!/j!) Σ_{t: α(t)=α} T_j[t]` (which also symmetrises `T_j`) and
`T_j[t] = √(α(t)!/j!) · c_{α(t)}`.
"""

import functools
import math
import operator
from collections.abc import Iterable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import MAX_LINK_SIZE, check_finite, check_int


def hermite_1d(degree: int, x: Float[ArrayLike, "*batch"]) -> Float[Array, "*batch degree+1"]:
    """The orthonormal Hermite polynomials `h_0(x), …, h_degree(x)`.

    Uses the three-term recurrence `h_{n+1} = (x h_n − √n h_{n−1}) / √(n+1)`.

    **Arguments:**
    - `degree`: the largest degree `D ≥ 0`.
    - `x`: points, any shape `(*batch,)`.

    **Returns:** an array of shape `(*batch, D + 1)`.
    """
    degree = check_int("degree", degree, 0)
    check_finite("x", x)
    return jnp.stack(_hermite_list(degree, jnp.asarray(x)), axis=-1)


def _hermite_list(degree: int, x: Float[Array, "*batch"]) -> list[Float[Array, "*batch"]]:
    """`[h_0(x), …, h_degree(x)]` by the three-term recurrence, unchecked (for traced code)."""
    values = [jnp.ones_like(x)]
    if degree >= 1:
        values.append(x)
    for n in range(1, degree):
        values.append((x * values[n] - math.sqrt(n) * values[n - 1]) / math.sqrt(n + 1))
    return values


def multi_indices(dim: int, degree: int) -> np.ndarray:
    """All multi-indices `α ∈ ℕ^dim` with `|α| = degree`, shape `(count, dim)` with
    `count = binom(degree + dim − 1, degree)`, in lexicographically decreasing order
    (`(j, 0, …)` first); `dim ≥ 1`, `degree ≥ 0`, and the table at most `2^20` entries."""
    dim, degree = check_int("dim", dim, 1), check_int("degree", degree, 0)
    count = math.comb(degree + dim - 1, degree)
    if count * dim > MAX_LINK_SIZE:
        raise ValueError(
            f"`dim` = {dim} and `degree` = {degree} have {count} multi-indices of length {dim}: "
            f"more than 2^20 entries to list"
        )
    return _multi_indices(dim, degree)


@functools.cache
def _multi_indices(dim: int, degree: int) -> np.ndarray:
    # by length: those of length m and each sum s ≤ degree, from those of length m − 1
    # (first entry a = s, …, 0 before the rest, which keeps the order decreasing)
    # int32 (sizes are capped at 2^20): index arrays keep one dtype under x64 on and off
    tables = [np.full((1, 1), s, dtype=np.int32) for s in range(degree + 1)]
    for _ in range(dim - 1):
        tables = [
            np.concatenate([np.insert(tables[s - a], 0, a, axis=1) for a in range(s, -1, -1)])
            for s in range(degree + 1)
        ]
    return tables[degree]


@functools.cache
def _tuple_map(dim: int, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """For every index tuple of a `dim^degree` tensor (in C order): the row of its
    multi-index in `multi_indices(dim, degree)`, and the factor `√(α!/j!)` of each row."""
    alphas = multi_indices(dim, degree)
    # a tuple and its multi-index α share one sorted tuple (α_0 zeros, α_1 ones, …): key
    # each by the C-order position of its sorted tuple in the tensor
    sorted_alphas = np.repeat(np.tile(np.arange(dim, dtype=np.int32), len(alphas)), alphas.reshape(-1))
    row_of_key = np.zeros(dim**degree, dtype=np.int32)
    row_of_key[_c_order_keys(sorted_alphas.reshape(len(alphas), degree), dim)] = np.arange(len(alphas))
    tuples = np.indices((dim,) * degree, dtype=np.int32).reshape(degree, dim**degree).T  # C order
    rows = row_of_key[_c_order_keys(np.sort(tuples, axis=1), dim)]
    # α!/j! divided as Python integers (exact, one rounding): α! overflows int64 from j = 21
    scale = np.sqrt([math.prod(math.factorial(a) for a in alpha) / math.factorial(degree) for alpha in alphas])
    return rows, scale


def _c_order_keys(tuples: np.ndarray, dim: int) -> np.ndarray:
    """The C-order position in a `dim^degree` tensor of each row (an index tuple) of `tuples`."""
    keys = np.zeros(len(tuples), dtype=np.int64)
    for column in tuples.T:
        keys = keys * dim + column
    return keys


def _fresh(cached: tuple[np.ndarray, np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Copies of `_tuple_map`'s cached arrays, the scale in `dtype`. JAX (0.10) keeps what it
    derives from a NumPy constant by the object: the same cached object passed in float64
    and, later in the process, inside `jax.enable_x64(False)` (a float32 config run) came
    back as a float64 buffer or an int64 index, and the float32 op failed."""
    rows, scale = cached
    return rows.copy(), scale.astype(jnp.result_type(dtype, float))


def tensor_to_coefficients(tensor: Float[ArrayLike, "..."], dim: int) -> Float[Array, " count"]:
    """Hermite coefficients `c_α` (rows of `multi_indices`) of `⟨T, H_j(z)⟩`.

    Non-symmetric tensors are symmetrised implicitly.
    """
    tensor = jnp.asarray(tensor)
    degree = tensor.ndim
    rows, scale = _fresh(_tuple_map(dim, degree), tensor.dtype)
    sums = jnp.zeros(len(scale), tensor.dtype).at[rows].add(tensor.reshape(-1))
    return scale * sums


def coefficients_to_tensor(coefficients: Float[ArrayLike, " count"], dim: int, degree: int) -> Float[Array, "..."]:
    """The symmetric tensor `T_j` with `⟨T_j, H_j(z)⟩ = Σ_α c_α h_α(z)`."""
    coefficients = jnp.asarray(coefficients)
    rows, scale = _fresh(_tuple_map(dim, degree), coefficients.dtype)
    return (scale * coefficients)[rows].reshape((dim,) * degree)


def symmetrize(tensor: Float[ArrayLike, "..."], dim: int) -> Float[Array, "..."]:
    """The orthogonal projection of a tensor onto the symmetric tensors."""
    tensor = jnp.asarray(tensor)
    return coefficients_to_tensor(tensor_to_coefficients(tensor, dim), dim, tensor.ndim)


def hermite_basis(
    dim: int, degree: int, z: Float[ArrayLike, "*batch dim"] | None, table: Float[Array, "*batch dim D"] | None = None
) -> Float[Array, "*batch count"]:
    """`h_α(z)` for every `α` in `multi_indices(dim, degree)`: `Π_i table[..., i, α_i]`.
    `table` optionally holds `hermite_1d(D, z)` for some `D ≥ degree`, computed once by
    the caller (then `z` may be `None`); any table laid out alike works, e.g. one with a
    row of derivatives `h_k′` for a gradient."""
    if table is None:
        table = hermite_1d(degree, z)
    alphas = multi_indices(dim, degree)
    if alphas.size > _UNROLL:  # one gather (a product of slices per column would be a huge program)
        return jnp.prod(table[..., np.arange(dim, dtype=np.int32)[None, :], alphas], axis=-1)
    # a product of static slices per column: one fused elementwise program, whose
    # derivative needs no scatter (the gather's pullback)
    columns = []
    for alpha in alphas:
        column = table[..., 0, alpha[0]]
        for i in range(1, dim):
            column = column * table[..., i, alpha[i]]
        columns.append(column)
    return jnp.stack(columns, axis=-1)


_UNROLL = 4096
"""`hermite_basis` builds columns from static slices up to this many index entries."""


def evaluate_coefficients(
    coefficients: dict[int, Float[Array, " count"]], dim: int, z: Float[ArrayLike, "*batch dim"]
) -> Float[Array, "*batch"]:
    """`Σ_j Σ_{|α|=j} c_α h_α(z)` for `z` of shape `(*batch, dim)`."""
    return expansion_value_and_grad(coefficients, dim, jnp.asarray(z), grad=False)[0]


def _expansion_terms(dim: int, degrees: Iterable[int]) -> int:
    """The terms `expansion_value_and_grad` writes out: `r + 1` per multi-index."""
    return sum(len(multi_indices(dim, j)) for j in degrees) * (dim + 1)


_UNROLL_TERMS = 4096
"""Hermite expansions are evaluated term by term (`expansion_value_and_grad`) up to this
many terms, `_expansion_terms`; above it as designs times coefficients. At r = 6, D = 5
(3 234 terms, n = 2¹⁴) the value and gradient took 4.2 ms a call and 4.7 s to compile,
against 507 ms and ≈ 10 s for designs (Hermite features, 2026-11-23, 2 CPU cores)."""


def expansion_value_and_grad(
    coefficients: dict[int, Float[Array, " count"]], dim: int, z: Float[Array, "*batch dim"], grad: bool = True
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch dim"] | None]:
    """`f(z) = Σ_j Σ_{|α|=j} c_α h_α(z)` (coefficients in the order of `multi_indices`)
    and, if `grad`, `∇f(z)` by `h_k′ = √k h_{k−1}`, written out term by term over the
    1-D columns `h_k(z_l)`: one fused elementwise pass over the rows, with no design
    matrix (designs times `c` took 9× as long at n = 2¹⁶, r = 2, D = 3, and 130× at
    r = 5, D = 4). The program grows with `_expansion_terms`: above `_UNROLL_TERMS` terms
    the designs times `c` instead. Unchecked, for traced code."""
    if _expansion_terms(dim, coefficients) > _UNROLL_TERMS:
        return _expansion_by_designs(coefficients, dim, z, grad)
    columns = [_hermite_list(max(coefficients), z[..., i]) for i in range(dim)]

    def term(total, scalar, alpha):
        # `scalar · Π_i h_{α_i}(z_i)`, leaving out the factors `h_0 = 1`
        factors = [columns[i][alpha[i]] for i in range(dim) if alpha[i] > 0]
        product = functools.reduce(operator.mul, factors, scalar)
        return product if total is None else total + product

    value, grads = None, [None] * dim
    for j, c in coefficients.items():
        for k, alpha in enumerate(multi_indices(dim, j)):
            value = term(value, c[k], alpha)
            for i in np.flatnonzero(alpha) if grad else ():
                lowered = alpha.copy()
                lowered[i] -= 1
                grads[i] = term(grads[i], c[k] * math.sqrt(alpha[i]), lowered)
    shape = z.shape[:-1]
    value = jnp.broadcast_to(value, shape)
    if not grad:
        return value, None
    zero = jnp.zeros(shape, value.dtype)
    return value, jnp.stack([zero if g is None else jnp.broadcast_to(g, shape) for g in grads], axis=-1)


def _expansion_by_designs(
    coefficients: dict[int, Float[Array, " count"]], dim: int, z: Float[Array, "*batch dim"], grad: bool
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch dim"] | None]:
    """`expansion_value_and_grad` as designs `hermite_basis` times `c`; `∂/∂z_i` from the
    table of `h_k(z_l)` with row `i` replaced by the derivatives `h_k′ = √k h_{k−1}`."""
    degree = max(coefficients)
    table = jnp.stack(_hermite_list(degree, z), axis=-1)  # (*batch, dim, D + 1)
    c = jnp.concatenate(list(coefficients.values()))
    expand = lambda table: jnp.concatenate([hermite_basis(dim, j, None, table) for j in coefficients], -1) @ c  # noqa: E731
    if not grad:
        return expand(table), None
    roots = jnp.sqrt(jnp.arange(1, degree + 1, dtype=table.dtype))
    derivative = jnp.concatenate([jnp.zeros_like(table[..., :1]), roots * table[..., :-1]], axis=-1)
    grads = [expand(table.at[..., i, :].set(derivative[..., i, :])) for i in range(dim)]
    return expand(table), jnp.stack(grads, axis=-1)


def apply_each(
    matrix: Float[Array, "a b"], tensor: Float[Array, "..."], skip_first: bool = False
) -> Float[Array, "..."]:
    """Apply `matrix` on every index of `tensor` (on every index but the first if
    `skip_first`): `(A^{⊗j} T)[i_1…i_j] = Σ_l A[i_1,l_1] … A[i_j,l_j] T[l_1…l_j]`."""
    axis = 1 if skip_first else 0
    for _ in range(tensor.ndim - axis):
        tensor = jnp.tensordot(tensor, matrix, axes=([axis], [1]))
    return tensor


@functools.cache
def gauss_hermite(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes and weights for the standard normal `N(0, 1)`.

    Exact for polynomials of degree `≤ 2·num_nodes − 1`; the weights sum to one.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    return nodes, weights / math.sqrt(2.0 * math.pi)


def gauss_hermite_grid(dim: int, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product Gauss–Hermite grid for `N(0, I_dim)`: points `(num_nodes^dim, dim)`
    and weights `(num_nodes^dim,)`."""
    nodes, weights = gauss_hermite(num_nodes)
    points = np.stack(np.meshgrid(*([nodes] * dim), indexing="ij"), axis=-1).reshape(-1, dim)
    grid_weights = np.prod(np.stack(np.meshgrid(*([weights] * dim), indexing="ij"), axis=-1).reshape(-1, dim), axis=-1)
    return points, grid_weights
