"""Gradients of whole experiments (`jax.grad` through diffrax) against central finite
differences, for each hyperparameter: ridge μ, Mehler ρ, a link coefficient and the
label noise σ; and the smooth summaries against their definitions."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LOWERING, compile_events
from scipy.integrate import trapezoid

import mimflow
from mimflow import links


def _central_difference(fn, params, name, relative_step=1e-4):
    step = relative_step * abs(float(params[name]))
    up, down = dict(params), dict(params)
    up[name] = params[name] + step
    down[name] = params[name] - step
    return (np.asarray(fn(up)) - np.asarray(fn(down))) / (2 * step)


def _summaries(trajectory, index):
    return jnp.stack(
        [trajectory.loss[-1], mimflow.loss_area(trajectory), mimflow.smooth_escape_time(trajectory, index, 0.5, 0.05)]
    )


def _assert_gradients_match(fn, params, tol=1e-4):
    """`jax.grad` of a weighted sum of `fn`'s outputs against central differences of
    each output, for each parameter. The weights put every output on one scale (its
    largest difference quotient), so an error of relative size ε in any one output's
    gradient shows as ≈ ε of the sum of the terms' sizes (one reverse pass, not the
    three of `jacrev`: CI time)."""
    forward = jax.jit(fn)
    finite = {name: _central_difference(forward, params, name) for name in params}
    sizes = np.max(np.abs(np.stack(list(finite.values()))), axis=0)
    assert np.all(sizes > 1e-6), sizes  # every output depends on some parameter
    weights = 1.0 / sizes
    gradient = jax.jit(jax.grad(lambda p: fn(p) @ jnp.asarray(weights)))(params)
    for name in params:
        exact, expected = float(gradient[name]), float(finite[name] @ weights)
        scale = float(np.abs(finite[name] * weights).sum())
        assert np.isfinite(exact), name
        assert abs(exact - expected) <= tol * scale, (name, exact, expected, finite[name])
        assert scale > 1e-3, name  # the outcome does depend on it


@pytest.mark.slow  # CI time: notebooks/05_differentiable_sweeps (run by test_notebooks.py) checks reduced gradients against a closed form and finite differences
def test_reduced_gradients_over_a_grid():
    """Mean over a vmapped grid of seeds of the loss at T, the log-time area under the
    loss and the smooth escape time of the second direction, differentiated with
    respect to the ridge, the Mehler ρ and the h3 coefficient of the link."""
    experiment = mimflow.ReducedExperiment(
        links.hermite(1, 2, 0) + links.hermite(3, 2, 1), jax.random.PRNGKey(0), 300.0, d=60.0, num_saves=24
    )
    points = mimflow.grid_points({"seed": [0, 1]})

    def outcome(params):
        link = links.hermite(1, 2, 0) + params["c"] * links.hermite(3, 2, 1)
        run = lambda point: experiment({**point, "link": link, "ridge": params["ridge"], "rho": params["rho"]})
        return jax.vmap(lambda point: _summaries(run(point), 1))(points).mean(axis=0)

    params = {"ridge": jnp.asarray(0.1), "rho": jnp.asarray(0.8), "c": jnp.asarray(1.2)}
    _assert_gradients_match(outcome, params)


@pytest.mark.optimized  # runs long enough that optimised code pays for its compile
def test_flow_gradients_finite_samples():
    """A kernel-ridge two-timescale flow on n = 64 samples in d = 16, two seeds under `vmap`:
    gradients of the mean loss at T, loss area and smooth escape time with respect to
    ridge, ρ and noise σ (under `vmap`, saves a finished or rejected element evaluates
    and discards once made these `nan`)."""
    experiment = mimflow.FlowExperiment(
        links.hermite(1) + links.hermite(2),
        jax.random.PRNGKey(0),
        20.0,
        d=16,
        d_max=16,
        n=64,
        fit=mimflow.KernelRidge(mimflow.Mehler(0.5), 1e-3),
        num_saves=8,
    )
    points = mimflow.grid_points({"seed": [0, 3]})  # vmapped: runs of 439 and 238 steps share a loop

    def outcome(params):
        return jax.vmap(lambda point: _summaries(experiment({**point, **params}), 0))(points).mean(axis=0)

    params = {"ridge": jnp.asarray(1e-3), "rho": jnp.asarray(0.5), "noise": jnp.asarray(0.5)}
    _assert_gradients_match(outcome, params)


def test_smooth_summaries_against_definitions():
    link = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)
    overlap0 = mimflow.sample_overlap(jax.random.PRNGKey(4), 100.0, 2, 2)
    trajectory = mimflow.simulate_reduced(link, overlap0, 1e6, num_saves=600)
    exact = np.asarray(mimflow.escape_times(trajectory))
    assert np.all(exact < 1e5)
    for index in (0, 1):
        smooth = float(mimflow.smooth_escape_time(trajectory, index, 0.5, 0.002))
        assert smooth == pytest.approx(exact[index], rel=0.02)
    # a threshold never reached: the whole span, t1
    assert float(mimflow.smooth_escape_time(trajectory, 1, 1.5, 0.002)) == pytest.approx(1e6, rel=1e-9)
    ts, loss = np.asarray(trajectory.ts), np.asarray(trajectory.loss)
    assert float(mimflow.loss_area(trajectory)) == pytest.approx(trapezoid(loss[1:], np.log(ts[1:])), rel=1e-12)


@pytest.mark.slow  # 70 s on 2 cores, for CI time; the gradients it uses are checked above
def test_readme_optax_example_lowers_the_loss():
    """The README's tuning example runs as written, and its steps lower the loss."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "optax.adam" in b)
    namespace = {"jax": jax, "mimflow": mimflow, "links": links}
    with compile_events(LOWERING, "loss_at_T") as lowered:  # `step`'s programs, once per compilation
        exec(block, namespace)
    # new values of the same types do not recompile `step` (weakly typed starts did: twice)
    assert len(lowered) == 1, lowered
    first = float(namespace["loss_at_T"]({"log_ridge": jnp.log(1e-3), "logit_rho": jnp.asarray(0.0)}))
    tuned = float(namespace["loss_at_T"](namespace["params"]))
    assert np.isfinite(tuned) and tuned < first - 1e-3, (first, tuned)
    # and each gradient of the last step is finite and non-zero
    assert all(np.isfinite(g) and abs(g) > 0 for g in jax.tree.leaves(namespace["grads"]))
