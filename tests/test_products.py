"""The flow step's two products in their CPU forms (`mimflow._products`) against NumPy.

`rows_times(X, W) = X W` and `cols_times(XT, R) = XT R` are rewritten on a CPU (a
block-diagonal `diag(W, W)` against `X` read as `(n/2, 2d)`; `R` padded to 4 columns) and
carry their own `vmap` and derivative rules. Every form is checked against `numpy` matrix
products, under each batching pattern a flow meets (starts sharing `X`, points with their
own data, nested `vmap`s, a `vmap`ped loop, `lax.map`), and their derivatives against the
closed-form gradient of a scalar function of the products.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimflow._products import cols_times, rows_times

RTOL = 1e-13


def _close(actual, expected):
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


@pytest.fixture
def arrays(getkey):
    def make(n, d, r, batch=()):
        X = np.asarray(jax.random.normal(getkey(), (*batch, n, d)))
        W = np.asarray(jax.random.normal(getkey(), (*batch, d, r)))
        R = np.asarray(jax.random.normal(getkey(), (*batch, n, r)))
        return X, W, R

    return make


@pytest.mark.parametrize("r", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", [64, 63])
def test_products_match_numpy(arrays, n, r):
    X, W, R = arrays(n, 8, r)
    _close(jax.jit(rows_times)(X, W), X @ W)
    _close(jax.jit(cols_times)(np.ascontiguousarray(X.T), R), X.T @ R)
    _close(rows_times(X, W), X @ W)  # eagerly too


@pytest.mark.optimized  # two programs, bitwise
def test_rows_times_is_bitwise_the_plain_product(arrays):
    """The block-diagonal form adds exact zeros: `Z` is bitwise XLA's `X @ W`, so solves
    that used it give the same results as before."""
    X, W, _ = arrays(256, 16, 2)
    assert np.array_equal(np.asarray(jax.jit(rows_times)(X, W)), np.asarray(jax.jit(jnp.matmul)(X, W)))


@pytest.mark.parametrize("r", [1, 2, 3])
def test_products_under_vmap(arrays, r):
    B = 5
    X, W, R = arrays(32, 6, r)
    Xb, Wb, Rb = arrays(32, 6, r, batch=(B,))
    XT, XbT = np.ascontiguousarray(X.T), np.ascontiguousarray(np.swapaxes(Xb, 1, 2))
    # starts sharing X: the columns are folded into one product
    _close(jax.jit(jax.vmap(rows_times, (None, 0)))(X, Wb), np.einsum("nd,bdr->bnr", X, Wb))
    _close(jax.jit(jax.vmap(cols_times, (None, 0)))(XT, Rb), np.einsum("nd,bnr->bdr", X, Rb))
    # points with their own data, with their own or a shared W
    _close(jax.jit(jax.vmap(rows_times))(Xb, Wb), np.einsum("bnd,bdr->bnr", Xb, Wb))
    _close(jax.jit(jax.vmap(rows_times, (0, None)))(Xb, W), np.einsum("bnd,dr->bnr", Xb, W))
    _close(jax.jit(jax.vmap(cols_times))(XbT, Rb), np.einsum("bnd,bnr->bdr", Xb, Rb))
    _close(jax.jit(jax.vmap(cols_times, (0, None)))(XbT, R), np.einsum("bnd,nr->bdr", Xb, R))
    # batch axis not first, nested vmaps, lax.map
    _close(jax.vmap(rows_times, (None, 2), 1)(X, np.moveaxis(Wb, 0, 2)), np.einsum("nd,bdr->nbr", X, Wb))
    Wbb = np.stack([Wb, 2 * Wb, -Wb])
    _close(jax.jit(jax.vmap(jax.vmap(rows_times, (None, 0)), (None, 0)))(X, Wbb), np.einsum("nd,abdr->abnr", X, Wbb))
    _close(jax.lax.map(lambda w: rows_times(X, w), Wb), np.einsum("nd,bdr->bnr", X, Wb))


def test_folded_columns_are_one_plain_product(arrays):
    """With only the columns batched (starts sharing `X`), the product stays a single
    `(n × d)·(d × B r)` dot: no block-diagonal form, whose doubled flops would halve the
    speed of a product bound by flops."""
    X, _, _ = arrays(32, 6, 2)
    _, Wb, _ = arrays(32, 6, 2, batch=(8,))
    text = str(jax.make_jaxpr(jax.vmap(rows_times, (None, 0)))(X, Wb))  # nested jaxprs included
    assert text.count("dot_general") == 1 and "f64[32,16] = dot_general" in text, text
    # unbatched, the block-diagonal form on a CPU: (n/2, 2d)·(2d, 4)
    if jax.default_backend() == "cpu":
        assert "f64[16,4] = dot_general" in str(jax.make_jaxpr(rows_times)(X, Wb[0]))


@pytest.mark.parametrize("r", [2, 3])
def test_derivatives(arrays, r):
    """`L(X, W) = Σ sin(XW) ∘ C + Σ (Xᵀ R) ∘ D` has `∂L/∂W = Xᵀ(cos(XW) ∘ C)` and
    `∂L/∂X = (cos(XW) ∘ C) Wᵀ + R Dᵀ` (closed forms in NumPy); forward and reverse mode,
    and reverse mode under `vmap` over starts."""
    X, W, R = arrays(16, 4, r)
    C = np.cos(np.arange(16 * r, dtype=float)).reshape(16, r)
    D = np.sin(np.arange(4 * r, dtype=float)).reshape(4, r)

    def loss(X, W):
        return jnp.sum(jnp.sin(rows_times(X, W)) * C) + jnp.sum(cols_times(X.T, R) * D)

    grad_W = X.T @ (np.cos(X @ W) * C)
    grad_X = (np.cos(X @ W) * C) @ W.T + R @ D.T
    for transform in (jax.grad, jax.jacfwd, jax.jacrev):
        gX, gW = jax.jit(transform(loss, argnums=(0, 1)))(X, W)
        _close(gX, grad_X)
        _close(gW, grad_W)
    Wb = np.stack([W, 2 * W, -W])
    expected = np.stack([X.T @ (np.cos(X @ w) * C) for w in Wb])
    _close(jax.jit(jax.vmap(jax.grad(loss, 1), (None, 0)))(X, Wb), expected)


def test_vmapped_loop(arrays):
    """A `vmap`ped `fori_loop` (the lock-step solve over starts) of `W ← W + ε Xᵀ(XW)`."""
    X, _, _ = arrays(32, 6, 2)
    _, Wb, _ = arrays(32, 6, 2, batch=(4,))
    XT = np.ascontiguousarray(X.T)
    body = lambda _, w: w + 0.01 * cols_times(XT, rows_times(X, w))
    result = jax.jit(jax.vmap(lambda w: jax.lax.fori_loop(0, 5, body, w)))(Wb)
    expected = Wb.copy()
    for _ in range(5):
        expected = expected + 0.01 * np.einsum("nd,bnr->bdr", X, np.einsum("nd,bdr->bnr", X, expected))
    _close(result, expected)
