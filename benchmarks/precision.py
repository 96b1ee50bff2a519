"""float32 against float64 on a catalogue of runs (issue 9, item 5).

Usage: python benchmarks/precision.py [--smoke] [--out FILE.json]

Runs the catalogue twice, in two processes (x64 is process-wide in JAX): once with
`JAX_ENABLE_X64=1` (float64, the reference) and once with `JAX_ENABLE_X64=0` (float32, JAX's
and the GPU's default), from the same starts and data (drawn here in float64 NumPy and
rounded to float32 by the library), with the library's default tolerances of each dtype
(`rtol, atol = 1e-9, 1e-12` in float64, `1e-5, 1e-8` in float32). Per case and `d` it
reports the status codes and step counts of both, the relative error of the float32 escape
times against float64 (and, for single-index targets, of both against the closed-form
escape time from the same start), and the largest absolute difference of the saved
singular values, losses and overlaps (over saves where both are finite).

The catalogue (the configs' problems at moderate size; `--smoke`: a few points of each):

- `h1 … h4` single index, two-timescale, Haar starts, `t1` = 4 × the closed-form escape time,
  with the default solver (`Kvaerno5`) and with `Rodas4`;
- the quickstart's two-direction links, staircase `h1(z1) + z1 z2` and `h1(z1) + h3(z2)`
  (`d²` second saddle), default solver and `Rodas4`;
- planted against two-timescale on the planar harmonics of degrees 3 + 4 (does the same start
  end trapped in both precisions?);
- the finite-sample two-timescale flow in `d` dimensions (`h2` target, Hermite features of
  degree 4, ridge 1e-3, `n` samples with label noise 0.1; `Tsit5`, QR retraction).

Nothing is asserted: the table is printed as measured (`benchmarks/RESULTS.md` keeps it).
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, run_meta, write_json  # noqa: E402

PRECISIONS = ("float64", "float32")


# --- the catalogue: inputs drawn in float64 NumPy, the same in both processes ----------------


def haar_overlap(rng: np.random.Generator, d: int, k: int, r: int) -> np.ndarray:
    """`M0 = W*ᵀ W0`, `W* = [e_1 … e_k]`, `W0 = Z (ZᵀZ)^{−1/2}` Haar on St(d, r) (Z Gaussian d × r)."""
    Z = rng.standard_normal((d, r))
    values, vectors = np.linalg.eigh(Z.T @ Z)
    return Z[:k] @ (vectors / np.sqrt(values)) @ vectors.T


def haar_stiefel(rng: np.random.Generator, d: int, r: int) -> np.ndarray:
    Z = rng.standard_normal((d, r))
    values, vectors = np.linalg.eigh(Z.T @ Z)
    return Z @ (vectors / np.sqrt(values)) @ vectors.T


def closed_form_escape(s: int, m0: float) -> float:
    """Escape time of `h_s` (two-timescale, α = 1) from `|m0|` to ½: with `x = m²`,
    `dt = dx / (2 s x^s (1 − x))` and `1/(x^s (1 − x)) = Σ_{i=1}^s x^{−i} + 1/(1 − x)`."""

    def antiderivative(x):
        return math.log(x) - math.log1p(-x) - sum(x ** (1 - i) / (i - 1) for i in range(2, s + 1))

    return (antiderivative(0.25) - antiderivative(m0 * m0)) / (2 * s)


def catalogue(smoke: bool) -> list[dict]:
    """The cases: each a dict of plain NumPy inputs (the worker builds the library objects)."""
    seeds = 2 if smoke else 8
    cases = []
    single_dims = [1e2, 1e3] if smoke else [1e2, 1e3, 1e4, 1e5]
    degrees = [2, 3] if smoke else [1, 2, 3, 4]
    rng = np.random.default_rng(0)
    for solver in ("default", "rodas4"):
        for s in degrees:
            for d in single_dims:
                m0 = np.abs([haar_overlap(rng, int(d), 1, 1)[0, 0] for _ in range(seeds)])
                reference = np.array([[closed_form_escape(s, m)] for m in m0])
                cases.append(
                    {
                        "name": f"h{s}",
                        "kind": "single",
                        "solver": solver,
                        "d": d,
                        "degree": s,
                        "M0": m0.reshape(-1, 1, 1),
                        "t1": 4 * reference[:, 0],
                        "reference": reference,
                    }
                )
    multi_dims = [1e2] if smoke else [1e2, 1e3, 1e4]
    for solver in ("default", "rodas4"):
        for name in ("staircase h1(z1) + z1 z2", "h1(z1) + h3(z2)"):
            for d in multi_dims:
                M0 = np.stack([haar_overlap(rng, int(d), 2, 2) for _ in range(seeds)])
                t1 = np.full(seeds, 1e12)
                cases.append({"name": name, "kind": "multi", "solver": solver, "d": d, "M0": M0, "t1": t1})
    for problem in ("two-timescale", "planted"):
        for d in [1e2] if smoke else [1e2, 1e3]:
            M0 = np.stack([haar_overlap(rng, int(d), 2, 2) for _ in range(seeds)])
            cases.append(
                {
                    "name": f"harmonic 3 + 4, {problem}",
                    "kind": "harmonic",
                    "solver": "default",
                    "problem": problem,
                    "d": d,
                    "M0": M0,
                    "t1": np.full(seeds, 1e10),
                }
            )
    d_flow, t1_flow = (8, 200.0) if smoke else (32, 2000.0)
    for n in [200] if smoke else [1000, 4000]:
        flow_seeds = 2 if smoke else 4
        X = rng.standard_normal((n, d_flow))
        y = (X[:, 0] ** 2 - 1) / math.sqrt(2) + 0.1 * rng.standard_normal(n)  # h2(x1) + 0.1 ε
        W0 = np.stack([haar_stiefel(rng, d_flow, 1) for _ in range(flow_seeds)])
        cases.append(
            {
                "name": f"finite-sample h2, Hermite features, n = {n}",
                "kind": "flow",
                "solver": "tsit5",
                "d": float(d_flow),
                "n": n,
                "X": X,
                "y": y,
                "W0": W0,
                "t1": np.full(flow_seeds, t1_flow),
            }
        )
    return cases


# --- the worker: one precision, one process ------------------------------------------------


def _group(case: dict) -> tuple:
    """Cases that run as one compiled, vmapped call (same state shape, solver and problem)."""
    if case["kind"] == "flow":
        return ("flow", case["n"])
    k = 1 if case["kind"] == "single" else 2
    return ("reduced", k, case["solver"], case.get("problem", "two-timescale"))


def run_catalogue(cases: list[dict], precision: str) -> list[dict]:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import mimflow
    from mimflow import links

    if jax.config.jax_enable_x64 != (precision == "float64"):
        raise SystemExit(f"worker for {precision} started with jax_enable_x64={jax.config.jax_enable_x64}")
    num_saves = 64

    @eqx.filter_jit
    def reduced(link, M0, t1, problem, solver):
        solver = mimflow.Rodas4() if solver == "rodas4" else None

        def one(link, M0, t1):
            traj = mimflow.simulate_reduced(link, M0, t1, problem, num_saves=num_saves, solver=solver)
            return traj, mimflow.escape_times(traj)

        return jax.vmap(one)(link, M0, t1)

    @eqx.filter_jit
    def flow_batch(flow, W0, t1):
        def one(W0, t1):
            traj = mimflow.simulate(flow, W0, t1, num_saves=num_saves)
            return traj, mimflow.escape_times(traj)

        return jax.vmap(one)(W0, t1)

    k2 = {
        "staircase h1(z1) + z1 z2": links.staircase(2),
        "h1(z1) + h3(z2)": links.hermite(1, 2, 0) + links.hermite(3, 2, 1),
    }

    def link_of(case):
        if case["kind"] == "single":
            return links.hermite(case["degree"])
        return k2[case["name"]] if case["kind"] == "multi" else links.harmonic(3) + links.harmonic(4)

    outputs: list[dict] = [{} for _ in cases]
    for group in dict.fromkeys(_group(case) for case in cases):
        members = [i for i, case in enumerate(cases) if _group(case) == group]
        chosen = [cases[i] for i in members]
        start = time.perf_counter()
        t1 = jnp.asarray(np.concatenate([case["t1"] for case in chosen]), dtype=float)
        if group[0] == "flow":
            (case,) = chosen
            target = mimflow.Target(links.hermite(2), np.eye(case["X"].shape[1], 1))
            flow = mimflow.TwoTimescaleFlow(
                target, mimflow.HermiteFeatures(4, 1e-3, 1.0), mimflow.Dataset(case["X"], case["y"])
            )
            traj, escape = flow_batch(flow, jnp.asarray(case["W0"], dtype=float), t1)
        else:
            _, _, solver, problem = group
            link = links.stack([link_of(case) for case in chosen for _ in case["t1"]])
            M0 = jnp.asarray(np.concatenate([case["M0"] for case in chosen]), dtype=float)
            traj, escape = reduced(link, M0, t1, problem, solver)
        jax.block_until_ready(escape)
        seconds = time.perf_counter() - start
        fields = {
            "ts": traj.ts,
            "singular_values": traj.singular_values,
            "loss": traj.loss,
            "overlap": traj.overlap,
            "status": traj.status,
            "num_steps": traj.num_steps,
            "escape": escape,
            "forced": traj.forced_error,
        }
        fields = {key: np.asarray(value) for key, value in fields.items()}
        offset = 0
        for i, case in zip(members, chosen, strict=True):
            size = len(case["t1"])
            outputs[i] = {key: value[offset : offset + size] for key, value in fields.items()}
            outputs[i].update(dtype=str(traj.overlap.dtype), seconds=seconds)
            offset += size
        statuses = dict(zip(*(v.tolist() for v in np.unique(fields["status"], return_counts=True)), strict=True))
        print(f"  [{precision}] {group}: {len(t1)} runs, {seconds:.1f} s, statuses {statuses}", file=sys.stderr)
    return outputs


# --- comparison ----------------------------------------------------------------------------


def _status_text(status: np.ndarray) -> str:
    from mimflow import Status

    values, counts = np.unique(status.astype(int), return_counts=True)
    return ", ".join(f"{n} {Status(v).name}" for v, n in zip(values, counts, strict=True)) or "-"


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _max_rel(a: np.ndarray, b: np.ndarray) -> float | None:
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return None
    a, b = a[both], b[both]
    return float(np.max(np.abs(a - b) / np.where(b == 0, 1.0, np.abs(b))))


def _reached(status: np.ndarray) -> np.ndarray:
    """`SUCCESS` or `TIME_UNRESOLVED`: the run reached `t1` (its saves are all there)."""
    from mimflow import Status

    return (status == Status.SUCCESS) | (status == Status.TIME_UNRESOLVED)


def _wrong(f64: dict, f32: dict) -> np.ndarray:
    """Per run, for runs that reached `t1` in both precisions (`False` elsewhere): float32
    is wrong, with an escape found in one precision only or off by more than 1e-3, or a
    saved overlap off by more than 0.1."""
    wrong = np.zeros(len(f64["status"]), bool)
    for i in np.flatnonzero(_reached(f64["status"]) & _reached(f32["status"])):
        e64, e32 = f64["escape"][i].astype(float), f32["escape"][i].astype(float)
        bad = np.any(np.isfinite(e64) != np.isfinite(e32)) or (_max_rel(e32, e64) or 0.0) > 1e-3
        wrong[i] = bad or (_max_abs(f32["overlap"][i], f64["overlap"][i]) or 0.0) > 0.1
    return wrong


def _forced(f64: dict, f32: dict) -> dict:
    """Status against truth for float32 (runs that reached `t1` in both precisions), and
    the forced-step error estimates (`Trajectory.forced_error`) on each side of the limit."""
    from mimflow import Status

    both = _reached(f64["status"]) & _reached(f32["status"])
    wrong = _wrong(f64, f32)
    flagged = f32["status"] == Status.TIME_UNRESOLVED
    largest = lambda values: float(np.max(values, initial=0.0))
    return {
        "silent_float32": int(np.sum(wrong & ~flagged)),
        "flagged_wrong_float32": int(np.sum(wrong & flagged)),
        "flagged_right_float32": int(np.sum(both & ~wrong & flagged)),
        "forced_max_right_float32": largest(f32["forced"][both & ~wrong]),
        "forced_min_wrong_float32": _finite(np.min(f32["forced"][wrong], initial=np.inf)),
        "forced_max_float64": largest(f64["forced"][_reached(f64["status"])]),
    }


def _max_abs(a: np.ndarray, b: np.ndarray) -> float | None:
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[both] - b[both]))) if both.any() else None


def compare(case: dict, f64: dict, f32: dict) -> dict:
    e64, e32 = f64["escape"].astype(float), f32["escape"].astype(float)
    row = {
        "case": case["name"],
        "solver": case["solver"],
        "d": case["d"],
        "runs": len(case["t1"]),
        "dtypes": [f64["dtype"], f32["dtype"]],
        "status_float64": _status_text(f64["status"]),
        "status_float32": _status_text(f32["status"]),
        "steps_float64": float(np.median(f64["num_steps"])),
        "steps_float32": float(np.median(f32["num_steps"])),
        "escape_median_float64": [_finite(v) for v in np.median(e64, axis=0)],
        # escapes seen in one precision only (the other never passed ½ or stopped before)
        "escapes_missed_float32": int(np.sum(np.isfinite(e64) & ~np.isfinite(e32))),
        "escapes_extra_float32": int(np.sum(~np.isfinite(e64) & np.isfinite(e32))),
        # the latest escape (its float64 time) that float32 also found, and the earliest it missed
        "resolved_up_to": _finite(np.max(e64, initial=-np.inf, where=np.isfinite(e64) & np.isfinite(e32))),
        "missed_from": _finite(np.min(e64, initial=np.inf, where=np.isfinite(e64) & ~np.isfinite(e32))),
        **_forced(f64, f32),
        "escape_rel_err": _max_rel(e32, e64),
        "max_abs_singular_values": _max_abs(f32["singular_values"], f64["singular_values"]),
        "max_abs_loss": _max_abs(f32["loss"], f64["loss"]),
        "max_abs_overlap": _max_abs(f32["overlap"], f64["overlap"]),
        "seconds": [f64["seconds"], f32["seconds"]],
    }
    if "reference" in case:
        row["reference_rel_err_float64"] = _max_rel(e64, case["reference"])
        row["reference_rel_err_float32"] = _max_rel(e32, case["reference"])
    if case["kind"] == "harmonic":
        trapped = [out["loss"][:, -1] > 1e-3 for out in (f64, f32)]
        row["trapped"] = [int(t.sum()) for t in trapped]
        row["trapped_disagree"] = int(np.sum(trapped[0] != trapped[1]))
    return row


def _fmt(value, spec=".1e") -> str:
    return "—" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | solver | d | escape (x64, median) | float32 status | float64 status | steps f32 / f64 "
        "| escape rel. err. f32 vs x64 | vs closed form f32 / x64 | max abs err. σ / loss / M "
        "| f32 found escapes ≤ t / missed ≥ t | f32 SUCCESS but wrong | f32 TIME_UNRESOLVED wrong / right "
        "| forced-step error f32 right ≤ / wrong ≥ / x64 ≤ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        escapes = " / ".join("never" if v is None else format(v, ".3g") for v in row["escape_median_float64"])
        missed = row["escapes_missed_float32"]
        error = _fmt(row["escape_rel_err"]) + (f" ({missed} missed)" if missed else "")
        if row["escapes_extra_float32"]:
            error += f" ({row['escapes_extra_float32']} extra)"
        reference = (
            f"{_fmt(row['reference_rel_err_float32'])} / {_fmt(row['reference_rel_err_float64'])}"
            if "reference_rel_err_float64" in row
            else ""
        )
        if "trapped" in row:
            reference = f"trapped {row['trapped'][1]} / {row['trapped'][0]}"
        absolute = " / ".join(_fmt(row[key]) for key in ("max_abs_singular_values", "max_abs_loss", "max_abs_overlap"))
        lines.append(
            f"| {row['case']} | {row['solver']} | {row['d']:g} | {escapes} | {row['status_float32']} "
            f"| {row['status_float64']} | {row['steps_float32']:.0f} / {row['steps_float64']:.0f} | {error} "
            f"| {reference} | {absolute} | {_fmt(row['resolved_up_to'], '.2g')} / {_fmt(row['missed_from'], '.2g')} "
            f"| {row['silent_float32']} | {row['flagged_wrong_float32']} / {row['flagged_right_float32']} "
            f"| {_fmt(row['forced_max_right_float32'])} / {_fmt(row['forced_min_wrong_float32'])} "
            f"/ {_fmt(row['forced_max_float64'])} |"
        )
    return "\n".join(lines)


def _worker(precision: str, smoke: bool, out: Path) -> None:
    outputs = run_catalogue(catalogue(smoke), precision)
    np.savez(out, **{f"{i}/{key}": value for i, output in enumerate(outputs) for key, value in output.items()})


def _load(path: Path, count: int) -> list[dict]:
    with np.load(path) as data:
        outputs = [{} for _ in range(count)]
        for name in data.files:
            index, key = name.split("/", 1)
            value = data[name]
            outputs[int(index)][key] = value.item() if value.ndim == 0 and key in ("dtype", "seconds") else value
    return outputs


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few points of each case: about 2 min on 2 CPU cores")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    parser.add_argument("--worker", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.smoke, Path(args.worker_out))
        return {}
    cases = catalogue(args.smoke)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            path = Path(tmp) / f"{precision}.npz"
            env = {
                **os.environ,
                "JAX_ENABLE_X64": "1" if precision == "float64" else "0",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
            command = [sys.executable, __file__, "--worker", precision, "--worker-out", str(path)]
            print(f"running the catalogue in {precision} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            subprocess.run(command + (["--smoke"] if args.smoke else []), env=env, check=True)
            print(f"  {precision}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            results[precision] = _load(path, len(cases))
    rows = [
        compare(case, f64, f32) for case, f64, f32 in zip(cases, results["float64"], results["float32"], strict=True)
    ]
    meta = run_meta("precision", smoke=args.smoke, dtype="float32 vs float64")
    print(f"\n{meta['device']} ({meta['platform']}), jax {meta['jax']}, {meta['cpu_count']} CPUs\n")
    print(markdown(rows))
    return {"meta": meta, "rows": rows, "args": args}


if __name__ == "__main__":
    figures = main()
    if figures and figures["args"].out:
        out = figures.pop("args").out
        write_json(out, figures)
