"""The quickstart: saddle-to-saddle escape times of two links against the predicted laws."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from . import links
from ._integrate import escape_times, simulate_reduced
from ._link import Link
from ._overlap import sample_overlap

# (name, link, predicted law per direction, the law as a function of d)
_LOG = ("log d", np.log)
_EXAMPLES: list[tuple[str, Link, list[tuple[str, object]]]] = [
    ("staircase h1(z1) + z1 z2", links.staircase(2), [_LOG, _LOG]),
    (
        "h1(z1) + h3(z2)",
        links.hermite(1, dim=2, index=0) + links.hermite(3, dim=2, index=1),
        [_LOG, ("d^2", np.square)],
    ),
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


def quickstart(seeds: int = 8, dims: tuple[float, ...] = (1e2, 1e3, 1e4), seed: int = 0, t1: float = 1e8) -> str:
    """Run the two-timescale reduced flow for `seeds` random starts at each `d` on two
    links and return a table of median escape times per direction beside the law
    the paper predicts (the ratio measured / law should settle as `d` grows)."""
    if seeds < 1:
        raise ValueError(f"`seeds` must be ≥ 1, got {seeds}")
    if any(d < 4 for d in dims):
        raise ValueError(f"every d must be ≥ k + r = 4, got {dims}")
    start = time.perf_counter()
    keys = jax.random.split(jax.random.PRNGKey(seed), seeds)
    dims_array = np.asarray(dims, dtype=float)
    lines = [
        f"mimflow quickstart: two-timescale reduced flow, {seeds} seeds per d, median escape time",
        "(first time the i-th singular value of M = W*ᵀW passes ½)",
        "",
        f"{'link':<26} {'dir':>3} {'law':>6} " + " ".join(f"{'d=' + format(d, 'g'):>22}" for d in dims),
        f"{'':<26} {'':>3} {'':>6} " + " ".join(f"{'t_esc':>11}{'t/law':>11}" for _ in dims),
    ]
    all_times = _escape_grid(links.stack([link for _, link, _ in _EXAMPLES]), dims_array, keys, t1)
    for (name, _, laws), times in zip(_EXAMPLES, all_times, strict=True):
        for direction, (law_name, law) in enumerate(laws):
            median = np.median(times[:, :, direction], axis=1)
            cells = " ".join(f"{m:>11.4g}{m / law(d):>11.4g}" for m, d in zip(median, dims_array, strict=True))
            lines.append(f"{name if direction == 0 else '':<26} {direction + 1:>3} {law_name:>6} {cells}")
    lines += ["", f"({time.perf_counter() - start:.1f} s on {jax.devices()[0].platform})"]
    return "\n".join(lines)
