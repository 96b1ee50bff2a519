"""What the paper predicts for a link, before anything is run, and fits that check it.

- `predict(link, problem)`: the information exponent, the saddle sequence (per saddle
  the relative information exponent `s̃`, the directions learned there, the escape law
  and its constant) and the plateau loss levels (DESIGN §2–§3).
- `fit_scaling(dims, times)`: the log–log slope of the median escape time against
  `d`, with a bootstrap interval over seeds.
- `compare(prediction, dims, escape_times)`: predicted law against measured slope,
  saddle by saddle.

**How the saddle sequence is computed.** With the subspace `U` learned (`U = {}` at
the start), write `G = P_U + ε P_⊥` and expand
`B(G) = Σ_j s_j · j · T_j(1) G^{⊗(j−1)} T_j(1)ᵀ` in powers of `ε`: by the symmetry of
`T_j`, the coefficient of `ε^m` is
`C_m = Σ_j s_j · j · binom(j−1, m) · T_j(1) (P_⊥^{⊗m} ⊗ P_U^{⊗(j−1−m)}) T_j(1)ᵀ ⪰ 0`.
The lowest `m` whose `⊥` block `P_⊥ C_m P_⊥` is non-zero gives `s̃ = m + 1`, and its
range the directions learned at that saddle. Near the saddle the overlap `g` of a new
direction (with `g ≈ 1/d` at the start) obeys `ġ ≈ 2β g^{s̃}`, `β` an eigenvalue of that
block, so the escape takes `log d / (2β)` for `s̃ = 1` and `d^{s̃−1} / (2(s̃−1)β)` for
`s̃ ≥ 2` (single index: `β = s α_s²`, the paper's constants). The planted problem
(`ṁ ≈ β m^{s−1}` from `m ≈ d^{−1/2}`) escapes after `atanh(½)/β` for `s = 1`,
`log d / (2β)` for `s = 2` and `d^{s/2−1} / ((s−2)β)` for `s ≥ 3`.

The expansion is computed in float64 NumPy from the link's tensors: exact for
polynomial links; for projected links, a coefficient counts as non-zero when it
exceeds `tol` times the scale of `B(I)`, so quadrature noise is not read as a
direction.
"""

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Sequence
from numbers import Real
from typing import Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from ._checks import as_numbers, check_finite, check_int, check_range
from ._link import Link
from ._reduced import AbstractProblem, Planted, TwoTimescale, _b_matrix, make_problem

__all__ = ["Saddle", "Prediction", "predict", "ScalingFit", "fit_scaling", "Comparison", "compare", "saddle_durations"]


# --- the saddle sequence -----------------------------------------------------------


def _dimensions(d: Float[ArrayLike, "*batch"]) -> np.ndarray:
    """`d` as a float array; a `ValueError` unless it holds finite dimensions `≥ 1` (a
    `log d` law would give negative times below 1)."""
    d = as_numbers("d", d)
    if not np.all(np.isfinite(d) & (d >= 1)):
        raise ValueError(f"`d` must hold finite dimensions ≥ 1, got {d!r:.100}")
    return d


@dataclasses.dataclass(frozen=True)
class Saddle:
    """One plateau of the dynamics and its escape.

    **Fields:**
    - `index`: 1 for the first saddle (the start, nothing learned), 2 for the next, …
    - `relative_exponent`: `s̃` (the information exponent for the first saddle).
    - `directions`: `(k, n)` orthonormal basis of the directions learned on escaping
      this saddle, in the link's coordinates `z`.
    - `strengths`: the `n` eigenvalues `β` of the `⊥` block of `C_{s̃−1}` (descending).
    - `law`: `"log d"`, `"d^p"` or `"1"`; `exponent` is `p` (0 for `"log d"` and `"1"`);
      `logarithmic` is true for `"log d"`.
    - `constant`: the escape takes `≈ constant · law(d)` from overlaps `d^{−1/2}`, until
      the weakest of the saddle's directions is learned (exact to leading order for
      one direction, and for several that evolve independently).
    - `loss`: the plateau's loss level, the problem's loss at `G = P_U` (at `M = 0` for
      the planted problem).
    """

    index: int
    relative_exponent: int
    directions: np.ndarray
    strengths: np.ndarray
    law: str
    exponent: float
    logarithmic: bool
    constant: float
    loss: float

    @property
    def num_directions(self) -> int:
        """How many directions are learned on escaping this saddle."""
        return self.directions.shape[1]

    def time(self, d: Float[ArrayLike, "*batch"]) -> np.ndarray:
        """The predicted time spent on this saddle at dimension `d ≥ 1`: `constant · law(d)`."""
        d = _dimensions(d)
        if self.logarithmic:
            return self.constant * np.log(d)
        return self.constant * d**self.exponent


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The paper's prediction for a link and a problem; `str()` gives a table.

    **Fields:**
    - `problem`: `"two-timescale"` or `"planted"`; `k`, `r`: link and student dimensions.
    - `information_exponent`: `s(f) = min{|α| ≥ 1 : ⟨f, h_α⟩ ≠ 0}` (`None` for a
      constant link).
    - `saddles`: the `Saddle`s in the order they are visited.
    - `final_loss`: the loss once every learnable direction is learned.
    - `irrelevant`: `(k, m)` orthonormal basis of directions `f*` does not depend on
      (a degenerate EGOP): they are never learned, and no plateau waits for them.
    - `unreachable`: `(k, m)` basis of relevant directions a student with `r < k`
      columns has no room for.
    - `notes`: caveats in words (truncated projections, planted multi-index, …).
    """

    problem: str
    k: int
    r: int
    information_exponent: int | None
    saddles: tuple[Saddle, ...]
    final_loss: float
    irrelevant: np.ndarray
    unreachable: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def learned(self) -> np.ndarray:
        """`(k, n)` basis of every direction learned along the sequence, in order."""
        return np.concatenate([s.directions for s in self.saddles] + [np.zeros((self.k, 0))], axis=1)

    def times(self, d: Float[ArrayLike, "*batch"]) -> np.ndarray:
        """Predicted time on each saddle at dimension `d ≥ 1`, shape `(*batch, len(saddles))`."""
        d = _dimensions(d)
        return np.stack([s.time(d) for s in self.saddles], axis=-1) if self.saddles else np.zeros(np.shape(d) + (0,))

    def __str__(self) -> str:
        exponent = "none (constant link)" if self.information_exponent is None else str(self.information_exponent)
        lines = [
            f"{self.problem} problem, k = {self.k}, r = {self.r}: information exponent {exponent}, "
            f"{len(self.saddles)} saddle{'s' if len(self.saddles) != 1 else ''}",
            f"{'saddle':>6} {'s̃':>3} {'learns':<24} {'law':>9} {'time on saddle':>18} {'plateau loss':>13}",
        ]
        for s in self.saddles:
            time = f"{s.constant:.4g}·{s.law}" if s.law != "1" else f"{s.constant:.4g}"
            lines.append(
                f"{s.index:>6} {s.relative_exponent:>3} {_describe(s.directions):<24} {s.law:>9} {time:>18} "
                f"{s.loss:>13.6g}"
            )
        lines.append(f"final loss {self.final_loss:.6g}")
        if self.irrelevant.shape[1]:
            lines.append(f"f* does not depend on {_describe(self.irrelevant)}: never learned, no plateau waits for it")
        if self.unreachable.shape[1]:
            lines.append(f"no room (r = {self.r}) for {_describe(self.unreachable)}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _describe(basis: np.ndarray) -> str:
    n, k = basis.shape[1], basis.shape[0]
    if n == 0:
        return "nothing"
    if k > 4 or n > 2:
        return f"{n} direction{'s' if n > 1 else ''}"
    # A canonical basis of the span (reduced row echelon form), readable for e_i's.
    q, _ = np.linalg.qr(basis)
    projector = q @ q.T
    vectors = []
    for i in range(k):
        v = projector[:, i] - sum((vectors[j] @ projector[:, i]) * vectors[j] for j in range(len(vectors)))
        if np.linalg.norm(v) > 1e-6 and len(vectors) < n:
            v = v / np.linalg.norm(v)
            vectors.append(v * np.sign(v[np.argmax(np.abs(v) > 1e-6)]))
    return "span{" + ", ".join("(" + ", ".join(f"{x:.3g}" for x in v + 0.0) + ")" for v in vectors) + "}"


def _contract(tensor: np.ndarray, matrices: Sequence[np.ndarray]) -> np.ndarray:
    """`T(1) (A_1 ⊗ … ⊗ A_{j−1}) T(1)ᵀ` for a tensor of order `j = len(matrices) + 1`."""
    k = tensor.shape[0]
    out = tensor
    for matrix in matrices:  # each tensordot consumes mode 1 and appends the result last
        out = np.tensordot(out, matrix, axes=([1], [1]))
    return tensor.reshape(k, -1) @ out.reshape(k, -1).T


def _coefficient(tensors: dict[int, np.ndarray], weights: dict[int, float], k: int, learned: np.ndarray, m: int):
    """`C_m`, the coefficient of `ε^m` in `B(P_U + ε P_⊥)`."""
    p_u = learned @ learned.T
    p_perp = np.eye(k) - p_u
    total = np.zeros((k, k))
    for j, t in tensors.items():
        if j >= m + 1 and weights[j] != 0.0:
            total += weights[j] * j * math.comb(j - 1, m) * _contract(t, [p_perp] * m + [p_u] * (j - 1 - m))
    return total


def _law(problem: str, s: int, beta: float) -> tuple[str, float, bool, float]:
    """`(law, exponent, logarithmic, constant)` for an escape with exponent `s` and strength `β`."""
    if problem == "two-timescale":
        if s == 1:
            return "log d", 0.0, True, 1.0 / (2.0 * beta)
        return f"d^{s - 1}", float(s - 1), False, 1.0 / (2.0 * (s - 1) * beta)
    if s == 1:
        return "1", 0.0, False, math.atanh(0.5) / beta
    if s == 2:
        return "log d", 0.0, True, 1.0 / (2.0 * beta)
    exponent = s / 2 - 1
    return f"d^{exponent:g}", exponent, False, 1.0 / ((s - 2) * beta)


def _complement(basis: np.ndarray, k: int) -> np.ndarray:
    if basis.shape[1] == 0:
        return np.eye(k)
    q, _ = np.linalg.qr(np.concatenate([basis, np.eye(k)], axis=1))
    return q[:, basis.shape[1] : k] if basis.shape[1] < k else np.zeros((k, 0))


def predict(
    link: Link | AbstractProblem,
    problem: Literal["two-timescale", "planted"] | AbstractProblem = "two-timescale",
    *,
    r: int | None = None,
    ridge: float = 0.0,
    rho: float = 1.0,
    tol: float = 1e-8,
) -> Prediction:
    """The saddle sequence the paper predicts for `link` (DESIGN §2–§3).

    **Arguments:**
    - `link`: a `Link`, or a problem object (`TwoTimescale`, whose ridge shrinkage
      is used, or `Planted`).
    - `problem`: `"two-timescale"` (default) or `"planted"`.
    - `r`: the student's number of directions (default `k`; the planted problem needs `r = k`).
    - `ridge`, `rho`: the Mehler kernel ridge of the two-timescale fit (shrinks each
      degree, so changes the constants and plateau levels, never the laws).
    - `tol`: a coefficient counts as non-zero above `tol` times the largest
      eigenvalue of `B(I)` (raise it for links projected with little accuracy).

    **Returns:** a `Prediction`; `print` it for a table.

    For the planted problem with `k > 1` only the first escape is predicted: its
    landscape is rough and the flow can be trapped at spurious minima (DESIGN §3).

    **Example:**
    ```python
    p = mimflow.theory.predict(links.hermite(1, 2, 0) + links.hermite(3, 2, 1))
    [s.law for s in p.saddles]    # ['log d', 'd^2']
    ```
    """
    prob = make_problem(link, problem, ridge=ridge, rho=rho)
    if not isinstance(prob, TwoTimescale | Planted):
        raise ValueError(f"`problem` must be a TwoTimescale or Planted problem, got {type(prob).__name__}")
    name = "planted" if isinstance(prob, Planted) else "two-timescale"
    k = prob.link.dim
    r = k if r is None else check_int("r", r, 1)
    if name == "planted" and r != k:
        raise ValueError(f"the planted problem needs r = k = {k}, got r = {r}")
    if isinstance(tol, bool) or not (isinstance(tol, Real) and 0 < tol < 1):
        raise ValueError(f"`tol` must lie in (0, 1), got {tol!r}")
    tensors = {j: np.asarray(t, dtype=np.float64) for j, t in prob.link.tensors.items()}
    if not all(np.all(np.isfinite(t)) for t in tensors.values()):
        raise ValueError("`link` has non-finite Hermite tensors")
    if name == "two-timescale":
        weights = {j: float(w) for j, w in prob.shrinkage().items()}
    else:
        weights = dict.fromkeys(tensors, 1.0)
    degree = max(tensors, default=0)
    # the scale against which coefficients are compared: λ_max(B(I)), B(I) = Σ_j s_j j T_j(1) T_j(1)ᵀ
    scale = float(np.linalg.eigvalsh(np.asarray(_b_matrix(prob.link, weights, jnp.eye(k))))[-1])
    threshold = tol * scale

    def loss_at(basis: np.ndarray) -> float:
        """The loss with `basis` learned (`G = P_U`); the planted plateau is at `M = 0`."""
        overlap = np.zeros((k, r))
        if name == "two-timescale":
            overlap[:, : basis.shape[1]] = basis
        return float(prob.loss(overlap))

    learned = np.zeros((k, 0))
    saddles: list[Saddle] = []
    notes: list[str] = []
    irrelevant = np.zeros((k, 0))
    unreachable = np.zeros((k, 0))
    exhausted = False
    while learned.shape[1] < k and scale > 0:
        p_perp = np.eye(k) - learned @ learned.T
        for m in range(degree):
            block = p_perp @ _coefficient(tensors, weights, k, learned, m) @ p_perp
            values, vectors = np.linalg.eigh(0.5 * (block + block.T))
            keep = values > threshold
            if keep.any():
                break
        else:
            irrelevant = _complement(learned, k)
            break
        order = np.argsort(values[keep])[::-1]
        values, vectors = values[keep][order], vectors[:, keep][:, order]
        room = r - learned.shape[1]
        if room <= 0:
            exhausted = True
            unreachable = vectors
            break
        if vectors.shape[1] > room:
            exhausted = True
            unreachable = vectors[:, room:]
            values, vectors = values[:room], vectors[:, :room]
        s = m + 1
        law, exponent, logarithmic, constant = _law(name, s, float(values[-1]))
        saddles.append(
            Saddle(len(saddles) + 1, s, vectors, values, law, exponent, logarithmic, constant, loss_at(learned))
        )
        learned = np.concatenate([learned, vectors], axis=1)
        if name == "planted":
            break
    if exhausted:
        notes.append(f"the student has r = {r} < {learned.shape[1] + unreachable.shape[1]} relevant directions")
        if unreachable.shape[1]:
            notes.append("which relevant directions a small student keeps depends on the start")
    if name == "planted" and k > 1:
        notes.append("planted, k > 1: only the first escape is predicted; the landscape can trap the flow")
    if name == "planted" and saddles and saddles[0].relative_exponent % 2 == 1 and saddles[0].relative_exponent > 1:
        notes.append("planted, odd s ≥ 3: only starts with a positive overlap escape")
    residual = float(prob.link.residual)
    if irrelevant.shape[1] and residual > tol * max(float(prob.link.norm2()), 1e-300):
        notes.append(
            f"no dependence on the remaining directions up to degree {degree}, but the projection left a "
            f"residual {residual:.3g}: higher degrees may depend on them"
        )
    final = loss_at(learned) if name == "two-timescale" else float(prob.loss(learned @ learned.T))
    information_exponent = saddles[0].relative_exponent if saddles else None
    return Prediction(name, k, r, information_exponent, tuple(saddles), final, irrelevant, unreachable, tuple(notes))


# --- measured escape times against d -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScalingFit:
    """A log–log fit `median_t ≈ e^intercept · d^slope` over dimensions.

    **Fields:** `slope`, `intercept`; `interval`: the bootstrap percentile interval
    of the slope at `level`; `dims`, `medians`: the points fitted; `escaped`: the
    fraction of finite times per `d`.
    """

    slope: float
    intercept: float
    interval: tuple[float, float]
    level: float
    dims: np.ndarray
    medians: np.ndarray
    escaped: np.ndarray

    def __str__(self) -> str:
        low, high = self.interval
        return f"slope {self.slope:.3f} [{low:.3f}, {high:.3f}] ({self.level:.0%} bootstrap)"


def _slopes(log_d: np.ndarray, log_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slopes and intercepts along the last axis of `log_t` (vs `log_d`)."""
    x = log_d - log_d.mean()
    slope = (log_t * x).sum(-1) / (x * x).sum()
    return slope, log_t.mean(-1) - slope * log_d.mean()


def _medians(times: np.ndarray) -> np.ndarray:
    """Medians along the last axis; `nan` (failed runs) dropped, `inf` (no escape) kept."""
    with _quiet():
        return np.nanmedian(times, axis=-1)


@contextlib.contextmanager
def _quiet():
    """Silence NumPy's warnings for all-`nan` slices and logs of `inf`/0: handled by the caller."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def fit_scaling(
    dims: Float[ArrayLike, " D"],
    times: Float[ArrayLike, "D S"],
    *,
    num_bootstrap: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> ScalingFit:
    """Fit `log median(t) = intercept + slope · log d` to escape times.

    **Arguments:**
    - `dims`: the `D ≥ 2` distinct dimensions.
    - `times`: shape `(D, S)`, the escape times (or times on a saddle) of `S` seeds at
      each `d`. `nan` (a failed run) is dropped; `inf` (never escaped) counts as longer
      than any finite time, so a median that is `inf` makes the slope `nan`.
    - `num_bootstrap`, `level`, `seed`: the bootstrap resamples whole seeds (columns),
      which is right whether or not seed `j` shares its random start across `d` (as
      `sample_overlap` with one key per seed does, which makes slopes far less noisy).

    **Returns:** a `ScalingFit`.
    """
    dims, times = as_numbers("dims", dims), as_numbers("times", times)
    if dims.ndim != 1 or dims.size < 2 or len(np.unique(dims)) != dims.size:
        raise ValueError(f"`dims` must hold at least two distinct dimensions, got {dims}")
    if not np.all(np.isfinite(dims)) or np.any(dims <= 1):
        raise ValueError(f"`dims` must be finite and > 1, got {dims}")
    if times.ndim != 2 or times.shape[0] != dims.size or times.shape[1] < 1:
        raise ValueError(f"`times` must have shape (len(dims), seeds) = ({dims.size}, S), got shape {times.shape}")
    if np.any(times < 0):
        raise ValueError(f"`times` must be ≥ 0, got min {np.nanmin(times)}")
    num_bootstrap = check_int("num_bootstrap", num_bootstrap, 1)
    check_finite("level", level)
    if not 0 < level < 1:
        raise ValueError(f"`level` must lie in (0, 1), got {level}")
    check_int("seed", seed, 0)
    log_d = np.log(dims)
    medians = _medians(times)
    with _quiet():
        slope, intercept = _slopes(log_d, np.log(medians))
        columns = np.random.default_rng(seed).integers(0, times.shape[1], size=(num_bootstrap, times.shape[1]))
        resampled = _medians(times[:, columns])  # (D, B)
        boot, _ = _slopes(log_d, np.log(resampled).T)
    # ±inf (a median that never escaped) is a legitimately extreme slope; nan is not
    tail = 100 * (1 - level) / 2
    if np.isnan(boot).mean() > 1 - level or not np.isfinite(slope):
        interval = (np.nan, np.nan)
    else:
        with _quiet():
            interval = tuple(float(v) for v in np.nanpercentile(boot, [tail, 100 - tail], method="nearest"))
    escaped = np.isfinite(times).mean(axis=1)
    finite = np.isfinite(slope)
    return ScalingFit(
        float(slope) if finite else np.nan,
        float(intercept) if finite else np.nan,
        interval,
        level,
        dims,
        medians,
        escaped,
    )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Predicted escape laws against measured slopes, saddle by saddle; `str()` gives a table.

    **Fields:**
    - `prediction`: the `Prediction` compared against.
    - `dims`: the dimensions; `durations`: shape `(D, S, saddles)`, the time each seed
      spent on each saddle (from the escape of the previous saddle's last direction
      to the escape of this saddle's last direction).
    - `fits`: one `ScalingFit` of `durations[..., i]` per saddle.
    - `ratios`: shape `(D, saddles)`, median duration over the predicted time
      (`constant · law(d)`, for overlaps `d^{−1/2}`; random starts add a factor of order one).
    - `agrees`: per saddle, `|slope − exponent| ≤ tolerance` for a power law, and
      `slope < log_slope_max` for a `log d` law.

    Failed runs (`nan` escape times: a status other than `SUCCESS` before the direction
    escaped) are left out of the medians, which biases them towards the runs that
    finished; `failed` counts them and `str()` names them below the table.
    """

    prediction: Prediction
    dims: np.ndarray
    durations: np.ndarray
    fits: tuple[ScalingFit, ...]
    ratios: np.ndarray
    agrees: tuple[bool, ...]
    tolerance: float
    log_slope_max: float

    @property
    def all_agree(self) -> bool:
        """Whether every saddle's measured slope agrees with its law."""
        return all(self.agrees)

    @property
    def failed(self) -> np.ndarray:
        """Shape `(D, saddles)`: the seeds whose time on the saddle is `nan` (a failed
        run), left out of that saddle's median at that `d`."""
        return np.isnan(self.durations).sum(axis=1)

    def __str__(self) -> str:
        lines = [
            f"{'saddle':>6} {'law':>7} {'expected slope':>16} {'measured slope':>28}  "
            + " ".join(f"{'t/pred d=' + format(d, 'g'):>15}" for d in self.dims)
            + "  verdict"
        ]
        for saddle, fit, ratio, ok in zip(self.prediction.saddles, self.fits, self.ratios.T, self.agrees, strict=True):
            expected = f"{saddle.exponent:g} ± {self.tolerance:g}"
            if saddle.logarithmic:
                expected = f"< {self.log_slope_max:g}"
            measured = f"{fit.slope:.3f} [{fit.interval[0]:.3f}, {fit.interval[1]:.3f}]"
            cells = " ".join(f"{x:>15.3g}" for x in ratio)
            lines.append(
                f"{saddle.index:>6} {saddle.law:>7} {expected:>16} {measured:>28}  {cells}  "
                f"{'agrees' if ok else 'DISAGREES'}"
            )
        failed = self.failed.max(axis=1) if self.failed.size else np.zeros(self.dims.size, int)
        if np.any(failed):
            counts = ", ".join(f"{n} at d={d:g}" for d, n in zip(self.dims, failed, strict=True) if n)
            lines.append(
                f"failed runs (nan escape times, left out of the medians) of {self.durations.shape[1]} seeds: {counts}"
            )
        return "\n".join(lines)


def saddle_durations(prediction: Prediction, escape_times: Float[ArrayLike, "*batch p"]) -> np.ndarray:
    """The time spent on each predicted saddle, shape `(*batch, len(saddles))`, from
    per-direction escape times (`mimflow.escape_times`, last axis: singular values in
    decreasing order). Saddle `i` lasts from the escape of saddle `i − 1`'s last
    direction to the escape of its own last direction; `inf` if it never ends. Escape
    times are `≥ 0`, `inf` (never escaped) or `nan` (a failed run)."""
    if not isinstance(prediction, Prediction):
        raise ValueError(f"`prediction` must be a theory.Prediction (from predict), got {type(prediction).__name__}")
    times = as_numbers("escape_times", escape_times)
    ends = np.cumsum([s.num_directions for s in prediction.saddles]).astype(int)
    needed = int(ends[-1]) if ends.size else 0
    if times.ndim < 1 or times.shape[-1] < needed:
        raise ValueError(
            f"`escape_times` must have at least {needed} directions on its last axis for "
            f"this prediction, got shape {times.shape}"
        )
    if np.any(times < 0):
        raise ValueError(f"`escape_times` must be ≥ 0 (inf: never escaped, nan: failed), got min {np.nanmin(times)}")
    finish = times[..., ends - 1] if ends.size else times[..., :0]
    start = np.concatenate([np.zeros_like(finish[..., :1]), finish[..., :-1]], axis=-1)
    with _quiet():
        return np.where(np.isposinf(finish), np.inf, finish - start)


def compare(
    prediction: Prediction,
    dims: Float[ArrayLike, " D"],
    escape_times: Float[ArrayLike, "D S p"],
    *,
    tolerance: float = 0.15,
    log_slope_max: float = 0.3,
    num_bootstrap: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare measured escape times with `prediction`, saddle by saddle.

    **Arguments:**
    - `prediction`: from `predict`, for the link and problem that was simulated.
    - `dims`: the `D` dimensions; `escape_times`: shape `(D, S, p)`, from
      `mimflow.escape_times` for `S` seeds at each `d` (`p ≥` the number of learned
      directions).
    - `tolerance`: allowed `|slope − exponent|` for power laws; `log_slope_max`: the
      largest slope accepted for a `log d` law.
    - `num_bootstrap`, `level`, `seed`: passed to `fit_scaling`.

    **Returns:** a `Comparison`; `print` it for a table.
    """
    dims, times = as_numbers("dims", dims), as_numbers("escape_times", escape_times)
    check_range("tolerance", tolerance, low=0.0)
    check_range("log_slope_max", log_slope_max, low=-np.inf)
    if times.ndim != 3:
        raise ValueError(f"`escape_times` must have shape (len(dims), seeds, directions), got shape {times.shape}")
    durations = saddle_durations(prediction, times)
    fits = tuple(
        fit_scaling(dims, durations[..., i], num_bootstrap=num_bootstrap, level=level, seed=seed)
        for i in range(len(prediction.saddles))
    )
    agrees = tuple(
        bool(fit.slope < log_slope_max) if saddle.logarithmic else bool(abs(fit.slope - saddle.exponent) <= tolerance)
        for saddle, fit in zip(prediction.saddles, fits, strict=True)
    )
    medians = _medians(np.moveaxis(durations, 1, -1))  # (D, saddles)
    ratios = medians / prediction.times(dims) if prediction.saddles else np.zeros((dims.size, 0))
    return Comparison(prediction, dims, durations, fits, ratios, agrees, tolerance, log_slope_max)
