"""Preliminary throughput of batched reduced trajectories (issue 8 will extend this).

Usage: python benchmarks/reduced_throughput.py [--x64] [--batches 1024 8192]
Times one compiled, vmapped call of simulate_reduced + escape_times for h1(z1) + h3(z2)
from Haar starts at d = 10³ to t1 = 10⁸ (second call, after compilation).
"""

import argparse
import time

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--x64", action="store_true")
parser.add_argument("--batches", type=int, nargs="+", default=[1024, 8192])
args = parser.parse_args()
jax.config.update("jax_enable_x64", args.x64)

import numpy as np  # noqa: E402

import mimflow  # noqa: E402
from mimflow import links  # noqa: E402

link = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)


@jax.jit
def run(keys):
    def one(key):
        traj = mimflow.simulate_reduced(link, mimflow.sample_overlap(key, 1e3, 2, 2), 1e8, num_saves=64)
        return mimflow.escape_times(traj), traj.status

    return jax.vmap(one)(keys)


dtype = "float64" if args.x64 else "float32"
print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), jax {jax.__version__}, {dtype}")
for batch in args.batches:
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    start = time.perf_counter()
    jax.block_until_ready(run(keys))
    first = time.perf_counter() - start
    start = time.perf_counter()
    times, status = jax.block_until_ready(run(keys))
    second = time.perf_counter() - start
    ok = np.mean(np.asarray(status) == 0)
    median = np.median(np.asarray(times), axis=0)
    print(
        f"B={batch:6d}: compile+run {first:7.2f} s, run {second:7.3f} s, {batch / second:9.1f} traj/s, "
        f"success {ok:.1%}, median escapes {median}"
    )
