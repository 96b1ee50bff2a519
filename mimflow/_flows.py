"""Gradient flows of the subspace `W ∈ St(d, r)` in `d` dimensions (DESIGN §4).

A flow is a target (teacher), a data source — the population, one fixed dataset
(offline) or fresh samples at every evaluation time (online) — and, for the
two-timescale problem, the fast fit of the link. Switching between population and
finite samples changes the `data` argument only.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._checks import check_finite, check_int, check_key, check_orthonormal, check_range
from ._fits import AbstractFit, AbstractFittedLink, HermiteFeatures, KernelRidge, Mehler
from ._hermite import apply_each
from ._link import Link
from ._products import cols_times, rows_times
from ._reduced import Planted, TwoTimescale
from ._stiefel import project_tangent


class Dataset(eqx.Module):
    """Samples `X` of shape `(n, d)` and labels `y` of shape `(n,)`."""

    X: Float[Array, "n d"]
    y: Float[Array, " n"]
    # `X` transposed into its own `(d, n)` buffer, or None: see `_with_transpose`
    _XT: Float[Array, "d n"] | None = eqx.field(repr=False)

    def __init__(self, X: Float[ArrayLike, "n d"], y: Float[ArrayLike, " n"]):
        check_finite("X", X)
        check_finite("y", y)
        X, y = jnp.asarray(X, dtype=float), jnp.asarray(y, dtype=float)
        if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"need X of shape (n, d) and y of shape (n,) with the same n, got {X.shape} and {y.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"`X` must hold at least one sample (n ≥ 1), got shape {X.shape}")
        self.X, self.y, self._XT = X, y, None


def _with_transpose(data: "Data") -> "Data":
    """`data` carrying a copy of `X` laid out as `(d, n)`, on a CPU, for the flow's
    back-projection `Xᵀ R`: XLA's CPU dot reads a transposed row-major operand at a third
    to two thirds of the memory bandwidth, a row-major `(d, n)` one near it (`Xᵀ R`
    1.5–3× faster at `n·d ≥ 2¹⁸`; `benchmarks/RESULTS.md` §2). It costs a second copy of
    `X`, so it is made once, outside the solver's loop (`simulate`), and not on
    accelerators, whose matrix products take either layout at full speed. Other data come
    back unchanged."""
    if not isinstance(data, Dataset) or data._XT is not None or jax.default_backend() != "cpu":
        return data
    return eqx.tree_at(lambda x: x._XT, data, jnp.transpose(data.X), is_leaf=lambda x: x is None)


def _as_point(W: Float[ArrayLike, "d r"], d: int, name: str = "W") -> Float[Array, "d r"]:
    """`W` as an array; a `ValueError` naming `name` unless it has shape `(d, r)` with
    `1 ≤ r ≤ d` and, when concrete, is finite (orthonormality is not asked: a flow's
    fields and losses are also evaluated off the manifold, e.g. by finite differences)."""
    shape = np.shape(W)
    if len(shape) != 2 or shape[0] != d or not 1 <= shape[1] <= d:
        raise ValueError(f"`{name}` must have shape (d={d}, r) with 1 ≤ r ≤ d, got shape {shape}")
    check_finite(name, W)
    return jnp.asarray(W)


def _project(data: Dataset, W: Float[Array, "d r"]) -> Float[Array, "n r"]:
    """`Z = XW` (`mimflow._products.rows_times`: its fast form on a CPU)."""
    return rows_times(data.X, W)


def _back_project(data: Dataset, R: Float[Array, "n r"]) -> Float[Array, "d r"]:
    """`Xᵀ R`: from the `(d, n)` copy when `data` carries one (`_with_transpose`,
    `mimflow._products.cols_times`), else `X.T @ R`."""
    return data.X.T @ R if data._XT is None else cols_times(data._XT, R)


class Target(eqx.Module):
    """The teacher `F*(x) = f*(W*ᵀx) + σ ε`, `x ~ N(0, I_d)`, `ε ~ N(0, 1)`.

    **Arguments:** `link` (`f*` on `ℝ^k`), `W_star` of shape `(d, k)` with orthonormal
    columns, `noise` `σ ≥ 0`.
    """

    link: Link
    W_star: Float[Array, "d k"]
    noise: Float[Array, ""]

    def __init__(self, link: Link, W_star: Float[ArrayLike, "d k"], noise: float = 0.0):
        if not isinstance(link, Link):
            raise ValueError(f"`link` must be a mimflow.Link, got {type(link).__name__}")
        link._check_single("Target")
        check_finite("W_star", W_star)
        W_star = jnp.asarray(W_star, dtype=float)
        if W_star.ndim != 2 or W_star.shape[1] != link.dim or W_star.shape[0] < link.dim:
            raise ValueError(f"`W_star` must have shape (d, k={link.dim}) with d ≥ k, got shape {W_star.shape}")
        check_orthonormal("W_star", W_star)
        check_range("noise", noise, low=0.0)
        self.link, self.W_star = link, W_star
        self.noise = jnp.asarray(noise, dtype=float)

    def sample(self, key: PRNGKeyArray, n: int) -> Dataset:
        """`n` samples `(x_i, F*(x_i))`."""
        n = check_int("n", n, 1)
        check_key("key", key)
        key_x, key_noise = jax.random.split(key)
        X = jax.random.normal(key_x, (n, self.W_star.shape[0]), self.W_star.dtype)
        y = self.link(X @ self.W_star) + self.noise * jax.random.normal(key_noise, (n,), X.dtype)
        return Dataset(X, y)

    def overlap(self, W: Float[Array, "d r"]) -> Float[Array, "k r"]:
        """`M = W*ᵀ W`."""
        return self.W_star.T @ _as_point(W, self.W_star.shape[0])


class Population(eqx.Module):
    """Infinite data: the flow uses the exact population gradient (DESIGN §2–§3)."""


class Online(eqx.Module):
    """Fresh samples: `num_samples` new points at every evaluation time `t` (drawn from
    `key` folded with `t`), so with a one-stage fixed-step solver (`diffrax.Euler`)
    each step sees a new batch."""

    num_samples: int = eqx.field(static=True)
    key: PRNGKeyArray

    def __init__(self, num_samples: int, key: PRNGKeyArray):
        num_samples = check_int("num_samples", num_samples, 1)
        check_key("key", key)
        self.num_samples, self.key = num_samples, key

    def at(self, target: Target, t: Float[Array, ""]) -> Dataset:
        """The batch of evaluation time `t`: `num_samples` draws of `target` from `key`
        folded with the bits of `t` as a float32 (the same `t`, the same batch)."""
        stamp = jax.lax.bitcast_convert_type(jnp.asarray(t, jnp.float32), jnp.uint32)
        return target.sample(jax.random.fold_in(self.key, stamp), self.num_samples)


Data = Population | Dataset | Online


def _check_data(target: Target, data: Data | None) -> Data:
    """`data` (default `Population()`), checked against the target's dimension `d`."""
    if not isinstance(target, Target):
        raise ValueError(f"`target` must be a mimflow.Target, got {type(target).__name__}")
    data = Population() if data is None else data
    if not isinstance(data, Population | Dataset | Online):
        raise ValueError(f"`data` must be Population(), a Dataset or Online(...), got {type(data).__name__}")
    if isinstance(data, Dataset) and data.X.shape[1] != target.W_star.shape[0]:
        raise ValueError(f"`data.X` has d={data.X.shape[1]} columns but `W_star` has d={target.W_star.shape[0]}")
    return data


def _batch(data: Data, target: Target, t: Float[Array, ""]) -> Dataset:
    return data.at(target, t) if isinstance(data, Online) else data


def _envelope_gradient(fitted: AbstractFittedLink, batch: Dataset, W: Float[Array, "d r"]) -> Float[Array, "d r"]:
    """`∇_W ½n⁻¹Σ(f̂(Wᵀx_i) − y_i)² = n⁻¹ Σ_i (f̂(z_i) − y_i) x_i ∇f̂(z_i)ᵀ` with `f̂` fixed:
    reads `X` twice (`Z = XW`, then `Xᵀ R`)."""
    values, grads = fitted.value_and_grad(_project(batch, W))
    return _back_project(batch, (values - batch.y)[:, None] * grads) / batch.y.shape[0]


class AbstractFlow(eqx.Module):
    """A gradient flow of `W` on St(d, r): `Ẇ = −P_W ∇_W L(W)`, `P_W` the tangent
    projection of the flow's metric."""

    target: eqx.AbstractVar[Target]
    data: eqx.AbstractVar[Data]

    metric = "grassmann"

    def gradient(self, W: Float[Array, "d r"], t: Float[ArrayLike, ""] = 0.0) -> Float[Array, "d r"]:
        """The Euclidean gradient `∇_W L` (at time `t`, for online data)."""
        raise NotImplementedError

    def vector_field(self, t: Float[ArrayLike, ""], W: Float[Array, "d r"]) -> Float[Array, "d r"]:
        """`Ẇ = −P_W ∇_W L(W)`."""
        W = self._point(W)
        return -project_tangent(W, self.gradient(W, t), self.metric)

    def loss(self, W: Float[Array, "d r"]) -> Float[Array, ""]:
        """The population loss of the problem at `W` (a function of `M = W*ᵀW` only): for
        finite or online data, the ridge-free loss of the best link on `span W`,
        `½(‖f*‖² − ‖E[f* | Wᵀx]‖²)` (the fitted link's own error is `test_loss`); for
        the population with a ridge fit, the value function the flow descends (the ridge
        objective at the population fit, penalty included)."""
        raise NotImplementedError

    def train_loss(self, W: Float[Array, "d r"], t: Float[ArrayLike, ""] = 0.0) -> Float[Array, ""]:
        """The empirical objective on the flow's data at `W` (`nan` for the population)."""
        raise NotImplementedError

    def fitted(self, W: Float[Array, "d r"], t: Float[ArrayLike, ""] = 0.0) -> AbstractFittedLink:
        """The link the student uses at `W`: `x ↦ f̂(Wᵀx)`."""
        raise NotImplementedError

    def test_loss(self, W: Float[Array, "d r"], test: Dataset, t: Float[ArrayLike, ""] = 0.0) -> Float[Array, ""]:
        """`½ mean (y − f̂(Wᵀx))²` on a held-out dataset."""
        W = self._point(W)
        self.check_test(test)
        return 0.5 * jnp.mean((test.y - self.fitted(W, t)(test.X @ W)) ** 2)

    def _point(self, W: Float[ArrayLike, "d r"], name: str = "W") -> Float[Array, "d r"]:
        """`W` as an array; a `ValueError` naming `name` unless it has shape `(d, r)` for
        this flow and, when concrete, is finite."""
        return _as_point(W, self.target.W_star.shape[0], name)

    def check_test(self, test: object, optional: bool = False) -> None:
        """Raise a `ValueError` unless `test` is a `Dataset` with `d` columns for this flow
        (or `None`, if `optional`)."""
        if optional and test is None:
            return
        d = self.target.W_star.shape[0]
        if not isinstance(test, Dataset) or test.X.shape[1] != d:
            got = f"X of shape {test.X.shape}" if isinstance(test, Dataset) else type(test).__name__
            raise ValueError(f"`test` must be {'None or ' if optional else ''}a Dataset with d={d} columns, got {got}")

    def check_point(self, W: ArrayLike, name: str = "W0") -> None:
        """Raise a `ValueError` naming `name` unless `W` is a point of St(d, r) for this flow:
        shape `(d, r)`, finite, orthonormal columns."""
        check_orthonormal(name, self._point(W, name))


def _population_problem(link: Link, fit: AbstractFit | None) -> TwoTimescale:
    """The reduced problem whose dynamics is the population limit of `fit` for `link`."""
    if fit is None:
        return TwoTimescale(link)
    if isinstance(fit, KernelRidge) and isinstance(fit.kernel, Mehler):
        return TwoTimescale(link, fit.ridge, fit.kernel.rho)
    if isinstance(fit, HermiteFeatures):
        return TwoTimescale(link, fit.ridge, fit.rho, max_degree=fit.degree)
    raise ValueError(
        f"the population flow has a closed form for fit=None (exact conditional expectation), "
        f"KernelRidge(Mehler(...)) or HermiteFeatures only, got {type(fit).__name__}"
    )


class TwoTimescaleFlow(AbstractFlow):
    """The two-timescale flow: the link is refitted in closed form at every `W`, and `W`
    follows the Grassmann gradient flow of the value function `V̂(W) = min_f Ĵ(f, W)`.

    - population data: `Ẇ = (I − WWᵀ) W* B(G) M` (the reduced dynamics, with the ridge
      shrinkage of `fit` if it is a Mehler kernel ridge or Hermite features fit);
    - finite data: the envelope gradient `n⁻¹ Σ_i (f̂(z_i) − y_i) x_i ∇f̂(z_i)ᵀ` with the
      fitted link held fixed, which equals autodiff through the solve.

    **Example:**
    ```python
    flow = TwoTimescaleFlow(target, HermiteFeatures(2), target.sample(key, 10_000))
    ```
    """

    target: Target
    fit: AbstractFit | None
    data: Data
    reduced: TwoTimescale | None

    def __init__(self, target: Target, fit: AbstractFit | None = None, data: Data | None = None):
        data = _check_data(target, data)
        if fit is None and not isinstance(data, Population):
            raise ValueError("finite data needs a `fit` (KernelRidge, RandomFeatures, HermiteFeatures), got None")
        if fit is not None and not isinstance(fit, AbstractFit):
            raise ValueError(f"`fit` must be a mimflow fit or None, got {type(fit).__name__}")
        self.target, self.fit, self.data = target, fit, data
        self.reduced = _population_problem(target.link, fit) if isinstance(data, Population) else None

    def fitted(self, W, t=0.0):
        """The fast timescale at `W`: the closed-form fit on `Z = XW` (finite data), or the
        population fit `f_W = Σ_j s_j ⟨(Mᵀ)^{⊗j} T_j, H_j⟩` (the shrunk conditional expectation)."""
        W = self._point(W)
        if self.reduced is not None:
            overlap, weights = self.target.overlap(W), self.reduced.shrinkage()
            tensors = {j: weights[j] * apply_each(overlap.T, tensor) for j, tensor in self.target.link.tensors.items()}
            return _KnownLink(Link(tensors, W.shape[1]))
        batch = _batch(self.data, self.target, t)
        return self.fit.fit(_project(batch, W), batch.y)

    def gradient(self, W, t=0.0):
        W = self._point(W)
        if self.reduced is not None:
            overlap = self.target.overlap(W)
            return -self.target.W_star @ self.reduced.B(overlap @ overlap.T) @ overlap
        batch = _batch(self.data, self.target, t)
        # no stop_gradient on the fit: its value does not change the envelope gradient,
        # but differentiating the flow (implicit solvers, `jax.grad` through a solve)
        # needs how `f̂` moves with `W` and with the fit's hyperparameters
        return _envelope_gradient(self.fit.fit(_project(batch, W), batch.y), batch, W)

    def loss(self, W):
        W = self._point(W)
        return (self.reduced or TwoTimescale(self.target.link)).loss(self.target.overlap(W))

    def train_loss(self, W, t=0.0):
        W = self._point(W)
        if self.reduced is not None:
            return jnp.asarray(jnp.nan, W.dtype)
        batch = _batch(self.data, self.target, t)
        Z = _project(batch, W)
        return self.fit.objective(self.fit.fit(Z, batch.y), Z, batch.y)


class PlantedFlow(AbstractFlow):
    """The planted flow: the link `f*` is known and fixed, `r = k`, and `W` follows the
    Stiefel gradient flow (embedded metric) of `½E(F*(x) − f*(Wᵀx))²` (population:
    `∇_W = W* Γ(M)`) or of its empirical version `½n⁻¹Σ(y_i − f*(Wᵀx_i))²`."""

    target: Target
    data: Data

    metric = "stiefel"

    def __init__(self, target: Target, data: Data | None = None):
        self.target, self.data = target, _check_data(target, data)

    def _point(self, W, name="W"):
        W = super()._point(W, name)
        if W.shape[1] != self.target.link.dim:
            raise ValueError(f"the planted flow needs r = k = {self.target.link.dim}, got `{name}` shape {W.shape}")
        return W

    def gradient(self, W, t=0.0):
        W = self._point(W)
        if isinstance(self.data, Population):
            return self.target.W_star @ Planted(self.target.link).gradient(self.target.overlap(W))
        batch = _batch(self.data, self.target, t)
        return _envelope_gradient(_KnownLink(self.target.link), batch, W)

    def loss(self, W):
        W = self._point(W)
        return Planted(self.target.link).loss(self.target.overlap(W))

    def train_loss(self, W, t=0.0):
        W = self._point(W)
        if isinstance(self.data, Population):
            return jnp.asarray(jnp.nan, W.dtype)
        batch = _batch(self.data, self.target, t)
        return 0.5 * jnp.mean((batch.y - self.target.link(_project(batch, W))) ** 2)

    def fitted(self, W, t=0.0):
        """The known link `f*`."""
        self._point(W)
        return _KnownLink(self.target.link)


class _KnownLink(AbstractFittedLink):
    link: Link

    def __call__(self, z):
        return self.link(z)
