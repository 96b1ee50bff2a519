"""The two products of a finite-sample flow step, `Z = X W` and `Xᵀ R`, laid out for a CPU.

A flow step reads `X` (`n × d`, `n` large) twice against `r` columns (`r = 2` in the
paper's examples). XLA's CPU dot runs such skinny products well below the memory
bandwidth when they have 2 or 3 output columns and near it with 4 (`benchmarks/RESULTS.md`
§2, 2 cores that sum an array at 30–34 GB/s: `X W` with `r = 2` at 8–19 GB/s, 23–38 GB/s
in the form below; `Xᵀ R` at 12–24 GB/s, 22–38 padded). So on a CPU:

- `X W`, `r = 2`: `X` is read as `(n/2, 2d)` (a free reshape) against the block-diagonal
  `diag(W, W)` (`2d × 4`), which gives `Z` as `(n/2, 4)`: the same sums, each with exact
  zeros added, so the result is bitwise that of `X @ W`;
- `Xᵀ R` from a `(d, n)` copy of `X`, `r ∈ {2, 3}`: `R` padded with zero columns to 4.

Both double the flops, which costs nothing while a product is bound by memory but would
halve the speed of the products that `vmap` makes of them over starts sharing one `X`
(`(n × d)·(d × B r)`, bound by flops). Each function is therefore a `custom_vmap`: with
only the columns batched it folds them into one plain product, `(n × d)·(d × B r)`; with
`X` batched too each batch element takes the form above. A `custom_jvp` (plain products
in the tangent, which reverse mode transposes) makes them differentiable. Accelerators
get the plain products.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._batching import with_batching_rule


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _fold(M: Float[Array, "B a r"]) -> Float[Array, "a Br"]:
    """Batched columns side by side: `(B, a, r) → (a, B r)`."""
    return jnp.moveaxis(M, 0, 1).reshape(M.shape[1], -1)


def _unfold(P: Float[Array, "a Br"], size: int) -> Float[Array, "B a r"]:
    """The inverse of `_fold`."""
    return jnp.moveaxis(P.reshape(P.shape[0], size, -1), 1, 0)


def _rows_plain(X: Float[Array, "n d"], W: Float[Array, "d r"]) -> Float[Array, "n r"]:
    n, d = X.shape
    if not _on_cpu() or W.shape[1] != 2 or n % 2:
        return X @ W
    zero = jnp.zeros_like(W)
    block = jnp.concatenate([jnp.concatenate([W, zero], 1), jnp.concatenate([zero, W], 1)], 0)
    return (X.reshape(n // 2, 2 * d) @ block).reshape(n, 2)


def _cols_plain(XT: Float[Array, "d n"], R: Float[Array, "n r"]) -> Float[Array, "d r"]:
    r = R.shape[1]
    if not _on_cpu() or r not in (2, 3):
        return XT @ R
    return (XT @ jnp.pad(R, ((0, 0), (0, 4 - r))))[:, :r]


def _product_rule(plain):
    """The `vmap` of a product `plain(A, C)`: with `A` batched, `plain` for each batch
    element; with the columns `C` alone batched, one product of the folded columns."""

    def rule(axis_size, in_batched, A, C):
        if in_batched[0]:
            return jax.vmap(plain, in_axes=(0, 0 if in_batched[1] else None))(A, C)
        return _unfold(plain(A, _fold(C)), axis_size)

    return rule


# the products' tangents are plain products (transposed in reverse mode; under `jacfwd`
# the many tangent columns form one flop-bound product, which the 4-column form would slow)
_rows = with_batching_rule(_rows_plain, _product_rule(_rows_plain), jnp.matmul)
_cols = with_batching_rule(_cols_plain, _product_rule(_cols_plain), jnp.matmul)


def rows_times(X: Float[Array, "n d"], W: Float[Array, "d r"]) -> Float[Array, "n r"]:
    """`X @ W` (`Z = XW`), in the form that runs fastest on this backend (module docstring)."""
    return _rows(X, W)


def cols_times(XT: Float[Array, "d n"], R: Float[Array, "n r"]) -> Float[Array, "d r"]:
    """`XT @ R` for a row-major `(d, n)` `XT` (`Xᵀ R`), in the form that runs fastest on
    this backend (module docstring)."""
    return _cols(XT, R)
