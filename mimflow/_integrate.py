"""Integration of the reduced dynamics with diffrax, and escape times (DESIGN §2, §5a)."""

import dataclasses
import enum
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from ._checks import check_bool, check_int, check_range, is_concrete, rounding_tolerance
from ._fast import AbstractRosenbrock, gram_eigenvalues, known_entries, solve_rosenbrock
from ._link import Link
from ._overlap import principal_cosines
from ._reduced import AbstractProblem, ProblemName, make_problem


class Status(enum.IntEnum):
    """Per-trajectory outcome, stored in `Trajectory.status`."""

    SUCCESS = 0
    """Reached `t1`."""
    MAX_STEPS = 1
    """Ran out of steps: saves after the last step reached hold `nan`."""
    SOLVER_FAILED = 2
    """The solver failed for another reason (e.g. an event's root find)."""
    NON_FINITE = 3
    """The state became non-finite (or started so). Under `jit`/`vmap`, also a traced
    input outside its domain (a start with singular values above 1, or for `simulate`
    one off St(d, r) or not finite, `d < k + r`,
    `ridge < 0`, `rho ∉ (0, 1]`; a `t1 ≤ t_min` or a non-finite one, whose save times
    after `0` are `nan` (`save_times`); a `Rodas4`/`Rodas5` `rtol` or `atol ≤ 0`; an
    experiment's point outside the domain `sweep` checks, such as a fractional seed, a
    flow's `d` above `d_max` or not an integer, a `noise < 0` or a tolerance `≤ 0`):
    the run starts from `nan` (`simulate` and a flow experiment run on stand-in values
    instead), and its saves are `nan`."""
    STEP_SIZE_COLLAPSED = 4
    """The step size fell to its floor (a controller's `dtmin`, or `RelativeFloor`'s
    time resolution) and the step still failed: the solution blows up there or the
    implicit stage equations have no solution. Later saves hold `nan`."""
    TIME_UNRESOLVED = 5
    """Reached `t1`, but a step forced at the time floor (below it a step would not
    advance `t`: `RelativeFloor`, README "Precision") had an error estimate above
    `FORCED_ERROR_LIMIT`: something happened faster than the time variable resolves
    there (typically an escape at `t ≫ 1/eps`), and the saves after it may be wrong.
    They are kept; `Trajectory.forced_error` holds the estimate."""


FORCED_ERROR_LIMIT = 1e-2
"""The largest relative error estimate of a step forced at the time floor (the Euclidean
norm of the step's error over that of the state, the larger of its two ends) that still
counts as `Status.SUCCESS`. Relative, because near a saddle the overlap is small
(`|m| ~ d^{−1/2}`): two float32 runs at `t ~ 10¹⁸` were thrown back from `m ≈ 6·10⁻⁴` by
steps whose absolute error was only 4·10⁻³. Measured on `benchmarks/precision.py`'s
catalogue: see the README's "Precision"."""


class Trajectory(eqx.Module):
    """The result of a simulation, saved on a log-spaced time grid.

    **Fields** (`n` saves, `p = min(k, r)`; a leading batch axis under `vmap`):
    - `ts`: `(n,)` save times, `0` then log-spaced up to `t1`.
    - `overlap`: `(n, k, r)` the overlap `M(t) = W*ᵀ W(t)`.
    - `loss`: `(n,)` the population loss of the problem at `M(t)`: the reduced loss
      (with a ridge, the two-timescale value function, penalty included); for
      d-dimensional flows, `AbstractFlow.loss`.
    - `singular_values`: `(n, p)` singular values of `M(t)`, largest first.
    - `status`: `()` a `Status` code; `num_steps`: `()` accepted and rejected steps.
    - `forced_error`: `()` the largest relative error estimate of a step accepted at the time
      floor without error control (`0` when none; `Status.TIME_UNRESOLVED` above
      `FORCED_ERROR_LIMIT`), or `None` where the controller does not record it.
    - `train_loss`, `test_loss`: `(n,)` the empirical objective on the flow's data and
      the loss on a held-out set (d-dimensional flows, `simulate`; else `None`).
    - `problem`: the reduced problem that produced the trajectory, used by
      `escape_times` to locate crossings between saves (`None` for d-dimensional
      flows, whose crossings are interpolated between saves).
    - `crossings`: for reduced trajectories, the solver step in which each singular
      value first passed `ESCAPE_THRESHOLD`, recorded during the solve (`escape_times`
      finds the crossing inside it); `None` for d-dimensional flows.
    """

    ts: Float[Array, " n"]
    overlap: Float[Array, "n k r"]
    loss: Float[Array, " n"]
    singular_values: Float[Array, "n p"]
    status: Int[Array, ""]
    num_steps: Int[Array, ""]
    train_loss: Float[Array, " n"] | None = None
    test_loss: Float[Array, " n"] | None = None
    problem: AbstractProblem | None = None
    crossings: "CrossingSteps | None" = None
    forced_error: Float[Array, ""] | None = None

    @property
    def succeeded(self) -> jax.Array:
        """`status == Status.SUCCESS`, elementwise over a batch."""
        return self.status == Status.SUCCESS


MAX_SAVES = 2**20
"""The most saves `num_saves` of one trajectory (its loss, singular values and overlap
are kept at every save; `10**30` failed deep inside JAX)."""


def _check_saves(t1: float, t_min: float, num_saves: int) -> int:
    check_range("t_min", t_min, low=0.0, low_open=True)
    check_range("t1", t1, low=t_min, low_open=True)
    return check_int("num_saves", num_saves, 2, MAX_SAVES)


def check_trajectory(trajectory: object) -> None:
    """Raise a `ValueError` unless `trajectory` is a `Trajectory`."""
    if not isinstance(trajectory, Trajectory):
        raise ValueError(f"`trajectory` must be a mimflow.Trajectory, got {type(trajectory).__name__}")


MAX_STEPS = 2**31 - 1
"""The largest step budget `max_steps`: the solvers count steps in 32-bit integers."""


def check_time_grid(t1: float, t_min: float, num_saves: int, max_steps: int) -> int:
    """Raise a `ValueError` naming the value unless `0 < t_min < t1`, `2 ≤ num_saves ≤
    MAX_SAVES` and `1 ≤ max_steps ≤ MAX_STEPS` (`t1` is checked only when concrete); return
    `max_steps` as an `int` (a NumPy integer would be traced by the solve)."""
    _check_saves(t1, t_min, num_saves)
    return check_int("max_steps", max_steps, 1, MAX_STEPS)


def check_controls(
    solver: object, stepsize_controller: object = None, adjoint: object = None, dt0: float | None = None
) -> None:
    """Raise a `ValueError` naming the argument unless each is `None` or of diffrax's kind
    (and `dt0 > 0`)."""
    kinds = (
        ("solver", solver, diffrax.AbstractSolver),
        ("stepsize_controller", stepsize_controller, diffrax.AbstractStepSizeController),
        ("adjoint", adjoint, diffrax.AbstractAdjoint),
    )
    for name, value, kind in kinds:
        if value is not None and not isinstance(value, kind):
            raise ValueError(f"`{name}` must be None or a diffrax.{kind.__name__}, got {type(value).__name__}")
    if dt0 is not None:
        check_range("dt0", dt0, low=0.0, low_open=True)


def save_times(t1: float | Float[Array, ""], num_saves: int, t_min: float) -> Float[Array, " num_saves"]:
    """`[0, t_min, …, t1]`: zero, then `num_saves − 1` log-spaced times ending at `t1`
    (just `[0, t1]` for `num_saves = 2`); `0 < t_min < t1`, a `ValueError` otherwise.
    A traced `t1` (under `jit`/`vmap`) cannot raise: outside its domain (`t1 ≤ t_min`, or
    not finite) the times after `0` are `nan`, and a simulation on them ends
    `Status.NON_FINITE` (the solve runs on a stand-in grid, `_solvable`)."""
    num_saves = _check_saves(t1, t_min, num_saves)
    t1 = jnp.asarray(t1, dtype=float)
    grid = jnp.logspace(jnp.log10(t_min), jnp.log10(t1), num_saves - 1).at[-1].set(t1)
    ts = jnp.concatenate([jnp.zeros(1, t1.dtype), grid])
    if not is_concrete(t1):
        valid = jnp.isfinite(t1) & (t1 > t_min)
        ts = jnp.where(valid, ts, jnp.full_like(ts, jnp.nan).at[0].set(0.0))
    return ts


def _solvable(ts: Float[Array, " n"], inside: Bool[Array, ""] | None = None) -> Float[Array, " n"]:
    """`ts`, or where a traced `t1` outside its domain left them `nan` (`save_times`), or
    where `inside` (the run's other inputs in their domain) is false, a short stand-in grid
    `[0, …, 1]` that diffrax and `solve_rosenbrock` accept (decreasing or `nan` save times
    raised inside the solve, killing a whole batch). The run on it is reported
    `Status.NON_FINITE` by its caller; its saves are not kept."""
    if is_concrete((ts, inside)):
        return ts
    valid = jnp.isfinite(ts).all() if inside is None else inside & jnp.isfinite(ts).all()
    return jnp.where(valid, ts, jnp.linspace(0.0, 1.0, ts.shape[0], dtype=ts.dtype))


def default_tolerances(dtype: jnp.dtype) -> tuple[float, float]:
    return (1e-9, 1e-12) if dtype == jnp.float64 else (1e-5, 1e-8)


def _default_solver(dtype: jnp.dtype) -> diffrax.AbstractSolver:
    """`Kvaerno5` (implicit: the converged tail is stiff) with a Newton root finder
    (diffrax's default chord iteration rejects every step under a clipping controller).
    Its `atol` is at least `16·eps`: the stage residual is known only to rounding, and
    in float32 the step controller's `atol` (1e-8) is below it, so Newton never
    converged and every run ended in `MAX_STEPS` at the first escape."""
    rtol, atol = default_tolerances(dtype)
    atol = max(atol, 16 * float(jnp.finfo(dtype).eps))
    return diffrax.Kvaerno5(root_finder=optx.Newton(rtol=rtol, atol=atol))


class RelativeFloor(diffrax.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive controller so that no step is shorter than
    `factor · eps · max(|t|, 1)`: a step the inner controller rejects only for being
    too long is accepted once it is at that floor (if the solver succeeded, and without
    error control: see the README's "Precision"; the largest relative error estimate of such a step
    is kept in the controller state, `forced_error`, and above `FORCED_ERROR_LIMIT` the
    run ends `Status.TIME_UNRESOLVED`); a failed step near the floor is retried
    at the floor itself, and a step of the floor's length that fails ends the solve with
    `dt_min_reached` (`Status.STEP_SIZE_COLLAPSED`).

    Escapes happen at `t ~ d^{s−1}` (10¹⁵ is ordinary for `s = 4`, 10⁶ already beyond
    float32) but last `O(1)`, below the time variable's resolution `eps·t`: without
    a floor the controller asks for steps that do not advance `t` and the solve ends
    in `MAX_STEPS`. With it, the escape is stepped over at the floor, still located
    to a relative `factor · eps` in time, and the stiff solver stays stable.
    """

    controller: diffrax.AbstractAdaptiveStepSizeController
    factor: float = 8.0

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def _floor(self, t):
        return self.factor * jnp.finfo(jnp.result_type(t)).eps * jnp.maximum(jnp.abs(t), 1.0)

    def wrap(self, direction):
        return eqx.tree_at(lambda s: s.controller, self, self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        next_t1, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        # the state also carries the largest error estimate of a forced step (`forced_error`)
        worst = jnp.zeros((), jnp.result_type(*jax.tree.leaves(y0)))
        return jnp.maximum(next_t1, t0 + self._floor(t0)), (state, worst)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        inner_state, worst = controller_state
        keep, next_t0, next_t1, made_jump, state, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner_state
        )
        solved = jnp.all(jnp.stack([jnp.all(jnp.isfinite(e)) for e in jax.tree.leaves(y_error)]))
        at_floor = ~keep & (t1 - t0 <= 1.5 * self._floor(t0))
        forced = at_floor & solved
        size = lambda tree: jnp.sqrt(sum(jnp.sum(jnp.square(e)) for e in jax.tree.leaves(tree)))
        error = size(y_error)
        error = jnp.where(error > 0, error / jnp.maximum(size(y0), size(y1_candidate)), 0.0)
        worst = jnp.where(forced, jnp.maximum(worst, error.astype(worst.dtype)), worst)
        next_t0 = jnp.where(forced, t1, next_t0)
        next_t1 = jnp.where(forced, t1 + (t1 - t0), next_t1)
        next_t1 = jnp.maximum(next_t1, next_t0 + self._floor(next_t0))
        # A failed step (non-finite, or no implicit solution) near the floor is retried at
        # the floor itself (a shorter step often converges); once a step that short has
        # failed, the retry would be the same computation: end with `dt_min_reached` rather
        # than spend the step budget there. (`t1 − t0` rounds to within 1/8 of the floor.)
        minimal = t1 - t0 <= 1.25 * self._floor(t0)
        result = diffrax.RESULTS.where(at_floor & minimal & ~solved, diffrax.RESULTS.dt_min_reached, result)
        return keep | forced, next_t0, next_t1, made_jump, (state, worst), result


def forced_error(controller: diffrax.AbstractStepSizeController, state: PyTree) -> Array | None:
    """The largest relative error estimate of a step that a `RelativeFloor` (`controller`, or inside
    a `ClipStepSizeController`) forced at its floor, from its final `state`; `None` for
    other controllers."""
    if isinstance(controller, diffrax.ClipStepSizeController):
        return forced_error(controller.controller, state.inner_state)
    if isinstance(controller, RelativeFloor):
        return state[1]
    return None


def default_controller(
    ts: Float[Array, " n"],
    rtol: Float[ArrayLike, ""] | None = None,
    atol: Float[ArrayLike, ""] | None = None,
    norm: Callable[[PyTree], Float[Array, ""]] = optx.rms_norm,
) -> diffrax.AbstractStepSizeController:
    """A PID controller whose steps end on the save times, so saves are step end
    points (solver accuracy) rather than dense-output interpolations (an order less),
    and never shorter than the time variable can resolve (`RelativeFloor`).
    `rtol`, `atol` default to `default_tolerances` and may be traced (swept); `norm`
    measures errors (`PaddedNorm` for padded states). Steps end on `_solvable(ts)`: a
    traced `t1` outside its domain (`nan` saves) has a stand-in grid here."""
    ts = _solvable(ts)
    default_rtol, default_atol = default_tolerances(ts.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    pid = diffrax.PIDController(rtol=rtol, atol=atol, norm=norm)
    return diffrax.ClipStepSizeController(RelativeFloor(pid), step_ts=ts)


ESCAPE_THRESHOLD = 0.5
"""The singular value of `M` at which a direction counts as learned (DESIGN §1)."""


def _eigenvalues(overlap: Float[Array, "k r"]) -> Float[Array, " p"]:
    """Eigenvalues of the `p × p` Gram matrix of `M` (the squared singular values),
    largest first; closed form for `p ≤ 2` (batched, a LAPACK call per tiny matrix
    would dominate the cost of locating escapes)."""
    k, r = overlap.shape
    return jnp.stack(gram_eigenvalues(tuple(overlap.reshape(-1)), k, r))


class CrossingSteps(eqx.Module):
    """Per singular value of `M` (`p` of them): whether it has passed `threshold`, and
    the accepted solver step `[t0, t1]` in which it did, with the step's dense output
    (`t0 = t1`: already above at the start). Carried as the solver state of
    `_RecordCrossings`, so a crossing costs no second solve to locate."""

    crossed: Bool[Array, " p"]
    t0: Float[Array, " p"]
    t1: Float[Array, " p"]
    dense_info: PyTree[Array]
    threshold: float = eqx.field(static=True)
    interpolation_cls: type = eqx.field(static=True)


class _ForwardingSolver(diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver):
    """A wrapped diffrax solver that forwards everything but what a subclass overrides
    (`RetractedSolver`: `step`; `_RecordCrossings`: `init` and `step`)."""

    solver: eqx.AbstractVar[diffrax.AbstractSolver]

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    # `isinstance(·, AbstractImplicitSolver)` is forwarded to the wrapped solver, and
    # diffrax then reads (and fills in the step controller's tolerances of) its root finder
    @property
    def root_finder(self):
        return self.solver.root_finder

    @property
    def root_find_max_steps(self):
        return self.solver.root_find_max_steps

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


class _RecordCrossings(_ForwardingSolver):
    """Wraps a solver; after every step, the singular values of `M` that first pass
    `threshold` in it have the step recorded in the solver state. The integrator keeps
    the solver state of accepted steps only, so rejected steps record nothing."""

    solver: diffrax.AbstractSolver
    threshold: float = eqx.field(static=True)

    def init(self, terms, t0, t1, y0, args):
        inner = self.solver.init(terms, t0, t1, y0, args)
        _, _, dense_struct, _, _ = eqx.filter_eval_shape(self.solver.step, terms, t0, t1, y0, args, inner, False)
        p = min(y0.shape)
        t0 = jnp.full((p,), t0, dtype=y0.dtype)
        steps = CrossingSteps(
            crossed=_eigenvalues(y0) >= self.threshold**2,
            t0=t0,
            t1=t0,
            dense_info=jax.tree.map(lambda leaf: jnp.zeros((p, *leaf.shape), leaf.dtype), dense_struct),
            threshold=self.threshold,
            interpolation_cls=self.solver.interpolation_cls,
        )
        return inner, steps

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, steps = solver_state
        y1, y_error, dense_info, inner, result = self.solver.step(terms, t0, t1, y0, args, inner, made_jump)
        new = ~steps.crossed & (_eigenvalues(jax.lax.stop_gradient(y1)) >= self.threshold**2)
        record = lambda now, before: jnp.where(new.reshape(new.shape + (1,) * (before.ndim - 1)), now, before)
        steps = eqx.tree_at(
            lambda s: (s.crossed, s.t0, s.t1, s.dense_info),
            steps,
            (
                steps.crossed | new,
                record(jnp.asarray(t0, steps.t0.dtype), steps.t0),
                record(jnp.asarray(t1, steps.t1.dtype), steps.t1),
                jax.tree.map(record, jax.lax.stop_gradient(dense_info), steps.dense_info),
            ),
        )
        return y1, y_error, dense_info, (inner, steps), result


def _locate(steps: CrossingSteps, index: Int[Array, ""]) -> Float[Array, ""]:
    """The time in the recorded step at which the `index`-th eigenvalue of the Gram
    matrix of the step's dense output reaches `threshold²`, by bisection to the
    resolution of the time variable; `inf` if that singular value never passed."""
    t0, t1 = steps.t0[index], steps.t1[index]
    dense_info = jax.tree.map(lambda leaf: leaf[index], steps.dense_info)
    interpolation = steps.interpolation_cls(t0=t0, t1=jnp.where(t1 > t0, t1, t0 + 1), **dense_info)
    above = lambda t: _eigenvalues(interpolation.evaluate(t))[index] >= steps.threshold**2

    def bisect(_, bracket):
        low, high = bracket
        middle = low + 0.5 * (high - low)
        return jnp.where(above(middle), low, middle), jnp.where(above(middle), middle, high)

    iterations = 64 if t0.dtype == jnp.float64 else 32
    _, high = jax.lax.fori_loop(0, iterations, bisect, (t0, t1))
    return jnp.where(steps.crossed[index], jnp.where(t1 > t0, high, t0), jnp.inf)


def _term() -> diffrax.ODETerm:
    return diffrax.ODETerm(lambda t, y, problem: problem.vector_field(y))


def _status(result: diffrax.RESULTS, finite: Array, forced: Array | None = None) -> Array:
    """The `Status` of a solve from diffrax's `result`, whether its saves are `finite`,
    and the largest error of a step forced at the time floor (`forced_error`)."""
    unresolved = False if forced is None else forced > FORCED_ERROR_LIMIT
    code = jnp.where(
        (result == diffrax.RESULTS.successful) | (result == diffrax.RESULTS.event_occurred),
        jnp.where(unresolved, Status.TIME_UNRESOLVED, Status.SUCCESS),
        jnp.where(
            result == diffrax.RESULTS.max_steps_reached,
            Status.MAX_STEPS,
            jnp.where(result == diffrax.RESULTS.dt_min_reached, Status.STEP_SIZE_COLLAPSED, Status.SOLVER_FAILED),
        ),
    )
    return jnp.where(finite, code, Status.NON_FINITE)


def _non_finite_unless(inside: Bool[Array, ""], trajectory: Trajectory) -> Trajectory:
    """`trajectory`, or where `inside` is false, with status `Status.NON_FINITE` and `nan`
    saves (the save times kept)."""
    masked = {
        name: jnp.where(inside, value, jnp.nan)
        for name in ("overlap", "loss", "singular_values", "train_loss", "test_loss")
        if (value := getattr(trajectory, name)) is not None
    }
    status = jnp.where(inside, trajectory.status, Status.NON_FINITE)
    return dataclasses.replace(trajectory, status=status, **masked)


def _converged(problem: AbstractProblem, dtype: jnp.dtype) -> diffrax.Event:
    """Stop once the loss is within rounding of its global minimum: nothing is left
    to learn, and the stiff tail's huge implicit steps would otherwise meet the flow's
    neutral (rotation) directions at rounding level and stall (DESIGN §5a)."""
    _, atol = default_tolerances(dtype)
    eps = float(jnp.finfo(dtype).eps)

    def cond_fn(t, y, args, **kwargs):
        scale = jnp.maximum(args.link.norm2(), 1.0)
        # |·|: a state pushed past the minimum (G > I after a step at the time floor) must still converge
        return jnp.abs(args.loss(y) - args.minimum()) <= atol + 16 * eps * scale

    return diffrax.Event(cond_fn)


@eqx.filter_jit
def _solve(problem, overlap0, ts, solver, stepsize_controller, max_steps, adjoint, steady_state=True) -> Trajectory:
    start_finite = jnp.isfinite(overlap0).all()
    sol = diffrax.diffeqsolve(
        _term(),
        _RecordCrossings(solver, ESCAPE_THRESHOLD),
        ts[0],
        ts[-1],
        None,
        # a non-finite start is reported, not integrated: under vmap an implicit solver's
        # iterations would otherwise couple it to the rest of the batch
        jnp.where(start_finite, overlap0, 0.0),
        args=problem,
        saveat=diffrax.SaveAt(
            subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)], solver_state=True, controller_state=True
        ),
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        adjoint=adjoint,
        event=_converged(problem, ts.dtype) if steady_state else None,
        throw=False,
    )
    ys, final = sol.ys
    # after a steady-state stop, the saves past it hold the final state; a start already
    # at the minimum stops at `ts[0]` before any save is written, so all of them do
    stopped = sol.result == diffrax.RESULTS.event_occurred
    stop_time = sol.ts[1][-1]
    unsaved = (ts > stop_time) | (stop_time <= ts[0])
    ys = jnp.where((stopped & unsaved)[:, None, None], final[-1], ys)
    saved = jnp.isfinite(ys).all(axis=(-1, -2)) & start_finite  # not the stand-in's saves
    overlap = jnp.where(saved[:, None, None], ys, jnp.nan)
    safe = jnp.where(saved[:, None, None], ys, 0.0)
    loss = jnp.where(saved, jax.vmap(problem.loss)(safe), jnp.nan)
    singular = jnp.where(saved[:, None], principal_cosines(safe), jnp.nan)
    reached = (sol.result == diffrax.RESULTS.successful) | stopped
    finite = jnp.where(reached, saved.all(), True) & start_finite
    forced = forced_error(stepsize_controller, sol.controller_state)
    return Trajectory(
        ts=ts,
        overlap=overlap,
        loss=loss,
        singular_values=singular,
        status=_status(sol.result, finite, forced),
        num_steps=sol.stats["num_steps"],
        problem=problem,
        crossings=sol.solver_state[1],
        forced_error=forced,
    )


def simulate_reduced(
    link: Link | AbstractProblem,
    M0: Float[ArrayLike, "k r"],
    t1: float,
    problem: ProblemName | AbstractProblem = "two-timescale",
    *,
    ridge: float = 0.0,
    rho: float = 1.0,
    num_saves: int = 256,
    t_min: float = 1e-2,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    max_steps: int = 16384,
    adjoint: diffrax.AbstractAdjoint | None = None,
    steady_state: bool = True,
) -> Trajectory:
    """Integrate the reduced dynamics of `M` from `M0` to `t1` (DESIGN §2–§3).

    The flow spans `O(1)` to `d^{s−1}` and, once converged, is stiff with `O(1)`
    decay rates (DESIGN §5a); the default is therefore an implicit solver
    (`diffrax.Kvaerno5`) with a PID controller, so long horizons (`t1 = 10⁸`) stay
    cheap. Failures never raise: they are reported in `Trajectory.status`, and what
    was computed before them is kept. Works under `jax.vmap` over `M0` (and so over
    `d` through `sample_overlap`).

    **Arguments:**
    - `link`: the target `Link` (or a problem object such as `TwoTimescale`).
    - `M0`: `(k, r)` initial overlap, e.g. from `sample_overlap`.
    - `t1`: final time, `t1 > t_min` (a `ValueError` otherwise; traced, under `jit` or
      `vmap`, a `t1` outside that domain or non-finite ends that run `Status.NON_FINITE`,
      its `ts` `nan` after `0`).
    - `problem`: `"two-timescale"` or `"planted"`; `ridge`, `rho`: ridge shrinkage
      (two-timescale only), see `TwoTimescale`.
    - `num_saves`, `t_min`: saves at `0` and `num_saves − 1` log-spaced times in `[t_min, t1]`.
    - `solver`, `stepsize_controller`: any diffrax solver and controller; default
      `Kvaerno5` (Newton root finder) and `PIDController(rtol, atol)` with `(1e-9, 1e-12)` in float64,
      `(1e-5, 1e-8)` in float32, clipped so that steps end on the save times. Or
      `mimflow.Rodas5()` / `Rodas4()` (no controller: they control their own steps) for
      fast batches under `jax.vmap`, not reverse-mode differentiable (a traced `rtol` or
      `atol ≤ 0` of theirs ends the run `Status.NON_FINITE`).
    - `max_steps`: step budget; `adjoint`: diffrax adjoint for gradients (default
      `RecursiveCheckpointAdjoint`).
    - `steady_state`: stop once the loss is within rounding of the problem's global
      minimum and fill the later saves with that state (default; the stiff converged tail
      otherwise costs steps for nothing), or integrate to `t1` regardless.

    **Example:**
    ```python
    M0 = mimflow.sample_overlap(key, 1000.0, 2, 2)
    traj = mimflow.simulate_reduced(mimflow.links.staircase(2), M0, 1e3)
    mimflow.escape_times(traj)  # one time per direction
    ```
    """
    prob = make_problem(link, problem, ridge=ridge, rho=rho)
    prob.check_overlap(M0, "M0")
    steady_state = check_bool("steady_state", steady_state)
    max_steps = check_time_grid(t1, t_min, num_saves, max_steps)
    check_controls(None if isinstance(solver, AbstractRosenbrock) else solver, stepsize_controller, adjoint)
    M0 = jnp.asarray(M0, dtype=float)
    ts = save_times(t1, num_saves, t_min)
    rosenbrock = isinstance(solver, AbstractRosenbrock)
    tolerances = [v for v in (solver.rtol, solver.atol) if v is not None] if rosenbrock else []
    if not is_concrete((prob, M0, ts, tolerances)):
        # what only tracers hold is checked here: outside its domain the start is `nan`,
        # reported as `Status.NON_FINITE` (as `sample_overlap` does for a traced `d < k + r`);
        # a traced `t1` outside its domain left `nan` save times, solved on a stand-in grid
        tolerance = rounding_tolerance(np.zeros((), M0.dtype))
        inside = prob.in_domain() & (jnp.max(_eigenvalues(M0)) <= (1 + tolerance) ** 2) & jnp.isfinite(ts).all()
        for value in tolerances:  # a Rosenbrock solver's, `> 0` as `AbstractRosenbrock` checks concrete ones
            inside = inside & jnp.isfinite(value) & (value > 0)
        M0 = jnp.where(inside, M0, jnp.nan)
    solve_ts = _solvable(ts)
    if rosenbrock:
        if stepsize_controller is not None or adjoint is not None:
            raise ValueError(
                f"`{type(solver).__name__}` controls its own steps (its `rtol`, `atol`) and is not differentiable "
                "in reverse mode: pass neither `stepsize_controller` nor `adjoint` with it"
            )
        trajectory = solve_rosenbrock(prob, M0, solve_ts, solver, max_steps, steady_state, known_entries(prob))
    else:
        solver = _default_solver(ts.dtype) if solver is None else solver
        if stepsize_controller is None:
            stepsize_controller = default_controller(solve_ts)
        adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
        trajectory = _solve(prob, M0, solve_ts, solver, stepsize_controller, max_steps, adjoint, steady_state)
    return trajectory if solve_ts is ts else eqx.tree_at(lambda traj: traj.ts, trajectory, ts)


def _crossing(trajectory: Trajectory, index: Int[Array, ""], threshold: float) -> Float[Array, ""]:
    """First time the `index`-th singular value reaches `threshold`: bracketed on the
    save grid, then located by re-integrating from the save before it with an event
    on `λ_index(A) − threshold²`, `A = M Mᵀ` or `Mᵀ M` (whichever is `p × p`, its
    eigenvalues in decreasing order). (The smooth `det(A − threshold² I)` would also
    stop at an earlier singular value crossing in the same bracket.)"""
    ts, values = trajectory.ts, trajectory.singular_values[:, index]
    above = jnp.nan_to_num(values, nan=-jnp.inf) >= threshold
    first = jnp.argmax(above)
    left = jnp.maximum(first - 1, 0)
    tol = 1e-12 if ts.dtype == jnp.float64 else 1e-6

    def distance(t, y, args, **kwargs):
        gram = y @ y.T if y.shape[0] <= y.shape[1] else y.T @ y
        return jnp.linalg.eigvalsh(gram)[::-1][index] - threshold**2

    rtol, atol = default_tolerances(ts.dtype)
    sol = diffrax.diffeqsolve(
        _term(),
        _default_solver(ts.dtype),
        ts[left],
        jnp.where(first > 0, ts[first], ts[left] + 1.0),
        None,
        jnp.nan_to_num(trajectory.overlap[left]),
        args=trajectory.problem,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=RelativeFloor(diffrax.PIDController(rtol=rtol, atol=atol)),
        event=diffrax.Event(distance, root_finder=optx.Newton(rtol=tol, atol=tol)),
        max_steps=4096,
        throw=False,
    )
    refined = jnp.clip(sol.ts[-1], ts[left], ts[first])
    return jnp.where(above.any(), jnp.where(first > 0, refined, ts[0]), jnp.inf)


def _crossing_between_saves(trajectory: Trajectory, index: Int[Array, ""], threshold: float) -> Float[Array, ""]:
    """First time the `index`-th singular value reaches `threshold`, interpolated
    linearly in `log t` between the bracketing saves."""
    ts, values = trajectory.ts, jnp.nan_to_num(trajectory.singular_values[:, index], nan=-jnp.inf)
    above = values >= threshold
    first = jnp.argmax(above)
    left = jnp.maximum(first - 1, 0)
    fraction = jnp.clip((threshold - values[left]) / (values[first] - values[left]), 0.0, 1.0)
    log_left, log_right = jnp.log(jnp.maximum(ts[left], ts[1])), jnp.log(ts[first])
    interpolated = jnp.where(left == 0, ts[first], jnp.exp(log_left + fraction * (log_right - log_left)))
    return jnp.where(above.any(), jnp.where(first > 0, interpolated, ts[0]), jnp.inf)


@eqx.filter_jit
def escape_times(trajectory: Trajectory, threshold: float = 0.5) -> Float[Array, " p"]:
    """Per direction `i` (singular values of `M` sorted largest first), the first time
    the `i`-th singular value of `M(t)` passes `threshold` (½: the direction counts as
    learned); `inf` where it never does within a successful trajectory, and `nan`
    where it had not yet when the trajectory failed (`status` not `SUCCESS`: whether
    it would have is unknown).

    For reduced trajectories the crossing is located to solver accuracy, not at the
    nearest save. At a concrete `threshold = ESCAPE_THRESHOLD` (½) the solve itself
    recorded the accepted step in which each singular value first passed it, and the
    crossing is found by bisection on that step's dense output (the first step-level
    crossing, so a brief excursion above `threshold` between two saves counts). At any
    other threshold, or a traced one (under `jit`, `vmap` or `grad` in `threshold`), the
    flow is re-integrated from the save just before the first save above it, with an
    event and a root find (`Kvaerno5` at the default tolerances of the dtype; a second
    solve, compiled on first use; at ½ it agrees with the recorded crossing to solver
    accuracy). For d-dimensional flows (`simulate`) it is interpolated linearly in
    `log t` between the bracketing saves (save densely to resolve it).
    Accepts a batch of trajectories (any leading axes) from `vmap`.

    **Returns:** `(p,)` times, or `(*batch, p)`.
    """
    check_trajectory(trajectory)
    check_range("threshold", threshold, low=0.0, high=1.0, low_open=True)
    batch = trajectory.ts.ndim - 1
    recorded = trajectory.crossings is not None and is_concrete(threshold)
    if recorded and float(threshold) == trajectory.crossings.threshold:
        crossing = lambda traj, i, _: _locate(traj.crossings, i)
    elif trajectory.problem is not None:
        crossing = _crossing
    else:
        crossing = _crossing_between_saves
    single = lambda traj: jax.vmap(lambda i: crossing(traj, i, threshold))(jnp.arange(traj.singular_values.shape[-1]))
    for _ in range(batch):
        single = eqx.filter_vmap(single)
    times = single(trajectory)
    return jnp.where(jnp.isinf(times) & ~trajectory.succeeded[..., None], jnp.nan, times)
