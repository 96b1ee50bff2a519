"""Input validation at the public boundary: a `ValueError` that names the value.

Checks on values run only on concrete arrays; inside `jit`/`vmap` the values are
tracers, and what cannot be checked there is reported through a status instead.
"""

from typing import Any

import jax
import numpy as np

_TRACER = getattr(jax.core, "Tracer", None) or jax._src.core.Tracer


def is_concrete(value: Any) -> bool:
    """Whether `value` holds numbers (not a tracer inside `jit`, `vmap` or `grad`)."""
    return not any(isinstance(leaf, _TRACER) for leaf in jax.tree_util.tree_leaves(value))


def _short(value: Any) -> str:
    text = np.array2string(np.asarray(value), threshold=8, precision=4)
    return text if len(text) < 120 else text[:117] + "..."


def check_finite(name: str, value: Any) -> None:
    """Raise a `ValueError` naming `name` if a concrete `value` has a NaN or inf."""
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"`{name}` must be finite, got {_short(value)}")


def check_range(name: str, value: Any, *, low: float, high: float = np.inf, low_open: bool = False) -> None:
    """Raise a `ValueError` naming `name` unless a concrete finite `value` lies in
    `[low, high]` (`(low, high]` with `low_open`)."""
    check_finite(name, value)
    if not is_concrete(value):
        return
    array = np.asarray(value)
    below = array <= low if low_open else array < low
    if np.any(below) or np.any(array > high):
        bracket = "(" if low_open else "["
        raise ValueError(f"`{name}` must lie in {bracket}{low}, {high}], got {_short(value)}")


def check_shape(name: str, value: Any, shape: tuple[int, ...]) -> None:
    """Raise a `ValueError` naming `name` if `value` does not have shape `shape`."""
    actual = np.shape(value)
    if actual != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got shape {actual}")
