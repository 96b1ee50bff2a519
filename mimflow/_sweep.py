"""Sweeps over seeds × dimensions × hyperparameters: one compiled, vmapped program
(mapped, for finite-sample flows on a CPU), run in chunks that fit in memory and sharded
over every device (DESIGN §4, `sweep`)."""

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array

from ._checks import check_int, check_range
from ._experiments import AbstractExperiment, Axes, FlowExperiment, ReducedExperiment, check_grid
from ._integrate import Status, escape_times
from ._link import Link

_BATCH = "batch"
# a reduced sweep's compiled batch holds a multiple of this many points per device (`_width`)
_REDUCED_MULTIPLE = 16


def _points(axes: Mapping[str, np.ndarray | list[Link]], flat_index: np.ndarray) -> dict[str, Array | Link]:
    """Per-point values at flat (C-order) grid indices."""
    shape = tuple(len(values) for values in axes.values())
    indices = np.unravel_index(flat_index, shape)
    points: dict[str, Array | Link] = {}
    for (name, values), index in zip(axes.items(), indices, strict=True):
        if name == "link":
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *values)
            points[name] = jax.tree.map(lambda leaf, index=index: leaf[index], stacked)
        elif name == "seed":
            points[name] = jnp.asarray(values[index].astype(np.uint32))
        else:
            points[name] = jnp.asarray(values[index], dtype=float)
    return points


def grid_points(axes: Axes, experiment: AbstractExperiment | None = None) -> dict[str, Array | Link]:
    """The points of the grid `axes` (the Cartesian product, last axis fastest) as a dict
    of arrays with one leading batch axis, ready for `jax.vmap(experiment)`: the
    differentiable counterpart of `sweep`. Given the `experiment`, the axes also pass its
    checks, as in `sweep` (axes it sweeps, values in its domain such as `d ≥ k + r`):
    under `jax.vmap` the experiment sees traced values and cannot check them itself.

    **Example:**
    ```python
    points = grid_points({"seed": range(8), "d": [1e3]}, experiment)
    loss = lambda ridge: jax.vmap(experiment)({**points, "ridge": ridge + 0 * points["d"]}).loss[:, -1].mean()
    ```
    """
    checked = check_grid(axes)
    if experiment is not None:
        if not isinstance(experiment, AbstractExperiment):
            raise ValueError(f"`experiment` must be None or a mimflow experiment, got {type(experiment).__name__}")
        experiment.check_axes(checked)
    return _points(checked, np.arange(math.prod(len(v) for v in checked.values())))


def _outputs(experiment: AbstractExperiment, point, threshold: float) -> dict[str, Array]:
    trajectory = experiment(point)
    outputs = {
        "loss": trajectory.loss,
        "singular_values": trajectory.singular_values,
        "overlap": trajectory.overlap,
        "escape_time": escape_times(trajectory, threshold),
        "status": trajectory.status,
        "num_steps": trajectory.num_steps,
    }
    if trajectory.train_loss is not None:
        outputs["train_loss"] = trajectory.train_loss
    return outputs


_DIMS = {
    "loss": ("time",),
    "train_loss": ("time",),
    "singular_values": ("time", "direction"),
    "overlap": ("time", "k", "r"),
    "escape_time": ("direction",),
    "status": (),
    "num_steps": (),
}


def _sequential(experiment: AbstractExperiment, device: jax.Device) -> bool:
    """Whether a chunk's points run one after another (`lax.map`) rather than in
    lock-step (`vmap`): finite-sample flows on a CPU. Vmapped, each seed's products with
    its own `X` become batched matrix products, which XLA's CPU code runs well below the
    speed of a single product, and every point takes as many steps as the slowest one
    (8 seeds on 2 cores: 1.1–1.8× slower for the paper's `h1 + h3`, 3.2× for `h2`;
    benchmarks/RESULTS.md §2). Accelerators, population flows and reduced sweeps keep
    `vmap`."""
    return isinstance(experiment, FlowExperiment) and experiment.n is not None and device.platform == "cpu"


@eqx.filter_jit
def _run(
    experiment: AbstractExperiment, points, threshold: float, sequential: bool = False, mesh: Mesh | None = None
) -> dict[str, Array]:
    """One chunk: `vmap` over its points, or `lax.map` when `sequential`. With points
    sharded over `mesh`, XLA splits the vmapped batch (and its step loops) across the
    devices; a sequential chunk is split with `shard_map`, each device mapping over its
    own points, so that every point runs the same program as alone."""
    one = lambda point: _outputs(experiment, point, threshold)  # noqa: E731
    if not sequential:
        return jax.vmap(one)(points)
    mapped = lambda local: jax.lax.map(one, local)  # noqa: E731
    if mesh is None:
        return mapped(points)
    return jax.shard_map(mapped, mesh=mesh, in_specs=P(_BATCH), out_specs=P(_BATCH), check_vma=False)(points)


def _available_bytes(device: jax.Device) -> int:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # backends without memory statistics
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _chunk_size(
    experiment: AbstractExperiment,
    total: int,
    batch_size: int | None,
    num_devices: int,
    max_batch_size: int | None,
    sequential: bool = False,
) -> int:
    """Points per compiled call: `batch_size`, or as many as fit in a quarter of the free
    memory of a device by the experiment's estimate (at most `max_batch_size`; points
    that run one after another, `_sequential`, share one working memory and each keeps
    only its outputs); a multiple of the device count, with at least two points per
    device: XLA compiles a batch axis of size one away, and the program it makes then
    rounds differently, so a point would not be bitwise the same alone as in a batch."""
    if batch_size is None:
        p = min(experiment.link.dim, experiment.r)
        output_bytes = 8 * experiment.num_saves * (3 + p + experiment.link.dim * experiment.r)
        budget = _available_bytes(jax.devices()[0]) // 4
        if sequential:
            per_device = max(budget - experiment.working_bytes(), 0) // output_bytes
        else:
            per_device = budget // (experiment.working_bytes() + output_bytes)
        cap = total if max_batch_size is None else min(total, max_batch_size)
        batch_size = max(1, min(cap, per_device * num_devices))
    else:
        batch_size = check_int("batch_size", batch_size, 1)
    return max(2, -(-min(batch_size, total) // num_devices)) * num_devices


def _width(experiment: AbstractExperiment, batch_size: int, num_devices: int) -> int:
    """Points per compiled call for chunks of `batch_size` points: a reduced experiment's
    chunk is filled up to a multiple of 16 points per device. Its state is only `k·r`
    numbers per point, and XLA's CPU code rounds the points past the last full vector
    register differently from the others: scalar code, without the vector code's fused
    multiply-adds (with `k·r = 1`, batches of 2, 5, 9, 13, 17 … differed from batches of
    16 in the last bits, and by a step count). With every point in a full register, a
    point is bitwise the same alone, in any chunk and any grid."""
    if not isinstance(experiment, ReducedExperiment):
        return batch_size
    per_device = batch_size // num_devices
    return -(-per_device // _REDUCED_MULTIPLE) * _REDUCED_MULTIPLE * num_devices


def _gather(outputs: dict[str, Array]) -> dict[str, np.ndarray]:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return {
            name: np.asarray(value) for name, value in multihost_utils.process_allgather(outputs, tiled=True).items()
        }
    return {name: np.asarray(value) for name, value in jax.device_get(outputs).items()}


def _dataset(experiment: AbstractExperiment, axes, arrays: dict[str, np.ndarray]) -> xr.Dataset:
    names = list(axes)
    shape = tuple(len(values) for values in axes.values())
    coords: dict[str, np.ndarray] = {
        name: np.arange(len(values)) if name == "link" else values.astype(int) if name == "seed" else values
        for name, values in axes.items()
    }
    coords["time"] = np.asarray(experiment.save_times())
    data = {name: (names + list(_DIMS[name]), array.reshape(shape + array.shape[1:])) for name, array in arrays.items()}
    attrs = {
        "experiment": type(experiment).__name__,
        "problem": experiment.problem,
        "k": experiment.link.dim,
        "r": experiment.r,
        "status_codes": ", ".join(f"{s.value} {s.name}" for s in Status),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _check_devices(devices: Iterable[jax.Device] | None) -> list[jax.Device]:
    """`devices` as a non-empty list of distinct `jax.Device`s (default: `jax.devices()`);
    a `ValueError` naming `devices` otherwise."""
    if devices is None:
        return list(jax.devices())
    if isinstance(devices, jax.Device):
        raise ValueError(f"`devices` must be a list of jax.Device, got the single device {devices} (write [device])")
    if isinstance(devices, str | bytes) or not isinstance(devices, Iterable):
        raise ValueError(f"`devices` must be a list of jax.Device (e.g. jax.devices()), got {devices!r:.80}")
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` is empty")
    for i, device in enumerate(devices):
        if not isinstance(device, jax.Device):
            raise ValueError(f"`devices[{i}]` must be a jax.Device (e.g. jax.devices()[0]), got {device!r:.80}")
        if device in devices[:i]:
            raise ValueError(f"`devices[{i}]` repeats {device}: each device may be listed once")
    return devices


class SweepPlan:
    """A sweep cut into chunks that can be run one at a time, in any order and in any
    process, each giving the same numbers (used by `sweep`, and by `mimflow run` to
    save chunks as they finish and resume after an interruption).

    **Arguments:** as `sweep`, and `max_batch_size`: a cap on the automatic batch size
    (ignored when `batch_size` is given).

    **Attributes:** `total` (grid points), `batch_size` (points per chunk, the last
    chunk padded), `num_chunks`. `run_chunk(i)` returns chunk `i`'s outputs as NumPy
    arrays with a leading `batch_size` axis (`loss`: `(batch_size, time)`, …, as in
    `sweep`); `dataset(chunks)` assembles all of them into `sweep`'s dataset.

    **Example:**
    ```python
    plan = SweepPlan(experiment, {"seed": range(1024), "d": [1e2, 1e3]}, batch_size=256)
    results = plan.dataset([plan.run_chunk(i) for i in range(plan.num_chunks)])  # = sweep(...)
    ```
    """

    def __init__(
        self,
        experiment: AbstractExperiment,
        axes: Axes,
        *,
        batch_size: int | None = None,
        max_batch_size: int | None = None,
        devices: Sequence[jax.Device] | None = None,
        escape_threshold: float = 0.5,
    ):
        if not isinstance(experiment, AbstractExperiment):
            raise ValueError(f"`experiment` must be a mimflow experiment, got {type(experiment).__name__}")
        check_range("escape_threshold", escape_threshold, low=0.0, high=1.0, low_open=True)
        self.axes = check_grid(axes)
        experiment.check_axes(self.axes)
        devices = _check_devices(devices)
        self.experiment, self.escape_threshold = experiment, escape_threshold
        self.mesh = Mesh(np.array(devices), (_BATCH,)) if len(devices) > 1 else None
        self.total = math.prod(len(values) for values in self.axes.values())
        if max_batch_size is not None:
            max_batch_size = check_int("max_batch_size", max_batch_size, 1)
        self._sequential = _sequential(experiment, devices[0])
        self.batch_size = _chunk_size(
            experiment, self.total, batch_size, len(devices), max_batch_size, self._sequential
        )
        # the last chunk is filled up with copies of the first point, then dropped
        flat = np.concatenate([np.arange(self.total), np.zeros(-self.total % self.batch_size, dtype=int)])
        self.num_chunks = flat.size // self.batch_size
        self._grid = _points(self.axes, flat)
        self._width = _width(experiment, self.batch_size, len(devices))

    def run_chunk(self, index: int) -> dict[str, np.ndarray]:
        """The outputs of chunk `index` (points `index · batch_size` onwards, in grid order)."""
        if isinstance(index, bool) or not isinstance(index, Integral) or not 0 <= index < self.num_chunks:
            raise ValueError(f"chunk `index` must be an integer in [0, {self.num_chunks}), got {index!r:.80}")
        index = int(index)
        outputs = _gather(_run(*self._chunk_arguments(index)))
        return {name: values[: self.batch_size] for name, values in outputs.items()}

    def _chunk_arguments(self, index: int) -> tuple:
        """The arguments of the compiled chunk program `_run` for chunk `index` (also used
        by `benchmarks/compile_time.py` to compile that very program ahead of time)."""
        start = index * self.batch_size
        # filled up to the compiled width with copies of the chunk's first point, then dropped
        padding = np.full(self._width - self.batch_size, start)
        rows = np.concatenate([np.arange(start, start + self.batch_size), padding])
        points = jax.tree.map(lambda values: values[rows], self._grid)
        if self.mesh is not None:
            points = jax.device_put(points, NamedSharding(self.mesh, P(_BATCH)))
        return self.experiment, points, self.escape_threshold, self._sequential, self.mesh

    def dataset(self, chunks: Sequence[Mapping[str, np.ndarray]]) -> xr.Dataset:
        """The labelled dataset from the outputs of every chunk, in order."""
        if isinstance(chunks, str | bytes | Mapping) or not isinstance(chunks, Sequence):
            raise ValueError(f"`chunks` must be a list of the outputs of run_chunk, got {type(chunks).__name__}")
        if len(chunks) != self.num_chunks:
            raise ValueError(f"`chunks` must hold all {self.num_chunks} chunks, got {len(chunks)}")
        arrays = {name: np.concatenate([chunk[name] for chunk in chunks])[: self.total] for name in chunks[0]}
        return _dataset(self.experiment, self.axes, arrays)


def sweep(
    experiment: AbstractExperiment,
    axes: Axes,
    *,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    escape_threshold: float = 0.5,
) -> xr.Dataset:
    """Run `experiment` at every point of the grid `axes` (their Cartesian product) in one
    compiled, vmapped program, and return the results as a labelled dataset. (On a CPU a
    finite-sample `FlowExperiment`'s points run one after another, `lax.map`, each device
    mapping over its own: vmapped, they would be slower there.)

    The grid is cut into chunks of `batch_size` points (default: as many as fit in a
    quarter of a device's free memory by the experiment's estimate); every chunk has
    the same shape, so the program compiles once, and a second sweep with new values
    (not new sizes) reuses it. Each chunk is split over `devices` (default: all of
    `jax.devices()`) along a one-axis `Mesh`; results do not depend on the chunking
    or on the number of devices: on CPU a point is bitwise the same alone, in any chunk
    and sharded (a reduced sweep's chunks are filled up to 16 points per device, so that
    XLA rounds every point alike).

    **Arguments:**
    - `experiment`: a `ReducedExperiment` or `FlowExperiment`.
    - `axes`: `{name: values}`, e.g. `{"seed": range(16), "d": [1e2, 1e3], "ridge": [0, 0.1]}`;
      `"link"` takes a list of `Link`s. Names must be among `experiment.axes`.
    - `escape_threshold`: the singular value that counts as learned (`escape_times`).

    **Returns:** an `xarray.Dataset` with one dimension per axis (in the order given),
    then `time`, `direction` (`p = min(k, r)`), `k`, `r`; variables `loss`,
    `singular_values`, `overlap`, `escape_time`, `status` (a `Status` code), `num_steps`,
    and `train_loss` for finite-sample flows.

    **Example:**
    ```python
    experiment = ReducedExperiment(links.staircase(2), jax.random.key(0), t1=1e6)
    results = sweep(experiment, {"seed": range(64), "d": [1e2, 1e3, 1e4], "ridge": [0.0, 0.1]})
    results.escape_time.median("seed")
    ```
    """
    plan = SweepPlan(experiment, axes, batch_size=batch_size, devices=devices, escape_threshold=escape_threshold)
    return plan.dataset([plan.run_chunk(i) for i in range(plan.num_chunks)])
