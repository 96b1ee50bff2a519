"""Integration on St(d, r): any diffrax solver, retracted after every step (DESIGN §4)."""

from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._checks import is_concrete, rounding_tolerance
from ._flows import AbstractFlow, Dataset, Online, _with_transpose
from ._integrate import (
    Trajectory,
    _ForwardingSolver,
    _non_finite_unless,
    _solvable,
    _status,
    check_controls,
    check_time_grid,
    default_controller,
    forced_error,
    save_times,
)
from ._overlap import principal_cosines
from ._stiefel import retract


class RetractedSolver(_ForwardingSolver):
    """Wraps a diffrax solver so that each step ends on St(d, r): the end point `W1`
    of the wrapped solver's step is mapped back onto the manifold by `"qr"` or
    `"polar"`, which leave points already on it unchanged, so the solver keeps its
    order and its error estimate drives adaptive step control as usual. (The Cayley
    retraction of `retract` is not offered here: it moves even on-manifold end points
    by `O(h²)`, an error the controller never sees.) Each step re-evaluates the
    vector field at its start (no first-same-as-last reuse, since the end point moved).

    **Example:** `RetractedSolver(diffrax.Tsit5(), "polar")`.
    """

    solver: diffrax.AbstractSolver
    method: Literal["qr", "polar"] = eqx.field(static=True, default="qr")

    def __check_init__(self):
        check_controls(self.solver)
        if self.method not in ("qr", "polar"):
            raise ValueError(f"`method` must be 'qr' or 'polar' for RetractedSolver, got {self.method!r}")

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, error, dense_info, solver_state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump=True
        )
        return retract(y0, y1 - y0, self.method), error, dense_info, solver_state, result


def _polar(W: Float[Array, "d r"]) -> Float[Array, "d r"]:
    """`W (WᵀW)^{−1/2}` for `WᵀW = I + E`, `‖E‖ < 1` (here `O(tolerance)`), by coupled
    Newton–Schulz iterations (error `‖E‖^16` after four). Unlike `eigh`, whose
    derivative is `nan` at the repeated eigenvalues of `WᵀW ≈ I`, it differentiates."""
    eye = jnp.eye(W.shape[1], dtype=W.dtype)
    y, z = W.T @ W, eye
    for _ in range(4):
        step = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ step, step @ z
    return W @ z


@eqx.filter_jit
def _solve(flow, W0, ts, solver, stepsize_controller, dt0, max_steps, test) -> Trajectory:
    def summary(t, W, flow):
        # Dense output between steps is off the manifold by O(tolerance). Far from it (or
        # non-finite) only where a vmapped solve evaluates a save it then discards (a
        # rejected or finished element's step): a stand-in point on the manifold keeps
        # those values, and so the reverse pass of the whole batch, finite.
        eye = jnp.eye(*W.shape, dtype=W.dtype)
        near = jnp.all(jnp.abs(W.T @ W - eye[: W.shape[1]]) < 0.5)
        W = _polar(jnp.where(near, W, eye))
        test_loss = jnp.nan if test is None else flow.test_loss(W, test, t)
        values = flow.target.overlap(W), flow.loss(W), flow.train_loss(W, t), jnp.asarray(test_loss, W.dtype)
        return tuple(jnp.where(near, value, jnp.nan) for value in values)

    # transposed once here, outside the loop, where XLA cannot fold it back into the products
    flow = eqx.tree_at(lambda f: f.data, flow, _with_transpose(flow.data))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, W, flow: flow.vector_field(t, W)),
        solver,
        ts[0],
        ts[-1],
        dt0,
        W0,
        args=flow,
        saveat=diffrax.SaveAt(ts=ts, fn=summary, controller_state=True),
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        throw=False,
    )
    overlap, loss, train_loss, test_loss = sol.ys
    saved = jnp.isfinite(overlap).all(axis=(-1, -2)) & jnp.isfinite(ts)
    mask = lambda x: jnp.where(saved.reshape(saved.shape + (1,) * (x.ndim - 1)), x, jnp.nan)
    reached = sol.result == diffrax.RESULTS.successful
    # relative to `‖W‖ = √r` (orthonormal columns)
    forced = forced_error(stepsize_controller, sol.controller_state)
    return Trajectory(
        ts=ts,
        overlap=mask(overlap),
        loss=mask(loss),
        singular_values=mask(principal_cosines(jnp.where(saved[:, None, None], overlap, 0.0))),
        status=_status(sol.result, jnp.where(reached, saved.all(), True) & jnp.isfinite(W0).all(), forced),
        num_steps=sol.stats["num_steps"],
        train_loss=mask(train_loss),
        test_loss=mask(test_loss),
        forced_error=forced,
    )


def simulate(
    flow: AbstractFlow,
    W0: Float[ArrayLike, "d r"],
    t1: float,
    *,
    num_saves: int = 128,
    t_min: float = 1e-2,
    solver: diffrax.AbstractSolver | None = None,
    retraction: Literal["qr", "polar"] = "qr",
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    max_steps: int = 16384,
    test: Dataset | None = None,
) -> Trajectory:
    """Integrate a flow of `W ∈ St(d, r)` from `W0` to `t1`, retracting onto the
    manifold after every step.

    **Arguments:**
    - `flow`: a `TwoTimescaleFlow` or `PlantedFlow`.
    - `W0`: `(d, r)` with orthonormal columns (e.g. `haar_stiefel(key, d, r)`).
    - `t1`, `num_saves`, `t_min`: saves at `0` and log-spaced in `[t_min, t1]`.
    - `solver`: any diffrax solver (default `Tsit5`), wrapped in `RetractedSolver`
      with `retraction` (`"qr"` or `"polar"`) unless it already is one.
    - `stepsize_controller`, `dt0`: default adaptive `PIDController` with the same
      tolerances as `simulate_reduced`, steps ending on the saves; for fixed steps pass
      `diffrax.ConstantStepSize()` and `dt0` (needed with `Online` data: each evaluation
      of the flow draws a new batch, which leaves an adaptive controller no error to
      estimate; with `diffrax.Euler()` each step sees one fresh batch).
    - `max_steps`: the step budget; a run that uses it up ends `Status.MAX_STEPS`.
    - `test`: a held-out `Dataset` for `Trajectory.test_loss`.

    **Returns:** a `Trajectory` like `simulate_reduced`'s (overlap `W*ᵀW`, population
    `loss`, `train_loss` on the flow's data, `test_loss`, `status`). Works under
    `jax.vmap` over `W0` and over keys used to build the flow's data. Under `jit`/`vmap`
    a traced `W0` off St(d, r) or not finite, or a traced `t1 ≤ t_min`, cannot raise:
    that run ends `Status.NON_FINITE` with `nan` saves, at the cost of a short stand-in run.

    The explicit default solver is stability-limited once converged (DESIGN §5a);
    use `simulate_reduced` for long population horizons.
    """
    if not isinstance(flow, AbstractFlow):
        raise ValueError(f"`flow` must be a mimflow flow (TwoTimescaleFlow, PlantedFlow), got {type(flow).__name__}")
    flow.check_point(W0)
    max_steps = check_time_grid(t1, t_min, num_saves, max_steps)
    check_controls(solver, stepsize_controller, dt0=dt0)
    flow.check_test(test, optional=True)
    if isinstance(flow.data, Online) and not isinstance(stepsize_controller, diffrax.ConstantStepSize):
        adaptive = "the default PIDController" if stepsize_controller is None else type(stepsize_controller).__name__
        raise ValueError(
            "`Online` data draws a new batch at every evaluation of the flow, so an adaptive "
            f"`stepsize_controller` ({adaptive}) rejects its steps until `max_steps`: pass "
            "`stepsize_controller=diffrax.ConstantStepSize()` and `dt0` "
            "(with `solver=diffrax.Euler()` each step sees one fresh batch)"
        )
    W0 = jnp.asarray(W0, dtype=float)
    ts = save_times(t1, num_saves, t_min)
    solver = diffrax.Tsit5() if solver is None else solver
    if not isinstance(solver, RetractedSolver):
        solver = RetractedSolver(solver, retraction)
    if isinstance(stepsize_controller, diffrax.ConstantStepSize) and dt0 is None:
        raise ValueError("fixed steps (ConstantStepSize) need `dt0`, got None")
    if is_concrete((W0, ts)):
        inside, solve_ts = None, ts
    else:
        # what only tracers hold is checked here (`check_point` checks concrete starts): a
        # start off St(d, r) or not finite, or a traced `t1` outside its domain (`nan` save
        # times), runs from a stand-in start on a stand-in grid and is reported
        # `Status.NON_FINITE`. (From a `nan` start every step was rejected until `max_steps`,
        # holding up the whole of a vmapped batch.)
        eye = jnp.eye(*W0.shape, dtype=W0.dtype)
        # full float32 precision on GPUs too (a TF32 product is off by ~1e-3)
        gram = jnp.matmul(W0.T, W0, precision=jax.lax.Precision.HIGHEST)
        error = jnp.max(jnp.abs(gram - eye[: W0.shape[1]]))
        inside = (error <= rounding_tolerance(np.zeros((), W0.dtype))) & jnp.isfinite(ts).all()
        W0 = jnp.where(inside, W0, eye)
        solve_ts = _solvable(ts, inside)
    if stepsize_controller is None:
        stepsize_controller = default_controller(solve_ts)
    trajectory = _solve(flow, W0, solve_ts, solver, stepsize_controller, dt0, max_steps, test)
    if inside is None:
        return trajectory
    return _non_finite_unless(inside, eqx.tree_at(lambda traj: traj.ts, trajectory, ts))
