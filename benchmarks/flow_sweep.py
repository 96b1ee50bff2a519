"""Finite-sample flow sweeps: a chunk's points mapped one after another against vmapped (issue 8).

Usage: python benchmarks/flow_sweep.py [--smoke] [--out FILE.json] [--seeds 8] [--sizes N:D ...]

A `FlowExperiment` (the target `h1(z1) + h3(z2)`, r = 2, label noise 0.1, t1 = 10, 16
saves), each seed with its own dataset of `n` samples in dimension `d`, for Hermite features
(total degree 3) and random Fourier features (p = 32). The chunk program `SweepPlan.run_chunk`
calls (`mimflow._sweep._run`) is compiled both ways for the same B points:

- `sequential=True`: `lax.map` over the points, what `sweep` runs on a CPU;
- `sequential=False`: `vmap` over the points (lock-step: every point takes as many steps as
  the slowest, and each seed's products with its own `X` become batched products), what
  `sweep` runs on an accelerator.

Each is timed after a warm-up call (compilation), the best of `--reps` calls; the ratio is
vmapped time / mapped time, in the same run. Also printed: the mapped time per seed-step, the
steps the points took (their sum, and B × the largest, the lock-step count), whether every
point succeeded, and the largest difference between the two programs' losses. Nothing is
asserted.
"""

import argparse
import time

import jax

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): a few seconds")
parser.add_argument("--out", help="write the figures as JSON to this file")
parser.add_argument("--seeds", type=int, help="B, points per chunk (default 8 on a CPU, 64 on a GPU)")
parser.add_argument("--reps", type=int, default=2, help="timed calls per program (the best is kept)")
parser.add_argument(
    "--sizes",
    nargs="+",
    metavar="N:D",
    help="(n, d) pairs to run, each with both fits (default: the device's list below; e.g. 32768:64 65536:256)",
)
args = parser.parse_args()
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import run_meta, write_json  # noqa: E402

import mimflow  # noqa: E402
from mimflow import links  # noqa: E402
from mimflow._sweep import _run as chunk_program  # noqa: E402  (the program SweepPlan.run_chunk calls)

LINK = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)
device = jax.devices()[0]
on_gpu = device.platform != "cpu"
# (fit, n, d): on a CPU random Fourier features cost ≈ 14 ms a seed-step at n = 2¹¹ (f64 sin
# and cos, ≈ 10 ns an entry, outweigh the products), so they run at the smallest size only
if args.smoke:
    cases, seeds, t1 = [("hermite", 256, 16), ("random", 256, 16)], 2, 1.0
elif on_gpu:
    sizes = [(2**11, 32), (2**13, 128), (2**15, 64), (2**16, 256)]
    cases, seeds, t1 = [(fit, n, d) for n, d in sizes for fit in ("hermite", "random")], 64, 10.0
else:
    cases, seeds, t1 = [("hermite", 2**11, 32), ("random", 2**11, 32), ("hermite", 2**13, 128)], 8, 10.0
seeds = args.seeds or seeds
if args.sizes:
    try:
        sizes = [tuple(int(v) for v in size.split(":")) for size in args.sizes]
    except ValueError:
        parser.error(f"--sizes takes N:D pairs of integers, got {args.sizes}")
    if any(len(size) != 2 or min(size) < 1 for size in sizes):
        parser.error(f"--sizes takes N:D pairs of positive integers, got {args.sizes}")
    cases = [(fit, n, d) for n, d in sizes for fit in ("hermite", "random")]


def make_fit(kind: str) -> mimflow.AbstractFit:
    if kind == "hermite":
        return mimflow.HermiteFeatures(3, ridge=1e-3)
    return mimflow.RandomFeatures(32, jax.random.PRNGKey(3), ridge=1e-3, kind="fourier")


def best_time(experiment, points, sequential: bool):
    out = jax.block_until_ready(chunk_program(experiment, points, 0.5, sequential))  # compiles
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        out = jax.block_until_ready(chunk_program(experiment, points, 0.5, sequential))
        times.append(time.perf_counter() - start)
    return min(times), jax.device_get(out)


def main() -> dict:
    meta = run_meta("flow_sweep", smoke=args.smoke, seeds=seeds, t1=t1)
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, B = {seeds} points, t1 = {t1}")
    print(
        f"{'fit':8} {'n':>6} {'d':>5} {'mapped (s)':>10} {'vmapped (s)':>11} {'ratio':>6} "
        f"{'ms/step':>7} {'steps':>6} {'lock-step':>9} {'success':>7} {'max |Δ loss|':>12}"
    )
    rows = []
    for kind, n, d in cases:
        experiment = mimflow.FlowExperiment(
            LINK, jax.random.PRNGKey(0), t1, d_max=d, n=n, fit=make_fit(kind), noise=0.1, num_saves=16
        )
        points = {"seed": jnp.arange(seeds, dtype=jnp.uint32), "d": jnp.full(seeds, float(d))}
        mapped_s, mapped = best_time(experiment, points, True)
        vmapped_s, vmapped = best_time(experiment, points, False)
        steps = np.asarray(mapped["num_steps"])
        difference = float(np.max(np.abs(mapped["loss"] - vmapped["loss"])))
        row = {
            "fit": kind,
            "n": n,
            "d": d,
            "mapped_s": mapped_s,
            "vmapped_s": vmapped_s,
            "ratio": vmapped_s / mapped_s,
            "mapped_ms_per_seed_step": 1e3 * mapped_s / int(steps.sum()),
            "steps": int(steps.sum()),
            "lock_step_steps": int(steps.max()) * seeds,
            "all_success": bool(np.all(np.asarray(mapped["status"]) == 0)),
            "max_loss_difference": difference,
        }
        rows.append(row)
        print(
            f"{kind:8} {n:6d} {d:5d} {mapped_s:10.3f} {vmapped_s:11.3f} {row['ratio']:6.2f} "
            f"{row['mapped_ms_per_seed_step']:7.2f} {row['steps']:6d} {row['lock_step_steps']:9d} "
            f"{str(row['all_success']):>7} {difference:12.1e}",
            flush=True,
        )
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    results = main()
    if args.out:
        write_json(args.out, results)
