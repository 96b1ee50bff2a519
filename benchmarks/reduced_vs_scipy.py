"""Reduced-ODE sweeps: mimflow against the SciPy loop users write today (issue 8, item 1).

Usage: python benchmarks/reduced_vs_scipy.py [--batches 1 64 1024 8192] [--rtol 1e-6 --atol 1e-9]
       [--solver rodas5|rodas4] [--scipy-seeds 64] [--cpu-devices N] [--smoke] [--out FILE.json]

The workload: `h1(z1) + h3(z2)` (two directions, degrees ≤ 3: a `log d` then a `d²`
saddle) from Haar starts at d = 10³, integrated to t1 = 10⁸ with 64 log-spaced saves,
and the escape time of each direction (first time a singular value of M reaches ½).

- **mimflow**: `jit(vmap(simulate_reduced(..., solver=Rodas5(rtol, atol)) + escape_times))`
  (`--solver rodas4`: `Rodas4`, the figures before 2026-11-24),
  the batch split over every local device with `shard_map` (on CPU, `--cpu-devices`
  host devices, default one per core, so the run uses the cores it is given).
- **SciPy**: `solve_ivp(method="LSODA", rtol, atol, t_eval=<the same saves>)` on a NumPy
  right-hand side, one seed after another, with an event per singular value for the
  escape times (what it takes to get them to 1e-4; the save grid alone gives ~40%).
  It runs on `min(B, --scipy-seeds)` seeds; its rate (trajectories / s) is per trajectory
  and does not depend on B, so the ratio at B is mimflow's rate at B over that rate.
- **vmap(diffeqsolve)**: the default diffrax path (Kvaerno5), for B ≤ 1024 (reference).

Both integrate the same starts; the escape times of the SciPy seeds must agree with
mimflow's to a relative 1e-4 (both `inf` where a direction is not learned by t1).
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024, 8192])
parser.add_argument("--rtol", type=float, default=1e-6)
parser.add_argument("--atol", type=float, default=1e-9)
parser.add_argument("--solver", choices=["rodas5", "rodas4"], default="rodas5")
parser.add_argument("--d", type=float, default=1e3)
parser.add_argument("--t1", type=float, default=1e8)
parser.add_argument("--num-saves", type=int, default=64)
parser.add_argument("--scipy-seeds", type=int, default=64)
parser.add_argument("--diffrax-max", type=int, default=1024, help="largest B for the vmap(diffeqsolve) reference")
parser.add_argument("--cpu-devices", type=int, default=len(os.sched_getaffinity(0)))
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI (no timing claims)")
parser.add_argument("--out", help="write the figures as JSON")
args = parser.parse_args()
if args.smoke:
    args.batches, args.scipy_seeds, args.t1, args.repeats, args.diffrax_max = [2], 2, 1e5, 1, 0
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.cpu_devices}".strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from _common import run_meta, write_json  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import mimflow  # noqa: E402
from mimflow import links  # noqa: E402

LINK = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)


def scipy_rhs(t, y):
    """`Ṁ = (I − G) B(G) M` for h1(z1) + h3(z2): `B(G) = diag(1, 3 G₂₂²)` (DESIGN §2)."""
    M = y.reshape(2, 2)
    G = M @ M.T
    return ((np.eye(2) - G) @ np.diag([1.0, 3.0 * G[1, 1] ** 2]) @ M).ravel()


def scipy_events():
    events = []
    for i in range(2):
        event = lambda t, y, i=i: np.linalg.svd(y.reshape(2, 2), compute_uv=False)[i] - 0.5
        event.direction = 1.0
        events.append(event)
    return events


def scipy_loop(M0s, ts):
    """The users' script: a loop over seeds, one LSODA solve each."""
    escapes = []
    for M0 in M0s:
        sol = solve_ivp(
            scipy_rhs,
            (0.0, ts[-1]),
            M0.ravel(),
            method="LSODA",
            t_eval=ts,
            rtol=args.rtol,
            atol=args.atol,
            events=scipy_events(),
        )
        assert sol.status == 0, sol.message
        escapes.append([e[0] if len(e) else np.inf for e in sol.t_events])
    return np.array(escapes)


def one(M0, solver):
    traj = mimflow.simulate_reduced(LINK, M0, args.t1, num_saves=args.num_saves, solver=solver)
    return mimflow.escape_times(traj), traj.status, traj.num_steps


def sharded(fn):
    """`jit(shard_map(vmap(fn)))` over every local device (one program per device, no
    per-step communication); plain `jit(vmap(fn))` on one device."""
    devices = jax.devices()
    if len(devices) == 1:
        return jax.jit(jax.vmap(fn))
    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:  # jax < 0.6
        from jax.experimental.shard_map import shard_map
    mesh = Mesh(np.array(devices), ("batch",))
    try:
        mapped = shard_map(jax.vmap(fn), mesh=mesh, in_specs=P("batch"), out_specs=P("batch"), check_vma=False)
    except TypeError:
        mapped = shard_map(jax.vmap(fn), mesh=mesh, in_specs=P("batch"), out_specs=P("batch"), check_rep=False)
    return jax.jit(mapped)


def timed(fn, *inputs):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*inputs))
    first = time.perf_counter() - start
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*inputs))
        runs.append(time.perf_counter() - start)
    return out, first, float(np.median(runs))


def main():
    device = jax.devices()[0]
    num_devices = len(jax.devices())
    print(
        f"device: {device.device_kind} ({device.platform}) × {num_devices}, jax {jax.__version__}, float64, "
        f"rtol {args.rtol:g}, atol {args.atol:g}, d = {args.d:g}, t1 = {args.t1:g}, {args.num_saves} saves, "
        f"solver {args.solver}"
    )
    solver_class = {"rodas5": mimflow.Rodas5, "rodas4": mimflow.Rodas4}[args.solver]
    fast = sharded(lambda M0: one(M0, solver_class(args.rtol, args.atol)))
    reference = jax.jit(jax.vmap(lambda M0: one(M0, None)))
    sample = jax.jit(jax.vmap(lambda key: mimflow.sample_overlap(key, args.d, 2, 2)))
    ts = np.asarray(mimflow.save_times(args.t1, args.num_saves, 1e-2))
    rows = []
    scipy_rate = None
    header = (
        f"{'B':>6} {'mimflow traj/s':>15} {'compile+run s':>14} {'LSODA traj/s':>13} {'ratio':>8} "
        f"{'max rel diff':>13} {'vmap(diffeqsolve) traj/s':>25}"
    )
    print(header)
    for batch in args.batches:
        padded = -(-batch // num_devices) * num_devices  # a whole number of trajectories per device
        keys = jax.random.split(jax.random.PRNGKey(0), padded)
        M0 = sample(keys)
        (escapes, status, steps), first, run = timed(fast, M0)
        escapes, status = np.asarray(escapes)[:batch], np.asarray(status)[:batch]
        seeds = min(batch, args.scipy_seeds)
        start = time.perf_counter()
        expected = scipy_loop(np.asarray(M0)[:seeds], ts)
        scipy_time = (time.perf_counter() - start) / seeds
        scipy_rate = 1.0 / scipy_time
        finite = np.isfinite(expected)
        assert np.array_equal(finite, np.isfinite(escapes[:seeds])), "escaped directions differ"
        difference = float(np.max(np.abs(escapes[:seeds][finite] / expected[finite] - 1), initial=0.0))
        diffrax_rate = None
        if batch <= args.diffrax_max:
            _, _, diffrax_run = timed(reference, M0[:batch])
            diffrax_rate = batch / diffrax_run
        row = {
            "B": batch,
            "mimflow_traj_per_s": padded / run,
            "mimflow_compile_and_first_run_s": first,
            "mimflow_run_s": run,
            "mimflow_success": float(np.mean(status == 0)),
            "mimflow_steps_median": float(np.median(np.asarray(steps)[:batch])),
            "mimflow_steps_max": int(np.max(np.asarray(steps)[:batch])),
            "scipy_seeds": seeds,
            "scipy_traj_per_s": scipy_rate,
            "ratio": (padded / run) / scipy_rate,
            "escape_max_rel_diff": difference,
            "diffrax_vmap_traj_per_s": diffrax_rate,
        }
        rows.append(row)
        print(
            f"{batch:>6} {row['mimflow_traj_per_s']:>15.1f} {first:>14.2f} {scipy_rate:>13.2f} {row['ratio']:>8.1f} "
            f"{difference:>13.2e} {'—' if diffrax_rate is None else f'{diffrax_rate:.1f}':>25}",
            flush=True,
        )
        assert difference <= 1e-4, f"escape times differ from LSODA's by {difference:.2e} > 1e-4"
    meta = run_meta(
        "reduced_vs_scipy",
        smoke=args.smoke,
        num_devices=num_devices,
        rtol=args.rtol,
        atol=args.atol,
        d=args.d,
        t1=args.t1,
        num_saves=args.num_saves,
        solver=args.solver,
    )
    if args.out:
        write_json(args.out, {**meta, "rows": rows})  # flat, as run_all.py reads it
    return 0


if __name__ == "__main__":
    sys.exit(main())
