"""Experiments: one point of a sweep (a seed, a dimension, hyperparameters) → a `Trajectory`.

An experiment is an equinox module whose arrays (the link, the key, `t1`, default
hyperparameters) are leaves and whose sizes are static, so `jax.vmap(experiment)`
over a dict of per-point values runs a whole grid in one compiled program and
`jax.grad` differentiates an outcome with respect to any swept value.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from ._checks import check_int, check_key, check_range, is_concrete
from ._fast import AbstractRosenbrock
from ._fits import AbstractFit, HermiteFeatures, KernelRidge, Mehler
from ._flows import Dataset, PlantedFlow, Population, Target, TwoTimescaleFlow
from ._integrate import (
    Trajectory,
    _non_finite_unless,
    check_time_grid,
    default_controller,
    default_tolerances,
    save_times,
    simulate_reduced,
)
from ._link import Link
from ._manifold import RetractedSolver, simulate
from ._overlap import sample_overlap
from ._reduced import ProblemName, make_problem
from ._stiefel import _qr_positive

Point = Mapping[str, Array | Link]
Axes = Mapping[str, ArrayLike | Sequence[Link]]
Rule = tuple[str, Callable, str]


def _check_link_axis(values: object) -> list[Link]:
    links = [values] if isinstance(values, Link) else list(values)  # type: ignore[call-overload]
    if not links:
        raise ValueError("sweep axis 'link' is empty")
    for i, link in enumerate(links):
        if not isinstance(link, Link):
            raise ValueError(f"sweep axis 'link' must hold mimflow.Link objects, got {type(link).__name__} at {i}")
    dims = sorted({link.dim for link in links})
    if len(dims) != 1:
        raise ValueError(f"sweep axis 'link' must hold links of one dimension k, got dimensions {dims}")
    degrees = sorted({j for link in links for j in link.tensors})
    return [link.with_degrees(degrees) for link in links]


def check_grid(axes: Axes) -> dict[str, np.ndarray | list[Link]]:
    """Each axis a non-empty 1-D list of finite values (or of `Link`s for `"link"`; seeds
    integers in `[0, 2³²)`)."""
    if not isinstance(axes, Mapping) or not axes:
        raise ValueError(f"`axes` must be a non-empty dict of axis name → values, got {axes!r}")
    checked: dict[str, np.ndarray | list[Link]] = {}
    for name, values in axes.items():
        if name == "link":
            checked[name] = _check_link_axis(values)
            continue
        try:
            array = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"sweep axis {name!r} must hold numbers, got {values!r}") from None
        if array.ndim != 1:
            raise ValueError(f"sweep axis {name!r} must be 1-D, got shape {array.shape}")
        if array.size == 0:
            raise ValueError(f"sweep axis {name!r} is empty")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"sweep axis {name!r} has non-finite value {array[~np.isfinite(array)][0]}")
        bad = (array < 0) | (array >= 2**32) | (array != np.round(array))
        if name == "seed" and bad.any():
            raise ValueError(f"sweep axis 'seed' must hold integers in [0, 2³²), got {array[bad][0]:g}")
        checked[name] = array
    return checked


class AbstractExperiment(eqx.Module):
    """One simulation per grid point: `experiment(point)` maps a dict of per-point values
    (keys among `axes`, each a scalar, or a `Link` under `"link"`) to a `Trajectory`.
    Values missing from `point` take the experiment's defaults.

    `seed` selects the randomness: the point's key is `jax.random.fold_in(key, seed)`,
    the same at every `d` and every hyperparameter (common random numbers), so the
    result at a point does not depend on the rest of the grid.

    A concrete point outside the domain `sweep` accepts raises a `ValueError` naming the
    value (`check_point`); a traced one (under `jax.vmap`, `jit`) cannot raise: its run
    ends `Status.NON_FINITE` with `nan` saves (`in_domain`), and the other points of the
    batch are unaffected.
    """

    link: eqx.AbstractVar[Link]
    key: eqx.AbstractVar[PRNGKeyArray]
    t1: eqx.AbstractVar[Float[Array, ""]]
    d: eqx.AbstractVar[Float[Array, ""] | None]
    r: eqx.AbstractVar[int]
    num_saves: eqx.AbstractVar[int]
    t_min: eqx.AbstractVar[float]

    axes: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, point: Point) -> Trajectory:
        raise NotImplementedError

    def _domain_rules(self) -> list[Rule]:
        """The domain of the swept values: `(axis, bad, requirement)` per rule, `bad` a
        predicate on an array of the axis's values (NumPy or JAX). `check_axes` raises on
        concrete values where it holds; `in_domain` tests traced ones."""
        k = self.link.dim
        return [
            ("d", lambda d: d < k + self.r, f"has a value below k + r = {k + self.r}"),
            ("ridge", lambda v: v < 0, "has a value < 0"),
            ("noise", lambda v: v < 0, "has a value < 0"),
            ("rho", lambda v: (v <= 0) | (v > 1), "has a value outside (0, 1]"),
            ("rtol", lambda v: v <= 0, "has a value ≤ 0"),
            ("atol", lambda v: v <= 0, "has a value ≤ 0"),
        ]

    def _defaults(self) -> dict[str, ArrayLike | None]:
        """The experiment's values of the axes not swept (`None`: not set), for `_point_values`."""
        return {}

    def _point_values(self, point: Point) -> dict[str, ArrayLike]:
        """The numbers a run of `point` uses (`seed` and the swept values, or the
        experiment's defaults of those not in `point`; not the link), for `in_domain`."""
        defaults = {name: value for name, value in self._defaults().items() if value is not None}
        return {**defaults, **{name: value for name, value in point.items() if name != "link"}}

    def in_domain(self, point: Point) -> Bool[Array, ""] | None:
        """Whether a point's values (`_point_values`) lie in the domain `check_grid` and
        `check_axes` ask of concrete ones: finite, `seed` an integer in `[0, 2³²)`, no
        rule of `_domain_rules` broken. `None` when they are all concrete (`check_point`
        checked them). Under `jax.vmap` (traced values) a point outside it cannot raise:
        its run ends `Status.NON_FINITE` with `nan` saves. A few scalar operations per point."""
        values = self._point_values(point)
        if is_concrete(values):
            return None
        values = {name: jnp.asarray(value, dtype=float) for name, value in values.items()}
        inside = jnp.asarray(True)
        for value in values.values():
            inside = inside & jnp.isfinite(value)
        if "seed" in values:
            seed = values["seed"]
            inside = inside & (seed >= 0) & (seed < 2.0**32) & (seed % 1 == 0)
        for name, bad, _ in self._domain_rules():
            if name in values:
                inside = inside & ~bad(values[name])
        return inside

    def _stand_in_values(self) -> dict[str, float]:
        """Values in the domain of each axis, for `_stand_in`."""
        rtol, atol = default_tolerances(jnp.result_type(float))
        return {"seed": 0, "ridge": 1.0, "rho": 0.5, "noise": 0.0, "rtol": rtol, "atol": atol}

    def _stand_in(
        self, point: Point, inside: Bool[Array, ""], names: Sequence[str] | None = None
    ) -> dict[str, Array | Link]:
        """`point` with its values (`_point_values`: its own and the experiment's defaults;
        only those of `names` if given) replaced by ones in the domain (`_stand_in_values`)
        where `inside` is false, for a run then reported `Status.NON_FINITE`."""
        stand_ins = self._stand_in_values()
        replaced = dict(point)
        for name, value in self._point_values(point).items():
            if names is not None and name not in names:
                continue
            if name in point or not is_concrete(value):  # concrete defaults were checked in `__init__`
                # a seed keeps its type (`uint32` from `grid_points`: float32 rounds seeds above 2²⁴)
                value = value if name == "seed" else jnp.asarray(value, dtype=float)
                replaced[name] = jnp.where(inside, value, stand_ins[name])
        return replaced

    def save_times(self) -> Float[Array, " n"]:
        """The save grid shared by every point."""
        return save_times(self.t1, self.num_saves, self.t_min)

    def check_point(self, point: Point) -> None:
        """Raise a `ValueError` naming the value unless `point` is a dict and, when its
        values are concrete, one that `grid_points` and `sweep` would accept as a grid of
        one point (`check_grid`, `check_axes`). Traced values (under `jax.vmap` over
        `grid_points`, in a sweep) are not checked here: a run outside the domain ends
        `Status.NON_FINITE` instead (`in_domain`)."""
        if not isinstance(point, Mapping):
            raise ValueError(f"`point` must be a dict of axis name → value, got {type(point).__name__}")
        if not is_concrete(point):
            return
        for name, value in point.items():
            if name != "link" and np.ndim(value) != 0:
                raise ValueError(f"`point` value {name!r} must be a scalar, got shape {np.shape(value)}")
        try:
            self.check_axes(check_grid({name: [value] for name, value in point.items()}) if point else {})
        except ValueError as error:
            raise ValueError(f"`point`: {error}") from None

    def check_axes(self, axes: Mapping[str, np.ndarray | list[Link]]) -> None:
        """Raise a `ValueError` naming the axis and value for an axis this experiment does
        not sweep or a value outside its domain (values are already 1-D and finite, and
        seeds integers in `[0, 2³²)`, as `grid_points` and `sweep` check)."""
        for name in axes:
            if name not in self.axes:
                raise ValueError(f"{type(self).__name__} has no sweep axis {name!r}; its axes are {sorted(self.axes)}")
        for link in axes.get("link", []):
            if link.dim != self.link.dim:
                raise ValueError(
                    f"sweep axis 'link' holds a link on k={link.dim}, but the experiment has k={self.link.dim}"
                )
        if "d" not in axes and self.d is None:
            raise ValueError(f"{type(self).__name__} needs a dimension: a sweep axis 'd' or the field `d`")
        for name, bad, requirement in self._domain_rules():
            _reject(axes, name, bad, requirement)

    def working_bytes(self) -> int:
        """An estimate of the memory one point needs while it runs (bytes)."""
        raise NotImplementedError

    def _key(self, point: Point) -> PRNGKeyArray:
        return jax.random.fold_in(self.key, jnp.asarray(point.get("seed", 0), jnp.uint32))


def _reject(axes: Mapping[str, np.ndarray | list[Link]], name: str, bad, requirement: str) -> None:
    """Raise a `ValueError` naming axis `name` and its first value where `bad` holds."""
    if name in axes:
        values = np.asarray(axes[name])
        flagged = values[bad(values)]
        if flagged.size:
            raise ValueError(f"sweep axis {name!r} {requirement}, got {flagged[0]:g}")


def _check_common(
    link: Link, key: PRNGKeyArray, r: int | None, t1: float, t_min: float, num_saves: int, max_steps: int
) -> tuple[int, int]:
    """Check the arguments every experiment takes; return `r` (default `k`) and
    `max_steps` as `int`s."""
    if not isinstance(link, Link):
        raise ValueError(f"`link` must be a mimflow.Link, got {type(link).__name__}")
    check_key("key", key)
    r = link.dim if r is None else check_int("r", r, 1)
    return r, check_time_grid(t1, t_min, num_saves, max_steps)


class ReducedExperiment(AbstractExperiment):
    """The reduced dynamics of `M` (`simulate_reduced`) from the exact law of a Haar
    start at dimension `d` (`sample_overlap`), so `d` is just a number and may be swept.

    **Axes:** `seed`, `d`, `link` (links of one structure), and for the two-timescale
    problem `ridge`, `rho`; `rtol`, `atol` (the step controller's tolerances).
    Fields give the defaults of axes not swept; `rtol`, `atol` default to
    `default_tolerances`, `solver` to `simulate_reduced`'s (Kvaerno5); `Rodas5()` (or
    `Rodas4()`) runs large batches several times faster (not reverse-mode differentiable).
    A traced point (or `t1`) outside the domain ends `Status.NON_FINITE`: its run starts
    from `nan` (with the default tolerances, so that it ends within a few steps).

    **Arguments** (besides the axes' defaults `d`, `ridge`, `rho`, `rtol`, `atol`):
    - `link`, `key`, `t1`: the target, the key every point's seed is folded into, the
      final time.
    - `r`: the student's number of directions (default `k`); `problem`:
      `"two-timescale"` (default) or `"planted"`.
    - `num_saves` (128), `t_min` (1e-2), `max_steps` (16 384), `solver`: as in
      `simulate_reduced`.

    **Example:**
    ```python
    experiment = ReducedExperiment(links.staircase(2), jax.random.key(0), t1=1e4)
    trajectory = experiment({"seed": 3, "d": 1e3})
    ```
    """

    link: Link
    key: PRNGKeyArray
    t1: Float[Array, ""]
    d: Float[Array, ""] | None
    ridge: Float[Array, ""]
    rho: Float[Array, ""]
    rtol: Float[Array, ""] | None
    atol: Float[Array, ""] | None
    solver: diffrax.AbstractSolver | None
    r: int = eqx.field(static=True)
    problem: ProblemName = eqx.field(static=True)
    num_saves: int = eqx.field(static=True)
    t_min: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    axes: ClassVar[frozenset[str]] = frozenset({"seed", "d", "link", "ridge", "rho", "rtol", "atol"})

    def __init__(
        self,
        link: Link,
        key: PRNGKeyArray,
        t1: float,
        *,
        r: int | None = None,
        d: float | None = None,
        problem: ProblemName = "two-timescale",
        ridge: float = 0.0,
        rho: float = 1.0,
        solver: diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        num_saves: int = 128,
        t_min: float = 1e-2,
        max_steps: int = 16384,
    ):
        r, max_steps = _check_common(link, key, r, t1, t_min, num_saves, max_steps)
        make_problem(link, problem, ridge=ridge, rho=rho)  # checks problem, ridge, rho
        self.solver, self.rtol, self.atol = _controls(solver, rtol, atol)
        if problem == "planted" and r != link.dim:
            raise ValueError(f"the planted problem needs r = k = {link.dim}, got r={r}")
        self.link, self.key, self.r, self.problem = link, key, r, problem
        self.t1 = jnp.asarray(t1, dtype=float)
        if d is not None:
            check_range("d", d, low=link.dim + r)
        self.d = None if d is None else jnp.asarray(d, dtype=float)
        self.ridge, self.rho = jnp.asarray(ridge, dtype=float), jnp.asarray(rho, dtype=float)
        self.num_saves, self.t_min, self.max_steps = num_saves, float(t_min), max_steps

    def check_axes(self, axes):
        if self.problem == "planted":
            for name in ("ridge", "rho"):
                if name in axes:
                    raise ValueError(f"sweep axis {name!r} is for the two-timescale problem, not 'planted'")
        super().check_axes(axes)

    def _defaults(self):
        return {"d": self.d, "ridge": self.ridge, "rho": self.rho, "rtol": self.rtol, "atol": self.atol}

    def __call__(self, point: Point) -> Trajectory:
        self.check_point(point)
        link = point.get("link", self.link)
        d = point.get("d", self.d)
        overlap0 = sample_overlap(self._key(point), d, link.dim, self.r)
        inside = self.in_domain(point)
        if inside is not None:  # traced values outside their domain: a `nan` start, `Status.NON_FINITE`
            overlap0 = jnp.where(inside, overlap0, jnp.nan)
            # the default solver still steps from a `nan` start (on a finite stand-in): with a
            # tolerance it cannot meet (`atol = 0` on the stand-in `0`) it took all `max_steps`
            point = self._stand_in(point, inside, ("rtol", "atol"))
        if self.problem == "planted":
            problem = make_problem(link, "planted")
        else:
            problem = make_problem(link, ridge=point.get("ridge", self.ridge), rho=point.get("rho", self.rho))
        rtol, atol = point.get("rtol", self.rtol), point.get("atol", self.atol)
        if isinstance(self.solver, AbstractRosenbrock):  # it controls its own steps
            rtol = self.solver.rtol if rtol is None else rtol
            atol = self.solver.atol if atol is None else atol
            solver = type(self.solver)(rtol, atol, self.solver.lanes)
            controller = None
        else:
            solver, controller = self.solver, default_controller(self.save_times(), rtol, atol)
        return simulate_reduced(
            problem,
            overlap0,
            self.t1,
            num_saves=self.num_saves,
            t_min=self.t_min,
            solver=solver,
            stepsize_controller=controller,
            max_steps=self.max_steps,
        )

    def working_bytes(self) -> int:
        state = self.link.dim * self.r * 8
        return 64 * state + 4 * self.num_saves * state


class PaddedNorm(eqx.Module):
    """The RMS norm of the `d × r` state stored in `d_max × r` arrays whose extra rows are
    zero: `rms_norm(y) · √(d_max / d)`, so step control is that of the unpadded run."""

    size: Float[Array, ""]
    padded_size: int = eqx.field(static=True)

    def __call__(self, y):
        return optx.rms_norm(y) * jnp.sqrt(self.padded_size / self.size)


def padded_normal(
    key: PRNGKeyArray, d: Float[ArrayLike, ""], d_max: int, shape: tuple[int, ...]
) -> Float[Array, "d_max ..."]:
    """`(d_max, *shape)` standard normals whose row `i` is drawn from `fold_in(key, i)`
    and set to zero for `i ≥ d` (`0 ≤ d ≤ d_max`, may be traced): the first `d` rows do
    not depend on `d_max`, so a padded draw restricted to `d` rows equals the unpadded one."""
    check_key("key", key)
    d_max = check_int("d_max", d_max, 1)
    if not isinstance(shape, tuple):
        raise ValueError(f"`shape` must be a tuple of integers ≥ 0, got {shape!r}")
    shape = tuple(check_int("shape", n, 0) for n in shape)
    check_range("d", d, low=0.0, high=d_max)
    rows = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape))(jnp.arange(d_max))
    inside = (jnp.arange(d_max) < d).reshape((d_max,) + (1,) * len(shape))
    return jnp.where(inside, rows, 0.0)


class FlowExperiment(AbstractExperiment):
    """A d-dimensional flow of `W ∈ St(d, r)` (`simulate`), stored padded to `d_max`
    rows so that `d` can be swept in one compiled call: every array of dimension `d`
    (`W*`, `W0`, the data `X`) has zero rows (columns of `X`) beyond `d`, and the
    step controller measures the unpadded state (`PaddedNorm`), so a padded run equals
    the unpadded one to rounding.

    Per point and seed: `W*` and `W0` Haar (Q factors of Gaussian matrices), `n`
    samples `x ~ N(0, I_d)` with labels `f*(W*ᵀx) + σε` (`n=None`: the population).

    **Axes:** `seed`, `d` (integers ≤ `d_max`), `link`, `ridge` and `rho` (the fit's:
    `KernelRidge(Mehler(ρ), μ)` or `HermiteFeatures(D, μ, ρ)`; `ridge` for any fit),
    `noise` (finite data), `rtol`, `atol` (default `default_tolerances`; the solver
    defaults to Tsit5, retracted after each step). A traced point (or `t1`) outside the
    domain (say `d > d_max` or fractional) ends `Status.NON_FINITE` with `nan` saves: it
    runs on stand-in values in the domain (`_stand_in`), at the cost of one point.

    **Arguments** (besides the axes' defaults `d`, `noise`, `rtol`, `atol`):
    - `link`, `key`, `t1`: the target, the key every point's seed is folded into, the
      final time; `d_max`: the padded dimension (`≥ k + r`).
    - `r`: the student's number of directions (default `k`); `n`: samples per seed
      (default `None`, the population); `fit`: the fast timescale's fit (`None`: the
      exact conditional expectation, population only); `problem`: `"two-timescale"`
      (default) or `"planted"`.
    - `num_saves` (64), `t_min` (1e-2), `max_steps` (16 384), `solver`: as in `simulate`.

    **Example:**
    ```python
    experiment = FlowExperiment(links.hermite(2), key, t1=50.0, d_max=64, n=2000,
                                fit=KernelRidge(Mehler(0.5), 1e-3), noise=0.1)
    trajectory = experiment({"seed": 0, "d": 32, "ridge": 1e-2})
    ```
    """

    link: Link
    key: PRNGKeyArray
    t1: Float[Array, ""]
    d: Float[Array, ""] | None
    fit: AbstractFit | None
    noise: Float[Array, ""]
    solver: diffrax.AbstractSolver
    rtol: Float[Array, ""] | None
    atol: Float[Array, ""] | None
    d_max: int = eqx.field(static=True)
    r: int = eqx.field(static=True)
    n: int | None = eqx.field(static=True)
    problem: ProblemName = eqx.field(static=True)
    num_saves: int = eqx.field(static=True)
    t_min: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    axes: ClassVar[frozenset[str]] = frozenset({"seed", "d", "link", "ridge", "rho", "noise", "rtol", "atol"})

    def __init__(
        self,
        link: Link,
        key: PRNGKeyArray,
        t1: float,
        *,
        d_max: int,
        r: int | None = None,
        d: int | None = None,
        n: int | None = None,
        fit: AbstractFit | None = None,
        noise: float = 0.0,
        problem: ProblemName = "two-timescale",
        solver: diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        num_saves: int = 64,
        t_min: float = 1e-2,
        max_steps: int = 16384,
    ):
        r, max_steps = _check_common(link, key, r, t1, t_min, num_saves, max_steps)
        d_max = check_int("d_max", d_max, link.dim + r)
        n = None if n is None else check_int("n", n, 1)
        if problem not in ("two-timescale", "planted"):
            raise ValueError(f"`problem` must be 'two-timescale' or 'planted', got {problem!r}")
        if problem == "planted" and (fit is not None or r != link.dim):
            raise ValueError(f"the planted flow has no fit and needs r = k = {link.dim}, got fit={fit!r}, r={r}")
        if problem == "two-timescale" and n is not None and fit is None:
            raise ValueError("finite data (`n`) needs a `fit` (KernelRidge, RandomFeatures, HermiteFeatures), got None")
        if fit is not None and not isinstance(fit, AbstractFit):
            raise ValueError(f"`fit` must be a mimflow fit or None, got {type(fit).__name__}")
        if isinstance(solver, AbstractRosenbrock):
            raise ValueError(
                f"`solver`: {type(solver).__name__} integrates the reduced dynamics only; give a flow a diffrax solver"
            )
        if d is not None:
            d = check_int("d", d, link.dim + r, d_max)
        check_range("noise", noise, low=0.0)
        solver, self.rtol, self.atol = _controls(solver, rtol, atol)
        self.link, self.key, self.fit, self.r, self.d_max, self.n, self.problem = link, key, fit, r, d_max, n, problem
        self.t1 = jnp.asarray(t1, dtype=float)
        self.d = None if d is None else jnp.asarray(d, dtype=float)
        self.noise = jnp.asarray(noise, dtype=float)
        self.solver = RetractedSolver(diffrax.Tsit5() if solver is None else solver)
        self.num_saves, self.t_min, self.max_steps = num_saves, float(t_min), max_steps

    def _domain_rules(self):
        rules = super()._domain_rules()
        # `d % 1`: `np.round` of a tracer is not a JAX operation
        rules.append(("d", lambda d: (d > self.d_max) | (d % 1 != 0), f"must hold integers ≤ d_max = {self.d_max}"))
        if isinstance(self.fit, KernelRidge) and _has_rho(self.fit):
            rules.append(("rho", lambda v: v >= 1, "must be < 1 for the Mehler kernel"))
        return rules

    def _defaults(self):
        defaults = {"d": self.d, "noise": self.noise, "rtol": self.rtol, "atol": self.atol}
        if self.fit is not None:
            defaults["ridge"] = self.fit.ridge
        if _has_rho(self.fit):
            defaults["rho"] = self.fit.kernel.rho if isinstance(self.fit, KernelRidge) else self.fit.rho
        return defaults

    def check_axes(self, axes):
        super().check_axes(axes)
        if "ridge" in axes and self.fit is None:
            raise ValueError("sweep axis 'ridge' needs a `fit` with a ridge, got fit=None")
        if "rho" in axes and not _has_rho(self.fit):
            raise ValueError(
                f"sweep axis 'rho' needs KernelRidge(Mehler(...)) or HermiteFeatures, got fit={self.fit!r}"
            )
        if "noise" in axes and self.n is None:
            raise ValueError("sweep axis 'noise' needs finite data (`n`); the population flow does not see noise")

    def inputs(self, point: Point) -> tuple[Target, Float[Array, "d_max r"], Dataset | Population, AbstractFit | None]:
        """The padded target, start `W0`, data and fit of a point (for inspection and tests)."""
        link = point.get("link", self.link)
        d = point.get("d", self.d)
        key_star, key_start, key_x, key_noise = jax.random.split(self._key(point), 4)
        W_star = _qr_positive(padded_normal(key_star, d, self.d_max, (link.dim,)))
        W0 = _qr_positive(padded_normal(key_start, d, self.d_max, (self.r,)))
        target = Target(link, W_star, point.get("noise", self.noise))
        data: Dataset | Population = Population()
        if self.n is not None:
            X = padded_normal(key_x, d, self.d_max, (self.n,)).T
            y = link(X @ W_star) + target.noise * jax.random.normal(key_noise, (self.n,), X.dtype)
            data = Dataset(X, y)
        fit = self.fit
        # as arrays, as the fits' own fields are (a Python float or int in a point raised)
        if "ridge" in point:
            fit = eqx.tree_at(lambda f: f.ridge, fit, jnp.asarray(point["ridge"], dtype=float))
        if "rho" in point:
            rho = jnp.asarray(point["rho"], dtype=float)
            fit = eqx.tree_at(lambda f: f.kernel.rho if isinstance(f, KernelRidge) else f.rho, fit, rho)
        return target, W0, data, fit

    def __call__(self, point: Point) -> Trajectory:
        self.check_point(point)
        inside = self.in_domain(point)
        if inside is not None:
            point = self._stand_in(point, inside)
        target, W0, data, fit = self.inputs(point)
        if self.problem == "planted":
            flow = PlantedFlow(target, data)
        else:
            flow = TwoTimescaleFlow(target, fit, data)
        trajectory = simulate(
            flow,
            W0,
            self.t1,
            num_saves=self.num_saves,
            t_min=self.t_min,
            solver=self.solver,
            stepsize_controller=self.controller(point),
            max_steps=self.max_steps,
        )
        return trajectory if inside is None else _non_finite_unless(inside, trajectory)

    def _stand_in_values(self):
        # every value is replaced, not the start set to `nan` as in `ReducedExperiment`: a `d`
        # of `0` or a negative ridge gives a `nan` step size, and a run on it takes all
        # `max_steps`, holding up its batch
        return {**super()._stand_in_values(), "d": float(self.d_max)}

    def controller(self, point: Point) -> diffrax.AbstractStepSizeController:
        """The step controller of a point: `simulate`'s default (PID, steps ending on the
        saves, `RelativeFloor`) measuring the unpadded state (`PaddedNorm`)."""
        d = point.get("d", self.d)
        norm = PaddedNorm(jnp.asarray(d, dtype=float) * self.r, self.d_max * self.r)
        return default_controller(self.save_times(), point.get("rtol", self.rtol), point.get("atol", self.atol), norm)

    def working_bytes(self) -> int:
        n = 0 if self.n is None else self.n
        gram = n * n if isinstance(self.fit, KernelRidge) else 0
        return 8 * (
            4 * n * self.d_max + 2 * gram + 16 * self.d_max * self.r + 4 * self.num_saves * self.link.dim * self.r
        )


def _controls(
    solver: diffrax.AbstractSolver | None, rtol: float | None, atol: float | None
) -> tuple[diffrax.AbstractSolver | None, Array | None, Array | None]:
    """The solver and the step controller's default tolerances, checked (`None`: the
    simulation's default solver, `default_tolerances`)."""
    if solver is not None and not isinstance(solver, diffrax.AbstractSolver | AbstractRosenbrock):
        raise ValueError(
            f"`solver` must be a diffrax solver, mimflow.Rodas5, mimflow.Rodas4 or None, got {type(solver).__name__}"
        )
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None:
            check_range(name, value, low=0.0, low_open=True)
    return solver, *(None if v is None else jnp.asarray(v, dtype=float) for v in (rtol, atol))


def _has_rho(fit: AbstractFit | None) -> bool:
    return isinstance(fit, HermiteFeatures) or (isinstance(fit, KernelRidge) and isinstance(fit.kernel, Mehler))
