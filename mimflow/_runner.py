"""Running a config: chunks saved as they finish, resumed after an interruption, and the
results, the resolved config and a summary written atomically to the output directory.

```
DIR/config.yaml     the resolved config (every default filled in)
DIR/results.nc      the sweep (xarray, netCDF3 via scipy: no system libraries needed)
DIR/summary.json    escape times per saddle, fitted slopes, predicted laws
DIR/figures/*.png   loss, singular values, escape times against d
DIR/partial/        finished chunks of an unfinished run (removed at the end)
```

Only these names are ever written or removed, and only in a directory that is new, holds
none of them, or holds a run (`config.yaml` written by `mimflow run`): files of other
programs that happen to have these names are never replaced.
"""

import hashlib
import json
import math
import os
import re
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np
import xarray as xr
import yaml

from ._config import _TOP, STATIC_AXES, ConfigError, build_jobs, dump_config, link_label, resolve_config
from ._plot import figures
from ._progress import Progress
from ._report import summarize
from ._sweep import SweepPlan

__all__ = ["run_config", "load_results", "save_figures", "RESULTS", "SUMMARY", "CONFIG"]

RESULTS, SUMMARY, CONFIG, PARTIAL, FIGURES = "results.nc", "summary.json", "config.yaml", "partial", "figures"
# the files a run writes in PARTIAL and FIGURES (regular expressions of their names)
_CHUNKS, _META = r"job\d{3,}-chunk\d{5,}\.npz", r"meta\.json"  # `_compute`
_PNGS = r"(loss|singular_values|escape_times)\.png"  # `save_figures` of `_plot.figures`
_RESOLVED_KEYS = {"name", "target", "time", "solver", "output", "sweep"}  # what every resolved config holds
_ENGINE = "scipy"  # netCDF3 64-bit offset: written by scipy, with no HDF5 or netCDF C library


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it onto `path`,
    so that `path` is either absent, the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _save_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)

    atomic_write(path, write)


def _load_chunk(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def load_results(directory: str | Path) -> xr.Dataset:
    """The dataset of a finished run (`DIR/results.nc`), loaded into memory; a
    `ConfigError` naming the file if it cannot be read (corrupt, truncated, not netCDF3)."""
    if not isinstance(directory, str | Path):
        raise ConfigError(f"`directory` must be a directory name, got {type(directory).__name__}")
    path = Path(directory) / RESULTS
    if not path.exists():
        raise ConfigError(f"{directory}: no {RESULTS} (run `mimflow run CONFIG --out {directory}` first)")
    try:
        return xr.load_dataset(path, engine=_ENGINE)
    except (TypeError, ValueError, OSError, EOFError, IndexError, KeyError, struct.error) as error:
        reason = " ".join(str(error).split())
        raise ConfigError(
            f"{path}: not a readable {RESULTS} of a run (a netCDF3 file written by `mimflow run`): {reason:.200}"
        ) from None


def _difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first field path where two configs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                return f"{path}{key}"
            found = _difference(old[key], new[key], f"{path}{key}.")
            if found:
                return found
        return None
    return None if old == new else (path.rstrip(".") or "(top level)")


def _identity(config: dict) -> dict:
    """What makes two runs the same: the resolved config without its output directory
    (so a run directory can be moved or renamed and still resume)."""
    return {**config, "output": {k: v for k, v in config["output"].items() if k != "dir"}}


def save_figures(results: xr.Dataset, summary: dict, directory: str | Path) -> list[Path]:
    """Write `figures(results, summary)` as PNG files in `directory`; return their paths."""
    directory = Path(directory)
    paths = []
    for stem, figure in figures(results, summary).items():
        path = directory / f"{stem}.png"
        atomic_write(path, lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=110))
        paths.append(path)
    return paths


def _temporary(pattern: str) -> str:
    """The names of the temporary files `atomic_write` makes for the names `pattern`."""
    return rf"\.(?:{pattern})\..+\.tmp"


def _own_files(directory: Path, pattern: str) -> list[Path]:
    """The files (not folders) of `directory` whose names match the regular expression `pattern`."""
    if not directory.is_dir():
        return []
    return [path for path in directory.iterdir() if re.fullmatch(pattern, path.name) and not path.is_dir()]


def _remove_own(directory: Path, pattern: str) -> None:
    """Remove the files of `directory` named by `pattern` and their temporary files, then
    `directory` itself if that left it empty (otherwise it holds files mimflow did not write)."""
    for path in _own_files(directory, rf"{pattern}|{_temporary(pattern)}"):
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass


def _clear(out: Path) -> None:
    """Remove what a run wrote in `out` (and nothing else); `config.yaml` last, so that a
    clear cut short leaves a directory still recognised as a run's."""
    _remove_own(out / PARTIAL, f"{_META}|{_CHUNKS}")
    _remove_own(out / FIGURES, _PNGS)
    for name in (RESULTS, SUMMARY, CONFIG):
        (out / name).unlink(missing_ok=True)


def _is_run_config(stored: Any) -> bool:
    """Whether `stored` (a parsed `config.yaml`) is a config written by `mimflow run`."""
    return (
        isinstance(stored, dict)
        and _RESOLVED_KEYS <= stored.keys()
        and set(stored) <= set(_TOP)
        and isinstance(stored["output"], dict)
    )


def _previous_run(out: Path) -> dict | None:
    """The identity of the run whose files are in `out` (`_identity`), `None` if `out` holds
    none of the names a run writes; a `ConfigError` if it holds some that no run wrote
    there (they would be replaced or removed)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"output.dir: {out} exists and is not a directory")
    stored = out / CONFIG
    foreign = f"choose another --out (mimflow replaces only files it wrote; {out} is left as it is)"
    if stored.exists():
        try:
            previous = _stored_config(stored)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            previous = None
        if not _is_run_config(previous):
            raise ConfigError(f"output.dir: {stored} is not a config written by `mimflow run`; {foreign}")
        return _identity(previous)
    present = [name for name in (SUMMARY, PARTIAL, FIGURES) if (out / name).exists()]
    if present:
        raise ConfigError(f"output.dir: {out} holds {', '.join(present)} but no {CONFIG} of a run; {foreign}")
    if (out / RESULTS).exists():
        # a finished run's results.nc alone (copied): its attributes hold its config
        try:
            previous = yaml.safe_load(load_results(out).attrs.get("config", ""))
        except (ConfigError, yaml.YAMLError):
            previous = None
        if not _is_run_config(previous):
            raise ConfigError(f"output.dir: {out / RESULTS} is not the results of a `mimflow run`; {foreign}")
        previous.setdefault("precision", "float64")
        return _identity(previous)
    return None


def _coordinate(axis: str, value: Any) -> Any:
    return float("inf") if axis == "n" and value is None else value


def _combine(config: dict, jobs: list, datasets: list[xr.Dataset]) -> xr.Dataset:
    """One dataset from the compiled sweeps of the static axes, dims in the config's order."""
    static_axes = [axis for axis in config["sweep"] if axis in STATIC_AXES]
    if static_axes:
        expanded = [
            dataset.expand_dims({axis: [_coordinate(axis, static[axis])] for axis in static_axes})
            for (static, _, _), dataset in zip(jobs, datasets, strict=True)
        ]
        shape = [len(config["sweep"][axis]) for axis in static_axes]
        nested: Any = np.empty(shape, dtype=object)
        for index, dataset in zip(np.ndindex(*shape), expanded, strict=True):
            nested[index] = dataset
        combined = xr.combine_nested(nested.tolist(), concat_dim=static_axes, combine_attrs="drop_conflicts")
    else:
        (combined,) = datasets
    order = [axis for axis in config["sweep"]] + [dim for dim in combined.dims if dim not in config["sweep"]]
    combined = combined.transpose(*order)
    if "link" in config["sweep"]:
        combined = combined.assign_coords(link_label=("link", [link_label(s) for s in config["sweep"]["link"]]))
    combined.attrs = {
        "name": config["name"],
        "description": config["description"],
        "dynamics": config["dynamics"],
        "problem": config["problem"] if "problem" not in config["sweep"] else "swept",
        "target": link_label(config["target"]),
        "k": int(combined.sizes["k"]),
        "r": int(config["r"]),
        "escape_threshold": config["output"]["escape_threshold"],
        "precision": config["precision"],
        "status_codes": datasets[0].attrs["status_codes"],
        "config": dump_config(_identity(config)),
    }
    for name in ("status", "num_steps"):
        combined[name] = combined[name].astype(np.int32)  # netCDF3 has no 64-bit integers
    return combined


def _compute(config: dict, out: Path, progress: bool | None, stream: TextIO) -> xr.Dataset:
    """Run the sweeps of `config` chunk by chunk into `out/partial` (reusing the chunks
    saved there by an interrupted run of the same config), then write `out/results.nc`."""
    jobs = build_jobs(config)
    partial = out / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    for leftover in _own_files(partial, _temporary(f"{_META}|{_CHUNKS}")):
        leftover.unlink()
    digest = hashlib.sha256(dump_config(_identity(config)).encode()).hexdigest()
    meta_path = partial / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is not None and (meta.get("config") != digest or len(meta.get("batch_sizes", [])) != len(jobs)):
        meta = None
    try:
        plans = [
            SweepPlan(
                experiment,
                axes,
                batch_size=meta["batch_sizes"][j] if meta else config["output"]["batch_size"],
                # at most ~16 chunks of ≥ 256 points: progress and resuming need more than one chunk
                max_batch_size=max(256, -(-math.prod(len(v) for v in axes.values()) // 16)),
                escape_threshold=config["output"]["escape_threshold"],
            )
            for j, (_, experiment, axes) in enumerate(jobs)
        ]
    except ValueError as error:
        raise ConfigError(f"sweep: {error}") from None
    if meta is not None and [plan.batch_size for plan in plans] != meta["batch_sizes"]:
        meta = None  # other devices: the chunks would not line up
    if meta is None:
        for chunk in _own_files(partial, _CHUNKS):
            chunk.unlink()
        _write_text(meta_path, json.dumps({"config": digest, "batch_sizes": [p.batch_size for p in plans]}))
    paths = [[partial / f"job{j:03d}-chunk{i:05d}.npz" for i in range(p.num_chunks)] for j, p in enumerate(plans)]
    total = sum(len(row) for row in paths)
    done = sum(path.exists() for row in paths for path in row)
    if done:
        print(f"resuming: {done} of {total} chunks already done", file=stream, flush=True)
    bar = Progress(total, done, label=config["name"], enabled=progress, stream=stream)
    datasets = []
    try:
        for plan, row in zip(plans, paths, strict=True):
            chunks = []
            for i, path in enumerate(row):
                if path.exists():
                    chunks.append(_load_chunk(path))
                    continue
                arrays = plan.run_chunk(i)
                _save_chunk(path, arrays)
                chunks.append(arrays)
                bar.advance()
            datasets.append(plan.dataset(chunks))
    finally:
        bar.close()
    results = _combine(config, jobs, datasets)
    atomic_write(out / RESULTS, lambda tmp: results.to_netcdf(tmp, engine=_ENGINE))
    _remove_own(partial, f"{_META}|{_CHUNKS}")
    return load_results(out)


def _stored_config(path: Path) -> dict:
    """A config written by an earlier run; those written before `precision` existed ran in float64."""
    stored = yaml.safe_load(path.read_text())
    if isinstance(stored, dict):
        stored.setdefault("precision", "float64")
    return stored


def run_config(
    config: dict, *, overwrite: bool = False, progress: bool | None = None, stream: TextIO | None = None
) -> tuple[xr.Dataset, dict]:
    """Run a resolved config (`load_config`) into its `output.dir`; return the results
    and the summary (`summarize`).

    Each finished chunk of the sweep is saved at once; a rerun of the same config
    (after Ctrl-C or a kill) loads them and runs only the rest, with the same chunk
    size, so its results equal an uninterrupted run's. A directory holding a
    different config is an error unless `overwrite`. A finished run is not recomputed.

    The run computes in the config's `precision` (`jax.enable_x64` on for float64, off
    for float32, whatever the process's setting), recorded in the results' attributes.

    `progress`: draw a progress bar on `stream` (default `sys.stderr`) after each chunk;
    `None` (default) draws one when `stream` is a terminal.
    """
    if not isinstance(config, dict) or not _RESOLVED_KEYS <= config.keys():
        raise ConfigError(f"`config` must be a resolved config (load_config(path)), got {config!r:.80}")
    # validated again (a resolved config resolves to itself): an edited dict is checked like a file
    config = resolve_config(config)
    stream = sys.stderr if stream is None else stream
    out = Path(config["output"]["dir"])
    text = dump_config(config)
    stored = out / CONFIG
    previous = _previous_run(out)  # refuses a directory holding files mimflow did not write
    if overwrite:
        _clear(out)
    elif previous is not None and (where := _difference(previous, _identity(config))):
        raise ConfigError(
            f"output.dir: {out} holds a run of a different config (it differs at {where}); "
            f"pass --overwrite to replace it, or choose another --out"
        )
    _write_text(stored, text)
    if (out / RESULTS).exists():
        print(f"{out / RESULTS} is complete; summarising it again", file=stream, flush=True)
        results = load_results(out)
    else:
        with jax.enable_x64(config["precision"] == "float64"):
            results = _compute(config, out, progress, stream)
    summary = summarize(results)
    _write_text(out / SUMMARY, json.dumps(summary, indent=1, allow_nan=False) + "\n")
    save_figures(results, summary, out / FIGURES)
    return results, summary
