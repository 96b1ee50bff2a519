"""The malformed-input battery across the Python API (issue 9): every public entry point,
given a bad argument (a wrong shape or type, a value out of its domain, a NaN or inf,
a non-orthonormal matrix, a bad time span), raises a `ValueError` (`ConfigError` is
one) whose message names the parameter and, where it helps, shows the bad value:
never a `TypeError` or `IndexError` from deep inside JAX, never a silent `nan`.

Each case is `(id, zero-argument callable making the bad call, words the message must
contain)`. The ingredients are tiny and every check fires before anything is
integrated, so the file compiles no solver.
"""

import itertools
import math
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import mimflow as mf
from mimflow import links, theory

NAN, INF = math.nan, math.inf
KEY = jax.random.key(0)
H2 = links.hermite(2)  # k = 1
ST2 = links.staircase(2)  # k = 2
D = 6
W = mf.haar_stiefel(KEY, D, 1)
W2 = mf.haar_stiefel(KEY, D, 2)
TARGET = mf.Target(H2, W)
FLOW = mf.TwoTimescaleFlow(TARGET)
PLANTED = mf.PlantedFlow(TARGET)
M = jnp.array([[0.1]])
Z, Y = jnp.ones((4, 1)), jnp.ones(4)
Z2 = jax.random.normal(KEY, (4, 2))  # r = 2
REDUCED = mf.ReducedExperiment(H2, KEY, 1.0, d=10.0)
TRAJECTORY = mf.Trajectory(
    ts=jnp.array([0.0, 1e-2, 1.0]),
    overlap=jnp.zeros((3, 1, 1)),
    loss=jnp.ones(3),
    singular_values=jnp.zeros((3, 1)),
    status=jnp.array(0),
    num_steps=jnp.array(2),
)
PREDICTION = theory.predict(ST2)
TT2, PL2 = mf.TwoTimescale(ST2), mf.Planted(ST2)  # k = 2
# what a summary and the figures read of a run's results, without running one
RESULTS = xr.Dataset(
    {
        "loss": ("time", [1.0, 0.5]),
        "singular_values": (("time", "direction"), [[0.1], [0.9]]),
        "escape_time": ("direction", [0.5]),
        "status": ((), 0),
    },
    coords={"time": [0.0, 1.0]},
    attrs={"config": "name: x", "problem": "two-timescale", "target": "hermite(degree=2)", "k": 1, "r": 1},
)
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
DIMS = [10.0, 100.0]

LINKS = [
    ("hermite-degree-negative", lambda: links.hermite(-1), ["`degree`", "-1"]),
    ("link-residual-negative", lambda: mf.Link({1: jnp.ones(1)}, 1, residual=-1.0), ["`residual`", "≥ 0", "-1."]),
    ("hermite-degree-float", lambda: links.hermite(2.5), ["`degree`", "2.5"]),
    ("hermite-degree-string", lambda: links.hermite("3"), ["`degree`", "'3'"]),
    ("hermite-degree-bool", lambda: links.hermite(True), ["`degree`", "True"]),
    ("hermite-dim-zero", lambda: links.hermite(2, dim=0), ["`dim`", "0"]),
    ("hermite-index-out-of-range", lambda: links.hermite(2, dim=2, index=2), ["`index`", "[0, 2)", "got 2"]),
    ("hermite-index-float", lambda: links.hermite(1, dim=2, index=0.5), ["`index`", "0.5"]),
    ("relu-degree", lambda: links.relu(-1), ["`degree`", "-1"]),
    ("sign-degree", lambda: links.sign(0), ["`degree`", "[1, 63]", "0"]),
    # degrees above 63: a tensor would have more axes than an array can (OverflowError
    # before; degree 64 was accepted and then failed in NumPy, "found 65" axes)
    ("hermite-degree-64", lambda: links.hermite(64), ["`degree`", "[0, 63]", "64"]),
    ("hermite-degree-65", lambda: links.hermite(65), ["`degree`", "[0, 63]", "65"]),
    ("relu-degree-171", lambda: links.relu(171), ["`degree`", "171"]),
    ("sign-degree-173", lambda: links.sign(173), ["`degree`", "173"]),
    ("from-hermite-degree-64", lambda: mf.Link.from_hermite({(64,): 1.0}), ["(64,)", "63"]),
    ("from-hermite-bool-index", lambda: mf.Link.from_hermite({(True, 0): 1.0}), ["(True, 0)"]),
    ("from-function-degree-bool", lambda: mf.Link.from_function(jnp.sum, 1, True), ["`degree`", "True"]),
    ("from-tensors-degree-65", lambda: mf.Link.from_tensors({65: 1.0}, dim=1), ["`tensors` keys", "65"]),
    # the low-level constructor (no symmetrisation): degrees, dim and trailing shapes
    ("link-init-dim", lambda: mf.Link({1: jnp.ones(2)}, 0), ["`dim`", "0"]),
    ("link-init-shape", lambda: mf.Link({2: jnp.ones(2)}, 2), ["`tensors[2]`", "(2, 2)", "(2,)"]),
    ("link-init-key", lambda: mf.Link({-1: jnp.ones(2)}, 2), ["`tensors` keys", "-1"]),
    ("link-init-type", lambda: mf.Link([jnp.ones(2)], 2), ["`tensors`", "list"]),
    ("tanh-degree", lambda: links.tanh("9"), ["`degree`", "'9'"]),
    ("staircase-k", lambda: links.staircase(0), ["`k`", "0"]),
    ("harmonic-degree", lambda: links.harmonic(0), ["`degree`", "0"]),
    ("harmonic-phase-nan", lambda: links.harmonic(3, phase=NAN), ["`phase`", "nan"]),
    ("harmonic-phase-string", lambda: links.harmonic(3, phase="pi"), ["`phase`", "'pi'"]),
    ("embed-link-type", lambda: links.embed("h2", 2, 0), ["`link`", "str"]),
    ("embed-axes-repeated", lambda: links.embed(ST2, 3, (0, 0)), ["`axes`", "(0, 0)"]),
    ("embed-dim", lambda: links.embed(H2, 0, 0), ["`dim`", "0"]),
    ("stack-empty", lambda: links.stack([]), ["`links`", "empty"]),
    ("stack-dims", lambda: links.stack([H2, ST2]), ["`links`", "[1, 2]"]),
    ("stack-type", lambda: links.stack([H2, 3]), ["`links`", "int"]),
    ("from-tensors-empty", lambda: mf.Link.from_tensors({}), ["`tensors`"]),
    ("from-tensors-nan", lambda: mf.Link.from_tensors({1: [NAN]}), ["`tensors[1]`", "nan"]),
    ("from-tensors-shape", lambda: mf.Link.from_tensors({2: np.ones((2, 3))}), ["`tensors[2]`", "(2, 3)"]),
    ("from-tensors-degree", lambda: mf.Link.from_tensors({-1: 1.0}, dim=1), ["`tensors`", "-1"]),
    ("from-tensors-residual-negative", lambda: mf.Link.from_tensors({1: [1.0]}, -1.0), ["`residual`", "-1"]),
    ("from-tensors-residual-nan", lambda: mf.Link.from_tensors({1: [1.0]}, NAN), ["`residual`", "nan"]),
    ("from-hermite-empty", lambda: mf.Link.from_hermite({}), ["`coefficients`"]),
    ("from-hermite-nan", lambda: mf.Link.from_hermite({(1,): NAN}), ["`coefficients[(1,)]`", "nan"]),
    ("from-hermite-string", lambda: mf.Link.from_hermite({(1,): "1"}), ["`coefficients[(1,)]`", "'1'"]),
    ("from-hermite-index", lambda: mf.Link.from_hermite({(-1,): 1.0}), ["`coefficients`", "(-1,)"]),
    ("from-function-not-callable", lambda: mf.Link.from_function(3, 1, 2), ["`fn`", "3"]),
    ("from-function-dim", lambda: mf.Link.from_function(jnp.sum, 0, 2), ["`dim`", "0"]),
    ("from-function-degree", lambda: mf.Link.from_function(jnp.sum, 1, -1), ["`degree`", "-1"]),
    ("from-function-nodes", lambda: mf.Link.from_function(jnp.sum, 1, 4, num_nodes=2), ["`num_nodes`", "2"]),
    ("from-function-nodes-bool", lambda: mf.Link.from_function(jnp.sum, 1, 0, num_nodes=True), ["`num_nodes`", "True"]),
    ("from-function-vector", lambda: mf.Link.from_function(lambda z: jnp.ones(2), 1, 2), ["`fn`", "(2,)"]),
    ("from-function-nan", lambda: mf.Link.from_function(lambda z: jnp.log(z[0]), 1, 2, 4), ["`fn", "nan"]),
    ("link-call-shape", lambda: ST2(np.zeros((5, 3))), ["`z`", "(5, 3)"]),
    ("link-call-nan", lambda: H2(np.array([[NAN]])), ["`z`", "nan"]),
    ("link-transform-orthonormal", lambda: H2.transform(np.array([[2.0]])), ["`matrix`", "orthonormal"]),
    ("link-transform-shape", lambda: ST2.transform(np.eye(3)), ["`matrix`", "(3, 3)"]),
    ("link-transform-nan", lambda: H2.transform(np.array([[NAN]])), ["`matrix`", "nan"]),
    ("link-scale-inf", lambda: H2 * INF, ["`scale`", "inf"]),
    ("link-add-dims", lambda: H2 + ST2, ["dimensions 1 and 2"]),
    ("link-with-degrees", lambda: H2.with_degrees([-2]), ["`degrees`", "-2"]),
    # the low-level constructor checks concrete tensors: finite and real (nan losses before)
    ("link-init-nan", lambda: mf.Link({1: jnp.array([NAN])}, 1), ["`tensors[1]`", "nan"]),
    ("link-init-complex", lambda: mf.Link({1: jnp.array([1j])}, 1), ["`tensors[1]`", "real", "complex"]),
    ("link-init-residual-inf", lambda: mf.Link({1: jnp.ones(1)}, 1, INF), ["`residual`", "inf"]),
    ("from-hermite-list", lambda: mf.Link.from_hermite([((1,), 1.0)]), ["`coefficients`", "dict", "list"]),
    ("from-tensors-list", lambda: mf.Link.from_tensors([1.0]), ["`tensors`", "dict", "list"]),
    # links too large to build (aborted the process, ran out of memory or hung before)
    ("hermite-too-large", lambda: links.hermite(40, dim=3), ["`degree` = 40", "`dim` = 3", "3^40", "2^20"]),
    ("harmonic-too-large", lambda: links.harmonic(40), ["`degree` = 40", "2^40"]),
    ("staircase-too-large", lambda: links.staircase(10), ["`k` = 10", "10^10"]),
    # counted binom(2k − 1, k) (30 000 digits, half a second) and failed to print it, naming nothing
    ("staircase-far-too-large", lambda: links.staircase(10**5), ["`k` = 100000", "degree 100000", "63"]),
    ("hermite-dim-far-too-large", lambda: links.hermite(50, dim=10**100), ["`dim` = 1" + "0" * 100, "~10^"]),
    ("embed-too-large", lambda: links.embed(links.hermite(30), 3, 1), ["`link`", "`dim` = 3", "3^30"]),
    ("link-transform-too-large", lambda: links.hermite(30).transform(np.eye(3)[:, :1]), ["`matrix`", "3^30"]),
    ("from-hermite-too-large", lambda: mf.Link.from_hermite({(1,) * 10: 1.0}), ["`coefficients`", "10^10"]),
    ("from-tensors-too-large", lambda: mf.Link.from_tensors({1: np.ones(2000)}), ["`tensors`", "2000 × 2000"]),
    ("from-function-too-large", lambda: mf.Link.from_function(jnp.sum, 3, 40, 41), ["`dim` = 3", "3^40"]),
    ("from-function-grid", lambda: mf.Link.from_function(lambda z: z[0], 30, 1), ["`num_nodes`", "2^30"]),
]

STIEFEL = [
    ("haar-r-above-d", lambda: mf.haar_stiefel(KEY, 2, 3), ["d=2", "r=3"]),
    ("haar-d-float", lambda: mf.haar_stiefel(KEY, 3.0, 1), ["d=3.0"]),
    ("haar-r-zero", lambda: mf.haar_stiefel(KEY, 3, 0), ["r=0"]),
    ("haar-key", lambda: mf.haar_stiefel("seed", 3, 1), ["`key`", "'seed'"]),
    # JAX's "invalid PRNG key data" before
    ("haar-key-length", lambda: mf.haar_stiefel(jnp.arange(3, dtype=jnp.uint32), 3, 1), ["`key`", "(3,)"]),
    # NumPy's messages before ("could not convert string to float", "inhomogeneous shape")
    ("stiefel-string", lambda: mf.Stiefel("a"), ["`W`", "'a'"]),
    ("principal-cosines-ragged", lambda: mf.principal_cosines([[1, 2], [3]]), ["`overlap`", "[[1, 2], [3]]"]),
    # the formulas hold on St(d, r) only; both returned a result before
    ("retract-point-off", lambda: mf.retract(2 * W, 0 * W), ["`W`", "orthonormal"]),
    ("project-point-off", lambda: mf.project_tangent(2 * W, W, "grassmann"), ["`W`", "orthonormal"]),
    ("stiefel-orthonormal", lambda: mf.Stiefel(np.ones((4, 2))), ["`W`", "orthonormal"]),
    ("stiefel-nan", lambda: mf.Stiefel(np.full((4, 2), NAN)), ["`W`", "nan"]),
    ("stiefel-ndim", lambda: mf.Stiefel(np.ones(4)), ["`W`", "(4,)"]),
    ("stiefel-wide", lambda: mf.Stiefel(np.ones((2, 4))), ["d=2", "r=4"]),
    ("stiefel-haar", lambda: mf.Stiefel.haar(KEY, 1, 2), ["d=1", "r=2"]),
    ("retract-shape", lambda: mf.retract(W, jnp.ones((4, 1))), ["`step`", "(4, 1)"]),
    ("retract-method", lambda: mf.retract(W, 0 * W, "exp"), ["`method`", "'exp'"]),
    ("retract-nan", lambda: mf.retract(W, W * NAN), ["`step`", "nan"]),
    ("retract-point-nan", lambda: mf.retract(W * NAN, W), ["`W`", "nan"]),
    ("project-metric", lambda: mf.project_tangent(W, W, "euclidean"), ["`metric`", "'euclidean'"]),
    ("project-shape", lambda: mf.project_tangent(W, jnp.ones((3, 1)), "grassmann"), ["`direction`", "(3, 1)"]),
    ("project-ndim", lambda: mf.project_tangent(jnp.ones(6), jnp.ones(6), "grassmann"), ["`W`", "(6,)"]),
    ("angles-shapes", lambda: mf.principal_angles(W, jnp.ones((4, 1))), ["`W`", "`U`", "(4, 1)"]),
    ("angles-orthonormal", lambda: mf.principal_angles(W, jnp.ones((D, 1))), ["`U`", "orthonormal"]),
    ("angles-nan", lambda: mf.principal_angles(W * NAN, W), ["`W`", "nan"]),
    ("stiefel-method-angles", lambda: mf.Stiefel(W).principal_angles(jnp.ones((D, 1))), ["`U`", "orthonormal"]),
    ("stiefel-method-angles-string", lambda: mf.Stiefel(W).principal_angles("x"), ["`U`", "'x'"]),
    ("haar-r-bool", lambda: mf.haar_stiefel(KEY, 3, True), ["r=True"]),
    ("stiefel-haar-d-float", lambda: mf.Stiefel.haar(KEY, np.float64(3.0), 1), ["d=np.float64(3.0)"]),
    ("retract-polar-singular", lambda: mf.retract(W, -W, "polar"), ["`step`", "full column rank"]),
    ("sample-overlap-d-small", lambda: mf.sample_overlap(KEY, 1.0, 1, 1), ["`d`", "[2, inf]", "1."]),
    ("sample-overlap-d-nan", lambda: mf.sample_overlap(KEY, NAN, 1, 1), ["`d`", "nan"]),
    ("sample-overlap-d-inf", lambda: mf.sample_overlap(KEY, INF, 1, 1), ["`d`", "inf"]),
    ("sample-overlap-d-vector", lambda: mf.sample_overlap(KEY, jnp.array([10.0, 20.0]), 1, 1), ["`d`", "(2,)"]),
    ("sample-overlap-d-string", lambda: mf.sample_overlap(KEY, "100", 1, 1), ["`d`", "'100'"]),
    ("sample-overlap-k", lambda: mf.sample_overlap(KEY, 10.0, 0, 1), ["`k`", "0"]),
    ("sample-overlap-r", lambda: mf.sample_overlap(KEY, 10.0, 1, 1.5), ["`r`", "1.5"]),
    ("sample-overlap-key", lambda: mf.sample_overlap(0, 10.0, 1, 1), ["`key`", "0"]),
    ("padded-normal-d-max", lambda: mf.padded_normal(KEY, 3, 0, (2,)), ["`d_max`", "0"]),
    ("padded-normal-d-above", lambda: mf.padded_normal(KEY, 5, 4, (2,)), ["`d`", "4]", "5"]),
    ("padded-normal-d-nan", lambda: mf.padded_normal(KEY, NAN, 4, (2,)), ["`d`", "nan"]),
    ("padded-normal-shape", lambda: mf.padded_normal(KEY, 3, 4, 2), ["`shape`", "2"]),
    ("padded-normal-key", lambda: mf.padded_normal(None, 3, 4, (2,)), ["`key`", "None"]),
    ("principal-cosines-ndim", lambda: mf.principal_cosines(jnp.ones(3)), ["`overlap`", "(3,)"]),
    ("principal-cosines-nan", lambda: mf.principal_cosines(jnp.array([[NAN]])), ["`overlap`", "nan"]),
]

FITS = [
    ("mehler-rho-zero", lambda: mf.Mehler(0.0), ["`rho`", "0."]),
    # the zero function, with a `nan` objective, before
    ("fit-no-rows", lambda: mf.KernelRidge(mf.Mehler()).fit(jnp.zeros((0, 2)), jnp.zeros(0)), ["n ≥ 1", "(0, 2)"]),
    ("fit-no-columns", lambda: mf.HermiteFeatures(2).fit(jnp.zeros((3, 0)), jnp.zeros(3)), ["r ≥ 1", "(3, 0)"]),
    ("mehler-rho-one", lambda: mf.Mehler(1.0), ["`rho`", "< 1", "1.0"]),
    ("mehler-rho-string", lambda: mf.Mehler("0.5"), ["`rho`", "'0.5'"]),
    ("mehler-rho-array", lambda: mf.Mehler(jnp.array([0.5, 0.6])), ["`rho`", "scalar", "(2,)"]),
    ("rbf-lengthscale-negative", lambda: mf.RBF(-1.0), ["`lengthscale`", "-1"]),
    ("rbf-lengthscale-inf", lambda: mf.RBF(INF), ["`lengthscale`", "inf"]),
    ("polynomial-degree", lambda: mf.Polynomial(0), ["`degree`", "0"]),
    ("polynomial-degree-bool", lambda: mf.Polynomial(True), ["`degree`", "True"]),
    ("polynomial-offset", lambda: mf.Polynomial(2, -1.0), ["`offset`", "-1"]),
    ("kernel-ridge-kernel", lambda: mf.KernelRidge("rbf"), ["`kernel`", "'rbf'"]),
    ("kernel-ridge-ridge-negative", lambda: mf.KernelRidge(mf.RBF(), -1.0), ["`ridge`", "-1"]),
    ("kernel-ridge-ridge-nan", lambda: mf.KernelRidge(mf.RBF(), NAN), ["`ridge`", "nan"]),
    ("kernel-ridge-ridge-array", lambda: mf.KernelRidge(mf.RBF(), [0.1, 0.2]), ["`ridge`", "(2,)"]),
    ("fit-shapes", lambda: mf.KernelRidge(mf.RBF()).fit(Z, jnp.ones(3)), ["Z", "y", "(4, 1)", "(3,)"]),
    ("fit-z-ndim", lambda: mf.KernelRidge(mf.RBF()).fit(jnp.ones(4), Y), ["Z", "(4,)"]),
    ("fit-z-nan", lambda: mf.KernelRidge(mf.RBF()).fit(Z * NAN, Y), ["`Z`", "nan"]),
    ("fit-z-string", lambda: mf.KernelRidge(mf.RBF()).fit("Z", Y), ["`Z`", "'Z'"]),
    ("fit-y-nan", lambda: mf.HermiteFeatures(2).fit(Z, Y * NAN), ["`y`", "nan"]),
    ("random-features-count", lambda: mf.RandomFeatures(0, KEY), ["`num_features`", "0"]),
    ("random-features-kind", lambda: mf.RandomFeatures(4, KEY, kind="tanh"), ["`kind`", "'tanh'"]),
    ("random-features-key", lambda: mf.RandomFeatures(4, "key"), ["`key`", "'key'"]),
    ("random-features-ridge", lambda: mf.RandomFeatures(4, KEY, ridge=-1.0), ["`ridge`", "-1"]),
    ("random-features-lengthscale", lambda: mf.RandomFeatures(4, KEY, lengthscale=0.0), ["`lengthscale`", "0."]),
    ("hermite-features-degree", lambda: mf.HermiteFeatures(-1), ["`degree`", "-1"]),
    ("hermite-features-rho", lambda: mf.HermiteFeatures(2, rho=2.0), ["`rho`", "2."]),
    ("hermite-features-ridge", lambda: mf.HermiteFeatures(2, ridge=-1.0), ["`ridge`", "-1"]),
    ("hermite-features-degree-bool", lambda: mf.HermiteFeatures(True), ["`degree`", "True"]),
    # fitted links on points of the wrong dimension r (a TypeError, or silently numbers, before)
    ("kernel-model-shape", lambda: mf.KernelRidge(mf.RBF()).fit(Z2, Y)(jnp.ones((3, 5))), ["`z`", "r=2", "(3, 5)"]),
    ("feature-model-shape", lambda: mf.HermiteFeatures(2).fit(Z2, Y)(jnp.ones((3, 5))), ["`z`", "r=2", "(3, 5)"]),
    (
        "feature-model-value-and-grad-shape",
        lambda: mf.RandomFeatures(4, KEY).fit(Z2, Y).value_and_grad(jnp.ones((3, 1))),
        ["`z`", "r=2", "(3, 1)"],
    ),
    ("kernel-model-nan", lambda: mf.KernelRidge(mf.RBF()).fit(Z2, Y)(Z2 * NAN), ["`z`", "nan"]),
]

FLOWS = [
    ("target-link", lambda: mf.Target("h2", W), ["`link`", "str"]),
    ("target-w-star-k", lambda: mf.Target(ST2, W), ["`W_star`", "k=2", "(6, 1)"]),
    ("target-w-star-orthonormal", lambda: mf.Target(H2, np.ones((4, 1))), ["`W_star`", "orthonormal"]),
    ("target-w-star-nan", lambda: mf.Target(H2, W * NAN), ["`W_star`", "nan"]),
    ("target-w-star-string", lambda: mf.Target(H2, "W"), ["`W_star`", "'W'"]),
    ("target-noise-negative", lambda: mf.Target(H2, W, -1.0), ["`noise`", "-1"]),
    ("target-noise-nan", lambda: mf.Target(H2, W, NAN), ["`noise`", "nan"]),
    ("target-sample-n", lambda: TARGET.sample(KEY, 0), ["`n`", "0"]),
    ("target-sample-key", lambda: TARGET.sample(3, 4), ["`key`", "3"]),
    ("target-sample-n-bool", lambda: TARGET.sample(KEY, True), ["`n`", "True"]),
    ("target-overlap-shape", lambda: TARGET.overlap(jnp.ones((4, 1))), ["`W`", "d=6", "(4, 1)"]),
    ("dataset-empty", lambda: mf.Dataset(np.zeros((0, D)), np.zeros(0)), ["`X`", "n ≥ 1", "(0, 6)"]),
    ("dataset-shapes", lambda: mf.Dataset(np.ones((4, 3)), np.ones(3)), ["X", "y", "(4, 3)", "(3,)"]),
    ("dataset-nan", lambda: mf.Dataset(np.full((4, 3), NAN), np.ones(4)), ["`X`", "nan"]),
    ("dataset-y-inf", lambda: mf.Dataset(np.ones((4, 3)), np.full(4, INF)), ["`y`", "inf"]),
    ("online-count", lambda: mf.Online(0, KEY), ["`num_samples`", "0"]),
    ("online-key", lambda: mf.Online(4, 3), ["`key`", "3"]),
    ("online-count-float", lambda: mf.Online(4.0, KEY), ["`num_samples`", "4.0"]),
    # a flow's field, gradient and losses at a point of the wrong shape (TypeError dot_general before)
    ("flow-gradient-shape", lambda: FLOW.gradient(jnp.ones((4, 1))), ["`W`", "d=6", "(4, 1)"]),
    ("flow-gradient-nan", lambda: FLOW.gradient(W * NAN), ["`W`", "nan"]),
    ("flow-loss-shape", lambda: FLOW.loss(jnp.ones(D)), ["`W`", "(6,)"]),
    ("flow-vector-field-string", lambda: FLOW.vector_field(0.0, "W"), ["`W`", "shape ()"]),
    ("flow-train-loss-shape", lambda: FLOW.train_loss(jnp.ones((D, D + 1))), ["`W`", "(6, 7)"]),
    ("flow-test-loss-test", lambda: FLOW.test_loss(W, "test"), ["`test`", "str"]),
    ("planted-gradient-r", lambda: PLANTED.gradient(W2), ["`W`", "r = k = 1", "(6, 2)"]),
    ("planted-loss-shape", lambda: PLANTED.loss([[1.0]]), ["`W`", "(1, 1)"]),
    ("two-timescale-target", lambda: mf.TwoTimescaleFlow("target"), ["`target`", "str"]),
    ("two-timescale-fit", lambda: mf.TwoTimescaleFlow(TARGET, "hermite"), ["`fit`", "str"]),
    ("two-timescale-data", lambda: mf.TwoTimescaleFlow(TARGET, None, "population"), ["`data`", "str"]),
    (
        "two-timescale-data-d",
        lambda: mf.TwoTimescaleFlow(TARGET, mf.HermiteFeatures(2), mf.Dataset(np.ones((4, 3)), np.ones(4))),
        ["`data.X`", "d=3", "d=6"],
    ),
    ("two-timescale-needs-fit", lambda: mf.TwoTimescaleFlow(TARGET, None, mf.Dataset(np.ones((4, D)), Y)), ["`fit`"]),
    ("planted-target", lambda: mf.PlantedFlow("target"), ["`target`", "str"]),
    ("planted-data", lambda: mf.PlantedFlow(TARGET, 3), ["`data`", "int"]),
]

SIMULATE = [
    ("simulate-flow", lambda: mf.simulate("flow", W, 1.0), ["`flow`", "str"]),
    ("simulate-w0-shape", lambda: mf.simulate(FLOW, jnp.ones((4, 1)), 1.0), ["`W0`", "d=6", "(4, 1)"]),
    ("simulate-w0-nan", lambda: mf.simulate(FLOW, W * NAN, 1.0), ["`W0`", "nan"]),
    ("simulate-w0-orthonormal", lambda: mf.simulate(FLOW, jnp.ones((D, 1)), 1.0), ["`W0`", "orthonormal"]),
    ("simulate-planted-r", lambda: mf.simulate(PLANTED, W2, 1.0), ["`W0`", "r = k = 1", "(6, 2)"]),
    ("simulate-t1-zero", lambda: mf.simulate(FLOW, W, 0.0), ["`t1`", "0."]),
    ("simulate-t1-nan", lambda: mf.simulate(FLOW, W, NAN), ["`t1`", "nan"]),
    ("simulate-t1-inf", lambda: mf.simulate(FLOW, W, INF), ["`t1`", "inf"]),
    ("simulate-t1-string", lambda: mf.simulate(FLOW, W, "10"), ["`t1`", "'10'"]),
    ("simulate-t-min-above-t1", lambda: mf.simulate(FLOW, W, 1.0, t_min=2.0), ["`t1`", "(2.0, inf]", "1."]),
    ("simulate-num-saves", lambda: mf.simulate(FLOW, W, 1.0, num_saves=1), ["`num_saves`", "1"]),
    ("simulate-max-steps", lambda: mf.simulate(FLOW, W, 1.0, max_steps=0), ["`max_steps`", "0"]),
    ("simulate-solver", lambda: mf.simulate(FLOW, W, 1.0, solver="tsit5"), ["`solver`", "str"]),
    ("simulate-solver-rodas4", lambda: mf.simulate(FLOW, W, 1.0, solver=mf.Rodas4()), ["`solver`", "Rodas4"]),
    ("simulate-solver-rodas5", lambda: mf.simulate(FLOW, W, 1.0, solver=mf.Rodas5()), ["`solver`", "Rodas5"]),
    ("simulate-retraction", lambda: mf.simulate(FLOW, W, 1.0, retraction="cayley"), ["`method`", "'cayley'"]),
    (
        "simulate-controller",
        lambda: mf.simulate(FLOW, W, 1.0, stepsize_controller="pid"),
        ["`stepsize_controller`", "str"],
    ),
    (
        "simulate-dt0",
        lambda: mf.simulate(FLOW, W, 1.0, dt0=-1.0, stepsize_controller=diffrax.ConstantStepSize()),
        ["`dt0`", "-1"],
    ),
    (
        "simulate-test-d",
        lambda: mf.simulate(FLOW, W, 1.0, test=mf.Dataset(np.ones((4, 3)), np.ones(4))),
        ["`test`", "d=6", "(4, 3)"],
    ),
    ("retracted-solver-method", lambda: mf.RetractedSolver(diffrax.Tsit5(), "cayley"), ["`method`", "'cayley'"]),
    ("retracted-solver-solver", lambda: mf.RetractedSolver("tsit5"), ["`solver`", "str"]),
    ("rodas4-rtol", lambda: mf.Rodas4(rtol=0.0), ["`rtol`", "0."]),
    ("rodas4-atol", lambda: mf.Rodas4(atol=NAN), ["`atol`", "nan"]),
    ("rodas5-rtol", lambda: mf.Rodas5(rtol=-1e-6), ["`rtol`", "-1.e-06"]),
    ("rodas5-lanes", lambda: mf.Rodas5(lanes=0), ["`lanes`", "0"]),
    ("reduced-m0-shape", lambda: mf.simulate_reduced(H2, jnp.ones((2, 1)), 1.0), ["`M0`", "(2, 1)"]),
    ("reduced-m0-nan", lambda: mf.simulate_reduced(H2, jnp.array([[NAN]]), 1.0), ["`M0`", "nan"]),
    ("reduced-m0-above-one", lambda: mf.simulate_reduced(H2, jnp.array([[2.0]]), 1.0), ["`M0`", "≤ 1", "2"]),
    ("reduced-t1-negative", lambda: mf.simulate_reduced(H2, M, -1.0), ["`t1`", "-1"]),
    ("reduced-t1-nan", lambda: mf.simulate_reduced(H2, M, NAN), ["`t1`", "nan"]),
    ("reduced-t1-vector", lambda: mf.simulate_reduced(H2, M, [1.0, 2.0]), ["`t1`", "(2,)"]),
    ("reduced-t-min-zero", lambda: mf.simulate_reduced(H2, M, 1.0, t_min=0.0), ["`t_min`", "0."]),
    ("reduced-num-saves-float", lambda: mf.simulate_reduced(H2, M, 1.0, num_saves=2.0), ["`num_saves`", "2.0"]),
    ("reduced-max-steps", lambda: mf.simulate_reduced(H2, M, 1.0, max_steps=-1), ["`max_steps`", "-1"]),
    ("reduced-problem", lambda: mf.simulate_reduced(H2, M, 1.0, "flat"), ["`problem`", "'flat'"]),
    ("reduced-ridge", lambda: mf.simulate_reduced(H2, M, 1.0, ridge=-1.0), ["`ridge`", "-1"]),
    ("reduced-rho", lambda: mf.simulate_reduced(H2, M, 1.0, rho=0.0), ["`rho`", "0."]),
    ("reduced-link", lambda: mf.simulate_reduced("h2", M, 1.0), ["`link`", "str"]),
    ("reduced-link-stacked", lambda: mf.simulate_reduced(links.stack([H2, H2]), M, 1.0), ["`link`", "stacked"]),
    ("reduced-solver", lambda: mf.simulate_reduced(H2, M, 1.0, solver="kvaerno5"), ["`solver`", "str"]),
    (
        "reduced-rodas4-controller",
        lambda: mf.simulate_reduced(H2, M, 1.0, solver=mf.Rodas4(), stepsize_controller=diffrax.ConstantStepSize()),
        ["`Rodas4`", "`stepsize_controller`"],
    ),
    (
        "reduced-rodas5-adjoint",
        lambda: mf.simulate_reduced(H2, M, 1.0, solver=mf.Rodas5(), adjoint=diffrax.RecursiveCheckpointAdjoint()),
        ["`Rodas5`", "`adjoint`"],
    ),
    ("reduced-adjoint", lambda: mf.simulate_reduced(H2, M, 1.0, adjoint="backsolve"), ["`adjoint`", "str"]),
    ("reduced-planted-r", lambda: mf.simulate_reduced(H2, jnp.full((1, 2), 0.1), 1.0, "planted"), ["`M0`", "(1, 2)"]),
    ("reduced-planted-ridge", lambda: mf.simulate_reduced(H2, M, 1.0, "planted", ridge=0.1), ["ridge=0.1"]),
    ("save-times-t1", lambda: mf.save_times(0.0, 4, 1e-2), ["`t1`", "0."]),
    ("save-times-num-saves", lambda: mf.save_times(1.0, 1, 1e-2), ["`num_saves`", "1"]),
    # an MLIR `TypeError` before the cap
    ("reduced-num-saves-huge", lambda: mf.simulate_reduced(H2, M, 1.0, num_saves=10**30), ["`num_saves`", "10000"]),
    ("simulate-num-saves-huge", lambda: mf.simulate(FLOW, W, 1.0, num_saves=2**20 + 1), ["`num_saves`", "1048577"]),
    ("save-times-t-min", lambda: mf.save_times(1.0, 4, -1.0), ["`t_min`", "-1"]),
    ("save-times-t-min-above-t1", lambda: mf.save_times(1.0, 4, 2.0), ["`t1`", "(2.0, inf]"]),
    ("escape-times-trajectory", lambda: mf.escape_times("trajectory"), ["`trajectory`", "str"]),
    ("escape-times-threshold-zero", lambda: mf.escape_times(TRAJECTORY, 0.0), ["`threshold`", "0."]),
    ("escape-times-threshold-above", lambda: mf.escape_times(TRAJECTORY, 2.0), ["`threshold`", "2."]),
    ("escape-times-threshold-nan", lambda: mf.escape_times(TRAJECTORY, NAN), ["`threshold`", "nan"]),
    ("smooth-escape-trajectory", lambda: mf.smooth_escape_time(None), ["`trajectory`", "NoneType"]),
    ("smooth-escape-index", lambda: mf.smooth_escape_time(TRAJECTORY, index=1), ["`index`", "[0, 1)", "1"]),
    ("smooth-escape-width", lambda: mf.smooth_escape_time(TRAJECTORY, width=0.0), ["`width`", "0."]),
    ("smooth-escape-threshold", lambda: mf.smooth_escape_time(TRAJECTORY, threshold=NAN), ["`threshold`", "nan"]),
    ("loss-area-trajectory", lambda: mf.loss_area({"loss": [1.0]}), ["`trajectory`", "dict"]),
]

REDUCED_PROBLEMS = [
    ("make-problem-link", lambda: mf.make_problem("h2"), ["`link`", "str"]),
    # a string is truthy: "no" ran with the steady-state stop on
    (
        "reduced-steady-state-string",
        lambda: mf.simulate_reduced(H2, M, 1.0, steady_state="no"),
        ["`steady_state`", "'no'"],
    ),
    ("make-problem-problem", lambda: mf.make_problem(H2, "flat"), ["`problem`", "'flat'"]),
    # a problem object carries its link and shrinkage: values beside it would be ignored
    ("make-problem-ridge-beside-object", lambda: mf.make_problem(mf.TwoTimescale(H2), ridge=5.0), ["`ridge`", "5.0"]),
    ("reduced-loss-rho-beside-object", lambda: mf.reduced_loss(H2, M, mf.TwoTimescale(H2), rho=0.5), ["`rho`", "0.5"]),
    (
        "reduced-loss-other-link",
        lambda: mf.reduced_loss(links.hermite(3), M, mf.TwoTimescale(H2)),
        ["`link`", "differs"],
    ),
    ("predict-ridge-beside-object", lambda: theory.predict(mf.Planted(H2), ridge=0.1), ["`ridge`", "0.1"]),
    ("link-norm2-stacked", lambda: links.stack([H2, H2]).norm2(), ["Link.norm2", "stacked"]),
    ("link-call-stacked", lambda: links.stack([H2, H2])(jnp.ones((3, 1))), ["Link.__call__", "stacked"]),
    ("link-coefficients-stacked", lambda: links.stack([H2, H2]).coefficients(), ["Link.coefficients", "stacked"]),
    ("link-embed-stacked", lambda: links.embed(links.stack([H2, H2]), 2, 0), ["Link.transform", "stacked"]),
    ("target-stacked", lambda: mf.Target(links.stack([H2, H2]), W), ["Target", "stacked"]),
    ("two-timescale-ridge", lambda: mf.TwoTimescale(H2, -1.0), ["`ridge`", "-1"]),
    ("two-timescale-rho", lambda: mf.TwoTimescale(H2, rho=1.5), ["`rho`", "1.5"]),
    ("two-timescale-max-degree", lambda: mf.TwoTimescale(H2, max_degree=-1), ["`max_degree`", "-1"]),
    ("two-timescale-max-degree-bool", lambda: mf.TwoTimescale(H2, max_degree=True), ["`max_degree`", "True"]),
    ("two-timescale-link", lambda: mf.TwoTimescale("h2"), ["`link`", "str"]),
    ("planted-problem-link", lambda: mf.Planted(None), ["`link`", "NoneType"]),
    ("reduced-loss-shape", lambda: mf.reduced_loss(H2, jnp.ones((2, 2))), ["`M`", "(2, 2)"]),
    ("reduced-loss-nan", lambda: mf.reduced_loss(H2, [[NAN]]), ["`M`", "nan"]),
    ("reduced-loss-planted-r", lambda: mf.reduced_loss(H2, jnp.ones((1, 2)), "planted"), ["`M`", "(1, 2)"]),
    ("reduced-loss-ridge-string", lambda: mf.reduced_loss(H2, M, ridge="0.1"), ["`ridge`", "'0.1'"]),
    ("reduced-vector-field-shape", lambda: mf.reduced_vector_field(ST2, jnp.ones((1, 2))), ["`M`", "(1, 2)"]),
    ("reduced-vector-field-rho", lambda: mf.reduced_vector_field(H2, M, rho=2.0), ["`rho`", "2."]),
    ("reduced-loss-ragged", lambda: mf.reduced_loss(ST2, [[0.1, 0.0], [0.0]]), ["`M`", "ragged"]),
    # the problems' own methods (a TypeError from dot_general, or silently numbers, before)
    ("two-timescale-loss-shape", lambda: TT2.loss(jnp.ones((3, 1))), ["`overlap`", "(2, r)", "(3, 1)"]),
    ("two-timescale-loss-vector", lambda: TT2.loss(jnp.ones(2)), ["`overlap`", "(2,)"]),
    ("two-timescale-loss-stacked", lambda: mf.TwoTimescale(H2).loss(jnp.full((2, 1, 1), 0.1)), ["(2, 1, 1)"]),
    ("two-timescale-loss-nan", lambda: TT2.loss(jnp.full((2, 2), NAN)), ["`overlap`", "nan"]),
    ("two-timescale-loss-string", lambda: TT2.loss([["a", "b"], ["c", "d"]]), ["`overlap`", "'a'"]),
    ("two-timescale-loss-ragged", lambda: TT2.loss([[0.1, 0.0], [0.0]]), ["`overlap`", "ragged"]),
    ("two-timescale-vector-field-shape", lambda: TT2.vector_field(jnp.ones((3, 1))), ["`overlap`", "(3, 1)"]),
    ("two-timescale-vector-field-scalar", lambda: TT2.vector_field(0.1), ["`overlap`", "shape ()"]),
    ("two-timescale-vector-field-inf", lambda: TT2.vector_field([[INF], [0.0]]), ["`overlap`", "inf"]),
    ("two-timescale-b-shape", lambda: TT2.B(jnp.eye(3)), ["`gram`", "(2, 2)", "(3, 3)"]),
    ("two-timescale-b-rectangular", lambda: TT2.B(jnp.ones((2, 1))), ["`gram`", "(2, 1)"]),
    ("two-timescale-b-list", lambda: TT2.B([[1.0, 0.0]]), ["`gram`", "(1, 2)"]),
    ("two-timescale-b-nan", lambda: TT2.B(jnp.full((2, 2), NAN)), ["`gram`", "nan"]),
    ("two-timescale-b-ragged", lambda: TT2.B([[1.0, 0.0], [0.0]]), ["`gram`", "ragged"]),
    ("planted-problem-loss-r", lambda: PL2.loss(jnp.full((2, 3), 0.1)), ["`overlap`", "r = k = 2", "(2, 3)"]),
    ("planted-problem-loss-k", lambda: PL2.loss(jnp.full((1, 2), 0.1)), ["`overlap`", "(1, 2)"]),
    ("planted-problem-loss-stacked", lambda: mf.Planted(H2).loss(jnp.full((2, 1, 1), 0.1)), ["(2, 1, 1)"]),
    ("planted-problem-gradient-r", lambda: PL2.gradient(jnp.ones((2, 1))), ["`overlap`", "r = k = 2", "(2, 1)"]),
    ("planted-problem-gradient-inf", lambda: PL2.gradient(jnp.full((2, 2), INF)), ["`overlap`", "inf"]),
    ("planted-problem-vector-field-shape", lambda: PL2.vector_field([[0.1]]), ["`overlap`", "(1, 1)"]),
    ("planted-problem-vector-field-nan", lambda: PL2.vector_field(np.full((2, 2), NAN)), ["`overlap`", "nan"]),
]

SWEEPS = [
    ("grid-empty", lambda: mf.grid_points({}), ["`axes`"]),
    ("grid-not-dict", lambda: mf.grid_points([1, 2]), ["`axes`", "[1, 2]"]),
    ("grid-2d", lambda: mf.grid_points({"d": [[1, 2]]}), ["'d'", "(1, 2)"]),
    ("grid-nan", lambda: mf.grid_points({"d": [10.0, NAN]}), ["'d'", "nan"]),
    ("grid-string", lambda: mf.grid_points({"d": ["ten"]}), ["'d'", "'ten'"]),
    ("grid-empty-axis", lambda: mf.grid_points({"d": []}), ["'d'", "empty"]),
    ("grid-link-type", lambda: mf.grid_points({"link": [3]}), ["'link'", "int"]),
    ("grid-link-dims", lambda: mf.grid_points({"link": [H2, ST2]}), ["'link'", "[1, 2]"]),
    ("grid-seed-negative", lambda: mf.grid_points({"seed": [0, -1]}), ["'seed'", "-1"]),
    ("grid-seed-fraction", lambda: mf.grid_points({"seed": [1.5]}), ["'seed'", "1.5"]),
    ("grid-experiment-d-small", lambda: mf.grid_points({"d": [10.0, 1.0]}, REDUCED), ["'d'", "k + r = 2", "1"]),
    ("grid-experiment-axis", lambda: mf.grid_points({"noise": [0.1]}, REDUCED), ["'noise'"]),
    ("grid-experiment-type", lambda: mf.grid_points({"d": [10.0]}, "experiment"), ["`experiment`", "str"]),
    ("sweep-experiment", lambda: mf.sweep("experiment", {"seed": [0]}), ["`experiment`", "str"]),
    ("sweep-axis-unknown", lambda: mf.sweep(REDUCED, {"noise": [0.1]}), ["'noise'"]),
    ("sweep-d-small", lambda: mf.sweep(REDUCED, {"d": [1.0]}), ["'d'", "k + r = 2", "1"]),
    ("sweep-no-d", lambda: mf.sweep(mf.ReducedExperiment(H2, KEY, 1.0), {"seed": [0]}), ["'d'", "`d`"]),
    ("sweep-ridge", lambda: mf.sweep(REDUCED, {"ridge": [-0.5]}), ["'ridge'", "-0.5"]),
    ("sweep-rho", lambda: mf.sweep(REDUCED, {"rho": [2.0]}), ["'rho'", "2"]),
    ("sweep-batch-size", lambda: mf.sweep(REDUCED, {"seed": [0]}, batch_size=0), ["`batch_size`", "0"]),
    ("sweep-threshold", lambda: mf.sweep(REDUCED, {"seed": [0]}, escape_threshold=0.0), ["`escape_threshold`"]),
    ("sweep-devices", lambda: mf.sweep(REDUCED, {"seed": [0]}, devices=[]), ["`devices`", "empty"]),
    ("plan-max-batch", lambda: mf.SweepPlan(REDUCED, {"seed": [0]}, max_batch_size=0), ["`max_batch_size`", "0"]),
    ("reduced-experiment-t1", lambda: mf.ReducedExperiment(H2, KEY, 0.0), ["`t1`", "0."]),
    ("reduced-experiment-t1-nan", lambda: mf.ReducedExperiment(H2, KEY, NAN), ["`t1`", "nan"]),
    ("reduced-experiment-d", lambda: mf.ReducedExperiment(H2, KEY, 1.0, d=1.0), ["`d`", "1."]),
    ("reduced-experiment-d-vector", lambda: mf.ReducedExperiment(H2, KEY, 1.0, d=[10.0, 20.0]), ["`d`", "(2,)"]),
    ("reduced-experiment-r", lambda: mf.ReducedExperiment(H2, KEY, 1.0, r=0), ["`r`", "0"]),
    ("reduced-experiment-link", lambda: mf.ReducedExperiment("h2", KEY, 1.0), ["`link`", "str"]),
    ("reduced-experiment-key", lambda: mf.ReducedExperiment(H2, "key", 1.0), ["`key`", "'key'"]),
    ("reduced-experiment-ridge", lambda: mf.ReducedExperiment(H2, KEY, 1.0, ridge=-1.0), ["`ridge`", "-1"]),
    ("reduced-experiment-num-saves", lambda: mf.ReducedExperiment(H2, KEY, 1.0, num_saves=1), ["`num_saves`"]),
    ("reduced-experiment-t-min", lambda: mf.ReducedExperiment(H2, KEY, 1.0, t_min="0.1"), ["`t_min`", "'0.1'"]),
    ("reduced-experiment-max-steps", lambda: mf.ReducedExperiment(H2, KEY, 1.0, max_steps=0), ["`max_steps`", "0"]),
    ("reduced-experiment-solver", lambda: mf.ReducedExperiment(H2, KEY, 1.0, solver="rodas4"), ["`solver`", "str"]),
    ("reduced-experiment-rtol", lambda: mf.ReducedExperiment(H2, KEY, 1.0, rtol=0.0), ["`rtol`", "0."]),
    ("reduced-experiment-problem", lambda: mf.ReducedExperiment(H2, KEY, 1.0, problem="x"), ["`problem`", "'x'"]),
    ("reduced-experiment-planted-r", lambda: mf.ReducedExperiment(H2, KEY, 1.0, problem="planted", r=2), ["r=2"]),
    ("flow-experiment-d-max", lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=1), ["`d_max`", "1"]),
    ("flow-experiment-d", lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=8, d=9), ["`d`", "9"]),
    ("flow-experiment-n", lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=8, n=0), ["`n`", "0"]),
    ("flow-experiment-needs-fit", lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=8, n=4), ["`fit`", "None"]),
    ("flow-experiment-fit", lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=8, fit="ridge"), ["`fit`", "str"]),
    ("flow-experiment-noise", lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=8, noise=-1.0), ["`noise`", "-1"]),
    ("flow-experiment-rodas4", lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=8, solver=mf.Rodas4()), ["`solver`"]),
    (
        "flow-experiment-rodas5",
        lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=8, solver=mf.Rodas5()),
        ["`solver`", "Rodas5"],
    ),
    ("flow-experiment-problem", lambda: mf.FlowExperiment(H2, KEY, 1.0, d_max=8, problem="x"), ["`problem`"]),
    ("flow-experiment-t1", lambda: mf.FlowExperiment(H2, KEY, INF, d_max=8), ["`t1`", "inf"]),
    ("flow-experiment-key", lambda: mf.FlowExperiment(H2, 0, 1.0, d_max=8), ["`key`", "0"]),
]

CONFIGS = [
    ("load-config-path", lambda: mf.load_config(3), ["`path`", "int"]),
    ("load-config-missing", lambda: mf.load_config("/nonexistent/config.yaml"), ["/nonexistent/config.yaml"]),
    ("load-config-t1", lambda: mf.load_config(CONFIG, ["time.t1=-1"]), ["time.t1", "-1"]),
    ("load-config-num-saves", lambda: mf.load_config(CONFIG, ["time.num_saves=1"]), ["time.num_saves", "1"]),
    ("load-config-dynamics", lambda: mf.load_config(CONFIG, ["dynamics=fast"]), ["dynamics", "'fast'"]),
    ("load-config-max-steps", lambda: mf.load_config(CONFIG, ["solver.max_steps=0"]), ["solver.max_steps", "0"]),
    ("load-config-seed", lambda: mf.load_config(CONFIG, ["seed=-1"]), ["seed", "-1"]),
    ("load-config-override", lambda: mf.load_config(CONFIG, ["time.t1"]), ["--set", "'time.t1'"]),
    ("load-config-overrides-string", lambda: mf.load_config(CONFIG, "time.t1=10"), ["`overrides`", "'time.t1=10'"]),
    ("run-config-type", lambda: mf.run_config(str(CONFIG)), ["`config`", "load_config"]),
    ("run-config-raw", lambda: mf.run_config({"name": "x"}), ["`config`", "{'name': 'x'}"]),
    ("load-results-type", lambda: mf.load_results(3), ["`directory`", "int"]),
    ("load-results-missing", lambda: mf.load_results("/nonexistent"), ["/nonexistent", "results.nc"]),
    ("summarize-type", lambda: mf.summarize("results"), ["`results`", "str"]),
    ("summarize-no-config", lambda: mf.summarize(xr.Dataset()), ["`results`", "without a config"]),
    ("figures-type", lambda: mf.figures(None, {}), ["`results`", "NoneType"]),
    (
        "summarize-missing-variable",
        lambda: mf.summarize(RESULTS.drop_vars("escape_time")),
        ["`results`", "escape_time"],
    ),
    ("figures-missing-variable", lambda: mf.figures(RESULTS.drop_vars("loss"), {}), ["`results`", "loss"]),
]

THEORY = [
    ("predict-link", lambda: theory.predict("h2"), ["`link`", "str"]),
    ("predict-r", lambda: theory.predict(H2, r=0), ["`r`", "0"]),
    ("predict-tol", lambda: theory.predict(H2, tol=2.0), ["`tol`", "2.0"]),
    ("predict-problem", lambda: theory.predict(H2, "flat"), ["`problem`", "'flat'"]),
    ("predict-planted-r", lambda: theory.predict(H2, "planted", r=2), ["r = 2"]),
    ("predict-ridge", lambda: theory.predict(H2, ridge=-1.0), ["`ridge`", "-1"]),
    ("predict-stacked", lambda: theory.predict(links.stack([H2, H2])), ["`link`", "stacked"]),
    ("fit-scaling-dims", lambda: theory.fit_scaling([10.0], [[1.0]]), ["`dims`", "[10.]"]),
    ("fit-scaling-dims-string", lambda: theory.fit_scaling(["a", "b"], [[1.0], [2.0]]), ["`dims`", "'a'"]),
    ("fit-scaling-times-shape", lambda: theory.fit_scaling(DIMS, [[1.0]]), ["`times`", "(1, 1)"]),
    ("fit-scaling-times-negative", lambda: theory.fit_scaling(DIMS, [[-1.0], [1.0]]), ["`times`", "-1"]),
    ("fit-scaling-level", lambda: theory.fit_scaling(DIMS, [[1.0], [2.0]], level=1.5), ["`level`", "1.5"]),
    ("fit-scaling-level-nan", lambda: theory.fit_scaling(DIMS, [[1.0], [2.0]], level=NAN), ["`level`", "nan"]),
    ("fit-scaling-bootstrap", lambda: theory.fit_scaling(DIMS, [[1.0], [2.0]], num_bootstrap=0), ["`num_bootstrap`"]),
    ("fit-scaling-seed", lambda: theory.fit_scaling(DIMS, [[1.0], [2.0]], seed="0"), ["`seed`", "'0'"]),
    ("compare-shape", lambda: theory.compare(PREDICTION, DIMS, [[1.0], [2.0]]), ["`escape_times`", "(2, 1)"]),
    (
        "compare-tolerance",
        lambda: theory.compare(PREDICTION, DIMS, np.ones((2, 1, 2)), tolerance=-1.0),
        ["`tolerance`"],
    ),
    ("compare-prediction", lambda: theory.compare("p", DIMS, np.ones((2, 1, 2))), ["`prediction`", "str"]),
    ("saddle-durations-shape", lambda: theory.saddle_durations(PREDICTION, [1.0]), ["`escape_times`", "(1,)"]),
    ("saddle-durations-negative", lambda: theory.saddle_durations(PREDICTION, [-1.0, 2.0]), ["`escape_times`", "-1"]),
    ("hermite-1d-degree", lambda: mf.hermite_1d(-1, 0.5), ["`degree`", "-1"]),
    ("hermite-1d-degree-float", lambda: mf.hermite_1d(2.5, 0.5), ["`degree`", "2.5"]),
    ("hermite-1d-x-string", lambda: mf.hermite_1d(2, "x"), ["`x`", "'x'"]),
    ("hermite-1d-x-nan", lambda: mf.hermite_1d(2, [0.5, NAN]), ["`x`", "nan"]),
    ("multi-indices-dim", lambda: mf.multi_indices(0, 2), ["`dim`", "0"]),
    ("multi-indices-degree", lambda: mf.multi_indices(2, -1), ["`degree`", "-1"]),
    ("multi-indices-list", lambda: mf.multi_indices([2], 2), ["`dim`", "[2]"]),
    ("prediction-times-string", lambda: PREDICTION.times("a"), ["`d`", "'a'"]),
    ("prediction-times-negative", lambda: PREDICTION.times([10.0, -1.0]), ["`d`", "-1"]),
    # a log d law below d = 1 gave a negative time
    ("prediction-times-below-one", lambda: PREDICTION.times([0.5]), ["`d`", "≥ 1", "0.5"]),
    ("predict-r-float", lambda: theory.predict(H2, r=1.0), ["`r`", "1.0"]),
    ("fit-scaling-bootstrap-float", lambda: theory.fit_scaling(DIMS, [[1.0], [2.0]], num_bootstrap=10.0), ["10.0"]),
    ("multi-indices-too-large", lambda: mf.multi_indices(1000, 10), ["`dim` = 1000", "`degree` = 10", "2^20"]),
    ("saddle-time-nan", lambda: PREDICTION.saddles[0].time(NAN), ["`d`", "nan"]),
]

CASES = LINKS + STIEFEL + FITS + FLOWS + SIMULATE + REDUCED_PROBLEMS + SWEEPS + CONFIGS + THEORY


def test_case_ids_are_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(("make", "words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_malformed_input_raises_value_error_naming_it(make, words):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in the message {message!r}"


# --- inputs that must be accepted ----------------------------------------------------


def test_mehler_rho_may_be_traced():
    """A traced `rho` (jit, vmap over kernel widths) fits as an eager one does; concrete
    values are still checked (`mehler-rho-one` above)."""
    y = jnp.sin(Z2[:, 0])
    fit = lambda rho: mf.KernelRidge(mf.Mehler(rho)).fit(Z2, y).coefficients  # noqa: E731
    np.testing.assert_allclose(jax.jit(fit)(0.5), fit(0.5), rtol=1e-12)
    batched = jax.vmap(fit)(jnp.array([0.3, 0.5]))
    np.testing.assert_allclose(batched, np.stack([fit(0.3), fit(0.5)]), rtol=1e-12)


def test_numpy_integers_are_integers():
    """Sizes and counts that are NumPy integers (from `np.arange`, an array's `.shape` of a
    NumPy array, a config) work as Python ones, and what is static stays a Python `int`."""
    i64 = np.int64
    assert TARGET.sample(KEY, i64(4)).X.shape == (4, D)
    np.testing.assert_array_equal(mf.haar_stiefel(KEY, i64(D), np.int32(1)), W)
    np.testing.assert_array_equal(mf.Stiefel.haar(KEY, i64(D), i64(1)).W, W)
    online = mf.Online(i64(3), KEY)
    assert online.num_samples == 3 and type(online.num_samples) is int
    features = mf.HermiteFeatures(i64(2))
    assert features.degree == 2 and type(features.degree) is int
    assert mf.RandomFeatures(i64(4), KEY).num_features == 4
    prediction = theory.predict(H2, r=i64(1))
    assert prediction.r == 1 and type(prediction.r) is int
    times = [[1.0, 2.0, 4.0], [3.0, 5.0, 9.0]]
    fit, expected = (theory.fit_scaling(DIMS, times, num_bootstrap=n) for n in (i64(10), 10))
    assert (fit.slope, fit.interval) == (expected.slope, expected.interval)


def test_lists_are_arrays_at_the_public_boundary():
    """Nested lists are taken as the arrays they spell (a TypeError from JAX before)."""
    listed = np.asarray(W).tolist()
    np.testing.assert_allclose(mf.principal_cosines([[0.5]]), [0.5])
    np.testing.assert_array_equal(TARGET.overlap(listed), TARGET.overlap(W))
    np.testing.assert_array_equal(FLOW.gradient(listed), FLOW.gradient(W))
    np.testing.assert_array_equal(FLOW.vector_field(0.0, listed), FLOW.vector_field(0.0, W))
    assert FLOW.loss(listed) == FLOW.loss(W)
    np.testing.assert_array_equal(mf.Stiefel(W).principal_angles(listed), mf.Stiefel(W).principal_angles(W))
    fitted = mf.HermiteFeatures(2).fit(Z2, Y)
    np.testing.assert_array_equal(fitted(np.asarray(Z2).tolist()), fitted(Z2))


def test_problem_methods_take_lists_and_numpy_arrays():
    """`TwoTimescale.loss`, `.vector_field`, `.B` and `Planted.loss`, `.gradient`,
    `.vector_field` take nested lists and NumPy arrays (an AttributeError or a TypeError
    before), integers as floats. They check the argument's shape and finiteness, not that
    it is an overlap (singular values ≤ 1): off the domain they evaluate the polynomial,
    as they must on a state a solver step pushed slightly past it; `reduced_loss` and
    `reduced_vector_field`, which take a user's overlap, check that too."""
    m = np.array([[0.3, 0.1], [-0.2, 0.4]])
    for method in (TT2.loss, TT2.vector_field, TT2.B, PL2.loss, PL2.gradient, PL2.vector_field):
        expected = method(jnp.asarray(m))
        np.testing.assert_array_equal(method(m.tolist()), expected)
        np.testing.assert_array_equal(method(m), expected)
        assert method([[1, 0], [0, 1]]).dtype == jnp.float64
    np.testing.assert_array_equal(TT2.loss([[0.3], [0.1]]), TT2.loss(jnp.array([[0.3], [0.1]])))  # r = 1 ≠ k
    assert np.isfinite(TT2.loss(2 * np.eye(2))) and np.isfinite(PL2.loss(2 * np.eye(2)))
    with pytest.raises(ValueError, match="singular values"):
        mf.reduced_loss(ST2, 2 * np.eye(2))


def test_problem_method_checks_are_static_under_jit_and_vmap():
    """Inside `jit`, `vmap` and `grad` the methods check shapes only (static, at trace
    time: a ValueError, a TypeError from dot_general before) and pass traced values
    through unchecked, as the solvers' right-hand sides need: tracing reads no value (no
    concretization error) and a traced nan is a nan, not an error. Traced, not compiled,
    but for one right-hand side."""
    m = jnp.array([[0.3, 0.1], [-0.2, 0.4]])
    # (method, its output's shape, a shape it refuses: (2, 3) is a two-timescale overlap, r ≠ k)
    methods = [(TT2.loss, (), (3, 2)), (TT2.vector_field, (2, 2), (3, 2)), (TT2.B, (2, 2), (2, 3))]
    methods += [(PL2.loss, (), (2, 3)), (PL2.gradient, (2, 2), (2, 3)), (PL2.vector_field, (2, 2), (2, 3))]
    for method, shape, bad_shape in methods:
        assert jax.make_jaxpr(method)(m).out_avals[0].shape == shape
        assert jax.eval_shape(jax.vmap(method), jnp.stack([m, -m])).shape == (2, *shape)
        with pytest.raises(ValueError, match="shape"):
            jax.make_jaxpr(method)(jnp.ones(bad_shape))
    assert jax.make_jaxpr(jax.grad(lambda a: PL2.loss(a)))(m).out_avals[0].shape == (2, 2)
    field = jax.jit(lambda a: TT2.vector_field(a))
    np.testing.assert_allclose(field(m), TT2.vector_field(m), rtol=1e-12)
    assert jnp.all(jnp.isnan(field(jnp.full((2, 2), NAN))))


def test_point_checks_hold_under_jit_vmap_and_grad():
    """The shape checks of a flow's methods and of fitted links read static shapes only:
    they run inside `jit`, `vmap` and `grad` (where values are not checked)."""
    np.testing.assert_allclose(jax.jit(lambda w: FLOW.gradient(w))(W), FLOW.gradient(W), rtol=1e-12)
    starts = jnp.stack([W, mf.haar_stiefel(jax.random.key(1), D, 1)])
    assert jax.vmap(lambda w: PLANTED.vector_field(0.0, w))(starts).shape == (2, D, 1)
    assert jnp.all(jnp.isfinite(jax.grad(FLOW.loss)(W)))
    fitted = mf.KernelRidge(mf.RBF()).fit(Z2, Y)
    np.testing.assert_allclose(jax.jit(lambda z: fitted(z))(Z2), fitted(Z2), rtol=1e-12)


def test_problem_object_beside_its_own_link():
    """A problem object beside the same link (also padded with zero degrees, or traced) is
    accepted: `½(1 − m⁴)` for `h2` at `m = 0.1`, the two-timescale loss (DESIGN §2)."""
    expected = 0.5 * (1 - 0.1**4)
    problem = mf.TwoTimescale(H2)
    assert float(mf.reduced_loss(H2, M, problem)) == pytest.approx(expected, rel=1e-14)
    assert float(mf.reduced_loss(H2.with_degrees([0, 1, 3]), M, problem)) == pytest.approx(expected, rel=1e-14)
    traced = jax.jit(lambda c: mf.reduced_loss(H2 * c, M, mf.TwoTimescale(H2 * c)))(1.0)
    assert float(traced) == pytest.approx(expected, rel=1e-14)


def test_link_checks_skip_traced_tensors():
    """`Link.__init__` checks concrete tensors only: links built inside `jit` and `grad`
    (a traced scale, traced tensors) and stacked links still work."""
    assert jax.grad(lambda c: mf.reduced_loss(H2 * c, M))(2.0) == pytest.approx(2 * 0.9999, rel=1e-12)
    norm2 = jax.jit(lambda t: mf.Link({1: t}, 1).norm2())(jnp.array([3.0]))
    assert norm2 == pytest.approx(9.0)
    stacked = links.stack([H2, links.hermite(1), H2 * 0.5])
    np.testing.assert_allclose(jax.vmap(lambda f: f.norm2())(stacked), [1.0, 1.0, 0.25])


def _multi_indices_by_enumeration(dim, degree):
    """The test oracle: every tuple of `{degree, …, 0}^dim` in lexicographically decreasing
    order, kept if it sums to `degree` (the implementation before it was combinatorial)."""
    rows = [a for a in itertools.product(range(degree, -1, -1), repeat=dim) if sum(a) == degree]
    return np.array(rows, dtype=np.int32).reshape(len(rows), dim)


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 5])
def test_multi_indices_order_and_tensor_map_match_enumeration(dim):
    from mimflow._hermite import _tuple_map

    for degree in range(7):
        expected = _multi_indices_by_enumeration(dim, degree)
        got = mf.multi_indices(dim, degree)
        assert got.dtype == np.int32 and got.shape == (math.comb(degree + dim - 1, degree), dim)
        np.testing.assert_array_equal(got, expected)
        if degree <= 5:  # each index tuple of the tensor maps to the row of the multi-index it counts
            rows, _ = _tuple_map(dim, degree)
            counts = [np.bincount(np.array(t, dtype=int), minlength=dim) for t in np.ndindex(*(dim,) * degree)]
            np.testing.assert_array_equal(expected[rows], np.array(counts).reshape(-1, dim))


def test_multi_indices_are_listed_not_searched():
    """`multi_indices(12, 6)`: 12 376 rows, listed directly (enumerating 7^12 tuples hung)."""
    table = mf.multi_indices(12, 6)
    assert table.shape == (12376, 12) and np.all(table.sum(axis=1) == 6)
    assert len({tuple(row) for row in table}) == len(table)


def test_unreadable_results_file_is_a_value_error(tmp_path, capsys):
    """A corrupt or NetCDF4 (HDF5) `results.nc`: a `ValueError` naming the file, and
    `mimflow plot` exits with code 2 and one line, as for other user errors (a TypeError
    from xarray and a traceback before)."""
    from mimflow._cli import main

    for name, content in [("corrupt", b"not a netcdf file"), ("hdf5", b"\x89HDF\r\n\x1a\n" + bytes(600))]:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "results.nc").write_bytes(content)
        with pytest.raises(ValueError, match="results.nc"):
            mf.load_results(directory)
        assert main(["plot", str(directory)]) == 2
        error = capsys.readouterr().err
        assert str(directory / "results.nc") in error and len(error.strip().splitlines()) == 1
