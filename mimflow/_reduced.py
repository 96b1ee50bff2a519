"""Reduced losses and vector fields on the overlap `M = W*ᵀ W` (DESIGN §2–§3).

Both problems are written with two tensor contractions of the link's tensors:
- the correlation `C(A) = Σ_j w_j ⟨T_j, A^{⊗j} T_j⟩ = E[f(u) f(v)]` for `(u, v)`
  jointly Gaussian with cross-covariance `A`;
- its gradient `∇_A C(A) = 2B(A)` for symmetric `A` (two-timescale, `A = G`) and
  `∇_A C(A) = B(A)` for the planted problem (`A = M`), with
  `B(A) = Σ_j w_j · j · T_j(1) (A^{⊗(j−1)} T_j)(1)ᵀ`.
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ._checks import (
    as_numbers,
    check_finite,
    check_int,
    check_range,
    check_shape,
    is_concrete,
    rounding_tolerance,
    shape_of,
)
from ._hermite import apply_each
from ._link import Link

ProblemName = Literal["two-timescale", "planted"]


def _correlation(link: Link, weights: dict[int, Array], matrix: Float[Array, "k k"]) -> Float[Array, ""]:
    return sum(weights[j] * jnp.sum(t * apply_each(matrix, t)) for j, t in link.tensors.items())


def _b_matrix(link: Link, weights: dict[int, Array], matrix: Float[Array, "k k"]) -> Float[Array, "k k"]:
    k = link.dim
    total = jnp.zeros((k, k), matrix.dtype)
    for j, t in link.tensors.items():
        if j == 0:
            continue
        rest = apply_each(matrix, t, skip_first=True)
        total = total + weights[j] * j * t.reshape(k, -1) @ rest.reshape(k, -1).T
    return total


def _as_float_array(value: ArrayLike) -> Array:
    """`value` as a JAX array, integers and booleans as floats (a float array, traced or
    not, is returned as it is: no copy, no change of precision)."""
    array = jnp.asarray(value)
    return array if jnp.issubdtype(array.dtype, jnp.inexact) else array.astype(float)


class AbstractProblem(eqx.Module):
    """A reduced learning problem: a loss and a vector field on the overlap `M`
    of shape `(k, r)`, which together with `M(0)` determine the whole dynamics.

    The methods of `TwoTimescale` and `Planted` take arrays or nested lists and raise a
    `ValueError` naming their argument for a wrong shape and, when concrete, a value that
    is not a finite real number. They do not check that it is an overlap (singular
    values ≤ 1): they are the solvers' right-hand sides, and off the domain (a state a
    step pushed past it) they evaluate the same polynomials. `check_overlap` does."""

    link: eqx.AbstractVar[Link]

    def __check_init__(self):
        if not isinstance(self.link, Link):
            raise ValueError(f"`link` must be a mimflow.Link, got {type(self.link).__name__}")
        self.link._check_single(type(self).__name__)

    def loss(self, overlap: Float[Array, "k r"]) -> Float[Array, ""]:
        """The population loss as a function of `M`."""
        raise NotImplementedError

    def vector_field(self, overlap: Float[Array, "k r"]) -> Float[Array, "k r"]:
        """`Ṁ` under the problem's gradient flow."""
        raise NotImplementedError

    def minimum(self) -> Float[Array, ""]:
        """The loss's infimum over all overlaps with `r ≥ k` (reached when every
        direction `f*` depends on is learned)."""
        raise NotImplementedError

    def check_overlap(self, overlap: ArrayLike, name: str = "M") -> None:
        """Raise a `ValueError` naming `name` if `overlap` is not a finite `(k, r)` matrix
        or, when concrete, not an overlap: its singular values (cosines) above 1 beyond
        rounding (`rounding_tolerance`)."""
        self._check_matrix(overlap, name)
        if not is_concrete(overlap):
            return
        largest = np.linalg.norm(as_numbers(name, overlap), 2)
        if largest > 1 + rounding_tolerance(np.asarray(overlap)):
            raise ValueError(f"`{name}` must be an overlap W*ᵀW, with singular values ≤ 1, got largest {largest:.6g}")

    def _check_matrix(self, overlap: ArrayLike, name: str) -> None:
        """`check_overlap` but for the singular values: a `(k, r)` shape (static, checked
        inside `jit` too) and, when concrete, finite real entries."""
        shape = shape_of(name, overlap)
        if len(shape) != 2 or shape[0] != self.link.dim or shape[1] < 1:
            raise ValueError(f"`{name}` must have shape (k, r) = ({self.link.dim}, r) for this link, got shape {shape}")
        check_finite(name, overlap)

    def _matrix(self, overlap: ArrayLike, name: str = "overlap") -> Array:
        """`overlap` checked by `_check_matrix`, as a float array."""
        self._check_matrix(overlap, name)
        return _as_float_array(overlap)

    def in_domain(self) -> Bool[Array, ""]:
        """Whether the problem's parameters lie in their domain: `__init__` checks concrete
        ones, this traced ones (under `jit`/`vmap`), for `simulate_reduced` to report."""
        return jnp.asarray(True)


class TwoTimescale(AbstractProblem):
    """The two-timescale problem (DESIGN §2): the link is refitted at every `W`, so
    `ℒ(G) = ½(‖f*‖² − Σ_j s_j ⟨T_j, G^{⊗j} T_j⟩)` with `G = M Mᵀ`.

    With a kernel ridge fit of eigenvalues `q_j = ρ^j` (Mehler kernel) and ridge
    `μ`, `s_j = q_j / (q_j + μ)` and `ℒ` is the fit's value function; `μ = 0` gives
    the exact conditional expectation (`s_j = 1`). `max_degree = D` truncates the
    kernel (Hermite features of degree `≤ D`): `s_j = 0` for `j > D`. `r ≠ k` is allowed.
    """

    link: Link
    ridge: Float[Array, ""]
    rho: Float[Array, ""]
    max_degree: int | None = eqx.field(static=True)

    def __init__(self, link: Link, ridge: float = 0.0, rho: float = 1.0, max_degree: int | None = None):
        check_range("ridge", ridge, low=0.0)
        check_range("rho", rho, low=0.0, high=1.0, low_open=True)
        if max_degree is not None:
            max_degree = check_int("max_degree", max_degree, 0)
        self.link = link
        self.ridge = jnp.asarray(ridge, dtype=float)
        self.rho = jnp.asarray(rho, dtype=float)
        self.max_degree = max_degree

    def in_domain(self) -> Bool[Array, ""]:
        """`0 ≤ ridge < ∞` and `0 < rho ≤ 1`."""
        return jnp.isfinite(self.ridge) & (self.ridge >= 0) & (self.rho > 0) & (self.rho <= 1)

    def shrinkage(self) -> dict[int, Float[Array, ""]]:
        """`{j: s_j = q_j / (q_j + μ)}` with `q_j = ρ^j` (`0` above `max_degree`)."""
        top = self.link.degree if self.max_degree is None else self.max_degree
        return {j: self.rho**j / (self.rho**j + self.ridge) * (j <= top) for j in self.link.tensors}

    def B(self, gram: Float[ArrayLike, "k k"]) -> Float[Array, "k k"]:
        """`B(G) = Σ_j s_j · j · T_j(1) G^{⊗(j−1)} T_j(1)ᵀ ⪰ 0`, so `∂ℒ/∂G = −½ B(G)`."""
        check_shape("gram", gram, (self.link.dim, self.link.dim))
        check_finite("gram", gram)
        return _b_matrix(self.link, self.shrinkage(), _as_float_array(gram))

    def loss(self, overlap: Float[ArrayLike, "k r"]) -> Float[Array, ""]:
        """`ℒ(G) = ½(‖f*‖² − Σ_j s_j ⟨T_j, G^{⊗j} T_j⟩)`, `G = M Mᵀ`."""
        overlap = self._matrix(overlap)
        gram = overlap @ overlap.T
        return 0.5 * (self.link.norm2() - _correlation(self.link, self.shrinkage(), gram))

    def minimum(self) -> Float[Array, ""]:
        """`ℒ(I) = ½(‖f*‖² − Σ_j s_j ‖T_j‖²)` (zero without ridge)."""
        return 0.5 * (self.link.norm2() - _correlation(self.link, self.shrinkage(), jnp.eye(self.link.dim)))

    def vector_field(self, overlap: Float[ArrayLike, "k r"]) -> Float[Array, "k r"]:
        """`Ṁ = (I_k − G) B(G) M` (the Grassmann gradient flow, exact at every `d`)."""
        overlap = self._matrix(overlap)
        gram = overlap @ overlap.T
        b = _b_matrix(self.link, self.shrinkage(), gram)  # `B(gram)`, `overlap` checked above
        return (jnp.eye(self.link.dim, dtype=gram.dtype) - gram) @ b @ overlap


class Planted(AbstractProblem):
    """The planted problem (DESIGN §3): the link is known and fixed, `r = k`, and
    `L_pl(M) = ‖f*‖² − Σ_j ⟨T_j, M^{⊗j} T_j⟩`, flowed on the Stiefel manifold with
    the embedded metric."""

    link: Link

    def _check_matrix(self, overlap: ArrayLike, name: str) -> None:
        shape = shape_of(name, overlap)
        if len(shape) == 2 and shape[1] != self.link.dim:
            raise ValueError(f"the planted problem needs r = k = {self.link.dim}, got `{name}` of shape {shape}")
        super()._check_matrix(overlap, name)

    def gradient(self, overlap: Float[ArrayLike, "k k"]) -> Float[Array, "k k"]:
        """`Γ = ∇_M L_pl = −Σ_j j · T_j(1) (M^{⊗(j−1)} T_j)(1)ᵀ`."""
        return -_b_matrix(self.link, _ones(self.link), self._matrix(overlap))

    def loss(self, overlap: Float[ArrayLike, "k k"]) -> Float[Array, ""]:
        """`L_pl(M) = ‖f*‖² − Σ_j ⟨T_j, M^{⊗j} T_j⟩`."""
        return self.link.norm2() - _correlation(self.link, _ones(self.link), self._matrix(overlap))

    def minimum(self) -> Float[Array, ""]:
        """`L_pl(I) = 0` (up to rounding), the global minimum at `W = W*`."""
        return self.link.norm2() - _correlation(self.link, _ones(self.link), jnp.eye(self.link.dim))

    def vector_field(self, overlap: Float[ArrayLike, "k k"]) -> Float[Array, "k k"]:
        """`Ṁ = −Γ + ½ M (MᵀΓ + ΓᵀM)`."""
        overlap = self._matrix(overlap)
        grad = -_b_matrix(self.link, _ones(self.link), overlap)  # `gradient`, `overlap` checked above
        return -grad + 0.5 * overlap @ (overlap.T @ grad + grad.T @ overlap)


def _ones(link: Link) -> dict[int, float]:
    return dict.fromkeys(link.tensors, 1.0)


def _same_link(a: Link, b: Link) -> bool:
    """Whether two links are the same function (`True` when either is traced: not checked)."""
    if a is b:
        return True
    if a.dim != b.dim:
        return False
    if not is_concrete((a.tensors, b.tensors)):
        return True
    full = lambda link, j: np.broadcast_to(np.asarray(link.tensors.get(j, 0.0)), (link.dim,) * j)
    return all(np.array_equal(full(a, j), full(b, j)) for j in set(a.tensors) | set(b.tensors))


def make_problem(
    link: Link | AbstractProblem,
    problem: ProblemName | AbstractProblem = "two-timescale",
    *,
    ridge: float = 0.0,
    rho: float = 1.0,
) -> AbstractProblem:
    """The problem object for `link`: `TwoTimescale(link, ridge, rho)` or `Planted(link)`.

    A problem object passed as `link` or `problem` is returned unchanged; `ridge` and
    `rho` beside it, or a `link` that is not its link, raise a `ValueError` (they would
    be ignored).
    """
    given = link if isinstance(link, AbstractProblem) else problem if isinstance(problem, AbstractProblem) else None
    if given is not None:
        # the problem object carries its link and shrinkage: other values would be ignored
        if not is_concrete((ridge, rho)) or ridge != 0.0 or rho != 1.0:
            raise ValueError(
                f"`ridge` and `rho` are set on the problem object ({type(given).__name__}(link, ridge, rho)), "
                f"got ridge={ridge}, rho={rho} beside one"
            )
        if isinstance(link, Link) and not _same_link(link, given.link):
            raise ValueError(f"`link` differs from the link of `problem` ({type(given).__name__}): pass one of them")
        return given
    if not isinstance(link, Link):
        raise ValueError(f"`link` must be a mimflow.Link, got {type(link).__name__}")
    if problem == "two-timescale":
        return TwoTimescale(link, ridge, rho)
    if problem == "planted":
        if not is_concrete((ridge, rho)) or ridge != 0.0 or rho != 1.0:
            raise ValueError(
                f"ridge shrinkage is for the two-timescale problem, got ridge={ridge}, rho={rho} with 'planted'"
            )
        return Planted(link)
    raise ValueError(f"`problem` must be 'two-timescale' or 'planted', got {problem!r}")


def reduced_loss(
    link: Link,
    M: Float[ArrayLike, "k r"],
    problem: ProblemName | AbstractProblem = "two-timescale",
    *,
    ridge: float = 0.0,
    rho: float = 1.0,
) -> Float[Array, ""]:
    """The population loss as a function of the overlap `M = W*ᵀ W` (shape `(k, r)`).

    `"two-timescale"`: `ℒ(G) = ½(‖f*‖² − Σ_j s_j ⟨T_j, G^{⊗j} T_j⟩)`, `G = M Mᵀ`
    (`s_j = 1` without ridge). `"planted"`: `‖f*‖² − Σ_j ⟨T_j, M^{⊗j} T_j⟩`.

    **Example:** `reduced_loss(links.hermite(3), jnp.array([[0.1]]))` is `½(1 − 0.1⁶)`.
    """
    prob = make_problem(link, problem, ridge=ridge, rho=rho)
    prob.check_overlap(M)
    return prob.loss(jnp.asarray(M, dtype=float))


def reduced_vector_field(
    link: Link,
    M: Float[ArrayLike, "k r"],
    problem: ProblemName | AbstractProblem = "two-timescale",
    *,
    ridge: float = 0.0,
    rho: float = 1.0,
) -> Float[Array, "k r"]:
    """`Ṁ` for the overlap `M` of shape `(k, r)`: `(I − G) B(G) M` (two-timescale) or
    `−Γ + ½ M (MᵀΓ + ΓᵀM)` (planted)."""
    prob = make_problem(link, problem, ridge=ridge, rho=rho)
    prob.check_overlap(M)
    return prob.vector_field(jnp.asarray(M, dtype=float))
