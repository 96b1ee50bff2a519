"""A Rosenbrock integrator of the reduced dynamics, laid out for batches (issue 8).

`simulate_reduced(..., solver=Rodas4())` (or `Rodas5()`) integrates `Ṁ` with this
instead of diffrax. The state `M` (`k × r`) is held as `k·r` separate scalars, and
everything a step does (the vector field, its Jacobian, the LU factorisation of the
Rosenbrock matrix, the stages, the error estimate and the step-size controller) is
unrolled into scalar arithmetic, with the link's structural zeros dropped when its
tensors are known at trace time. Under `jax.vmap` every scalar becomes one `(B,)` array
with the batch as its only axis (a `custom_vmap` rule integrates the batch directly),
so a batch of trajectories runs as one vectorised elementwise program (on a CPU over
fewer lanes than trajectories, each lane taking the next trajectory when its own ends),
where `vmap(diffeqsolve)` runs `B` copies of `(k, r)` matrix code (batched `dot`s and
LAPACK calls on 2 × 2 matrices: the layout DESIGN §5a measured at ≈ 16× a SciPy loop).

The methods are L-stable and stiffly accurate Rosenbrock methods, so the stiff
converged tail costs a handful of steps (DESIGN §5a): RODAS4 (Hairer & Wanner, *Solving
ODEs II*, §VI.4: order 4 with an embedded order-3 estimate, 6 stages; coefficients of
`rodas.f`) and RODAS5 (Di Marzo 1993: order 5(4), 8 stages, with Gustafsson's predictive
step controller). Saves are step end points: a step never crosses the next save time.
Each step where a singular value first passes `ESCAPE_THRESHOLD` is recorded with its
cubic Hermite data, so `escape_times` locates the crossing without a second solve,
exactly as for the diffrax path.

Not reverse-mode differentiable (a `while_loop`); use the default diffrax solver for
`jax.grad`.
"""

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import check_int, check_range, is_concrete
from ._overlap import principal_cosines
from ._reduced import AbstractProblem, Planted, TwoTimescale

Scalar = Array | float


class _Method(NamedTuple):
    """A stiffly accurate Rosenbrock method in the autonomous form of Hairer & Wanner:
    `W = I/(γh) − J`, `W k_i = f(y + Σ_j a_ij k_j) + Σ_j (c_ij / h) k_j`; the stages past
    the rows of `a` are the previous stage plus its `k` (`y1` = the last stage `+ k_last`),
    and `k_last` is the error estimate. `exponent`: the step controller's,
    `1 / (order of the estimate + 1)`; `predictive`: Gustafsson's predictive controller
    (`rodas.f`'s default) on top of the standard one."""

    gamma: float
    a: tuple
    c: tuple
    exponent: float
    predictive: bool


# RODAS4 (Hairer & Wanner, coefficients of `rodas.f`): order 4, estimate of order 3.
_RODAS4 = _Method(
    gamma=0.25,
    a=(
        (),
        (1.544,),
        (0.9466785280815826, 0.2557011698983284),
        (3.314825187068521, 2.896124015972201, 0.9986419139977817),
        (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950),
    ),
    c=(
        (),
        (-5.6688,),
        (-2.430093356833875, -0.2063599157091915),
        (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
        (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
        (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054),
    ),
    exponent=0.25,
    predictive=False,
)

# RODAS5 (G. Di Marzo, *RODAS5(4) – Méthodes de Rosenbrock d'ordre 5(4) adaptées aux
# problèmes différentiels-algébriques*, Geneva 1993; the coefficients as tabulated in
# OrdinaryDiffEq.jl): L-stable, stiffly accurate, order 5, estimate of order 4, 8 stages.
_RODAS5 = _Method(
    gamma=0.19,
    a=(
        (),
        (2.0,),
        (3.040894194418781, 1.041747909077569),
        (2.576417536461461, 1.622083060776640, -0.9089668560264532),
        (2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443),
        (-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062),
    ),
    c=(
        (),
        (-10.31323885133993,),
        (-21.04823117650003, -7.234992135176716),
        (32.22751541853323, -4.943732386540191, 19.44922031041879),
        (-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146),
        (-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906, 318.3822534212147),
        (
            34.20013733472935,
            -14.15535402717690,
            57.82335640988400,
            25.83362985412365,
            1.408950972071624,
            -6.551835421242162,
        ),
        (
            42.57076742291101,
            -13.80770672017997,
            93.98938432427124,
            18.77919633714503,
            -31.58359187223370,
            -6.685968952921985,
            -5.810979938412932,
        ),
    ),
    exponent=0.2,
    predictive=True,
)


class AbstractRosenbrock(eqx.Module):
    """A solver for `simulate_reduced` that runs batches fast: a Rosenbrock method on
    the reduced ODE written as unrolled scalar code, so that under `jax.vmap` a batch of
    trajectories is one vectorised program. `Rodas4` and `Rodas5` are the concrete ones.

    **Fields:** `rtol`, `atol`: the error control's tolerances (`None`: the
    defaults of the dtype, `(1e-9, 1e-12)` in float64); an error is measured as
    `rms(err_i / (atol + rtol·max(|y_i|, |y1_i|)))`. `lanes`: how many trajectories
    of a vmapped batch are integrated at once (`None`: on a CPU all of them up to 256,
    else a sixteenth of the batch, at least 256; on an accelerator all of them; at
    least 2); a lane whose trajectory ended takes the next one. It changes the speed
    only: each trajectory's result is bitwise the same.
    """

    rtol: Float[Array, ""] | float | None = None
    atol: Float[Array, ""] | float | None = None
    lanes: int | None = eqx.field(default=None, static=True)
    method: eqx.AbstractClassVar[_Method]

    def __check_init__(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None:
                check_range(name, value, low=0.0, low_open=True)
        if self.lanes is not None:
            check_int("lanes", self.lanes, 2)


class Rodas4(AbstractRosenbrock):
    """RODAS4 (Hairer & Wanner: L-stable, stiffly accurate, order 4, 6 stages) for
    `simulate_reduced`, batched (see `AbstractRosenbrock` for the fields).

    Use it for sweeps of many trajectories: `simulate_reduced(link, M0, t1, solver=Rodas4())`
    or `ReducedExperiment(..., solver=Rodas4())`, or `solver: {name: rodas4}` in a config.
    Results (saves, status, escape times) have the same form as with the default
    solver, and agree with it to the tolerances. It is not reverse-mode
    differentiable: use the default (diffrax `Kvaerno5`) for `jax.grad`. `Rodas5`
    takes fewer steps for the same tolerances.
    """

    method: ClassVar[_Method] = _RODAS4


class Rodas5(AbstractRosenbrock):
    """RODAS5 (Di Marzo: L-stable, stiffly accurate, order 5 with an order-4 estimate,
    8 stages) with Gustafsson's predictive step controller, for `simulate_reduced`,
    batched (see `AbstractRosenbrock` for the fields; used like `Rodas4`, or
    `solver: {name: rodas5}` in a config).

    A step costs about 1.25 `Rodas4` steps (8 stages against 6); it takes fewer of
    them, the more so the tighter the tolerances: on `benchmarks/reduced_vs_scipy.py`
    (rtol 1e-6) 0.59 of `Rodas4`'s, so a batch runs about 1.4× faster. Without the
    predictive controller, the `d²` escape there rejected every other step. Not
    reverse-mode differentiable.
    """

    method: ClassVar[_Method] = _RODAS5


# --- scalar algebra (Python floats for known values, `0.0` dropped) -----------------


def _zero(x: Scalar) -> bool:
    return isinstance(x, float | int) and x == 0


def _add(a: Scalar, b: Scalar) -> Scalar:
    return b if _zero(a) else a if _zero(b) else a + b


def _mul(a: Scalar, b: Scalar) -> Scalar:
    return 0.0 if _zero(a) or _zero(b) else a * b


def _total(terms) -> Scalar:
    total = 0.0
    for term in terms:
        total = _add(total, term)
    return total


def known_entries(problem: AbstractProblem) -> tuple | None:
    """The link's non-zero tensor entries as a hashable tuple when its tensors are known
    (not traced), to be passed as a static argument; `None` otherwise."""
    link = getattr(problem, "link", None)
    if link is None or not is_concrete(link.tensors):
        return None
    return tuple((j, tuple(_entries(t).items())) for j, t in link.tensors.items())


def _entries(tensor) -> dict[tuple[int, ...], Scalar]:
    """The non-zero entries of a tensor, by index (all of them when traced)."""
    if is_concrete(tensor):
        array = np.asarray(tensor, dtype=float)
        return {index: float(v) for index, v in np.ndenumerate(array) if v != 0.0}
    return {index: tensor[index] for index in np.ndindex(*tensor.shape)}


def _apply_each(matrix, entries: dict, degree: int, skip_first: bool) -> dict:
    """`(A^{⊗j} T)[i_1…i_j] = Σ_l A[i_1,l_1] … A[i_j,l_j] T[l_1…l_j]` (every index but
    the first if `skip_first`), on sparse entries."""
    for axis in range(1 if skip_first else 0, degree):
        out: dict = {}
        for index, value in entries.items():
            column = index[axis]
            for row in range(len(matrix)):
                factor = matrix[row][column]
                if _zero(factor):
                    continue
                key = index[:axis] + (row,) + index[axis + 1 :]
                out[key] = _add(out.get(key, 0.0), _mul(factor, value))
        entries = out
    return entries


def _matmul(a, b):
    return [[_total(_mul(a[i][m], b[m][j]) for m in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def _transpose(a):
    return [list(column) for column in zip(*a, strict=True)]


class _ScalarProblem:
    """The problem's vector field and loss as functions of `k·r` scalars (each a `(B,)`
    array for a batch, whose problem leaves then carry a leading batch axis)."""

    def __init__(self, problem: AbstractProblem, k: int, r: int, entries: tuple | None = None, batched: bool = False):
        """`entries`: the link's non-zero tensor entries known before tracing (from
        `known_entries`), so that structural zeros cost nothing; else read from `problem`."""
        self.problem, self.k, self.r, self.batched = problem, k, r, batched
        self.kind = "planted" if isinstance(problem, Planted) else "two-timescale"
        if not isinstance(problem, TwoTimescale | Planted):
            self.kind = "generic"
            return
        link = problem.link
        each = (lambda fn: jax.vmap(fn)(problem)) if batched else (lambda fn: fn(problem))
        if isinstance(problem, TwoTimescale):
            weights = each(lambda pr: pr.shrinkage())
        else:
            weights = dict.fromkeys(link.tensors, 1.0)
        known = dict(entries) if entries is not None else {}
        lead = (slice(None),) if batched else ()
        self.terms = []
        for j, tensor in link.tensors.items():
            if is_concrete(weights[j]) and np.all(np.asarray(weights[j]) == 0.0):
                continue
            if j in known:
                values = dict(known[j])
            else:
                values = {index: tensor[lead + index] for index in np.ndindex(*tensor.shape[len(lead) :])}
            weight = weights[j] if batched or not is_concrete(weights[j]) else float(weights[j])
            self.terms.append((j, weight, values))
        self.norm2 = each(lambda pr: pr.link.norm2())

    def matrix(self, y):
        return [list(y[i * self.r : (i + 1) * self.r]) for i in range(self.k)]

    def _b(self, a):
        k = self.k
        b = [[0.0] * k for _ in range(k)]
        for j, weight, entries in self.terms:
            if j == 0:
                continue
            rest = _apply_each(a, entries, j, skip_first=True)
            for (first, *tail), value in entries.items():
                for row in range(k):
                    other = rest.get((row, *tail), 0.0)
                    b[first][row] = _add(b[first][row], _mul(_mul(weight * j, value), other))
        return b

    def _correlation(self, a):
        return _total(
            _mul(weight, _total(_mul(v, applied.get(i, 0.0)) for i, v in entries.items()))
            for j, weight, entries in self.terms
            for applied in [_apply_each(a, entries, j, skip_first=False)]
        )

    def _generic(self, method: str, y: tuple):
        matrix = jnp.stack(y, axis=-1).reshape(*jnp.shape(y[0]), self.k, self.r)
        call = lambda pr, m: getattr(pr, method)(m)
        return jax.vmap(call)(self.problem, matrix) if self.batched else call(self.problem, matrix)

    def vector_field(self, y: tuple) -> tuple:
        if self.kind == "generic":
            out = self._generic("vector_field", y)
            return tuple(out[..., i, j] for i in range(self.k) for j in range(self.r))
        m = self.matrix(y)
        if self.kind == "two-timescale":
            gram = _matmul(m, _transpose(m))
            eye_minus = [
                [_add(float(i == j), -gram[i][j] if not _zero(gram[i][j]) else 0.0) for j in range(self.k)]
                for i in range(self.k)
            ]
            out = _matmul(_matmul(eye_minus, self._b(gram)), m)
        else:
            grad = [[-v if not _zero(v) else 0.0 for v in row] for row in self._b(m)]
            inner = _matmul(_transpose(m), grad)
            sym = [[_add(inner[i][j], inner[j][i]) for j in range(self.k)] for i in range(self.k)]
            correction = _matmul(m, sym)
            out = [
                [
                    _add(-grad[i][j] if not _zero(grad[i][j]) else 0.0, _mul(0.5, correction[i][j]))
                    for j in range(self.k)
                ]
                for i in range(self.k)
            ]
        return tuple(v for row in out for v in row)

    def loss(self, y: tuple) -> Scalar:
        if self.kind == "generic":
            return self._generic("loss", y)
        m = self.matrix(y)
        if self.kind == "two-timescale":
            return _mul(0.5, _add(self.norm2, -self._correlation(_matmul(m, _transpose(m)))))
        return _add(self.norm2, -self._correlation(m))


# --- unrolled linear algebra ---------------------------------------------------------


def _lu(matrix):
    """LU factorisation with partial pivoting of a small matrix of scalars, unrolled: the
    pivot search is a chain of compare-and-swap on whole rows."""
    a = [list(row) for row in matrix]
    n = len(a)
    swaps = []
    for c in range(n):
        for i in range(c + 1, n):
            flag = jnp.abs(a[i][c]) > jnp.abs(a[c][c])
            a[c], a[i] = (
                [jnp.where(flag, x, y) for x, y in zip(a[i], a[c], strict=True)],
                [jnp.where(flag, y, x) for x, y in zip(a[i], a[c], strict=True)],
            )
            swaps.append((c, i, flag))
        inverse = 1.0 / a[c][c]
        a[c][c] = inverse  # stored inverted: the solves multiply
        for i in range(c + 1, n):
            factor = a[i][c] * inverse
            a[i][c] = factor
            for j in range(c + 1, n):
                a[i][j] = a[i][j] - factor * a[c][j]
    return a, swaps


def _lu_solve(factors, b):
    a, swaps = factors
    b = list(b)
    n = len(b)
    for c, i, flag in swaps:
        b[c], b[i] = jnp.where(flag, b[i], b[c]), jnp.where(flag, b[c], b[i])
    for i in range(n):
        for c in range(i):
            b[i] = b[i] - a[i][c] * b[c]
    for i in reversed(range(n)):
        for j in range(i + 1, n):
            b[i] = b[i] - a[i][j] * b[j]
        b[i] = b[i] * a[i][i]
    return b


def _jacobian(field: Callable, y: tuple) -> list:
    """`∂f_i/∂y_j`, a column per `jvp` in which only `y_j` is an input (so the tangent
    flows through the operations that depend on it and nowhere else)."""
    n = len(y)
    columns = []
    for j in range(n):
        column = lambda yj, j=j: field((*y[:j], yj, *y[j + 1 :]))
        columns.append(jax.jvp(column, (y[j],), (jnp.ones_like(y[j]),))[1])
    return [[columns[j][i] for j in range(n)] for i in range(n)]


def _rosenbrock_step(
    method: _Method, field: Callable, y: tuple, fy: tuple, h, jacobian: list, keep: Callable = lambda v: v
):
    """One step of `method` of size `h` from `y` (`fy = f(y)`): `(y1, error estimate)`.
    `keep` is applied to each stage's right-hand side and solution (`_stored`)."""
    n = len(y)
    scale, inv_h = 1.0 / (method.gamma * h), 1.0 / h
    factors = _lu([[(scale if i == j else 0.0) - jacobian[i][j] for j in range(n)] for i in range(n)])
    ks: list = []
    stage = y
    for s, c_row in enumerate(method.c):
        if s == 0:
            rhs = fy
        else:
            if s < len(method.a):
                stage = tuple(y[i] + sum(method.a[s][j] * ks[j][i] for j in range(s)) for i in range(n))
            else:
                stage = tuple(stage[i] + ks[s - 1][i] for i in range(n))
            f_stage = field(stage)
            rhs = tuple(f_stage[i] + inv_h * sum(c_row[j] * ks[j][i] for j in range(s)) for i in range(n))
        ks.append([keep(v) for v in _lu_solve(factors, [keep(v) for v in rhs])])
    y1 = tuple(stage[i] + ks[-1][i] for i in range(n))
    return y1, tuple(ks[-1])


def _stored(one) -> Callable:
    """On a CPU, `v ↦ v / one` with `one` an exact 1 that XLA cannot see is 1; elsewhere
    the identity. XLA's CPU fusion copies cheap elementwise producers into every
    consumer, so each of a stage's `k·r` outputs recomputed the whole chain of stages
    before it (a step was ≈ 5.5× its distinct operations). A division is not copied:
    its result is stored once and read. Applied to each stage's right-hand side and
    solution, a step's fused program shrinks from 8 262 to 3 791 operations per lane
    (`Rodas5`, `h1 + h3`; `Rodas4`: 6 669 to 3 866) and a batch runs ≈ 1.5× faster
    (`benchmarks/RESULTS.md`); the divisions by 1 are exact. On a GPU each stored value
    would be one more kernel per step, so nothing is stored there."""
    if jax.default_backend() != "cpu":
        return lambda v: v
    return lambda v: v / one


def gram_eigenvalues(y: tuple, k: int, r: int) -> list:
    """Eigenvalues of the `p × p` Gram matrix of `M` (squared singular values), largest
    first; closed form for `p ≤ 2`."""
    m = [list(y[i * r : (i + 1) * r]) for i in range(k)]
    gram = _matmul(m, _transpose(m)) if k <= r else _matmul(_transpose(m), m)
    p = len(gram)
    if p == 1:
        return [gram[0][0]]
    if p == 2:
        half_trace = 0.5 * (gram[0][0] + gram[1][1])
        radius = jnp.sqrt((0.5 * (gram[0][0] - gram[1][1])) ** 2 + gram[0][1] ** 2)
        return [half_trace + radius, half_trace - radius]
    return list(jnp.linalg.eigvalsh(jnp.stack([jnp.stack(row) for row in gram]))[::-1])


# --- the integration -----------------------------------------------------------------


class _State(eqx.Module):
    """The loop state of the lanes: every field has a leading lane axis `L` (tuples hold
    one `(L,)` array per scalar). A lane integrates one trajectory (`job`) at a time."""

    job: Array  # the trajectory (index into the batch) the lane integrates; `B` when idle
    problem: object  # the array leaves of the job's problem
    rtol: Array
    atol: Array
    minimum: Array
    tolerance: Array
    t: Array
    y: tuple
    fy: tuple
    h: Array
    next_save: Array  # the index of the save time each trajectory's step heads for
    num_steps: Array
    failed: Array
    done: Array
    crossed: tuple
    cross_t0: tuple
    cross_t1: tuple
    dense: tuple  # per singular value: (y0, y1, k0, k1), each a tuple of k·r arrays
    pending: tuple  # per singular value: crossed on the last step, its (y1, k1) not yet recorded
    last_h: Array  # the size of the last accepted step
    last_error: Array  # its error norm, at least 1e-2 (the predictive controller's); 0 before the first
    forced2: Array  # the largest relative error estimate of a step forced at the time floor, squared


class _Results(eqx.Module):
    """Per trajectory (leading batch axis `B`): what a lane leaves when its job ends."""

    saves: Array  # (B, S, k·r), nan until reached; written at every save
    y: Array  # (B, k·r): the final state
    next_save: Array
    num_steps: Array
    failed: Array
    done: Array
    crossed: Array  # (B, p)
    t0: Array
    t1: Array
    dense: Array  # (B, 4, p, k·r)
    forced: Array  # squared (`_State.forced2`)


def default_lanes(batch: int) -> int:
    """How many trajectories of a batch of `batch` are integrated at once. On a CPU: all
    of them up to 256, else a sixteenth of them (at least 256): a lane whose trajectory
    ended takes the next one, so the batch does not run in lock-step to its slowest
    trajectory (≈ 1.6× the median number of steps in `benchmarks/reduced_vs_scipy.py`);
    1.25× the trajectories per second at `B = 4096` on one core. On an accelerator: all
    of them (it needs the parallelism more than it loses to the lock-step)."""
    if jax.default_backend() != "cpu":
        return batch
    return min(batch, max(256, batch // 16))


def _integrate_batch(problem, overlap0, ts, rtol, atol, *, method, max_steps, steady_state, entries, lanes=None):
    """Integrate a batch: `problem`'s leaves, `overlap0` `(B, k, r)`, `ts` `(B, S)` and
    `rtol`, `atol` `(B,)` all carry the batch axis.

    `L = lanes` trajectories (default `default_lanes(B)`) are integrated at once, each
    with its own step size and next save time, in one `while_loop` of steps. When at
    least `L / 8` lanes have finished (and trajectories are left), a `cond` writes their
    results out and loads the next trajectories into them. A trajectory's arithmetic is
    elementwise over the lanes, so its result does not depend on `L` or on its lane.
    Saves are written by a scatter that drops the rows of lanes without a save this
    step, so the `(B, S, k·r)` buffer is updated in place."""
    from ._integrate import ESCAPE_THRESHOLD, default_tolerances

    dtype = ts.dtype
    batch, k, r = overlap0.shape
    n, p = k * r, min(k, r)
    num_saves = ts.shape[1]
    num_lanes = default_lanes(batch) if lanes is None else min(lanes, batch)
    refill_at = max(1, num_lanes // 8)
    _, default_atol = default_tolerances(dtype)
    eps = float(jnp.finfo(dtype).eps)
    tiny = float(jnp.finfo(dtype).tiny)
    dynamic, static = eqx.partition(problem, eqx.is_array)

    def functions(dyn):
        scalar = _ScalarProblem(eqx.combine(dyn, static), k, r, entries, batched=True)

        def field(y):
            return tuple(jnp.broadcast_to(jnp.asarray(v, dtype), y[0].shape) for v in scalar.vector_field(y))

        def loss(y):
            return jnp.broadcast_to(jnp.asarray(scalar.loss(y), dtype), y[0].shape)

        return scalar, field, loss

    floor = lambda t: 8 * eps * jnp.maximum(jnp.abs(t), 1.0)
    threshold2 = ESCAPE_THRESHOLD**2
    start_finite = jnp.isfinite(overlap0).all(axis=(1, 2))
    start = jnp.where(start_finite[:, None, None], overlap0, 0.0).reshape(batch, n)
    pick = lambda flag, new, old: tuple(jnp.where(flag, a, b) for a, b in zip(new, old, strict=True))

    def fresh(job) -> _State:
        """Lanes starting trajectories `job` (`B`: idle, holding trajectory `B − 1`)."""
        row = jnp.minimum(job, batch - 1)
        dyn = jax.tree.map(lambda leaf: leaf[row], dynamic)
        lane_problem = eqx.combine(dyn, static)
        _, field, _ = functions(dyn)
        y0 = tuple(start[row, i] for i in range(n))
        zeros = tuple(jnp.zeros(len(job), dtype) for _ in range(n))
        t0 = ts[row, 0]
        norm2 = jax.vmap(lambda pr: pr.link.norm2())(lane_problem)
        return _State(
            job=job,
            problem=dyn,
            rtol=rtol[row],
            atol=atol[row],
            minimum=jax.vmap(lambda pr: pr.minimum())(lane_problem),
            tolerance=default_atol + 16 * eps * jnp.maximum(norm2, 1.0),
            t=t0,
            y=y0,
            fy=field(y0),
            h=ts[row, 1] - t0,
            next_save=jnp.ones(len(job), int),
            num_steps=jnp.zeros(len(job), int),
            failed=~start_finite[row],
            done=jnp.zeros(len(job), bool),
            crossed=tuple(e >= threshold2 for e in gram_eigenvalues(y0, k, r)),
            cross_t0=(t0,) * p,
            cross_t1=(t0,) * p,
            dense=((zeros,) * 4,) * p,
            pending=(jnp.zeros(len(job), bool),) * p,
            last_h=jnp.zeros(len(job), dtype),
            last_error=jnp.zeros(len(job), dtype),
            forced2=jnp.zeros(len(job), dtype),
        )

    def record_ends(s: _State) -> tuple:
        """`dense` with the end point `(y1, k1)` of each crossing step of the last
        iteration filled in. It is the state after the step, so it is recorded from the
        loop's state one iteration later: selecting `y1`, `f1` inside the step would make
        XLA recompute the whole step in every select it fuses them into (≈ 20% of a step)."""
        y1, k1 = s.y, tuple(s.last_h * v for v in s.fy)
        return tuple(
            (y0, pick(flag, y1, old_y1), k0, pick(flag, k1, old_k1))
            for flag, (y0, old_y1, k0, old_k1) in zip(s.pending, s.dense, strict=True)
        )

    def running(s: _State):
        return (s.job < batch) & (s.next_save < num_saves) & ~s.done & ~s.failed & (s.num_steps < max_steps)

    def flush(s: _State, out: _Results, lanes_done) -> _Results:
        """Write the results of the lanes `lanes_done` (those with a job) out."""
        row = jnp.where(lanes_done, s.job, batch)  # out of bounds: dropped
        dense = record_ends(s)
        values = dict(
            y=jnp.stack(s.y, axis=-1),
            next_save=s.next_save,
            num_steps=s.num_steps,
            failed=s.failed,
            done=s.done,
            crossed=jnp.stack(s.crossed, axis=-1),
            t0=jnp.stack(s.cross_t0, axis=-1),
            t1=jnp.stack(s.cross_t1, axis=-1),
            dense=jnp.stack([jnp.stack([jnp.stack(dense[i][j], axis=-1) for i in range(p)], 1) for j in range(4)], 1),
            forced=s.forced2,
        )
        return eqx.tree_at(
            lambda o: [getattr(o, name) for name in values],
            out,
            [getattr(out, name).at[row].set(value, mode="drop") for name, value in values.items()],
        )

    def refill(s: _State, out: _Results, next_job):
        """Write out the finished lanes and load the next trajectories into them."""
        idle = ~running(s)
        out = flush(s, out, idle)
        job = next_job + jnp.cumsum(idle) - 1
        job = jnp.where(idle, jnp.where(job < batch, job, batch), s.job)
        new = fresh(job)
        s = jax.tree.map(lambda a, b: jnp.where(idle.reshape(-1, *([1] * (a.ndim - 1))), a, b), new, s)
        return s, out, jnp.minimum(next_job + jnp.sum(idle), batch)

    def attempt(s: _State, out: _Results) -> tuple[_State, _Results]:
        _, field, loss = functions(s.problem)
        active = running(s)
        row = jnp.minimum(s.job, batch - 1)
        target = ts[row, jnp.minimum(s.next_save, num_saves - 1)]
        remaining = target - s.t
        clipped = s.h >= remaining
        h = jnp.where(active, jnp.where(clipped, remaining, s.h), 1.0)
        # an exact 1 per lane that XLA cannot fold (the step count is never negative)
        one = (s.num_steps >= 0).astype(dtype)
        y1, error = _rosenbrock_step(method, field, s.y, s.fy, h, _jacobian(field, s.y), _stored(one))
        f1 = field(y1)
        scaled = [
            e / (s.atol + s.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))) for e, a, b in zip(error, s.y, y1, strict=True)
        ]
        norm = jnp.sqrt(sum(v * v for v in scaled) / n)
        finite = jnp.isfinite(norm)
        for v in (*y1, *f1):
            finite = finite & jnp.isfinite(v)
        at_floor = h <= 1.5 * floor(s.t)
        accept = active & finite & ((norm <= 1.0) | at_floor)
        forced = accept & (norm > 1.0)
        # squared, relative to the state's size (the square root is taken once, at the end)
        size2 = jnp.maximum(sum(v * v for v in s.y), sum(v * v for v in y1))
        forced_error2 = sum(e * e for e in error) / jnp.maximum(size2, tiny)
        # `Rodas4`'s ¼ as two square roots, as before `Rodas5`: cheaper than a power, and
        # its arithmetic unchanged
        power = (lambda v: jnp.sqrt(jnp.sqrt(v))) if method.exponent == 0.25 else (lambda v: v**method.exponent)
        factor = jnp.where(finite, jnp.clip(power(norm) / 0.9, 1 / 6, 5.0), 5.0)
        if method.predictive:
            # Gustafsson (`rodas.f`): after an accepted step, no larger than the sizes and
            # errors of the last two accepted steps predict (a shrinking step size, as when
            # a direction escapes, is followed instead of overshot and rejected)
            ratio = s.last_h / h * power(norm * norm / jnp.where(s.last_error > 0, s.last_error, 1.0))
            predicted = jnp.clip(ratio / 0.9, 1 / 6, 5.0)
            factor = jnp.where(accept & finite & (s.last_error > 0), jnp.maximum(factor, predicted), factor)
        proposal = h / factor
        proposal = jnp.where(accept, jnp.where(clipped, jnp.maximum(proposal, s.h), proposal), jnp.minimum(proposal, h))
        saved = accept & clipped
        t = jnp.where(accept, jnp.where(clipped, target, s.t + h), s.t)
        y, fy = pick(accept, y1, s.y), pick(accept, f1, s.fy)
        # lanes without a save this step point out of bounds and are dropped
        index = jnp.where(saved, s.next_save, num_saves)
        saves = out.saves.at[s.job, index].set(jnp.stack(y, axis=-1), mode="drop")
        eigenvalues = gram_eigenvalues(y1, k, r)
        new = [accept & ~c & (e >= threshold2) for c, e in zip(s.crossed, eigenvalues, strict=True)]
        y0, k0 = s.y, tuple(h * v for v in s.fy)
        dense = tuple(
            (pick(flag, y0, old_y0), y1_, pick(flag, k0, old_k0), k1_)
            for flag, (old_y0, y1_, old_k0, k1_) in zip(new, record_ends(s), strict=True)
        )
        converged = steady_state & accept & (jnp.abs(loss(y1) - s.minimum) <= s.tolerance)
        s = eqx.tree_at(
            lambda s: (
                (s.t, s.y, s.fy, s.h, s.next_save, s.num_steps, s.failed, s.done)
                + (s.crossed, s.cross_t0, s.cross_t1, s.dense, s.pending, s.last_h, s.last_error, s.forced2)
            ),
            s,
            (
                t,
                y,
                fy,
                jnp.where(active, jnp.maximum(proposal, floor(t)), s.h),
                s.next_save + saved,
                s.num_steps + active,
                s.failed | (active & ~finite & at_floor),
                s.done | converged,
                tuple(c | f for c, f in zip(s.crossed, new, strict=True)),
                tuple(jnp.where(f, s.t, v) for f, v in zip(new, s.cross_t0, strict=True)),
                tuple(jnp.where(f, t, v) for f, v in zip(new, s.cross_t1, strict=True)),
                dense,
                tuple(new),
                jnp.where(accept, h, s.last_h),
                jnp.where(accept, jnp.maximum(norm, 1e-2), s.last_error),
                jnp.where(forced, jnp.maximum(s.forced2, forced_error2), s.forced2),
            ),
        )
        return s, eqx.tree_at(lambda o: o.saves, out, saves)

    def body(carry):
        s, out, next_job = carry
        s, out = attempt(s, out)
        if num_lanes == batch:  # every trajectory has its lane: no refill (and no `cond`)
            return s, out, next_job
        more = (next_job < batch) & (jnp.sum(~running(s)) >= refill_at)
        return jax.lax.cond(more, refill, lambda *c: c, s, out, next_job)

    out = _Results(
        saves=jnp.full((batch, num_saves, n), jnp.nan, dtype).at[:, 0].set(start),
        y=jnp.zeros((batch, n), dtype),
        next_save=jnp.zeros(batch, int),
        num_steps=jnp.zeros(batch, int),
        failed=jnp.zeros(batch, bool),
        done=jnp.zeros(batch, bool),
        crossed=jnp.zeros((batch, p), bool),
        t0=jnp.zeros((batch, p), dtype),
        t1=jnp.zeros((batch, p), dtype),
        dense=jnp.zeros((batch, 4, p, n), dtype),
        forced=jnp.zeros(batch, dtype),
    )
    state = fresh(jnp.arange(num_lanes))
    carry = jax.lax.while_loop(
        lambda c: jnp.any(running(c[0])) | (c[2] < batch), body, (state, out, jnp.asarray(num_lanes))
    )
    state, out, _ = carry
    out = flush(state, out, state.job < batch)
    # after a steady-state stop, the saves past it hold the final state
    rest = out.done[:, None] & (jnp.arange(num_saves)[None, :] >= out.next_save[:, None])
    saves = jnp.where(rest[..., None], out.y[:, None, :], out.saves)
    scalar, _, loss = functions(dynamic)
    losses = loss(tuple(saves[..., i].T for i in range(n))).T if scalar.kind != "generic" else None
    return {
        "saves": jnp.where(start_finite[:, None, None], saves, jnp.nan),
        "losses": losses,
        "num_steps": out.num_steps,
        "failed": out.failed & start_finite,
        "reached": (out.next_save >= num_saves) | out.done,
        "start_finite": start_finite,
        "crossed": out.crossed & start_finite[:, None],
        "t0": out.t0,
        "t1": out.t1,
        "dense": out.dense,
        "forced": jnp.sqrt(out.forced),
    }


@eqx.filter_jit
def solve_rosenbrock(
    problem: AbstractProblem,
    overlap0,
    ts,
    solver: AbstractRosenbrock,
    max_steps: int,
    steady_state: bool,
    entries: tuple | None,
):
    """`simulate_reduced` with `Rodas4` or `Rodas5`: the same `Trajectory`, from unrolled scalar
    code (see the module docstring). Under `jax.vmap` the batch is integrated by
    `_integrate_batch` directly (a `custom_vmap` rule), not by batching a one-trajectory
    loop; a single trajectory is a batch of one."""
    from ._integrate import ESCAPE_THRESHOLD, FORCED_ERROR_LIMIT, CrossingSteps, Status, Trajectory, default_tolerances

    dtype = ts.dtype
    k, r = overlap0.shape
    default_rtol, default_atol = default_tolerances(dtype)
    rtol = jnp.asarray(default_rtol if solver.rtol is None else solver.rtol, dtype)
    atol = jnp.asarray(default_atol if solver.atol is None else solver.atol, dtype)
    dynamic, static = eqx.partition(problem, eqx.is_array)
    options = dict(
        method=solver.method, max_steps=max_steps, steady_state=steady_state, entries=entries, lanes=solver.lanes
    )

    def batch_of(size, batched, *args):
        # A batch of one runs as a batch of two: XLA compiles a size-1 axis away, and the
        # code it makes then rounds differently, so a lone run would not be bitwise equal
        # to its row of a batch.
        run = max(size, 2)

        def widen(leaf, b):
            return leaf if b and size == run else jnp.broadcast_to(leaf[0] if b else leaf, (run, *jnp.shape(leaf)[b:]))

        args = [jax.tree.map(widen, arg, flags) for arg, flags in zip(args, batched, strict=True)]
        dyn, overlap, times, rt, at = args
        out = _integrate_batch(eqx.combine(dyn, static), overlap, times, rt, at, **options)
        return jax.tree.map(lambda leaf: leaf[:size], out)

    @jax.custom_batching.custom_vmap
    def integrate(dyn, overlap, times, rt, at):
        flags = [jax.tree.map(lambda _: False, arg) for arg in (dyn, overlap, times, rt, at)]
        return jax.tree.map(lambda leaf: leaf[0], batch_of(1, flags, dyn, overlap, times, rt, at))

    @integrate.def_vmap
    def _(axis_size, in_batched, *args):
        out = batch_of(axis_size, in_batched, *args)
        return out, jax.tree.map(lambda _: True, out)

    raw = integrate(dynamic, overlap0, ts, rtol, atol)
    overlap = raw["saves"].reshape(-1, k, r)
    losses = raw["losses"]
    if losses is None:  # a problem without a scalar form: its own loss on the saves
        losses = jax.vmap(problem.loss)(jnp.nan_to_num(overlap))
    saved = jnp.isfinite(overlap).all(axis=(-1, -2))
    losses = jnp.where(saved, losses, jnp.nan)
    status = jnp.where(
        ~raw["start_finite"] | (raw["reached"] & ~saved.all()),
        Status.NON_FINITE,
        jnp.where(
            raw["failed"],
            Status.STEP_SIZE_COLLAPSED,
            jnp.where(
                raw["reached"],
                jnp.where(raw["forced"] > FORCED_ERROR_LIMIT, Status.TIME_UNRESOLVED, Status.SUCCESS),
                Status.MAX_STEPS,
            ),
        ),
    )
    dense = dict(zip(("y0", "y1", "k0", "k1"), raw["dense"].reshape(4, -1, k, r), strict=True))
    crossings = CrossingSteps(
        crossed=raw["crossed"],
        t0=raw["t0"],
        t1=raw["t1"],
        dense_info=dense,
        threshold=ESCAPE_THRESHOLD,
        interpolation_cls=diffrax.ThirdOrderHermitePolynomialInterpolation,
    )
    return Trajectory(
        ts=ts,
        overlap=overlap,
        loss=losses,
        singular_values=_singular_values(overlap),
        status=status,
        num_steps=raw["num_steps"],
        problem=problem,
        crossings=crossings,
        forced_error=raw["forced"],
    )


def _singular_values(overlap: Float[Array, "n k r"]) -> Float[Array, "n p"]:
    """Singular values of `M`, largest first: closed forms for `p = 1` and `2 × 2` (a
    batched LAPACK SVD of `B·n` tiny matrices costs more than the integration), else SVD."""
    k, r = overlap.shape[-2:]
    if min(k, r) == 1:
        return jnp.sqrt(jnp.sum(overlap**2, axis=(-2, -1)))[..., None]
    if k == r == 2:
        a, b, c, d = overlap[..., 0, 0], overlap[..., 0, 1], overlap[..., 1, 0], overlap[..., 1, 1]
        # σ1 + σ2 = |(a + d, c − b)|, σ1 − σ2 = |(a − d, b + c)|
        total, difference = jnp.hypot(a + d, c - b), jnp.hypot(a - d, b + c)
        return jnp.stack([0.5 * (total + difference), 0.5 * jnp.abs(total - difference)], axis=-1)
    return principal_cosines(overlap)
