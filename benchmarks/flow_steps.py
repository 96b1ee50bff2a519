"""Finite-sample flow steps against the memory-bandwidth floor (issue 8, DESIGN §6).

Usage: python benchmarks/flow_steps.py [--smoke] [--out FILE.json] [--sizes cpu|full]
                                       [--n 4096 65536] [--d 64 256] [--seeds 64] [--dtype float64]

One flow step is one right-hand side `TwoTimescaleFlow(target, fit, data).vector_field(t, W)`
(`Z = X W`, the closed-form ridge fit on `Z`, the envelope gradient `Xᵀ(…)`, the tangent
projection), jitted, at a Haar `W ∈ St(d, 2)`, for Hermite features and ReLU random features,
on the data as `simulate` passes them to the solver (on a CPU with a `(d, n)` copy of `X` for
`Xᵀ(…)`, made once before the solve: `mimflow._flows._with_transpose`). Measured in the same run:

- the memory bandwidth (the best of a jitted sum, copy and matrix-vector product over an
  array much larger than the caches), which sets the floor of a step, `2·n·d·bytes / bandwidth`
  (a step reads `X` twice);
- the matrix-multiply peak (a large jitted square product, flop/s);
- the step against a plain NumPy implementation of the same step ("what users write today"),
  timed in separate NumPy-only processes (so that JAX's CPU thread pool does not compete with
  NumPy's BLAS threads), with the BLAS's default threads and with one, the faster counting, and
  the relative difference of the two vector fields;
- B seeds (B starts `W`) sharing one dataset, `vmap`ped: the two big products become
  `(n × d)·(d × B r)` and `(d × n)·(n × B r)` matrix products; their flop/s is compared with the peak;
- each step also inside a solve's loop, `loop_step_time`: a single call allocates its
  temporary buffers, which a solve does once (on this kind of machine a large part of a
  ReLU-feature step; `benchmarks/RESULTS.md` §2);
- for comparison, the two big products alone (`X W` and `Xᵀ R`, one jitted call, for r and for
  B r columns, `Xᵀ R` from the same layout as the step's): how much of a step's time the rest
  (the fit, its gradient) takes.

Times are medians of repeated calls after a warm-up (`block_until_ready`); ratios are taken
within one run. Nothing is asserted: misses are printed as measured.
"""

import argparse
import functools
import itertools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): a few seconds")
parser.add_argument("--out", help="write the figures as JSON to this file")
parser.add_argument("--sizes", choices=["cpu", "full"], help="size grid (default: full on a GPU, cpu on a CPU)")
parser.add_argument("--n", type=int, nargs="+", help="sample sizes (override the grid's)")
parser.add_argument("--d", type=int, nargs="+", help="dimensions (override the grid's)")
parser.add_argument("--seeds", type=int, help="B, seeds sharing one dataset (default 64; 16 on a CPU)")
parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
parser.add_argument("--degree", type=int, default=3, help="Hermite features: total degree (r = 2: (D+1)(D+2)/2)")
parser.add_argument("--features", type=int, default=32, help="random features: p")
parser.add_argument("--numpy-max", type=int, default=2**24, help="NumPy baseline for n·d up to this")
parser.add_argument("--numpy-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
args = parser.parse_args()

R = 2
RIDGE = 1e-3


# --- a plain NumPy flow step (no JAX): the baseline ----------------------------------------------


def _orthonormal_hermite(degree: int, z: np.ndarray) -> np.ndarray:
    """`h_0(z), …, h_degree(z)` (`He_k / √k!`) stacked on a last axis."""
    values = [np.ones_like(z), z]
    for k in range(1, degree):
        values.append((z * values[k] - math.sqrt(k) * values[k - 1]) / math.sqrt(k + 1))
    return np.stack(values[: degree + 1], axis=-1)


def numpy_hermite_features(z: np.ndarray, degree: int, rho: float = 1.0):
    """`φ_α(z) = √(ρ^{|α|}) h_{α1}(z1) h_{α2}(z2)`, `|α| ≤ degree`, and `∂φ_α/∂z` (n, p, 2)."""
    table = _orthonormal_hermite(degree, z)  # (n, 2, D + 1)
    slope = np.zeros_like(table)
    slope[..., 1:] = table[..., :-1] * np.sqrt(np.arange(1, degree + 1))  # h_k' = √k h_{k−1}
    alphas = [(a, b) for a, b in itertools.product(range(degree + 1), repeat=2) if a + b <= degree]
    scale = np.array([math.sqrt(rho ** (a + b)) for a, b in alphas])
    first, second = np.array([a for a, _ in alphas]), np.array([b for _, b in alphas])
    phi = scale * table[:, 0, first] * table[:, 1, second]
    dphi = np.stack(
        [scale * slope[:, 0, first] * table[:, 1, second], scale * table[:, 0, first] * slope[:, 1, second]], axis=-1
    )
    return phi, dphi


def numpy_relu_features(z: np.ndarray, weights: np.ndarray, biases: np.ndarray):
    """`φ(z) = relu(Aᵀz + b) / √p` and `∂φ/∂z` (n, p, 2)."""
    scale = 1.0 / math.sqrt(biases.shape[0])
    pre = z @ weights + biases
    active = (pre > 0).astype(z.dtype)
    return scale * np.maximum(pre, 0.0), scale * active[:, :, None] * weights.T[None, :, :]


def numpy_step(X: np.ndarray, y: np.ndarray, W: np.ndarray, features, ridge: float) -> np.ndarray:
    """One flow step in plain NumPy: `Z = XW`, ridge fit `(ΦᵀΦ + nμI)θ = Φᵀy` (with mimflow's
    relative jitter), envelope gradient `Xᵀ((f̂ − y) ∇f̂) / n`, Grassmann projection."""
    n = X.shape[0]
    Z = X @ W
    phi, dphi = features(Z)
    gram = phi.T @ phi
    jitter = (1e-12 if X.dtype == np.float64 else 1e-6) * max(float(np.mean(np.diag(gram))), 1.0)
    theta = np.linalg.solve(gram + (n * ridge + jitter) * np.eye(gram.shape[0], dtype=X.dtype), phi.T @ y)
    residual = phi @ theta - y
    grad_f = np.einsum("npr,p->nr", dphi, theta)
    G = X.T @ (residual[:, None] * grad_f) / n
    return -(G - W @ (W.T @ G))


def numpy_worker(path_in: str, path_out: str) -> None:
    """Time `numpy_step` on the data in `path_in`; save the vector field and the median time."""
    with np.load(path_in) as data:
        inputs = {name: data[name] for name in data.files}
    if str(inputs["kind"]) == "hermite":
        degree, rho = int(inputs["degree"]), float(inputs["rho"])
        features = lambda Z: numpy_hermite_features(Z, degree, rho)
    else:
        features = lambda Z: numpy_relu_features(Z, inputs["weights"], inputs["biases"])
    X, y, W, ridge = inputs["X"], inputs["y"], inputs["W"], float(inputs["ridge"])
    field = numpy_step(X, y, W, features, ridge)  # warm-up
    times = []
    while len(times) < 3 or (sum(times) < float(inputs["min_time"]) and len(times) < 50):
        start = time.perf_counter()
        numpy_step(X, y, W, features, ridge)
        times.append(time.perf_counter() - start)
    np.savez(path_out, field=field, seconds=statistics.median(times))


if args.numpy_worker:
    numpy_worker(*args.numpy_worker)
    sys.exit(0)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", args.dtype == "float64")

import jax.numpy as jnp  # noqa: E402
from _common import run_meta, write_json  # noqa: E402

import mimflow  # noqa: E402
from mimflow import links  # noqa: E402
from mimflow._flows import _back_project, _project, _with_transpose  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPE = jnp.dtype(args.dtype)
BYTES = DTYPE.itemsize
device = jax.devices()[0]
on_gpu = device.platform != "cpu"

if args.smoke:
    grid_n, grid_d, seeds, loop_count = [2**11], [64], 4, 4
    bandwidth_bytes, matmul_size, min_time, numpy_max = 2**25, 512, 0.02, 2**24
else:
    full = (args.sizes or ("full" if on_gpu else "cpu")) == "full"
    grid_n = [2**e for e in range(12, 18)] if full else [2**12, 2**14, 2**16]
    grid_d = [64, 256, 1024] if full else [64, 256]
    seeds = 64 if on_gpu else 16
    loop_count = 8
    bandwidth_bytes = 2**31 if on_gpu else 2**28
    matmul_size = 8192 if on_gpu else 2048
    min_time, numpy_max = 0.2, args.numpy_max
grid_n, grid_d = args.n or grid_n, args.d or grid_d
seeds = args.seeds or seeds


def median_time(fn, *fargs, min_reps=5, max_reps=200):
    """Median wall time of `fn(*fargs)` (blocked), after two warm-up calls (compilation)."""
    for _ in range(2):
        jax.block_until_ready(fn(*fargs))
    times = []
    while len(times) < min_reps or (sum(times) < min_time and len(times) < max_reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*fargs))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- the machine: memory bandwidth and matrix-multiply peak -------------------------------------


def measure_bandwidth() -> dict:
    """Bytes moved per second by three jitted kernels over `bandwidth_bytes` of data; the
    machine's figure is the best of them (the lowest floor)."""
    count = bandwidth_bytes // BYTES
    x = jax.random.normal(jax.random.PRNGKey(1), (count,), DTYPE)
    columns = 256
    matrix = x.reshape(count // columns, columns)
    vector = jnp.ones((columns,), DTYPE)
    kernels = {
        "sum (read)": (jax.jit(jnp.sum), (x,), bandwidth_bytes),
        "copy (read + write)": (jax.jit(lambda a: a * 2.0), (x,), 2 * bandwidth_bytes),
        "matvec X v (read)": (jax.jit(lambda a, v: a @ v), (matrix, vector), bandwidth_bytes),
    }
    rates = {name: moved / median_time(fn, *fargs) for name, (fn, fargs, moved) in kernels.items()}
    return {"array_bytes": bandwidth_bytes, "kernels": rates, "bytes_per_s": max(rates.values())}


def measure_matmul_peak() -> dict:
    key_a, key_b = jax.random.split(jax.random.PRNGKey(2))
    a = jax.random.normal(key_a, (matmul_size, matmul_size), DTYPE)
    b = jax.random.normal(key_b, (matmul_size, matmul_size), DTYPE)
    seconds = median_time(jax.jit(jnp.matmul), a, b)
    return {"size": matmul_size, "seconds": seconds, "flop_per_s": 2.0 * matmul_size**3 / seconds}


# --- the flow step --------------------------------------------------------------------------------

LINK = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)  # h1(z1) + h3(z2), the paper's example


def make_fit(kind: str) -> mimflow.AbstractFit:
    if kind == "hermite":
        return mimflow.HermiteFeatures(args.degree, ridge=RIDGE)
    return mimflow.RandomFeatures(args.features, jax.random.PRNGKey(3), ridge=RIDGE, kind="relu")


@jax.jit
def step(flow, W):
    return flow.vector_field(0.0, W)


@jax.jit
def batched_step(flow, Ws):
    return jax.vmap(lambda W: flow.vector_field(0.0, W))(Ws)


@functools.partial(jax.jit, static_argnums=2)
def repeated(flow, W, count):
    """`count` evaluations of the step in one compiled loop, each at a new `W` (`W` moves by
    `1e-300·v`, so nothing is hoisted out of the loop); `W` of shape `(B, d, r)` for B seeds."""
    field = lambda W: flow.vector_field(0.0, W)
    field = jax.vmap(field) if W.ndim == 3 else field

    def body(_, carry):
        W, total = carry
        v = field(W)
        return W + 1e-300 * v, total + v

    return jax.lax.fori_loop(0, count, body, (W, jnp.zeros_like(W)))[1]


def loop_step_time(flow, W, count):
    """A step's time inside a solve, `T / count` for `T` the time of `repeated(…, count)`.
    A single call pays for its temporary buffers every time, a solve once (on a CPU, fresh
    pages from the kernel for buffers over glibc's 32 MiB mmap threshold: measured 33 MiB
    of page faults, ≈ 24 ms of system time, per ReLU-feature step at n = 2¹⁶, d = 64); here
    that cost is spread over `count` steps (an upper bound on the time per step of a long
    solve)."""
    return median_time(repeated, flow, W, count) / count


@jax.jit
def products(data, W, R):
    """The two big products of a step alone: `Z = X W` and `Xᵀ R` (`W`: d × m, `R`: n × m),
    in the step's form (`mimflow._products`; `Xᵀ R` from the `(d, n)` copy when the data
    carry one)."""
    return _project(data, W), _back_project(data, R)


def numpy_baseline(kind: str, fit: mimflow.AbstractFit, data: mimflow.Dataset, W) -> tuple[dict, np.ndarray]:
    """The NumPy step's median time and vector field, from NumPy-only subprocesses: with the
    BLAS's default threads and with one thread (on a small, shared machine BLAS threads can
    lose more to waiting for each other than they gain); the baseline is the faster."""
    inputs = {"kind": kind, "X": np.asarray(data.X), "y": np.asarray(data.y), "W": np.asarray(W)}
    inputs.update(ridge=RIDGE, min_time=min_time, degree=args.degree)
    if kind == "hermite":
        inputs["rho"] = float(fit.rho)
    else:
        relu = fit.features(R)
        inputs.update(weights=np.asarray(relu.weights), biases=np.asarray(relu.biases))
    with tempfile.TemporaryDirectory() as directory:
        path_in, path_out = os.path.join(directory, "in.npz"), os.path.join(directory, "out.npz")
        np.savez(path_in, **inputs)
        one_thread = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        seconds = {}
        for label, env in (("default_threads", {}), ("one_thread", one_thread)):
            command = [sys.executable, __file__, "--numpy-worker", path_in, path_out]
            subprocess.run(command, check=True, env={**os.environ, **env})
            with np.load(path_out) as result:
                seconds[label], field = float(result["seconds"]), result["field"]
    return seconds, field


def main() -> dict:
    meta = run_meta(
        "flow_steps",
        smoke=args.smoke,
        dtype=args.dtype,
        numpy=np.__version__,
        r=R,
        ridge=RIDGE,
        hermite_degree=args.degree,
        random_features=args.features,
        seeds=seeds,
    )
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, {args.dtype}, r = {R}")
    bandwidth = measure_bandwidth()
    peak = measure_matmul_peak()
    rates = ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in bandwidth["kernels"].items())
    print(
        f"memory bandwidth ({bandwidth['array_bytes'] / 2**20:.0f} MiB array): {rates} GB/s; "
        f"the floor uses {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s"
    )
    print(f"matmul peak ({matmul_size}² · {matmul_size}): {peak['flop_per_s'] / 1e9:.1f} GFLOP/s")

    steps, batched = [], []
    print("\none flow step (the vector field at one W): one call, and in a loop as in a solve:")
    print(
        f"{'fit':8} {'n':>7} {'d':>5} {'step (ms)':>10} {'floor (ms)':>10} {'step/floor':>10} {'GB/s':>7} "
        f"{'numpy (ms)':>10} {'numpy/step':>10} {'rel. diff':>9} {'XW,XᵀR (ms)':>11} {'/floor':>6} "
        f"{'in loop (ms)':>12} {'/floor':>6}"
    )
    key = jax.random.PRNGKey(0)
    for d in grid_d:
        key_star, key_w, key_data, key_ws = jax.random.split(jax.random.fold_in(key, d), 4)
        target = mimflow.Target(LINK, mimflow.haar_stiefel(key_star, d, LINK.dim).astype(DTYPE), noise=0.1)
        W = mimflow.haar_stiefel(key_w, d, R).astype(DTYPE)
        Ws = jax.vmap(lambda k, d=d: mimflow.haar_stiefel(k, d, R))(jax.random.split(key_ws, seeds)).astype(DTYPE)
        for n in grid_n:
            data = _with_transpose(target.sample(jax.random.fold_in(key_data, n), n))
            floor = 2.0 * n * d * BYTES / bandwidth["bytes_per_s"]
            key_r = jax.random.fold_in(key_ws, n)
            single_products = median_time(products, data, W, jax.random.normal(key_r, (n, R), DTYPE))
            batched_products = median_time(
                products,
                data,
                jnp.concatenate(list(Ws), axis=1),
                jax.random.normal(key_r, (n, seeds * R), DTYPE),
            )
            for kind in ("hermite", "random"):
                fit = make_fit(kind)
                flow = mimflow.TwoTimescaleFlow(target, fit, data)
                seconds = median_time(step, flow, W)
                looped = loop_step_time(flow, W, loop_count)
                row = {
                    "fit": kind,
                    "n": n,
                    "d": d,
                    "step_s": seconds,
                    "floor_s": floor,
                    "ratio": seconds / floor,
                    "bytes_per_s": 2.0 * n * d * BYTES / seconds,
                    "products_s": single_products,
                    "products_ratio": single_products / floor,
                    "loop_step_s": looped,
                    "loop_ratio": looped / floor,
                }
                numpy_cols = f"{'—':>10} {'—':>10} {'—':>9}"
                if n * d <= numpy_max:
                    numpy_times, reference = numpy_baseline(kind, fit, data, W)
                    row.update({f"numpy_{label}_s": value for label, value in numpy_times.items()})
                    row["numpy_s"] = min(numpy_times.values())
                    ours = np.asarray(step(flow, W))
                    row["numpy_speedup"] = row["numpy_s"] / seconds
                    row["numpy_rel_diff"] = float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))
                    numpy_cols = (
                        f"{row['numpy_s'] * 1e3:10.3f} {row['numpy_speedup']:10.2f} {row['numpy_rel_diff']:9.1e}"
                    )
                steps.append(row)
                print(
                    f"{kind:8} {n:7d} {d:5d} {seconds * 1e3:10.3f} {floor * 1e3:10.3f} {row['ratio']:10.2f} "
                    f"{row['bytes_per_s'] / 1e9:7.1f} {numpy_cols} {single_products * 1e3:11.3f} "
                    f"{single_products / floor:6.2f} {looped * 1e3:12.3f} {looped / floor:6.2f}",
                    flush=True,
                )

                seconds = median_time(batched_step, flow, Ws)
                looped = loop_step_time(flow, Ws, loop_count // 2)
                flops = 4.0 * n * d * seeds * R  # X W and Xᵀ R for all seeds: two products of n·d·(B r)
                batched.append(
                    {
                        "fit": kind,
                        "n": n,
                        "d": d,
                        "seeds": seeds,
                        "step_s": seconds,
                        "per_seed_s": seconds / seeds,
                        "big_product_flops": flops,
                        "flop_per_s": flops / seconds,
                        "peak_fraction": flops / seconds / peak["flop_per_s"],
                        "floor_s": floor,
                        "ratio": seconds / floor,
                        "products_s": batched_products,
                        "products_flop_per_s": flops / batched_products,
                        "products_peak_fraction": flops / batched_products / peak["flop_per_s"],
                        "loop_step_s": looped,
                        "loop_peak_fraction": flops / looped / peak["flop_per_s"],
                    }
                )
            del data

    print(f"\nB = {seeds} seeds sharing one dataset (one vmapped step; flops counted: X·W and Xᵀ·R only):")
    print(
        f"{'fit':8} {'n':>7} {'d':>5} {'step (ms)':>10} {'per seed':>10} {'GFLOP/s':>9} {'of peak':>8} "
        f"{'peak/this':>9} {'step/floor':>10} {'products (ms)':>13} {'GFLOP/s':>9} {'of peak':>8} "
        f"{'in loop (ms)':>12} {'of peak':>8}"
    )
    for row in batched:
        print(
            f"{row['fit']:8} {row['n']:7d} {row['d']:5d} {row['step_s'] * 1e3:10.3f} "
            f"{row['per_seed_s'] * 1e3:10.4f} {row['flop_per_s'] / 1e9:9.1f} {row['peak_fraction']:8.1%} "
            f"{1 / row['peak_fraction']:9.2f} {row['ratio']:10.2f} {row['products_s'] * 1e3:13.3f} "
            f"{row['products_flop_per_s'] / 1e9:9.1f} {row['products_peak_fraction']:8.1%} "
            f"{row['loop_step_s'] * 1e3:12.3f} {row['loop_peak_fraction']:8.1%}"
        )

    near_floor = sum(row["ratio"] <= 2.0 for row in steps)
    near_floor_loop = sum(row["loop_ratio"] <= 2.0 for row in steps)
    near_peak = sum(row["peak_fraction"] >= 0.5 for row in batched)
    near_peak_loop = sum(row["loop_peak_fraction"] >= 0.5 for row in batched)
    print(
        f"\nsingle steps within 2× of the bandwidth floor: {near_floor} of {len(steps)} "
        f"({near_floor_loop} in a loop); batched steps within 2× of the matmul peak: {near_peak} of "
        f"{len(batched)} ({near_peak_loop} in a loop)"
    )
    return {"meta": meta, "bandwidth": bandwidth, "matmul_peak": peak, "steps": steps, "batched": batched}


if __name__ == "__main__":
    results = main()
    if args.out:
        write_json(args.out, results)
