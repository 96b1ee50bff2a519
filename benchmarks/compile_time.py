"""Compile time of the quickstart and of a sweep, and proof that new values do not recompile (issue 8).

Usage: python benchmarks/compile_time.py [--smoke] [--out FILE.json]

For each program (a) the quickstart (`configs/quickstart.yaml`, its one compiled sweep, built
as `mimflow run` builds it) and (b) a `ReducedExperiment` sweep over seeds × d × ridge:

1. trace + lower, then XLA compile, of the chunk program that `SweepPlan.run_chunk` calls,
   timed separately (`.lower(...)`, `.compile()`); JAX's own compile events during the lowering
   split it into tracing and lowering to MLIR;
2. the sweep itself, every chunk (the ahead-of-time compilation above is reused, so this is
   run time; the programs it still compiles are counted);
3. the same sweep again with new values of the same shapes (new seeds, new d, new ridges; for
   the quickstart a new config seed and new d), counting XLA compilations with `jax.monitoring`
   (the `/jax/core/compile/backend_compile_duration` event, as `tests/test_sweep.py` does):
   "recompiles: 0" is the claim, printed as counted.

`--smoke` runs the quickstart's smoke size with a short horizon, and its sweep (b) reuses the
quickstart's program (one compilation in all, to stay within seconds), so only (a)'s compile
times are measured there. Nothing is asserted.
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

import jax

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): one compilation")
parser.add_argument("--out", help="write the figures as JSON to this file")
args = parser.parse_args()
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from _common import run_meta, write_json  # noqa: E402

import mimflow  # noqa: E402
from mimflow import links  # noqa: E402
from mimflow._config import build_jobs  # noqa: E402  (the jobs `mimflow run` builds from a config)
from mimflow._sweep import _run as chunk_program  # noqa: E402  (the program SweepPlan.run_chunk calls)

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"


class Events:
    """JAX's compile events (`jax.monitoring` duration events) recorded while in the `with`."""

    def __init__(self):
        self.records: list[tuple[str, float, str | None]] = []

    def _listener(self, event, duration, **kwargs):
        if event in (TRACE, LOWER, COMPILE):
            self.records.append((event, duration, kwargs.get("fun_name")))

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)

    def count(self, event: str = COMPILE) -> int:
        return sum(name == event for name, _, _ in self.records)

    def seconds(self, event: str) -> float:
        return sum(duration for name, duration, _ in self.records if name == event)


def measure(label: str, plan: mimflow.SweepPlan, rerun, compile_ahead: bool = True) -> dict:
    """Compile `plan`'s chunk program ahead of time (timed), run the sweep, then `rerun()` (the
    same shapes, new values) counting compilations."""
    result: dict = {"points": plan.total, "batch_size": plan.batch_size, "chunks": plan.num_chunks}
    if compile_ahead:
        arguments = plan._chunk_arguments(0)  # as `run_chunk(0)` passes them: its calls find this program
        with Events() as lowering:
            start = time.perf_counter()
            lowered = chunk_program.lower(*arguments)
            result["trace_lower_s"] = time.perf_counter() - start
        with Events() as compiling:
            start = time.perf_counter()
            lowered.compile()
            result["compile_s"] = time.perf_counter() - start
        result["trace_events_s"] = lowering.seconds(TRACE)
        result["lower_events_s"] = lowering.seconds(LOWER)
        result["compile_events_s"] = compiling.seconds(COMPILE)
        result["programs_compiled_ahead"] = compiling.count()
    with Events() as running:
        start = time.perf_counter()
        chunks = [plan.run_chunk(i) for i in range(plan.num_chunks)]
        result["run_s"] = time.perf_counter() - start
    result["compiles_in_first_run"] = running.count()
    result["compile_s_in_first_run"] = running.seconds(COMPILE)
    with Events() as again:
        start = time.perf_counter()
        chunks_again = rerun()
        result["rerun_s"] = time.perf_counter() - start
    result["recompiles"] = again.count()
    result["recompile_s"] = again.seconds(COMPILE)
    # the new values were used: the second sweep's losses differ from the first's
    first, second = (jnp.concatenate([c["loss"] for c in cs]) for cs in (chunks, chunks_again))
    result["values_changed"] = bool(jnp.nanmax(jnp.abs(first - second)) > 0)
    success = sum(int((c["status"] == 0).sum()) for c in chunks) / (plan.batch_size * plan.num_chunks)
    result["success_fraction"] = success
    print(
        f"{label:10} {plan.total:6d} {plan.batch_size:6d} {result.get('trace_lower_s', math.nan):8.2f} "
        f"{result.get('trace_events_s', math.nan):6.2f} {result.get('lower_events_s', math.nan):6.2f} "
        f"{result.get('compile_s', math.nan):8.2f} {result['run_s']:7.2f} {result['compiles_in_first_run']:5d} "
        f"{result['rerun_s']:7.2f} {result['recompiles']:9d}",
        flush=True,
    )
    return result


def runner_plan(config: dict) -> mimflow.SweepPlan:
    """The sweep plan `mimflow run` makes for a config with one compiled sweep."""
    ((_, experiment, axes),) = build_jobs(config)
    total = math.prod(len(values) for values in axes.values())
    return mimflow.SweepPlan(
        experiment,
        axes,
        batch_size=config["output"]["batch_size"],
        max_batch_size=max(256, -(-total // 16)),
        escape_threshold=config["output"]["escape_threshold"],
    )


def main() -> dict:
    device = jax.devices()[0]
    cache_dir = getattr(jax.config, "jax_compilation_cache_dir", None)
    meta = run_meta("compile_time", smoke=args.smoke, persistent_cache_dir=cache_dir)
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, float64")
    if cache_dir:
        print(f"warning: the persistent compilation cache is on ({cache_dir}): compile times may be cache hits")

    # (a) the quickstart, as `mimflow run configs/quickstart.yaml` compiles it
    overrides = ["time.t1=1.0e+3", "time.num_saves=4", "solver.name=heun"] if args.smoke else []
    with tempfile.TemporaryDirectory() as out:
        config = mimflow.load_config(QUICKSTART, overrides, smoke=args.smoke, out=out)
        d_values = config["sweep"]["d"]
        new_d = "[" + ", ".join(f"{3.0 * d:g}" for d in d_values) + "]"
        config_again = mimflow.load_config(
            QUICKSTART, [*overrides, f"seed={config['seed'] + 1}", f"sweep.d={new_d}"], smoke=args.smoke, out=out
        )
    plan = runner_plan(config)

    def quickstart_again():
        again = runner_plan(config_again)
        return [again.run_chunk(i) for i in range(again.num_chunks)]

    print(
        "\n(trace + lower and XLA compile of the chunk program, ahead of time; then the sweep; then the sweep "
        "again with new values)"
    )
    print(
        f"{'program':10} {'points':>6} {'batch':>6} {'tr+low s':>8} {'trace':>6} {'lower':>6} {'compile':>8} "
        f"{'run s':>7} {'comp.':>5} {'rerun s':>7} {'recompiles':>9}"
    )
    quickstart = measure("quickstart", plan, quickstart_again)
    quickstart["config"] = str(QUICKSTART.relative_to(ROOT))
    quickstart["overrides"] = overrides
    quickstart["rerun_overrides"] = [f"seed={config['seed'] + 1}", f"sweep.d={new_d}"]

    # (b) a ReducedExperiment sweep over seeds × d × ridge (in --smoke: the quickstart's program)
    if args.smoke:
        experiment = plan.experiment
        axes = {name: plan.axes[name] for name in plan.axes}
        axes_again = {**axes, "seed": [s + 100 for s in plan.axes["seed"]], "d": [2.0 * d for d in plan.axes["d"]]}
    else:
        link = links.hermite(1, 2, 0) + links.hermite(3, 2, 1)
        experiment = mimflow.ReducedExperiment(link, jax.random.key(0), 1e8, num_saves=64)
        axes = {"seed": range(32), "d": [1e2, 1e3, 1e4, 1e5], "ridge": [0.0, 0.1]}
        axes_again = {"seed": range(32, 64), "d": [3e2, 3e3, 3e4, 3e5], "ridge": [0.05, 0.2]}
    sweep_plan = mimflow.SweepPlan(experiment, axes)

    def sweep_again():
        again = mimflow.SweepPlan(experiment, axes_again, batch_size=sweep_plan.batch_size)
        return [again.run_chunk(i) for i in range(again.num_chunks)]

    sweep = measure("sweep", sweep_plan, sweep_again, compile_ahead=not args.smoke)
    sweep["axes"] = {name: [float(v) for v in values] for name, values in axes.items() if name != "link"}
    sweep["axes_again"] = {name: [float(v) for v in values] for name, values in axes_again.items() if name != "link"}
    sweep["shares_quickstart_program"] = args.smoke

    for label, result in (("quickstart", quickstart), ("sweep", sweep)):
        print(
            f"{label}: recompiles: {result['recompiles']} (new values changed the results: {result['values_changed']})"
        )
    return {"meta": meta, "quickstart": quickstart, "sweep": sweep}


if __name__ == "__main__":
    results = main()
    if args.out:
        write_json(args.out, results)
