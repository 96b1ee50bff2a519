"""Figures of a run (matplotlib, PNG), one panel per group of swept values (DESIGN §5):

- `loss.png`: the loss against log t (median over seeds per `d`, quartile band), with
  the predicted plateau levels and final loss marked;
- `singular_values.png`: the singular values of `M(t)` (median over seeds per `d`);
- `escape_times.png` (two `d` or more): the time on each saddle against `d` on log–log
  axes, every seed and the median, with the predicted law `constant · law(d)`.

Lines carry labels (`"d=100"`, `"plateau 1"`, `"saddle 1 median"`, …) so their data
can be read back from the returned figures.
"""

import math
import textwrap

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from . import theory
from ._report import _axis_first, _groups, _nanmedian, check_results, group_predictions

__all__ = ["figures"]


def _panels(count: int, title: str) -> tuple[Figure, list]:
    columns = min(3, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(5.0 * columns, 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[count:]:
        extra.set_visible(False)
    figure.suptitle(title)
    figure.get_layout_engine().set(w_pad=0.1, h_pad=0.1)
    return figure, list(axes[:count])


def _quantiles(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        return np.nanquantile(values, 0.25, axis=axis), np.nanquantile(values, 0.75, axis=axis)


def figures(results: xr.Dataset, summary: dict) -> dict[str, Figure]:
    """The figures of a run, by file stem (`loss`, `singular_values`, `escape_times`),
    from its results (`load_results`) and summary (`summarize`); see the module doc.

    **Example:**
    ```python
    results = mimflow.load_results("results/quickstart")
    figures(results, mimflow.summarize(results))["loss"].savefig("loss.pdf")
    ```
    """
    check_results(results)
    if not isinstance(summary, dict) or "groups" not in summary:
        raise ValueError(f"`summary` must be the summary of the results (summarize), got {type(summary).__name__}")
    groups = _groups(results)
    entries = summary["groups"]
    dims = np.asarray(summary["dims"], dtype=float)
    times = results["time"].values[1:]  # t = 0 has no place on a log axis
    name = summary["name"]
    out: dict[str, Figure] = {}

    figure, axes = _panels(len(groups), f"{name}: loss against time")
    for ax, group, entry in zip(axes, groups, entries, strict=True):
        loss = _axis_first(results.loss.isel(group), ("d", "seed", "time"))[:, :, 1:]
        for j, d in enumerate(dims):
            (line,) = ax.plot(times, _nanmedian(loss[j], axis=0), label=f"d={d:g}")
            low, high = _quantiles(loss[j], axis=0)
            ax.fill_between(times, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        for saddle in entry["saddles"]:
            ax.axhline(
                saddle["plateau_loss"], color="0.4", linestyle="--", linewidth=0.8, label=f"plateau {saddle['index']}"
            )
        if entry["predicted_final_loss"] is not None:
            ax.axhline(
                entry["predicted_final_loss"], color="0.4", linestyle=":", linewidth=0.8, label="final (predicted)"
            )
        ax.set(
            xscale="log",
            xlabel="t",
            ylabel="loss",
            title=_title(entry),
            xlim=(times[0], _right_limit(results, group, times)),
        )
        ax.legend(fontsize="small", loc="upper right")
    out["loss"] = figure

    figure, axes = _panels(len(groups), f"{name}: singular values of M")
    styles = ["-", "--", ":", "-."]
    for ax, group, entry in zip(axes, groups, entries, strict=True):
        values = _axis_first(results.singular_values.isel(group), ("d", "seed", "time", "direction"))[:, :, 1:]
        for j, d in enumerate(dims):
            color = f"C{j % 10}"
            for i in range(values.shape[-1]):
                median = _nanmedian(values[j, :, :, i], axis=0)
                ax.plot(times, median, color=color, linestyle=styles[i % 4], label=f"d={d:g}, σ{i + 1}")
        ax.axhline(_threshold(results), color="0.4", linewidth=0.8, linestyle="--", label="escape threshold")
        ax.set(
            xscale="log",
            xlabel="t",
            ylabel="singular value",
            ylim=(-0.02, 1.02),
            xlim=(times[0], _right_limit(results, group, times)),
            title=_title(entry),
        )
        ax.legend(fontsize="small", loc="lower right", ncols=1 + (values.shape[-1] * len(dims) > 6))
    out["singular_values"] = figure

    if dims.size >= 2:
        predictions = [prediction for _, prediction in group_predictions(results)]
        figure, axes = _panels(len(groups), f"{name}: time on each saddle against d")
        for ax, group, entry, prediction in zip(axes, groups, entries, predictions, strict=True):
            escape = _axis_first(results.escape_time.isel(group), ("d", "seed", "direction"))
            durations = theory.saddle_durations(prediction, escape)
            for i, saddle in enumerate(entry["saddles"]):
                color = f"C{i % 10}"
                seeds = durations[..., i]
                grid = np.broadcast_to(dims[:, None], seeds.shape)
                finite = np.isfinite(seeds) & (seeds > 0)
                ax.scatter(grid[finite], seeds[finite], color=color, alpha=0.25, s=10)
                median = np.asarray([np.nan if v is None else v for v in saddle["median_time"]], dtype=float)
                slope = "" if saddle.get("slope") is None else f", slope {saddle['slope']:.2f}"
                ax.plot(dims, median, "o", color=color, label=f"saddle {saddle['index']} median{slope}")
                fine = np.geomspace(dims.min(), dims.max(), 50)
                law = saddle["law"]
                ax.plot(
                    fine,
                    prediction.saddles[i].time(fine),
                    color=color,
                    linestyle="--",
                    label=f"saddle {saddle['index']} predicted ∝ {law}",
                )
            ax.set(xscale="log", yscale="log", xlabel="d", ylabel="time on saddle", title=_title(entry))
            ax.legend(fontsize="small")
        out["escape_times"] = figure
    return out


def _right_limit(results: xr.Dataset, group: dict, times: np.ndarray) -> float:
    """Where the figure's time axis ends: 30× the last escape of the group (the runs are
    still or converged after it), or `t1` if some run never escaped."""
    escape = results.escape_time.isel(group).values
    if not np.all(np.isfinite(escape)):
        return float(times[-1])
    return float(min(times[-1], 30 * np.max(escape, initial=times[0])))


def _title(entry: dict) -> str:
    return textwrap.fill(entry["label"], 48)


def _threshold(results: xr.Dataset) -> float:
    return float(results.attrs.get("escape_threshold", 0.5))
