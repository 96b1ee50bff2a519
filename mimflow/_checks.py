"""Input validation at the public boundary: a `ValueError` that names the value.

Checks on values run only on concrete arrays; inside `jit`/`vmap` the values are
tracers, and what cannot be checked there is reported through a status instead.
"""

import functools
import math
from numbers import Integral
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


def as_numbers(name: str, value: Any) -> np.ndarray:
    """A concrete `value` as a float NumPy array; a `ValueError` naming `name` if it holds
    anything but real numbers (a string, `None`, a complex number, a ragged list)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = np.asarray(None)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be a real number or array of them, got {value!r:.100}")
    return array.astype(float)


def check_finite(name: str, value: Any) -> None:
    """Raise a `ValueError` naming `name` if a concrete `value` is not numeric or has a NaN or inf."""
    if is_concrete(value) and not np.all(np.isfinite(as_numbers(name, value))):
        raise ValueError(f"`{name}` must be finite, got {_short(value)}")


def check_range(name: str, value: Any, *, low: float, high: float = np.inf, low_open: bool = False) -> None:
    """Raise a `ValueError` naming `name` unless `value` is a scalar and, when concrete,
    a finite number in `[low, high]` (`(low, high]` with `low_open`)."""
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}")
    check_finite(name, value)
    if not is_concrete(value):
        return
    array = np.asarray(value)
    below = array <= low if low_open else array < low
    if np.any(below) or np.any(array > high):
        bracket = "(" if low_open else "["
        raise ValueError(f"`{name}` must lie in {bracket}{low}, {high}], got {_short(value)}")


def shape_of(name: str, value: Any) -> tuple[int, ...]:
    """`np.shape(value)`; a `ValueError` naming `name` for a ragged nested sequence (NumPy's
    own error does not say which argument it was)."""
    try:
        return np.shape(value)
    except ValueError:
        raise ValueError(f"`{name}` must be an array, got a ragged sequence {value!r:.100}") from None


def check_shape(name: str, value: Any, shape: tuple[int, ...]) -> None:
    """Raise a `ValueError` naming `name` if `value` does not have shape `shape`."""
    actual = shape_of(name, value)
    if actual != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got shape {actual}")


MAX_DEGREE = 63
"""The highest polynomial degree of a link: a degree-`j` tensor has `j` axes, NumPy arrays
have at most 64, and building one enumerates its entries in an array of `j + 1` axes
(`links.hermite(64)` failed there); a stacked batch of links (`links.stack`) adds one."""


MAX_LINK_SIZE = 2**20
"""The most entries a link's Hermite tensor of degree `D` on `ℝ^k` (`k^D`) and its table
of multi-indices (`binom(D + k − 1, D)` rows of length `k`) may hold. A config accepts the
same links, and also caps `k²`, which only binds for degree 0 (`_config._check_link_size`)."""


def check_link_size(dim: int, degree: int, source: str) -> None:
    """Raise a `ValueError` starting with `source` (the arguments that set them) unless a
    link on `ℝ^dim` of degree `degree` fits `MAX_LINK_SIZE` (checked before building it)."""
    if degree > MAX_DEGREE:  # before counting: binom(D + dim − 1, D) grows without bound with D
        raise ValueError(
            f"{source}: a link on ℝ^{dim} of degree {degree} is too large to build (a tensor has one axis "
            f"per degree, at most {MAX_DEGREE})"
        )
    count = math.comb(degree + dim - 1, degree)
    if max(dim**degree, count * dim) > MAX_LINK_SIZE:
        # a count of thousands of digits is beyond what `str` converts
        shown = count if count < 10**30 else f"~10^{int(count.bit_length() * math.log10(2))}"
        raise ValueError(
            f"{source}: a link on ℝ^{dim} of degree {degree} is too large to build (its tensor would hold "
            f"{dim}^{degree} entries and its multi-index table {shown} × {dim}; at most 2^20 each)"
        )


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` as an `int`; a `ValueError` naming `name` unless it is an integer `≥ low`
    (and `≤ high`; a Python or NumPy integer, not a bool or a float)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (high is not None and value > high):
        bounds = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be an integer {bounds}, got {value!r}")
    return int(value)


@functools.cache
def _raw_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of a raw key of the default PRNG implementation `impl` (`(2,)` for
    threefry; the argument keys the cache, as the default can be changed)."""
    return jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape


def check_bool(name: str, value: Any) -> bool:
    """`value` as a `bool`; a `ValueError` naming `name` unless it is a Python or NumPy
    bool (a string such as `"no"` is truthy, an easy mistake)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"`{name}` must be True or False, got {value!r:.60}")
    return bool(value)


def check_key(name: str, key: Any) -> None:
    """Raise a `ValueError` naming `name` unless `key` is one JAX PRNG key: a typed key
    (`jax.random.key(seed)`) of shape `()` or a raw `uint32` key (`jax.random.PRNGKey(seed)`)."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and np.ndim(key) == 0
    raw = dtype == np.uint32 and np.shape(key) == _raw_key_shape(jax.config.jax_default_prng_impl)
    if not (typed or raw):
        got = f"an array of dtype {dtype} and shape {np.shape(key)}" if dtype is not None else f"{key!r:.60}"
        raise ValueError(f"`{name}` must be one JAX PRNG key (jax.random.key(seed)), got {got}")


def rounding_tolerance(array: np.ndarray) -> float:
    """How far from exact a constraint on a concrete array may be: `max(1e-6, 32 eps)`."""
    return max(1e-6, 32 * np.finfo(array.dtype if array.dtype.kind == "f" else float).eps)


def check_orthonormal(name: str, matrix: Any) -> None:
    """Raise a `ValueError` naming `name` unless a concrete `(m, k)` matrix has
    orthonormal columns (`AᵀA = I` to `rounding_tolerance`)."""
    if not is_concrete(matrix):
        return
    array = np.asarray(matrix)
    gram = array.T @ array
    if not np.allclose(gram, np.eye(array.shape[1]), rtol=0.0, atol=rounding_tolerance(array)):
        raise ValueError(f"`{name}` must have orthonormal columns, got {name}ᵀ{name} = {_short(gram)}")
