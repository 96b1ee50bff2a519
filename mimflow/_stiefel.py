"""The subspace `W ∈ St(d, r)`: Haar sampling, tangent projections, retractions,
principal angles (DESIGN §4)."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_finite, check_int, check_key, check_orthonormal, is_concrete

Metric = Literal["grassmann", "stiefel"]
Retraction = Literal["qr", "polar", "cayley"]


def _check_dims(d: int, r: int) -> tuple[int, int]:
    """`(d, r)` as Python integers; a `ValueError` unless they are integers (Python or
    NumPy, not bools) with `1 ≤ r ≤ d`."""
    try:
        return check_int("d", d, 1), check_int("r", r, 1, d)
    except ValueError:
        raise ValueError(f"need integers 1 ≤ r ≤ d, got d={d!r}, r={r!r}") from None


def haar_stiefel(key: PRNGKeyArray, d: int, r: int) -> Float[Array, "d r"]:
    """A Haar-distributed `W ∈ St(d, r)`: the Q factor of a Gaussian `d × r` matrix,
    with the signs fixed so that `R` has a positive diagonal."""
    check_key("key", key)
    d, r = _check_dims(d, r)
    return _qr_positive(jax.random.normal(key, (d, r)))


def _qr_positive(matrix: Float[Array, "d r"]) -> Float[Array, "d r"]:
    q, upper = jnp.linalg.qr(matrix)
    signs = jnp.sign(jnp.diagonal(upper))
    return q * jnp.where(signs == 0, 1.0, signs)


def _check_step(W: ArrayLike, step: ArrayLike, name: str) -> tuple[Array, Array]:
    """`W` and a direction `name` at it as arrays: `(d, r)`, the same shape, finite, and
    `W` with orthonormal columns when concrete (the formulas hold on St(d, r) only)."""
    check_finite("W", W)
    check_finite(name, step)
    W, step = jnp.asarray(W), jnp.asarray(step)
    if W.ndim != 2 or step.shape != W.shape:
        raise ValueError(f"`W` must be a (d, r) matrix and `{name}` of its shape, got {W.shape} and {step.shape}")
    check_orthonormal("W", W)
    return W, step


def project_tangent(W: Float[Array, "d r"], direction: Float[Array, "d r"], metric: Metric) -> Float[Array, "d r"]:
    """Project an ambient `d × r` direction onto the tangent space at `W`.

    `"grassmann"` (the two-timescale problem, whose loss is `O(r)`-invariant): the
    horizontal space, `(I − W Wᵀ) V`. `"stiefel"` (planted), embedded metric:
    `V − W sym(Wᵀ V)`.
    """
    W, direction = _check_step(W, direction, "direction")
    inner = W.T @ direction
    if metric == "grassmann":
        return direction - W @ inner
    if metric == "stiefel":
        return direction - W @ (0.5 * (inner + inner.T))
    raise ValueError(f"`metric` must be 'grassmann' or 'stiefel', got {metric!r}")


def retract(W: Float[Array, "d r"], step: Float[Array, "d r"], method: Retraction = "qr") -> Float[Array, "d r"]:
    """Map `W + step` (a tangent step at `W`) back onto St(d, r); each agrees with the
    exponential map to second order for horizontal steps.

    - `"qr"`: the Q factor of `W + V` with positive `diag(R)`;
    - `"polar"`: `(W + V)((W + V)ᵀ(W + V))^{−1/2}`, which needs `W + V` of full column
      rank (true for every tangent step; a concrete `W + V` that is not raises);
    - `"cayley"`: `(I − A/2)^{−1}(I + A/2) W` with `A = P V Wᵀ − W Vᵀ P`, `P = I − ½WWᵀ`
      (skew, `A W = V` for Stiefel tangents; Wen & Yin), computed in `O(d r²)` with
      the Woodbury identity (`A = U Zᵀ`, `U = [PV, W]`, `Z = [W, −PV]`).
    """
    W, step = _check_step(W, step, "step")
    if method == "qr":
        return _qr_positive(W + step)
    if method == "polar":
        moved = W + step
        values, vectors = jnp.linalg.eigh(moved.T @ moved)
        if is_concrete(values) and not np.min(values) > 0:
            raise ValueError(
                f"`step` must leave `W + step` of full column rank for the polar retraction (a tangent step "
                f"does), got (W + step)ᵀ(W + step) with eigenvalues {np.array2string(np.asarray(values), precision=3)}"
            )
        return moved @ (vectors * values**-0.5) @ vectors.T
    if method == "cayley":
        tangent = step - 0.5 * W @ (W.T @ step)  # P_W V with P_W = I − ½WWᵀ, so that A W = V
        left = jnp.concatenate([tangent, W], axis=1)  # U
        right = jnp.concatenate([W, -tangent], axis=1)  # Z
        inner = jnp.eye(left.shape[1], dtype=W.dtype) - 0.5 * right.T @ left
        # (I − ½UZᵀ)^{-1} x = x + ½ U (I − ½ZᵀU)^{-1} Zᵀ x, applied to x = (I + ½UZᵀ) W
        x = W + 0.5 * left @ (right.T @ W)
        return x + 0.5 * left @ jnp.linalg.solve(inner, right.T @ x)
    raise ValueError(f"`method` must be 'qr', 'polar' or 'cayley', got {method!r}")


def principal_angles(W: Float[Array, "d r"], U: Float[Array, "d s"]) -> Float[Array, " p"]:
    """Principal angles (radians, smallest first) between span(W) and span(U), both
    with orthonormal columns; `p = min(r, s)`. Computed as `atan2(sin, cos)` from the
    singular values of `WᵀU` (cosines) and of `(I − WWᵀ)U` (sines), so that small
    angles keep their relative accuracy (`arccos` alone loses them below ~1e-8)."""
    check_finite("W", W)
    check_finite("U", U)
    W, U = jnp.asarray(W), jnp.asarray(U)
    if W.ndim != 2 or U.ndim != 2 or W.shape[0] != U.shape[0]:
        raise ValueError(f"`W` and `U` must be (d, r) and (d, s) matrices, got shapes {W.shape} and {U.shape}")
    check_orthonormal("W", W)
    check_orthonormal("U", U)
    if U.shape[1] > W.shape[1]:
        W, U = U, W
    cosines = jnp.linalg.svd(W.T @ U, compute_uv=False)  # descending
    sines = jnp.linalg.svd(U - W @ (W.T @ U), compute_uv=False)[::-1]  # ascending
    return jnp.arctan2(sines, cosines)


class Stiefel(eqx.Module):
    """A point `W ∈ St(d, r)` (orthonormal columns), the student's subspace.

    **Example:**
    ```python
    point = Stiefel.haar(key, d=100, r=2)
    point = point.retract(point.project(-grad, "grassmann") * dt)
    ```
    """

    W: Float[Array, "d r"]

    def __init__(self, W: Float[ArrayLike, "d r"]):
        check_finite("W", W)  # first: a string or a ragged list gets its message
        W = jnp.asarray(W, dtype=float)
        if W.ndim != 2:
            raise ValueError(f"`W` must be a (d, r) matrix, got shape {W.shape}")
        _check_dims(W.shape[0], W.shape[1])
        check_finite("W", W)
        check_orthonormal("W", W)
        self.W = W

    @classmethod
    def haar(cls, key: PRNGKeyArray, d: int, r: int) -> "Stiefel":
        """A Haar-distributed point of St(d, r)."""
        return cls(haar_stiefel(key, d, r))

    def project(self, direction: Float[Array, "d r"], metric: Metric = "grassmann") -> Float[Array, "d r"]:
        """`project_tangent(W, direction, metric)`."""
        return project_tangent(self.W, direction, metric)

    def retract(self, step: Float[Array, "d r"], method: Retraction = "qr") -> "Stiefel":
        """The point `retract(W, step, method)`."""
        return Stiefel(retract(self.W, step, method))

    def principal_angles(self, other: "Stiefel | Float[Array, 'd s']") -> Float[Array, " p"]:
        """Principal angles to another subspace (a `Stiefel` or an orthonormal matrix)."""
        return principal_angles(self.W, other.W if isinstance(other, Stiefel) else other)
