"""Smooth scalar summaries of a trajectory, to differentiate whole experiments with
`jax.grad` (the escape time of `escape_times` is exact but piecewise in its bracket)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._checks import check_finite, check_int, check_range
from ._integrate import Trajectory, check_trajectory


def _trapezoid_log(values: Float[Array, "*batch n"], ts: Float[Array, "*batch n"]) -> Float[Array, " *batch"]:
    """`∫ values d(log t)` by the trapezoid rule over the log-spaced saves `ts[..., 1:]`."""
    values, log_t = values[..., 1:], jnp.log(ts[..., 1:])
    return jnp.sum(0.5 * (values[..., 1:] + values[..., :-1]) * jnp.diff(log_t), axis=-1)


def loss_area(trajectory: Trajectory) -> Float[Array, " *batch"]:
    """The area under the loss curve on log-time axes, `∫_{t_min}^{t1} L(t) d(log t)`
    (trapezoid rule on the saves): small when the loss falls early. `nan` if a save is
    missing (a failed run). Accepts a batch of trajectories (any leading axes) from
    `vmap`: **returns** `()`, or `(*batch,)`."""
    check_trajectory(trajectory)
    return _trapezoid_log(trajectory.loss, trajectory.ts)


def smooth_escape_time(
    trajectory: Trajectory, index: int = 0, threshold: float = 0.5, width: float = 0.02
) -> Float[Array, " *batch"]:
    """A differentiable escape time of direction `index`:
    `t_min · exp(∫_{t_min}^{t1} σ((threshold − s_index(t)) / width) d(log t))`, `σ` the
    logistic function and `s_index` the `index`-th singular value of `M` (largest first).
    As `width → 0` (and with dense saves) it tends to the time the singular value first
    passes `threshold` (`escape_times`), provided it stays above; `t1` if it never
    escapes. Accepts a batch of trajectories (any leading axes) from `vmap`: **returns**
    `()`, or `(*batch,)`."""
    check_trajectory(trajectory)
    p = trajectory.singular_values.shape[-1]
    if check_int("index", index, 0) >= p:
        raise ValueError(f"`index` must be a direction in [0, {p}), got {index}")
    check_finite("threshold", threshold)
    check_range("width", width, low=0.0, low_open=True)
    ts = trajectory.ts
    below = jax.nn.sigmoid((threshold - trajectory.singular_values[..., index]) / width)
    return ts[..., 1] * jnp.exp(_trapezoid_log(below, ts))
