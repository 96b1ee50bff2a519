"""A catalogue of link functions (DESIGN §1–§3).

Single-index links are functions on `ℝ¹`; place them on coordinates of `ℝ^k`
with `embed`, combine links with `+`, `-` and `sum`, and rescale them with `*` and `/`:

```python
from mimflow import links
target = links.hermite(1, dim=2, index=0) + links.hermite(3, dim=2, index=1)  # h1(z1) + h3(z2)
```
"""

import math
from collections.abc import Sequence
from numbers import Integral

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import MAX_DEGREE, check_finite, check_int, check_link_size
from ._link import Link

__all__ = ["embed", "harmonic", "hermite", "relu", "sign", "stack", "staircase", "tanh"]

_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)  # standard normal density at 0


def embed(link: Link, dim: int, axes: tuple[int, ...] | int) -> Link:
    """The link `z ↦ f(z[axes])` on `ℝ^dim`: `link` placed on the coordinates `axes`."""
    if not isinstance(link, Link):
        raise ValueError(f"`link` must be a mimflow.Link, got {type(link).__name__}")
    axes = (axes,) if np.ndim(axes) == 0 else tuple(axes)
    dim = check_int("dim", dim, 1)
    valid = all(isinstance(a, Integral) and not isinstance(a, bool) and 0 <= a < dim for a in axes)
    if len(axes) != link.dim or len(set(axes)) != len(axes) or not valid:
        raise ValueError(f"`axes` must be {link.dim} distinct indices in [0, {dim}), got {axes}")
    check_link_size(dim, link.degree, f"`link` of degree {link.degree} on `dim` = {dim}")
    placement = np.zeros((dim, len(axes)))  # the columns `axes` of the identity, not all of it
    placement[list(axes), range(len(axes))] = 1.0
    return link.transform(placement)


def _place(link: Link, dim: int, index: int) -> Link:
    """A link on `ℝ¹` placed on coordinate `index` of `ℝ^dim`."""
    dim = check_int("dim", dim, 1)
    if isinstance(index, bool) or not isinstance(index, Integral) or not 0 <= index < dim:
        raise ValueError(f"`index` must be an integer in [0, dim) = [0, {dim}), got {index!r}")
    check_link_size(dim, link.degree, f"`degree` = {link.degree}, `dim` = {dim}")
    return link if dim == 1 else embed(link, dim, index)


def _single_index(coefficients: dict[int, float], dim: int, index: int) -> Link:
    return _place(Link.from_tensors({j: jnp.full((1,) * j, c) for j, c in coefficients.items()}, dim=1), dim, index)


def hermite(degree: int, dim: int = 1, index: int = 0) -> Link:
    """`h_j(z_index)`, the orthonormal Hermite polynomial of degree `j` (information
    exponent `j`), as a link on `ℝ^dim`."""
    return _single_index({check_int("degree", degree, 0, MAX_DEGREE): 1.0}, dim, index)


def _he_at_zero(n: int) -> float:
    """`He_n(0)`: `0` for odd `n`, `(−1)^{n/2} (n−1)!!` for even `n`."""
    if n < 0 or n % 2:
        return 0.0
    return (-1) ** (n // 2) * math.prod(range(n - 1, 0, -2))


def relu(degree: int = 8, dim: int = 1, index: int = 0) -> Link:
    """`max(z, 0)` truncated to degrees `≤ degree`, from the closed form
    `⟨relu, h_n⟩ = φ(0) (He_n(0) + n He_{n−2}(0)) / √(n!)` (`n ≥ 2`), `⟨relu, h_0⟩ = φ(0)`,
    `⟨relu, h_1⟩ = ½`; `residual` is exact (`E relu² = ½`). A link of `z_index` on
    `ℝ^dim`, as `hermite`."""
    degree = check_int("degree", degree, 0, MAX_DEGREE)
    coeffs = {0: _PHI0}
    if degree >= 1:
        coeffs[1] = 0.5
    for n in range(2, degree + 1):
        coeffs[n] = _PHI0 * (_he_at_zero(n) + n * _he_at_zero(n - 2)) / math.sqrt(math.factorial(n))
    link = _single_index(coeffs, dim, index)
    return Link(link.tensors, link.dim, 0.5 - sum(c**2 for c in coeffs.values()))


def sign(degree: int = 9, dim: int = 1, index: int = 0) -> Link:
    """`sign(z)` truncated to degrees `≤ degree`, from the closed form
    `⟨sign, h_n⟩ = 2 φ(0) He_{n−1}(0) / √(n!)` (odd `n`); `residual` is exact. A link
    of `z_index` on `ℝ^dim`, as `hermite`."""
    degree = check_int("degree", degree, 1, MAX_DEGREE)
    coeffs = {n: 2.0 * _PHI0 * _he_at_zero(n - 1) / math.sqrt(math.factorial(n)) for n in range(1, degree + 1, 2)}
    link = _single_index(coeffs, dim, index)
    return Link(link.tensors, link.dim, 1.0 - sum(c**2 for c in coeffs.values()))


def tanh(degree: int = 9, dim: int = 1, index: int = 0) -> Link:
    """`tanh(z)` projected by Gauss–Hermite quadrature onto degrees `≤ degree`, a link of
    `z_index` on `ℝ^dim`, as `hermite`."""
    link = Link.from_function(lambda z: jnp.tanh(z[0]), dim=1, degree=check_int("degree", degree, 0, MAX_DEGREE))
    return _place(link, dim, index)


def staircase(k: int) -> Link:
    """The staircase `Σ_{i=1}^k z_1 z_2 ⋯ z_i` on `ℝ^k` (`k = 2`: `h1(z1) + z1 z2`).

    Every step has relative information exponent 1 given the directions learned
    before it.
    """
    k = check_int("k", k, 1)
    check_link_size(k, k, f"`k` = {k}")
    return Link.from_hermite({(1,) * i + (0,) * (k - i): 1.0 for i in range(1, k + 1)})


def harmonic(degree: int, phase: float = 0.0) -> Link:
    """The unit-norm planar harmonic `∝ Re(e^{−i·phase} (z1 + i z2)^degree)` on `ℝ²`.

    A harmonic homogeneous polynomial lies in one Hermite chaos, so this link is
    pure degree `degree`; it is invariant under rotations of the plane by `2π/degree`.
    Sums of harmonics of degrees 3 and 4 give the planted problem's spurious minima.
    """
    degree = check_int("degree", degree, 1, MAX_DEGREE)
    check_link_size(2, degree, f"`degree` = {degree}")
    check_finite("phase", phase)
    vector = np.array([1.0, 1.0j])
    tensor = np.array(np.exp(-1j * phase))
    for _ in range(degree):
        tensor = np.multiply.outer(tensor, vector)
    tensor = tensor.real
    return Link.from_tensors({degree: tensor / np.linalg.norm(tensor)})


def stack(links: Sequence[Link]) -> Link:
    """A batch of links as one `Link` whose tensors carry a leading axis of length
    `len(links)`, for `jax.vmap` over links (e.g. over link coefficients). Missing
    degrees are filled with zeros (`Link.with_degrees`); all links need the same `k`.

    **Example:** `jax.vmap(lambda f: reduced_loss(f, M))(links.stack([f1, f2]))`.
    """
    if not links:
        raise ValueError("`links` must hold at least one Link, got an empty sequence")
    for i, link in enumerate(links):
        if not isinstance(link, Link):
            raise ValueError(f"`links` must hold mimflow.Link objects, got {type(link).__name__} at {i}")
    dims = {link.dim for link in links}
    if len(dims) != 1:
        raise ValueError(f"`links` must share one dimension k, got dimensions {sorted(dims)}")
    degrees = set().union(*(link.tensors for link in links))
    padded = [link.with_degrees(degrees) for link in links]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *padded)
