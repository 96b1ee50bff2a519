"""Oracles shared by the tests, written independently of the library, and a recorder of
JAX's compile events."""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

# `jax.monitoring` duration events: a program lowered to MLIR (once per compilation, even
# when the persistent cache then skips XLA), and an XLA backend compilation
LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compile_events(event, name_part=None):
    """Inside the `with`, the list of the `fun_name`s of each `event` (`LOWERING`,
    `BACKEND_COMPILE`) that JAX reports, only those whose name contains `name_part`
    when it is given."""
    names = []

    def listener(reported, duration, fun_name=None, **kwargs):
        if reported == event and (name_part is None or name_part in str(fun_name)):
            names.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


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


def h1_h3_rhs(t, y):
    """`Ṁ = (I − G) B(G) M` for h1(z1) + h3(z2) in NumPy: `B(G) = diag(1, 3 G₂₂²)`."""
    M = y.reshape(2, 2)
    G = M @ M.T
    return ((np.eye(2) - G) @ np.diag([1.0, 3 * G[1, 1] ** 2]) @ M).ravel()


def radau_h1_h3_escapes(M0, t1, ts=None):
    """The reduced ODE of h1(z1) + h3(z2) from `M0` by SciPy's Radau (rtol 1e-12, atol
    1e-14): the times at which the singular values of `M` cross ½ upwards (`inf` where
    none does by `t1`), and the overlaps at `ts` (`None` without `ts`)."""
    events = []
    for i in range(2):
        event = lambda t, y, i=i: np.linalg.svd(y.reshape(2, 2), compute_uv=False)[i] - 0.5
        event.direction = 1
        events.append(event)
    sol = solve_ivp(h1_h3_rhs, (0, t1), np.ravel(M0), "Radau", t_eval=ts, rtol=1e-12, atol=1e-14, events=events)
    escapes = np.array([e[0] if len(e) else np.inf for e in sol.t_events])
    return escapes, None if ts is None else sol.y.T.reshape(-1, 2, 2)
