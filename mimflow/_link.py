"""The link function `f(z) = Σ_j ⟨T_j, H_j(z)⟩` in the orthonormal Hermite basis."""

from collections.abc import Callable, Iterable, Mapping
from numbers import Integral, Real

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import (
    MAX_DEGREE,
    _short,
    as_numbers,
    check_finite,
    check_int,
    check_link_size,
    check_orthonormal,
    check_range,
    check_shape,
    is_concrete,
)
from ._hermite import (
    apply_each,
    coefficients_to_tensor,
    evaluate_coefficients,
    gauss_hermite_grid,
    hermite_basis,
    multi_indices,
    symmetrize,
    tensor_to_coefficients,
)

_MAX_GRID_POINTS = 2**24
"""The most points of `Link.from_function`'s quadrature grid (`num_nodes^dim`)."""


def _check_mapping(name: str, value: object, keys: str) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"`{name}` must be a dict {{{keys}}}, got {type(value).__name__}")


def _check_degree(degree: object) -> None:
    """A `ValueError` unless a key of `tensors` is an integer degree in `[0, MAX_DEGREE]`."""
    if isinstance(degree, bool) or not isinstance(degree, Integral) or not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"`tensors` keys must be degrees in [0, {MAX_DEGREE}], got {degree!r}")


class Link(eqx.Module):
    """A link function `f: ℝ^k → ℝ` stored by its symmetric Hermite tensors,
    `f(z) = Σ_j ⟨T_j, H_j(z)⟩` (DESIGN §1), so `‖f‖² = E f(z)² = Σ_j ‖T_j‖_F²`.

    Build one with `Link.from_hermite`, `Link.from_tensors`, `Link.from_function`
    or the catalogue `mimflow.links`.

    **Arithmetic** (links of one dimension `k`; each acts on the tensors):
    - `f + g`, `f - g`, `-f`, and `sum([f, g, ...])` (`0 + f` is `f`; other scalars are
      not added: a constant `c` is `Link.from_tensors({0: c}, dim=k)`).
    - `c * f`, `f * c` and `f / c` for one finite real number `c` (a Python or NumPy
      number, or a 0-d JAX array, traced ones included, so `jax.grad` flows through
      `c`); bools, complex numbers, NaN, ±inf and `f / 0` raise a `ValueError`. A
      traced `c` is checked for dtype and shape only.
    - `residual`: `r_{c·f} = c² r_f`, `r_{-f} = r_f`, and `r_{f±g} = (√r_f + √r_g)²`,
      the Cauchy–Schwarz bound on `‖e_f ± e_g‖²` for the truncation errors `e_f, e_g`
      (attained by `f + f`; `f - f` is the zero function but keeps `4 r_f`).

    **Fields:**
    - `tensors`: `{degree j: symmetric tensor of shape (k,)*j}`.
    - `residual`: `E f² − Σ_{j≤D} ‖T_j‖²` of the function the link was projected
      from (zero for polynomials; for sums and differences of projected links an
      upper bound).
    - `dim`: `k`, the number of input variables.

    **Example:**
    ```python
    link = Link.from_hermite({(1, 0): 1.0, (1, 1): 1.0})  # h1(z1) + z1 z2
    link(jnp.array([0.5, 2.0]))                           # 1.5
    ```
    """

    tensors: dict[int, Float[Array, "..."]]
    residual: Float[Array, ""]
    dim: int = eqx.field(static=True)

    def __init__(self, tensors: Mapping[int, Float[ArrayLike, "..."]], dim: int, residual: float = 0.0):
        """Low-level constructor (no symmetrisation, works on traced tensors); prefer
        `Link.from_tensors`. Checks the degrees, that each `T_j` ends in `(dim,)*j` and,
        where they are concrete (not traced), that the tensors and `residual` are finite
        real numbers."""
        dim = check_int("dim", dim, 1)
        _check_mapping("tensors", tensors, "degree: tensor")
        for j, t in tensors.items():
            _check_degree(j)
            shape = np.shape(t)
            if len(shape) < j or shape[len(shape) - j :] != (dim,) * j:
                raise ValueError(f"`tensors[{j}]` must end in shape {(dim,) * j} (dim = {dim}), got shape {shape}")
            check_finite(f"tensors[{j}]", t)
        check_finite("residual", residual)
        if is_concrete(residual) and np.any(as_numbers("residual", residual) < 0):
            raise ValueError(f"`residual` must be ≥ 0 (it bounds E f² − Σ‖T_j‖²), got {_short(residual)}")
        self.tensors = {int(j): jnp.asarray(t) for j, t in sorted(tensors.items())}
        self.residual = jnp.asarray(residual)
        self.dim = dim

    # --- constructors ---------------------------------------------------------

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[int, Float[ArrayLike, "..."]], residual: float = 0.0, dim: int | None = None
    ) -> "Link":
        """The link `Σ_j ⟨T_j, H_j(z)⟩` from `{degree j: tensor of shape (k,)*j}`.

        Tensors are projected onto the symmetric tensors. Degree 0 takes a
        scalar. All non-scalar tensors must share the dimension `k`; `dim` gives
        `k` when there are none (a constant link).
        """
        _check_mapping("tensors", tensors, "degree: tensor")
        if not tensors:
            raise ValueError("`tensors` must hold at least one degree, got {}")
        for degree in tensors:
            _check_degree(degree)
        dims = {np.shape(t)[0] for t in tensors.values() if np.ndim(t) > 0} | ({dim} if dim is not None else set())
        if len(dims) != 1 or not all(isinstance(k, Integral) and k >= 1 for k in dims):
            raise ValueError(
                f"`tensors` must share one dimension k ≥ 1 (`dim` if constant), got dimensions {sorted(dims, key=str)}"
            )
        (dim,) = dims
        check_link_size(dim, max(tensors), "`tensors`")
        checked = {}
        for degree, tensor in tensors.items():
            check_shape(f"tensors[{degree}]", tensor, (dim,) * int(degree))
            check_finite(f"tensors[{degree}]", tensor)
            checked[int(degree)] = symmetrize(jnp.asarray(tensor, dtype=float), dim)
        check_range("residual", residual, low=0.0)
        return cls(checked, dim, residual)

    @classmethod
    def from_hermite(cls, coefficients: Mapping[tuple[int, ...], float]) -> "Link":
        """The link `Σ_α c_α h_α(z)` from `{multi-index α: c_α}`; `k = len(α)`.

        **Example:** `Link.from_hermite({(1, 0): 1.0, (0, 3): 1.0})` is `h1(z1) + h3(z2)`.
        """
        _check_mapping("coefficients", coefficients, "multi-index: coefficient")
        if not coefficients:
            raise ValueError("`coefficients` must hold at least one multi-index, got {}")
        dims = {len(alpha) if isinstance(alpha, tuple) else -1 for alpha in coefficients}
        if len(dims) != 1 or min(dims) < 1:
            raise ValueError(
                f"`coefficients` keys must be multi-indices (tuples) of one length k ≥ 1, got {list(coefficients)}"
            )
        (dim,) = dims
        by_degree: dict[int, dict[tuple[int, ...], float]] = {}
        for alpha, value in coefficients.items():
            if not all(isinstance(a, Integral) and not isinstance(a, bool) and a >= 0 for a in alpha):
                raise ValueError(f"multi-index {alpha!r} in `coefficients` must hold integers ≥ 0")
            if sum(alpha) > MAX_DEGREE:
                raise ValueError(f"multi-index {alpha!r} in `coefficients` has degree > {MAX_DEGREE}")
            check_finite(f"coefficients[{alpha}]", value)
            by_degree.setdefault(sum(alpha), {})[tuple(int(a) for a in alpha)] = value
        check_link_size(dim, max(by_degree), "`coefficients`")
        tensors = {}
        for degree, entries in by_degree.items():
            rows = {tuple(a): i for i, a in enumerate(multi_indices(dim, degree))}
            vector = jnp.zeros(len(rows))
            for alpha, value in entries.items():
                vector = vector.at[rows[alpha]].set(value)
            tensors[degree] = coefficients_to_tensor(vector, dim, degree)
        return cls(tensors, dim)

    @classmethod
    def from_function(
        cls,
        fn: Callable[[Float[Array, " k"]], Float[Array, ""]],
        dim: int,
        degree: int,
        num_nodes: int | None = None,
    ) -> "Link":
        """Project any JAX callable onto Hermite degrees `≤ degree` by tensor-product
        Gauss–Hermite quadrature; `residual` holds `E f² − Σ_{j≤D} ‖T_j‖²`.

        **Arguments:**
        - `fn`: maps one point `z` of shape `(dim,)` to a scalar (it is vmapped).
        - `dim`, `degree`: `k ≥ 1` and the truncation degree `D ≥ 0`.
        - `num_nodes`: quadrature nodes per axis; exact for polynomials of degree
          `≤ 2·num_nodes − 1 − D`; at most 300 (the limit of `hermegauss` in
          float64). Default: as many as keep the grid near 10⁶ points (300 for
          k ≤ 2, 102 for k = 3, 32 for k = 4), at least `D + 1`. For non-smooth
          functions the error decays slowly (about `1/num_nodes` for a kink). The grid
          has at most `2^24` points, and the link at most `2^20` entries per tensor.
        """
        if not callable(fn):
            raise ValueError(f"`fn` must be callable, got {fn!r}")
        dim = check_int("dim", dim, 1)
        degree = check_int("degree", degree, 0, MAX_DEGREE)
        if num_nodes is None:
            num_nodes = max(degree + 1, min(300, int(round(2 ** (20 / dim)))))
        num_nodes = check_int("num_nodes", num_nodes, 1, 300)
        if num_nodes < degree + 1:
            raise ValueError(f"`num_nodes` must be at least degree + 1 = {degree + 1}, got {num_nodes}")
        check_link_size(dim, degree, f"`dim` = {dim}, `degree` = {degree}")
        if num_nodes**dim > _MAX_GRID_POINTS:
            raise ValueError(
                f"`num_nodes` = {num_nodes} per axis in `dim` = {dim} dimensions is a grid of "
                f"{num_nodes}^{dim} points, more than 2^24: lower `dim` or `num_nodes`"
            )
        points, weights = (jnp.asarray(a) for a in gauss_hermite_grid(dim, num_nodes))
        shape = getattr(jax.eval_shape(fn, points[0]), "shape", None)
        if shape is None or np.prod(shape) != 1:
            raise ValueError(f"`fn` must map a point of shape ({dim},) to a scalar, got output shape {shape}")
        values, tensors, mean_square = _project(fn, dim, degree, points, weights)
        check_finite("fn(z) on the quadrature grid", values)
        link = cls(tensors, dim)
        return cls(tensors, dim, jnp.maximum(mean_square - link.norm2(), 0.0))

    # --- properties -----------------------------------------------------------

    @property
    def degree(self) -> int:
        """The largest degree `D` stored."""
        return max(self.tensors)

    def _check_single(self, method: str) -> None:
        """Raise a `ValueError` if this is a stacked batch of links (`links.stack`), whose
        tensors carry a leading batch axis: `method` takes one link (vmap over the batch)."""
        if any(np.ndim(t) != j for j, t in self.tensors.items()):
            raise ValueError(
                f"`{method}` takes a single `link`, not a stacked batch (vmap over mimflow.links.stack), "
                f"got tensors of shapes {[np.shape(t) for t in self.tensors.values()]}"
            )

    def norm2(self) -> Float[Array, ""]:
        """`‖f‖² = E f(z)² = Σ_j ‖T_j‖_F²` for `z ~ N(0, I_k)`."""
        self._check_single("Link.norm2")
        return sum(jnp.sum(t**2) for t in self.tensors.values())

    def coefficients(self) -> dict[int, Float[Array, " count"]]:
        """`{degree j: c_α for α in multi_indices(k, j)}`, the Hermite coefficients."""
        self._check_single("Link.coefficients")
        return {j: tensor_to_coefficients(t, self.dim) for j, t in self.tensors.items()}

    def __call__(self, z: Float[ArrayLike, "*batch k"]) -> Float[Array, "*batch"]:
        """Evaluate `f(z)` for `z` of shape `(*batch, k)`."""
        self._check_single("Link.__call__")
        check_finite("z", z)
        z = jnp.asarray(z)
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ValueError(f"`z` must have shape (..., {self.dim}), got shape {z.shape}")
        return evaluate_coefficients(self.coefficients(), self.dim, z)

    # --- algebra --------------------------------------------------------------

    def with_degrees(self, degrees: "Iterable[int]") -> "Link":
        """The same function with zero tensors added for the `degrees` it lacks, so that
        links of different degrees share one pytree structure (and can be stacked and
        vmapped over, see `mimflow.links.stack`)."""
        tensors = dict(self.tensors)
        for j in degrees:
            if not isinstance(j, Integral) or j < 0:
                raise ValueError(f"`degrees` must hold integers ≥ 0, got {j!r}")
            tensors.setdefault(int(j), jnp.zeros((self.dim,) * int(j), self.residual.dtype))
        return Link(tensors, self.dim, self.residual)

    def transform(self, matrix: Float[ArrayLike, "m k"]) -> "Link":
        """The link `z ↦ f(Aᵀ z)` on `ℝ^m`, for `A` of shape `(m, k)` with orthonormal
        columns (a rotation when `m = k`, an embedding when `m > k`); its tensors are
        `A^{⊗j} T_j`."""
        self._check_single("Link.transform")
        check_finite("matrix", matrix)
        matrix = jnp.asarray(matrix, dtype=float)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim or matrix.shape[0] < self.dim:
            raise ValueError(f"`matrix` must have shape (m, {self.dim}) with m ≥ {self.dim}, got shape {matrix.shape}")
        check_orthonormal("matrix", matrix)
        check_link_size(matrix.shape[0], self.degree, f"`matrix` of shape {matrix.shape}")
        tensors = {j: apply_each(matrix, t) for j, t in self.tensors.items()}
        return Link(tensors, matrix.shape[0], self.residual)

    def _combine(self, other: "Link", sign: float, verb: str) -> "Link":
        """`self + sign · other`; the residual bound is `(√r_f + √r_g)²` for either sign."""
        if other.dim != self.dim:
            raise ValueError(f"cannot {verb} links of dimensions {self.dim} and {other.dim}")
        tensors = dict(self.tensors)
        for j, t in other.tensors.items():
            t = t if sign > 0 else -t
            tensors[j] = tensors[j] + t if j in tensors else t
        return Link(tensors, self.dim, (_safe_sqrt(self.residual) + _safe_sqrt(other.residual)) ** 2)

    def __add__(self, other: "Link") -> "Link":
        if not isinstance(other, Link):
            return NotImplemented
        return self._combine(other, 1.0, "add")

    def __radd__(self, other: object) -> "Link":
        # `0 + f` is `f`, so that `sum(links)` (which starts from the integer 0) works;
        # other scalars are not links (a constant is `Link.from_tensors({0: c}, dim=k)`).
        if isinstance(other, Real) and not isinstance(other, bool | np.bool_) and other == 0:
            return self
        return NotImplemented

    def __sub__(self, other: "Link") -> "Link":
        if not isinstance(other, Link):
            return NotImplemented
        return self._combine(other, -1.0, "subtract")

    def __neg__(self) -> "Link":
        return Link({j: -t for j, t in self.tensors.items()}, self.dim, self.residual)

    def __mul__(self, scale: float) -> "Link":
        _check_scalar("scale", scale)
        tensors = {j: scale * t for j, t in self.tensors.items()}
        return Link(tensors, self.dim, scale * (scale * self.residual))  # a float's `**` raises on overflow

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> "Link":
        _check_scalar("divisor", divisor)
        if is_concrete(divisor) and np.asarray(divisor) == 0:
            raise ValueError(f"`divisor` must be nonzero, got {divisor!r}")
        tensors = {j: t / divisor for j, t in self.tensors.items()}
        return Link(tensors, self.dim, self.residual / divisor / divisor)


def _check_scalar(name: str, value: object) -> None:
    """A `ValueError` naming `value` unless it is one real number: a Python or NumPy
    integer or float, or a 0-d JAX or NumPy array of one (traced ones included; those are
    checked for dtype and shape only). Bools, complex numbers and, when concrete, NaN and
    ±inf are refused."""
    if isinstance(value, Link):
        raise ValueError(f"`{name}` must be a real number: links multiply and divide only by scalars, got a Link")
    if isinstance(value, jax.Array):  # concrete or traced
        kind, shape = value.dtype.kind, value.shape
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):
            array = np.asarray(None)
        kind, shape = array.dtype.kind, array.shape
    if kind in "bc":
        what = "a bool" if kind == "b" else "complex"
        raise ValueError(f"`{name}` must be a real number, not {what}, got {value!r:.100}")
    if kind not in "iuf":
        raise ValueError(f"`{name}` must be a real number, got {type(value).__name__} {value!r:.100}")
    if shape != ():
        raise ValueError(f"`{name}` must be a scalar, got shape {shape}")
    check_finite(name, value)


def _safe_sqrt(x: Array) -> Array:
    """`√max(x, 0)` with a zero (not `nan`) derivative at `x ≤ 0`, so links built by `+`
    can be differentiated (their residual is usually exactly 0)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


@eqx.filter_jit
def _project(fn: Callable, dim: int, degree: int, points: Float[Array, "N k"], weights: Float[Array, " N"]):
    """Gauss–Hermite projection of `fn` onto degrees `≤ degree`: values on the grid,
    `{j: T_j}` and `E fn²`, in one compiled call (the grid is an argument, so that XLA
    does not constant-fold it)."""
    values = jax.vmap(lambda z: jnp.reshape(fn(z), ()))(points)
    weighted = weights * values
    tensors = {j: coefficients_to_tensor(weighted @ hermite_basis(dim, j, points), dim, j) for j in range(degree + 1)}
    return values, tensors, jnp.dot(weighted, values)
