"""What a finished run found, against what the theory predicts: `summary.json` and the
text `mimflow run` prints.

The results are grouped by every swept value other than `seed` and `d` (a link, a
ridge, a problem, …). For each group the paper's prediction (`theory.predict`, with
the ridge shrinkage of the fit where it has a closed form) gives the saddle
sequence; the measured escape times give the time on each saddle per `d` (median
over seeds), its log–log slope against `d` with a bootstrap interval (two `d`
values or more) and the verdict against the predicted law (`theory.compare`).
"""

import itertools
import math
import warnings
from typing import Any

import jax
import numpy as np
import xarray as xr
import yaml

from . import theory
from ._config import _build_fit, build_link, link_label
from ._flows import _population_problem
from ._integrate import Status
from ._reduced import TwoTimescale

__all__ = ["summarize", "format_summary", "group_predictions"]

_GROUPLESS = ("seed", "d", "time", "direction", "k", "r")


def _clean(value: Any) -> Any:
    """JSON-ready: NumPy scalars and arrays to Python, non-finite floats to `None`."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _groups(results: xr.Dataset) -> list[dict[str, int]]:
    """Index dicts of every combination of the swept values other than seed and d."""
    dims = [dim for dim in results.escape_time.dims if dim not in _GROUPLESS]
    return [
        dict(zip(dims, index, strict=True)) for index in itertools.product(*(range(results.sizes[d]) for d in dims))
    ]


def _value(results: xr.Dataset, dim: str, index: int) -> Any:
    value = results[dim].values[index]
    return value.item() if isinstance(value, np.generic) else value


def _prediction(config: dict, point: dict[str, Any]) -> tuple[theory.Prediction, list[str]]:
    """The prediction for one group of a resolved config, and caveats about it."""
    spec = config["sweep"]["link"][point["link"]] if "link" in point else config["target"]
    link = build_link(spec)
    problem = point.get("problem", config["problem"])
    notes: list[str] = []
    if problem == "planted":
        return theory.predict(link, "planted", r=config["r"]), notes
    if config["dynamics"] == "reduced":
        reduced = TwoTimescale(link, point.get("ridge", config["ridge"]), point.get("rho", config["rho"]))
    else:
        swept = {name: point[name] for name in ("ridge", "rho") if name in point}
        fit = None if config["fit"] is None else {**config["fit"], **swept}
        try:  # the fit's population limit (the flow's own mapping), where it has a closed form
            reduced = _population_problem(link, _build_fit(fit, jax.random.key(0)))
        except ValueError:
            reduced = TwoTimescale(link)
            notes.append(f"the prediction leaves out the {fit['kind']} fit's shrinkage (no closed form)")
        if config["dynamics"] == "finite-sample":
            notes.append("finite samples: the prediction is the population limit n → ∞")
    return theory.predict(reduced, r=config["r"]), notes


def group_predictions(results: xr.Dataset) -> list[tuple[dict[str, Any], theory.Prediction]]:
    """Per group (see the module doc): the swept values and the theory's prediction."""
    config = yaml.safe_load(results.attrs["config"])
    out = []
    for group in _groups(results):
        point = {dim: _value(results, dim, i) for dim, i in group.items()}
        out.append((point, _prediction(config, point)[0]))
    return out


def _nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def _axis_first(array: xr.DataArray, dims: tuple[str, ...]) -> np.ndarray:
    for dim in dims:
        if dim not in array.dims:
            array = array.expand_dims(dim)
    return array.transpose(*dims, ...).values


_VARIABLES = ("loss", "singular_values", "escape_time", "status")
_ATTRIBUTES = ("config", "problem", "target", "k", "r")


def check_results(results: object) -> None:
    """Raise a `ValueError` unless `results` is the dataset of a run: it carries its
    config and the variables and attributes a summary and the figures read."""
    if not isinstance(results, xr.Dataset) or "config" not in results.attrs:
        raise ValueError(
            f"`results` must be the dataset of a run (run_config, load_results), got {type(results).__name__}"
            + (" without a config" if isinstance(results, xr.Dataset) else "")
        )
    missing = [name for name in _VARIABLES if name not in results.data_vars]
    missing += [f"attribute {name!r}" for name in _ATTRIBUTES if name not in results.attrs]
    missing += ["coordinate 'time'"] if "time" not in results.coords else []
    if missing:
        raise ValueError(f"`results` lacks what the dataset of a run holds: {', '.join(missing)}")


def summarize(results: xr.Dataset) -> dict:
    """The summary of a run's results (as in `summary.json`): per group of swept values,
    the prediction, the median final loss per `d` and the fraction of seeds that reach
    the predicted final loss (within 1e-3 of their initial loss), and per saddle the
    median time on it per `d`, the fraction of seeds
    that escaped it, the predicted time, their ratio, and (with two `d` or more) the
    fitted log–log slope with its bootstrap interval and the verdict.
    Non-finite numbers (a saddle never left, a failed run) are `null`."""
    check_results(results)
    config = yaml.safe_load(results.attrs["config"])
    dims = np.atleast_1d(results["d"].values if "d" in results.dims else np.asarray([config["d"]], dtype=float))
    statuses = results.status.values.ravel()
    summary: dict[str, Any] = {
        "name": config["name"],
        "description": config["description"],
        "dynamics": config["dynamics"],
        "problem": results.attrs["problem"],
        "target": results.attrs["target"],
        "k": int(results.attrs["k"]),
        "r": int(results.attrs["r"]),
        "precision": str(results.attrs.get("precision", "float64")),  # runs before the key were float64
        "axes": {dim: results[dim].values for dim in results.escape_time.dims if dim != "direction"},
        "runs": int(statuses.size),
        "status": {s.name: int(np.sum(statuses == s.value)) for s in Status},
        "dims": dims,
        "groups": [],
    }
    if "link" in results.dims:
        summary["link_labels"] = [str(v) for v in results["link_label"].values]
    for group in _groups(results):
        point = {dim: _value(results, dim, i) for dim, i in group.items()}
        label = ", ".join(
            f"link={results['link_label'].values[i]}"
            if dim == "link"
            else f"{dim}={point[dim]:g}"
            if isinstance(point[dim], int | float)
            else f"{dim}={point[dim]}"
            for dim, i in group.items()
        )
        prediction, notes = _prediction(config, point)
        selected = results.isel(group)
        times = _axis_first(selected.escape_time, ("d", "seed", "direction"))  # (D, S, p)
        final = _axis_first(selected.loss.isel(time=-1), ("d", "seed"))
        start = _axis_first(selected.loss.isel(time=0), ("d", "seed"))
        # within 1e-3 of the initial loss of the predicted final loss (a planted trap is not)
        reached = final <= prediction.final_loss + 1e-3 * start
        entry: dict[str, Any] = {
            "point": point,
            "label": label or link_label(config["target"]),
            "notes": notes + list(prediction.notes),
            "information_exponent": prediction.information_exponent,
            "predicted_final_loss": prediction.final_loss,
            "final_loss_median": _nanmedian(final, axis=1),
            "reached_final_loss": reached.mean(axis=1),
            "saddles": [],
        }
        durations = theory.saddle_durations(prediction, times)  # (D, S, saddles)
        comparison = theory.compare(prediction, dims, times) if dims.size >= 2 and prediction.saddles else None
        for i, saddle in enumerate(prediction.saddles):
            medians = _nanmedian(durations[..., i], axis=1)
            predicted = saddle.time(dims)
            item = {
                "index": saddle.index,
                "relative_exponent": saddle.relative_exponent,
                "learns": saddle.num_directions,
                "law": saddle.law,
                "exponent": saddle.exponent,
                "constant": saddle.constant,
                "plateau_loss": saddle.loss,
                "median_time": medians,
                "escaped": np.isfinite(durations[..., i]).mean(axis=1),
                "predicted_time": predicted,
                "ratio": medians / predicted,
            }
            if comparison is not None:
                fit = comparison.fits[i]
                item.update(
                    slope=fit.slope,
                    slope_interval=list(fit.interval),
                    slope_level=fit.level,
                    slope_tolerance=comparison.log_slope_max if saddle.logarithmic else comparison.tolerance,
                    agrees=comparison.agrees[i],
                )
            entry["saddles"].append(item)
        entry["text"] = str(prediction) + ("\n\n" + str(comparison) if comparison is not None else "")
        summary["groups"].append(entry)
    return _clean(summary)


def format_summary(summary: dict) -> str:
    """The text `mimflow run` prints: per group, the prediction and the measurement."""
    runs, status = summary["runs"], summary["status"]
    failed = {name: count for name, count in status.items() if name != "SUCCESS" and count}
    lines = [
        f"{summary['name']}: {summary['dynamics']} dynamics, {summary['problem']} problem, target "
        f"{summary['target']}; {runs} run{'s' if runs != 1 else ''}"
        + (f" ({', '.join(f'{n} {name}' for name, n in failed.items())})" if failed else ", all finished")
        + (f"; {summary['precision']}" if summary.get("precision", "float64") != "float64" else ""),
    ]
    for group in summary["groups"]:
        lines += ["", f"== {group['label']}", group["text"]]
        if len(summary["dims"]) < 2:
            for saddle in group["saddles"]:
                median, predicted = saddle["median_time"][0], saddle["predicted_time"][0]
                lines.append(
                    f"saddle {saddle['index']}: median time {_fmt(median)} (predicted {_fmt(predicted)}), "
                    f"escaped {saddle['escaped'][0]:.0%}"
                )
        lines.append(
            "final loss, median per d: "
            + ", ".join(_fmt(v) for v in group["final_loss_median"])
            + "; seeds at the predicted final loss: "
            + ", ".join(f"{v:.0%}" for v in group["reached_final_loss"])
        )
        lines += [f"note: {note}" for note in group["notes"] if note not in group["text"]]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.4g}"
