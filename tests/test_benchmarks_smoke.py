"""The benchmark scripts run at their smoke size and write a JSON of finite figures (no timing
assertions: benchmarks measure, tests only check that they run)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_smoke(script: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    return json.loads(out.read_text())


def assert_finite(value, where="") -> None:
    """Every number in a JSON tree is finite."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_finite(item, f"{where}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        assert math.isfinite(value), f"{where} = {value}"


def assert_meta(meta: dict, benchmark: str) -> None:
    assert meta["benchmark"] == benchmark
    assert meta["smoke"] is True
    for key in ("device", "platform", "jax", "dtype", "date"):
        assert isinstance(meta[key], str) and meta[key], key


@pytest.fixture
def out(tmp_path):
    return tmp_path / "figures.json"


@pytest.mark.slow  # 30 CPU-s, for CI time (benchmarks are not unit tests; issue 8 allows at most a smoke)
def test_flow_steps_smoke(out):
    figures = run_smoke("flow_steps.py", out)
    assert_finite(figures)
    assert_meta(figures["meta"], "flow_steps")
    assert figures["bandwidth"]["bytes_per_s"] > 0
    assert figures["matmul_peak"]["flop_per_s"] > 0
    assert {row["fit"] for row in figures["steps"]} == {"hermite", "random"}
    for row in figures["steps"]:
        keys = {"n", "d", "step_s", "floor_s", "ratio", "numpy_s", "numpy_speedup", "numpy_rel_diff", "loop_step_s"}
        assert keys <= set(row)
        assert row["step_s"] > 0 and row["floor_s"] > 0
        assert row["numpy_rel_diff"] < 1e-8  # the NumPy step computes the same vector field (float64)
    for row in figures["batched"]:
        assert {"n", "d", "seeds", "step_s", "flop_per_s", "peak_fraction", "loop_step_s"} <= set(row)
        assert row["step_s"] > 0


@pytest.mark.slow  # 28 CPU-s, for CI time (benchmarks are not unit tests; issue 8 allows at most a smoke)
def test_compile_time_smoke(out):
    figures = run_smoke("compile_time.py", out)
    assert_finite(figures)
    assert_meta(figures["meta"], "compile_time")
    quickstart, sweep = figures["quickstart"], figures["sweep"]
    for key in ("trace_lower_s", "compile_s", "run_s", "rerun_s", "recompiles", "compiles_in_first_run"):
        assert key in quickstart, key
    assert quickstart["trace_lower_s"] > 0 and quickstart["compile_s"] > 0
    # the sweep ran the program compiled ahead of time, so its "run" time is run time (the
    # smoke quickstart's 12 points are padded to 16, `_sweep._width`: compiling 12 made the
    # first run compile again, 5.7 s of it, until the script took `run_chunk`'s arguments)
    assert quickstart["compiles_in_first_run"] == 0
    for result in (quickstart, sweep):
        assert isinstance(result["recompiles"], int)  # the count, whatever it is: the script reports, never asserts
        assert result["values_changed"] is True


@pytest.mark.slow  # 57 CPU-s (four flow compilations), for CI time
def test_flow_sweep_smoke(out):
    figures = run_smoke("flow_sweep.py", out)
    assert_finite(figures)
    assert_meta(figures["meta"], "flow_sweep")
    assert {row["fit"] for row in figures["rows"]} == {"hermite", "random"}
    for row in figures["rows"]:
        assert row["mapped_s"] > 0 and row["vmapped_s"] > 0
        assert row["all_success"]
        assert row["steps"] <= row["lock_step_steps"]
        assert row["max_loss_difference"] < 1e-10  # the two programs integrate the same flows
