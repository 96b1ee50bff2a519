"""Oracles shared by the tests, written independently of the library."""

import math

import jax.numpy as jnp
import numpy as np


def array_module(x):
    """numpy for numpy inputs (no compilation), jax.numpy otherwise (autodiff, jit)."""
    return np if isinstance(x, np.ndarray) else jnp


def hermite(n, x):
    """`h_n = He_n / √(n!)` by `He_{n+1} = x He_n − n He_{n−1}`."""
    previous, current = array_module(x).ones_like(x), x
    if n == 0:
        return previous
    for m in range(1, n):
        previous, current = current, x * current - m * previous
    return current / math.sqrt(math.factorial(n))


def random_orthonormal(rng, d, r):
    """A `d × r` matrix with orthonormal columns: NumPy QR of a Gaussian matrix, with the
    signs fixed so that it is Haar distributed (a rotation of ℝ^d when `r = d`, up to det)."""
    q, upper = np.linalg.qr(rng.standard_normal((d, r)))
    return q * np.sign(np.diag(upper))
