"""Run every benchmark and draw the scaling figure (issue 8).

Usage: python benchmarks/run_all.py [--smoke] [--out DIR] [--flow-sizes cpu|full] [--draw-only]
       (default DIR: benchmarks/results/<device>)

Runs `reduced_vs_scipy.py`, `flow_steps.py`, `flow_sweep.py` and `compile_time.py`, each writing
`DIR/<name>.json` (and its printed table to `DIR/<name>.txt`), then draws
`DIR/scaling.png`: wall time against the batch size B (reduced sweeps) and a flow
step's time against n and against d, on log–log axes, each with its fitted exponent.
`--flow-sizes` picks `flow_steps.py`'s grid (default: `full`, the issue's n ∈ {2¹², …, 2¹⁷},
d ∈ {64, 256, 1024}, on a GPU; `cpu`, n ∈ {2¹², 2¹⁴, 2¹⁶}, d ∈ {64, 256}, on a CPU, where
`full` adds about 6 minutes on 2 cores). `--draw-only` redraws `DIR/scaling.png` from the
JSON files already in `DIR` (`--out` required).
Figures worth keeping go into `benchmarks/RESULTS.md` by hand, with the device's name.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCRIPTS = ["reduced_vs_scipy", "flow_steps", "flow_sweep", "compile_time"]


def exponent(x, y) -> float:
    """The least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def scaling_figure(results: dict, path: Path) -> dict:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    exponents = {}
    rows = results.get("reduced_vs_scipy", {}).get("rows", [])
    if len(rows) >= 2:
        batch = np.array([row["B"] for row in rows], float)
        seconds = np.array([row["mimflow_run_s"] for row in rows])
        exponents["reduced_time_vs_B"] = (
            exponent(batch[batch >= 64], seconds[batch >= 64]) if (batch >= 64).sum() >= 2 else None
        )
        solver = results["reduced_vs_scipy"].get("solver", "rodas4").capitalize()
        axes[0].loglog(batch, seconds, "o-", label=f"mimflow ({solver})")
        scipy = np.array([1 / row["scipy_traj_per_s"] for row in rows]) * batch
        axes[0].loglog(batch, scipy, "s--", label="SciPy LSODA loop")
        axes[0].set(
            xlabel="trajectories B",
            ylabel="wall time (s)",
            title=f"reduced sweep: slope {exponents['reduced_time_vs_B'] or float('nan'):.2f} (B ≥ 64)",
        )
        axes[0].legend()
    steps = results.get("flow_steps", {}).get("steps", [])
    for panel, (axis, other) in zip(axes[1:], [("n", "d"), ("d", "n")], strict=True):
        fits, values = sorted({row["fit"] for row in steps}), sorted({row[other] for row in steps})
        for fit in fits:
            for value in sorted({row[other] for row in steps if row["fit"] == fit}):
                chosen = sorted(
                    (row for row in steps if row["fit"] == fit and row[other] == value), key=lambda row: row[axis]
                )
                if len(chosen) < 2:
                    continue
                x = np.array([row[axis] for row in chosen], float)
                y = np.array([row["step_s"] for row in chosen])
                slope = exponent(x, y)
                exponents[f"flow_step_{fit}_vs_{axis}_at_{other}={value}"] = slope
                style = ["o-", "s--"][fits.index(fit) % 2]  # a style per fit, a colour per value
                colour = f"C{values.index(value) % 10}"
                panel.loglog(x, y, style, color=colour, label=f"{fit}, {other} = {value}: slope {slope:.2f}")
        panel.set(xlabel=axis, ylabel="one flow step (s)", title=f"finite-sample flow step against {axis}")
        if panel.lines:  # many lines (the whole grid): two columns, above them
            many = len(panel.lines) > 6
            panel.legend(fontsize=6 if many else 7, ncol=2 if many else 1, loc="upper left" if many else "best")
            if many:
                low, high = panel.get_ylim()
                panel.set_ylim(low, high * (high / low) ** 0.6)
    meta = results.get("reduced_vs_scipy", {})
    figure.suptitle(f"{meta.get('device', '?')} ({meta.get('platform', '?')}), jax {meta.get('jax', '?')}")
    figure.savefig(path, dpi=110)
    return exponents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--flow-sizes", choices=["cpu", "full"], help="flow_steps.py's size grid")
    parser.add_argument("--draw-only", action="store_true", help="redraw DIR/scaling.png from DIR's JSON files")
    args = parser.parse_args()
    if args.draw_only:
        if args.out is None:
            parser.error("--draw-only needs --out DIR")
        paths = {name: args.out / f"{name}.json" for name in SCRIPTS}
        results = {name: json.loads(path.read_text()) for name, path in paths.items() if path.exists()}
        print(json.dumps(scaling_figure(results, args.out / "scaling.png"), indent=1))
        return 0
    if args.out is None:
        import jax

        args.out = HERE / "results" / jax.devices()[0].device_kind.replace(" ", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    results, failed = {}, []
    for name in SCRIPTS:
        command = [sys.executable, str(HERE / f"{name}.py"), "--out", str(args.out / f"{name}.json")]
        command += ["--smoke"] if args.smoke else []
        command += ["--sizes", args.flow_sizes] if name == "flow_steps" and args.flow_sizes else []
        print(f"$ {' '.join(command[1:])}", flush=True)
        run = subprocess.run(command, capture_output=True, text=True)
        (args.out / f"{name}.txt").write_text(run.stdout + run.stderr)
        print(run.stdout[-4000:], flush=True)
        if run.returncode != 0:
            print(run.stderr[-4000:], file=sys.stderr)
            failed.append(name)
            continue
        results[name] = json.loads((args.out / f"{name}.json").read_text())
    exponents = scaling_figure(results, args.out / "scaling.png")
    (args.out / "scaling.json").write_text(json.dumps(exponents, indent=1))
    print("scaling exponents:", json.dumps(exponents, indent=1))
    print(f"wrote {args.out}")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
