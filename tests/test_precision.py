"""float32 runs (issue 9, item 5): the dtype end to end with x64 off, escape times against
their closed forms within the bounds the README's "Precision" section documents, and the
`precision` switch of configs and of `mimflow run`."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from mimflow import ConfigError
from mimflow._cli import main
from mimflow._config import load_config
from mimflow._runner import CONFIG, _stored_config

ROOT = Path(__file__).resolve().parent.parent

# The README's float32 bounds ("Precision": escape times before t ≈ 10⁶ against x64, which is
# within 1e-7 of the closed form; default tolerances 1e-5, 1e-8): default solver, Rodas4
# and Rodas5.
BOUND = {"default": 3e-4, "rodas4": 1e-4, "rodas5": 1e-4}


def closed_form_escape(s, m0):
    """Escape time of `h_s` (two-timescale, α = 1) from `m0` to ½: with `x = m²`,
    `dt = dx / (2 s x^s (1 − x))` and `1/(x^s (1 − x)) = Σ_{i=1}^s x^{−i} + 1/(1 − x)`."""

    def antiderivative(x):
        return math.log(x) - math.log1p(-x) - sum(x ** (1 - i) / (i - 1) for i in range(2, s + 1))

    return (antiderivative(0.25) - antiderivative(m0 * m0)) / (2 * s)


CASES = [(2, 0.1), (3, 0.1), (2, 0.01), (3, 0.03)]  # (s, m0): escapes at 25 … 1.3·10⁴

# x64 off (JAX's default): the default solver (Kvaerno5) on single-index targets
WORKER = textwrap.dedent(
    """
    import json, sys
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np
    import mimflow
    from mimflow import links

    cases, t1 = json.loads(sys.argv[1]), np.asarray(json.loads(sys.argv[2]))
    out = {"x64": bool(jax.config.jax_enable_x64), "default_dtype": str(jnp.asarray(1.0).dtype)}
    link = links.stack([links.hermite(s) for s, _ in cases])
    M0 = np.array([[[m0]] for _, m0 in cases])  # float64 NumPy: cast to the float of the mode
    def one(link, M0, t1):
        traj = mimflow.simulate_reduced(link, M0, t1, num_saves=24)
        return traj, mimflow.escape_times(traj)
    traj, escape = eqx.filter_jit(jax.vmap(one))(link, M0, t1)
    floats = {str(leaf.dtype) for leaf in jax.tree.leaves((traj, escape)) if jnp.issubdtype(leaf.dtype, jnp.floating)}
    out.update(float_dtypes=sorted(floats), status=np.asarray(traj.status).tolist(),
               escape=np.asarray(escape[:, 0], dtype=float).tolist(),
               final=np.asarray(traj.singular_values[:, -1, 0], dtype=float).tolist())
    # the same single-index targets with Rodas5 (concrete links, one program each)
    rodas5 = [mimflow.simulate_reduced(links.hermite(s), np.array([[m0]]), t, num_saves=24, solver=mimflow.Rodas5())
              for (s, m0), t in zip(cases, t1)]
    out.update(rodas5_status=[int(traj.status) for traj in rodas5],
               rodas5_escape=[float(mimflow.escape_times(traj)[0]) for traj in rodas5],
               rodas5_dtypes=sorted({str(traj.overlap.dtype) for traj in rodas5}))
    # late h4 escapes with Rodas4, whose steps are forced at the time floor
    late, late_t1 = np.asarray(json.loads(sys.argv[3])), np.asarray(json.loads(sys.argv[4]))
    def late_one(M0, t1):
        traj = mimflow.simulate_reduced(links.hermite(4), M0, t1, num_saves=48, solver=mimflow.Rodas4())
        return traj, mimflow.escape_times(traj)
    traj, escape = eqx.filter_jit(jax.vmap(late_one))(late.reshape(-1, 1, 1), late_t1)
    out.update(late_status=np.asarray(traj.status).tolist(), late_escape=np.asarray(escape[:, 0], float).tolist(),
               late_final=np.asarray(traj.overlap[:, -1, 0, 0], float).tolist(),
               late_forced=np.asarray(traj.forced_error, float).tolist())
    print(json.dumps(out))
    """
)


def _start(s, escape):
    """The `m0` whose closed-form `h_s` escape time is `escape` (bisection)."""
    lo, hi = 1e-8, 0.4
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if closed_form_escape(s, mid) > escape else (lo, mid)
    return lo


# h4 escapes at 10⁵ … 10¹⁰: float32 time resolves steps of 0.1 … 10⁴ there, the escape lasts O(1)
LATE = [_start(4, t) for t in np.logspace(5, 10, 16)]


@pytest.fixture(scope="module")
def float32_run():
    expected = [closed_form_escape(s, m0) for s, m0 in CASES]
    late_expected = [closed_form_escape(4, m0) for m0 in LATE]
    env = {
        **os.environ,
        "JAX_ENABLE_X64": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER,
            json.dumps(CASES),
            json.dumps([4 * t for t in expected]),
            json.dumps(LATE),
            json.dumps([4 * t for t in late_expected]),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    out = json.loads(process.stdout.strip().splitlines()[-1])
    out["late_expected"] = late_expected
    return out, np.array(expected)


def test_float32_end_to_end(float32_run):
    out, _ = float32_run
    assert out["x64"] is False and out["default_dtype"] == "float32"
    # every float of the trajectory (saves, loss, crossings, the problem's link) and the escape times
    assert out["float_dtypes"] == ["float32"]


def test_float32_escape_times_within_documented_bounds(float32_run):
    """The default solver and `Rodas5` here; `Rodas4` in the config run below."""
    out, expected = float32_run
    assert out["status"] == [0] * len(CASES)
    np.testing.assert_allclose(out["escape"], expected, rtol=BOUND["default"])
    np.testing.assert_allclose(out["final"], 1.0, atol=1e-5)  # learned by 4× the escape time
    assert out["rodas5_status"] == [0] * len(CASES) and out["rodas5_dtypes"] == ["float32"]
    np.testing.assert_allclose(out["rodas5_escape"], expected, rtol=BOUND["rodas5"])


def test_float32_late_escapes_never_end_in_a_silent_success(float32_run):
    """Past float32's time resolution (README "Precision"): a run that ends in SUCCESS has the
    closed-form escape time and its overlap at +1 (the flow keeps m > 0); the others end
    STEP_SIZE_COLLAPSED, or TIME_UNRESOLVED with a forced step's error above the limit.
    Before that status, a start escaping at 10⁹ ended in SUCCESS with the overlap at −1."""
    out, _ = float32_run
    status, forced = np.array(out["late_status"]), np.array(out["late_forced"])
    success, unresolved = status == 0, status == 5
    assert 2 <= success.sum() < len(status) and unresolved.any()
    np.testing.assert_allclose(
        np.array(out["late_escape"])[success], np.array(out["late_expected"])[success], rtol=1e-3
    )
    np.testing.assert_allclose(np.array(out["late_final"])[success], 1.0, atol=1e-5)
    assert (forced[unresolved] > 1e-2).all() and (forced[success] <= 1e-2).all()
    assert set(status.tolist()) <= {0, 4, 5}


def _write_config(path: Path, **fields) -> Path:
    config = {
        "name": "tiny",
        "target": {"link": "hermite", "degree": 2},
        "d": 100,
        "time": {"t1": 2.0e4, "num_saves": 16},
        "sweep": {"seed": 2},
        **fields,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_precision_validated(tmp_path):
    assert load_config(_write_config(tmp_path / "a.yaml"))["precision"] == "float64"
    assert load_config(_write_config(tmp_path / "b.yaml", precision="float32"))["precision"] == "float32"
    for bad in ("float16", 32, "x64"):
        with pytest.raises(ConfigError, match=r"^precision: must be one of float64, float32.*got"):
            load_config(_write_config(tmp_path / "c.yaml", precision=bad))
    overridden = load_config(_write_config(tmp_path / "d.yaml"), ["precision=float32"])
    assert overridden["precision"] == "float32"


# In a fresh x64 process (as `mimflow run` and a Python session that imported conftest-like
# settings are): first a float64 run, so that the float32 run that follows meets everything a
# float64 run leaves cached in the process (JAX 0.10 keyed some derived constants by the
# NumPy object and handed a float64 buffer to a float32 op; `_hermite._fresh`), then a
# float32 config through `run_config`, then the CLI's `--precision`.
CONFIG_WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import jax, numpy as np, yaml
    jax.config.update("jax_enable_x64", True)
    from mimflow._cli import main
    from mimflow._config import load_config
    from mimflow._runner import CONFIG, SUMMARY, run_config

    tmp = Path(sys.argv[1])
    def write(name, **fields):
        config = {"name": "tiny", "target": {"link": "hermite", "degree": 2}, "d": 100,
                  "time": {"t1": 2.0e4, "num_saves": 16}, "sweep": {"seed": 2},
                  "solver": {"name": "rodas4"}, **fields}
        path = tmp / name
        path.write_text(yaml.safe_dump(config))
        return path

    first, _ = run_config(load_config(write("x64.yaml", output={"dir": str(tmp / "x64")})), progress=False)
    assert first["loss"].dtype == np.float64
    out = {"dir": str(tmp / "out")}
    path = write("tiny.yaml", precision="float32", output=out)
    results, summary = run_config(load_config(path), progress=False)
    report = {
        "attrs": results.attrs["precision"], "summary": summary["precision"],
        "dtypes": {n: str(results[n].dtype) for n in ("loss", "singular_values", "overlap", "escape_time")},
        "stored": yaml.safe_load((tmp / "out" / CONFIG).read_text())["precision"],
        "summary_file": json.loads((tmp / "out" / SUMMARY).read_text())["precision"],
        "m0": np.abs(results.overlap.isel(time=0).values.reshape(-1)).astype(float).tolist(),
        "escape": results.escape_time.values.reshape(-1).astype(float).tolist(),
        "status": results.status.values.reshape(-1).tolist(),
        "cli_same": main(["run", str(write("plain.yaml", output=out)), "--precision", "float32", "--quiet"]),
        "cli_other": main(["run", str(path), "--precision", "float64", "--quiet"]),
    }
    print(json.dumps(report))
    """
)


def test_float32_config_runs_in_float32_and_records_it(tmp_path):
    """After a float64 run in the same x64 process, `precision: float32` runs in float32 and
    records it; `--precision float32` gives the same config (the finished run is reused), and
    `--precision float64` is another config (exit code 2)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.run(
        [sys.executable, "-c", CONFIG_WORKER, str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["attrs"] == report["summary"] == report["stored"] == report["summary_file"] == "float32"
    assert set(report["dtypes"].values()) == {"float32"}, report["dtypes"]
    # escape times against the closed form from each saved start
    expected = [closed_form_escape(2, m) for m in report["m0"]]
    np.testing.assert_allclose(report["escape"], expected, rtol=BOUND["rodas4"])
    assert report["status"] == [0] * len(expected)
    assert report["cli_same"] == 0 and report["cli_other"] == 2
    assert "is complete" in process.stderr and "differs at precision" in process.stderr
    assert "; float32" in process.stdout


def test_precision_flag_choices(tmp_path):
    with pytest.raises(SystemExit, match="2"):  # argparse: one of the choices
        main(["run", str(_write_config(tmp_path / "tiny.yaml")), "--precision", "float16"])


def test_configs_stored_before_the_switch_count_as_float64(tmp_path):
    stored = tmp_path / CONFIG
    stored.write_text(yaml.safe_dump({"name": "old", "time": {"t1": 10.0}}))
    assert _stored_config(stored)["precision"] == "float64"
