"""The exact law of the initial overlap `M0 = W*ᵀ W0` for Haar `W0` (DESIGN §2)."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_finite, check_int, check_key, check_range


def sample_overlap(key: PRNGKeyArray, d: float | Float[ArrayLike, ""], k: int, r: int) -> Float[Array, "k r"]:
    """Sample `M0 = W*ᵀ W0` for `W0` Haar-distributed on St(d, r) and `W* ∈ St(d, k)`.

    Exact in law and `O(r³)` whatever `d`: with `Z_top ~ N(0, 1)^{k×r}` and
    `S ~ Wishart_r(d − k, I)` drawn by the Bartlett decomposition,
    `M0 = Z_top (Z_topᵀ Z_top + S)^{−1/2}`. `d` may be a traced scalar, so it can be
    vmapped (it need not be an integer there; a traced `d < k + r` gives a `nan`
    overlap, which `simulate_reduced` reports as `Status.NON_FINITE`). Entries of
    `M0` are ≈ `N(0, 1/d)`.

    **Arguments:**
    - `key`: a JAX PRNG key.
    - `d`: the ambient dimension, `d ≥ k + r`.
    - `k`, `r`: ranks of the target and student subspaces.

    **Returns:** `M0` of shape `(k, r)`.

    **Example:** `jax.vmap(lambda d: sample_overlap(key, d, 2, 2))(jnp.array([1e2, 1e4]))`.
    """
    check_key("key", key)
    k, r = check_int("k", k, 1), check_int("r", r, 1)
    check_range("d", d, low=k + r)  # a scalar: vmap over dimensions
    key_top, key_chi, key_lower = jax.random.split(key, 3)
    d = jnp.asarray(d, dtype=float)
    top = jax.random.normal(key_top, (k, r), dtype=d.dtype)
    dof = d - k - jnp.arange(r, dtype=d.dtype)  # chi-square degrees of freedom d − k − i + 1
    diag = jnp.sqrt(2.0 * jax.random.gamma(key_chi, dof / 2.0, dtype=d.dtype))
    lower = jnp.tril(jax.random.normal(key_lower, (r, r), dtype=d.dtype), -1) + jnp.diag(diag)
    gram = top.T @ top + lower @ lower.T
    eigenvalues, vectors = jnp.linalg.eigh(gram)
    return jnp.where(d >= k + r, top @ (vectors * eigenvalues**-0.5) @ vectors.T, jnp.nan)


def principal_cosines(overlap: Float[Array, "*batch k r"]) -> Float[Array, "*batch p"]:
    """Singular values of `M`, largest first (`p = min(k, r)`): the cosines of the
    principal angles between span(W*) and span(W)."""
    check_finite("overlap", overlap)  # first: a string or a ragged list gets its message
    if np.ndim(overlap) < 2:
        raise ValueError(f"`overlap` must have shape (..., k, r), got shape {np.shape(overlap)}")
    return jnp.linalg.svd(jnp.asarray(overlap), compute_uv=False)
