"""The `mimflow` command: run experiments described in YAML configs.

  mimflow run CONFIG [--out DIR] [--set key=value ...]   run, save, summarise, plot
                     [--precision float64|float32]      (default: the config's, float64)
  mimflow theory CONFIG [--json]                        what the paper predicts for it
  mimflow plot DIR                                      (re)draw the figures of a run
  mimflow links                                         the catalogue of link functions

User errors (a bad config, a missing file) exit with code 2 and one line on stderr.
"""

import argparse
import json
import sys
import time
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, as for every user error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mimflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="run a config: results, summary and figures in its output directory")
    run.add_argument("config", help="the YAML config (see configs/README.md)")
    run.add_argument("--out", help="the output directory (default: the config's output.dir)")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. sweep.seed=4"
    )
    run.add_argument("--smoke", action="store_true", help="apply the config's `smoke` section (a reduced size)")
    run.add_argument(
        "--precision",
        choices=["float64", "float32"],
        help="compute in this precision, replacing the config's `precision` (default float64; see README, Precision)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--overwrite", action="store_true", help="replace results of a different config in DIR")
    theory = commands.add_parser("theory", help="the predicted saddle sequence and timescales of a config")
    theory.add_argument("config")
    theory.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    theory.add_argument("--json", action="store_true", help="print JSON instead of tables")
    plot = commands.add_parser("plot", help="draw the figures of a finished run into DIR/figures")
    plot.add_argument("dir")
    commands.add_parser("links", help="the catalogue of link functions a config can name")
    return parser


def _run(args) -> int:
    from ._config import load_config
    from ._report import format_summary
    from ._runner import FIGURES, RESULTS, SUMMARY, run_config

    overrides = args.set + ([f"precision={args.precision}"] if args.precision else [])
    config = load_config(args.config, overrides, smoke=args.smoke, out=args.out)
    import jax

    # the whole process computes in the run's precision (`run_config` would otherwise switch
    # with `jax.enable_x64` around the computation only)
    jax.config.update("jax_enable_x64", config["precision"] == "float64")
    start = time.perf_counter()
    _, summary = run_config(config, overwrite=args.overwrite, progress=False if args.quiet else None)
    out = Path(config["output"]["dir"])
    print(format_summary(summary))
    print(f"\nresults in {out}: {RESULTS}, {SUMMARY}, {FIGURES}/*.png")
    print(f"({time.perf_counter() - start:.1f} s on {jax.devices()[0].platform})")
    return 0


def _theory(args) -> int:
    import itertools

    import numpy as np

    from ._config import link_label, load_config
    from ._report import _clean, _prediction

    config = load_config(args.config, args.set)
    sweep = config["sweep"]
    dims = np.asarray(sweep.get("d", [config.get("d")]), dtype=float)
    varying = [axis for axis in ("link", "problem", "ridge", "rho") if axis in sweep]
    choices = [range(len(sweep["link"])) if axis == "link" else sweep[axis] for axis in varying]
    groups = []
    for values in itertools.product(*choices):
        point = dict(zip(varying, values, strict=True))
        prediction, notes = _prediction(config, point)
        spec = sweep["link"][point["link"]] if "link" in point else config["target"]
        groups.append((point, link_label(spec), prediction, notes))
    if args.json:
        report = [
            {
                "point": point,
                "link": label,
                "problem": prediction.problem,
                "k": prediction.k,
                "r": prediction.r,
                "information_exponent": prediction.information_exponent,
                "final_loss": prediction.final_loss,
                "dims": dims,
                "saddles": [
                    {
                        "index": s.index,
                        "relative_exponent": s.relative_exponent,
                        "directions": s.directions.T,
                        "strengths": s.strengths,
                        "law": s.law,
                        "exponent": s.exponent,
                        "constant": s.constant,
                        "plateau_loss": s.loss,
                        "predicted_time": s.time(dims),
                    }
                    for s in prediction.saddles
                ],
                "notes": notes + list(prediction.notes),
            }
            for point, label, prediction, notes in groups
        ]
        print(json.dumps(_clean(report), indent=1, allow_nan=False))
        return 0
    blocks = []
    for point, label, prediction, notes in groups:
        title = ", ".join([f"link {label}"] + [f"{k}={v}" for k, v in point.items() if k != "link"])
        lines = [f"== {title}", str(prediction)]
        if prediction.saddles:
            lines.append("predicted time on each saddle:  " + "  ".join(f"d={d:g}" for d in dims))
            for s, times in zip(prediction.saddles, prediction.times(dims).T, strict=True):
                lines.append(f"  saddle {s.index} ({s.law}): " + "  ".join(f"{t:.4g}" for t in times))
        lines += [f"note: {note}" for note in notes]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def _plot(args) -> int:
    from ._report import summarize
    from ._runner import FIGURES, load_results, save_figures

    results = load_results(args.dir)
    for path in save_figures(results, summarize(results), Path(args.dir) / FIGURES):
        print(path)
    return 0


def _links(args) -> int:
    from ._config import CATALOGUE

    lines = ["link functions a config can name (target: {link: NAME, parameter: value, ..., scale: 1.0}):", ""]
    for name, (constructor, parameters) in CATALOGUE.items():
        signature = ", ".join(p if default is None else f"{p}={default:g}" for p, (_, default) in parameters.items())
        summary = (constructor.__doc__ or "").strip().split("\n\n")[0]
        lines.append(f"  {name}({signature})")
        lines += [f"      {line.strip()}" for line in summary.splitlines()]
    lines += [
        "",
        "a list of terms is their sum:",
        "  target: [{link: hermite, degree: 1, dim: 2}, {link: hermite, degree: 3, dim: 2, index: 1}]",
        "a table of Hermite coefficients: target: {hermite: {'1,0': 1.0, '1,1': 1.0}}  (multi-index α: c_α)",
    ]
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mimflow` command; returns the exit code (2 for user errors)."""
    args = _parser().parse_args(argv)
    import jax

    # float32 cannot resolve the late, slow saddles over t ~ 10⁸ (see README, Precision); a
    # run computes in its config's `precision` (float64 unless `precision: float32`).
    jax.config.update("jax_enable_x64", True)
    commands = {"run": _run, "theory": _theory, "plot": _plot, "links": _links}
    try:
        return commands[args.command](args)
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())
        print(f"mimflow {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nmimflow {args.command}: interrupted; finished chunks are saved, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
