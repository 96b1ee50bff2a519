"""The quickstart: saddle-to-saddle escape times of two links against the predicted laws."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from . import links, theory
from ._integrate import escape_times, simulate_reduced
from ._link import Link
from ._overlap import sample_overlap

_EXAMPLES: list[tuple[str, Link]] = [
    ("staircase h1(z1) + z1 z2", links.staircase(2)),
    ("h1(z1) + h3(z2)", links.hermite(1, dim=2, index=0) + links.hermite(3, dim=2, index=1)),
]


def _escape_grid(batch: Link, dims: np.ndarray, keys: jax.Array, t1: float) -> np.ndarray:
    """Escape times of shape `(links, len(dims), len(keys), 2)` for a stacked batch of
    links, all in one compiled call."""

    def one(link, d, key):
        overlap0 = sample_overlap(key, d, link.dim, link.dim)
        return escape_times(simulate_reduced(link, overlap0, t1))

    over_keys = jax.vmap(one, in_axes=(None, None, 0))
    over_dims = jax.vmap(over_keys, in_axes=(None, 0, None))
    return np.asarray(jax.jit(jax.vmap(over_dims, in_axes=(0, None, None)))(batch, jnp.asarray(dims), keys))


def quickstart(seeds: int = 8, dims: tuple[float, ...] = (1e2, 1e3, 1e4), seed: int = 0, t1: float = 1e12) -> str:
    """Run the two-timescale reduced flow for `seeds` random starts at each `d` on two
    links and return, per link, the theory's prediction (`mimflow.theory.predict`)
    and the measured escape times against it (`mimflow.theory.compare`: log–log
    slope of the median time on each saddle against the predicted law)."""
    if seeds < 1:
        raise ValueError(f"`seeds` must be ≥ 1, got {seeds}")
    if len(dims) < 2 or len(set(dims)) != len(dims):
        raise ValueError(f"`dims` must hold at least two distinct dimensions, got {dims}")
    if any(d < 4 for d in dims):
        raise ValueError(f"every d must be ≥ k + r = 4, got {dims}")
    start = time.perf_counter()
    keys = jax.random.split(jax.random.PRNGKey(seed), seeds)
    dims_array = np.asarray(dims, dtype=float)
    lines = [
        f"mimflow quickstart: two-timescale reduced flow, {seeds} Haar starts per d (shared across d)",
        "time on a saddle: from learning the previous directions to learning its own (singular value of M ≥ ½);",
        "t/pred: median time over the prediction for overlaps d^(-1/2) (random starts add an O(1) factor)",
    ]
    all_times = _escape_grid(links.stack([link for _, link in _EXAMPLES]), dims_array, keys, t1)
    for (name, link), times in zip(_EXAMPLES, all_times, strict=True):
        prediction = theory.predict(link)
        lines += ["", f"== {name}", str(prediction), "", str(theory.compare(prediction, dims_array, times))]
    lines += ["", f"({time.perf_counter() - start:.1f} s on {jax.devices()[0].platform})"]
    return "\n".join(lines)
