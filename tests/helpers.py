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


def closed_form_two_timescale(alpha, s, m0):
    """Exact escape time of `α h_s` (two-timescale) from `m0` to ½. With `x = m²`,
    `dt = dx / (2 s α² x^s (1 − x))` and `1/(x^s (1 − x)) = Σ_{i=1}^s x^{−i} + 1/(1 − x)`."""

    def antiderivative(x):
        return math.log(x) - math.log1p(-x) - sum(x ** (1 - i) / (i - 1) for i in range(2, s + 1))

    return (antiderivative(0.25) - antiderivative(m0 * m0)) / (2 * s * alpha**2)
