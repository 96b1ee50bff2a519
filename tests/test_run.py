"""`mimflow run` on the quickstart config (the README's main command) at its smoke size:
what lands on disk, the summary against NumPy and the closed forms of DESIGN §2, the
figures' data, and resuming after SIGKILL and after Ctrl-C."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import xarray as xr

from mimflow._cli import main
from mimflow._config import load_config
from mimflow._plot import figures
from mimflow._report import summarize
from mimflow._runner import load_results
from mimflow._sweep import SweepPlan

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# 2 links × 2 d × 3 seeds = 12 points in chunks of 2: six chunks
ARGS = ["--smoke", "--quiet", "--set", "output.batch_size=2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and what it printed."""
    out = tmp_path_factory.mktemp("reference")
    captured = subprocess.CompletedProcess([], 0)
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        captured.returncode = main(["run", str(QUICKSTART), "--out", str(out), *ARGS])
    assert captured.returncode == 0
    return out, stdout.getvalue()


def test_outputs_on_disk(reference):
    out, printed = reference
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "figures", "results.nc", "summary.json"]
    results = xr.load_dataset(out / "results.nc", engine="scipy")
    assert dict(results.sizes) == {"link": 2, "d": 2, "seed": 3, "time": 128, "direction": 2, "k": 2, "r": 2}
    assert set(results.data_vars) == {"loss", "singular_values", "overlap", "escape_time", "status", "num_steps"}
    assert results.loss.dims == ("link", "d", "seed", "time")
    assert results.escape_time.dims == ("link", "d", "seed", "direction")
    np.testing.assert_array_equal(results.d.values, [100.0, 10000.0])
    assert list(results.link_label.values) == [
        "staircase(k=2)",
        "hermite(degree=1, dim=2) + hermite(degree=3, dim=2, index=1)",
    ]
    assert np.all(results.status.values == 0)
    config = load_config(out / "config.yaml")  # the resolved config is itself a valid config
    assert config["sweep"]["seed"] == [0, 1, 2] and config["output"]["batch_size"] == 2
    assert "information exponent 1, 2 saddles" in printed and "agrees" in printed


def test_summary_against_numpy_and_closed_forms(reference):
    """summary.json equals a NumPy recomputation from results.nc (medians of the time on
    each saddle, log–log slopes), and its laws and constants are DESIGN §2's:
    ½ log d for an s̃ = 1 saddle, d² / (2·2·3) = d²/12 for h3 after h1."""
    out, _ = reference
    summary = json.loads((out / "summary.json").read_text())
    results = xr.load_dataset(out / "results.nc", engine="scipy")
    dims = results.d.values
    assert summary["runs"] == 12 and summary["status"]["SUCCESS"] == 12
    for link, group in enumerate(summary["groups"]):
        escape = results.escape_time.isel(link=link).values  # (d, seed, direction)
        durations = np.stack([escape[..., 0], escape[..., 1] - escape[..., 0]], axis=-1)
        for i, saddle in enumerate(group["saddles"]):
            medians = np.median(durations[..., i], axis=1)
            np.testing.assert_allclose(saddle["median_time"], medians, rtol=1e-12)
            slope = np.polyfit(np.log(dims), np.log(medians), 1)[0]
            assert saddle["slope"] == pytest.approx(slope, rel=1e-9)
            assert saddle["slope_interval"][0] <= saddle["slope"] <= saddle["slope_interval"][1]
            law = "d^2" if (link, i) == (1, 1) else "log d"
            predicted = dims**2 / 12 if law == "d^2" else 0.5 * np.log(dims)
            assert saddle["law"] == law and saddle["agrees"]
            np.testing.assert_allclose(saddle["predicted_time"], predicted, rtol=1e-12)
            if law == "d^2":
                assert abs(slope - 2) < 0.15
            else:
                assert slope < 0.3 and all(0.5 < r < 1.2 for r in saddle["ratio"])
        # plateaus at ½‖f‖² = 1 (nothing learned) and ½ (one unit-norm term left)
        assert [s["plateau_loss"] for s in group["saddles"]] == pytest.approx([1.0, 0.5], abs=1e-12)
        final = results.loss.isel(link=link, time=-1).values
        np.testing.assert_allclose(group["final_loss_median"], np.median(final, axis=1), rtol=1e-12)
    assert summarize(results) == summary  # the summary is a function of results.nc alone


def test_figures_show_the_data(reference):
    """The PNGs are images with content, and the drawn lines are the data: median loss
    over seeds per d, the plateau levels, the median time on each saddle and a predicted
    law of slope 2 on log–log axes for the d² saddle."""
    out, _ = reference
    for name in ("loss", "singular_values", "escape_times"):
        image = matplotlib.image.imread(out / "figures" / f"{name}.png")
        assert image.shape[0] > 200 and image.shape[1] > 400 and image[..., :3].std() > 0.05
    results = load_results(out)
    drawn = figures(results, summarize(results))
    loss_axes = drawn["loss"].axes
    assert len(loss_axes) == 2  # one panel per link
    for link, ax in enumerate(loss_axes):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for j, d in enumerate(results.d.values):
            median = np.median(results.loss.isel(link=link, d=j).values, axis=0)[1:]
            np.testing.assert_allclose(lines[f"d={d:g}"].get_ydata(), median, rtol=1e-12)
            np.testing.assert_allclose(lines[f"d={d:g}"].get_xdata(), results.time.values[1:])
        assert lines["plateau 1"].get_ydata()[0] == pytest.approx(1.0) and lines["plateau 2"].get_ydata()[
            0
        ] == pytest.approx(0.5)
        assert ax.get_xscale() == "log"
    sv = {line.get_label(): line for line in drawn["singular_values"].axes[1].get_lines()}
    np.testing.assert_allclose(
        sv["d=10000, σ2"].get_ydata(),
        np.median(results.singular_values.isel(link=1, d=1, direction=1).values, axis=0)[1:],
    )
    ax = drawn["escape_times"].axes[1]
    lines = {line.get_label(): line for line in ax.get_lines()}
    predicted = lines["saddle 2 predicted ∝ d^2"]
    slope = np.polyfit(np.log(predicted.get_xdata()), np.log(predicted.get_ydata()), 1)[0]
    assert slope == pytest.approx(2.0, abs=1e-9)
    (median,) = [line for label, line in lines.items() if label.startswith("saddle 2 median")]
    escape = results.escape_time.isel(link=1).values
    np.testing.assert_allclose(median.get_ydata(), np.median(escape[..., 1] - escape[..., 0], axis=1), rtol=1e-12)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


SMALL = """
name: small
target: {link: hermite, degree: 2}
dynamics: population
time: {t1: 100, num_saves: 16}
sweep: {d: [8, 12], seed: 3}
output: {batch_size: 2}
"""
# after it saves a chunk, the child sleeps before the next, so that the kill lands mid-run
_SLOW_CHILD = """
import sys, time
from mimflow._cli import main
from mimflow._sweep import SweepPlan
run_chunk = SweepPlan.run_chunk
SweepPlan.run_chunk = lambda self, i: (time.sleep(1.0 if i else 0.0), run_chunk(self, i))[1]
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_to_identical_results(tmp_path, capsys):
    """A real subprocess is sent SIGKILL after its first chunk is saved; rerunning the
    same command runs only the missing chunks and ends with results identical to an
    uninterrupted run's (a population flow in d dimensions: 6 points, 3 chunks)."""
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    out, reference = tmp_path / "killed", tmp_path / "reference"
    command = ["run", str(config), "--quiet", "--out"]
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CHILD, *command, str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not list((out / "partial").glob("*.npz")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert len(list((out / "partial").glob("*.npz"))) == 1 and not (out / "results.nc").exists()
    assert main([*command, str(out)]) == 0
    assert "resuming: 1 of 3 chunks already done" in capsys.readouterr().err
    assert not (out / "partial").exists()
    assert main([*command, str(reference)]) == 0
    xr.testing.assert_identical(
        xr.load_dataset(out / "results.nc", engine="scipy"), xr.load_dataset(reference / "results.nc", engine="scipy")
    )
    assert (out / "summary.json").read_text() == (reference / "summary.json").read_text()


def test_ctrl_c_then_rerun(reference, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the fourth chunk: exit code 130 and a one-line hint, three chunks kept;
    the rerun computes the other three and matches the uninterrupted run."""
    out = tmp_path / "interrupted"
    calls = []
    original = SweepPlan.run_chunk

    def interrupt_fourth(self, index):
        calls.append(index)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(SweepPlan, "run_chunk", interrupt_fourth)
    assert main(["run", str(QUICKSTART), "--out", str(out), *ARGS]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "resume" in err and len(err.strip().splitlines()) == 1
    assert len(list((out / "partial").glob("*.npz"))) == 3
    calls.clear()
    assert main(["run", str(QUICKSTART), "--out", str(out), *ARGS]) == 0
    assert calls == [3, 4, 5] and "resuming: 3 of 6" in capsys.readouterr().err
    ref = xr.load_dataset(reference[0] / "results.nc", engine="scipy")
    xr.testing.assert_identical(xr.load_dataset(out / "results.nc", engine="scipy"), ref)


def test_rerun_of_a_finished_run_and_of_another_config(reference, tmp_path, capsys, monkeypatch):
    """A finished run is summarised again without computing; a different config in the
    same directory is refused (exit 2, naming the field that differs) unless
    --overwrite; `mimflow plot DIR` redraws the figures."""
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("config.yaml", "results.nc"):
        (out / name).write_bytes((reference[0] / name).read_bytes())
    monkeypatch.setattr(SweepPlan, "run_chunk", lambda *a: pytest.fail("recomputed a finished run"))
    assert main(["run", str(QUICKSTART), "--out", str(out), *ARGS]) == 0
    assert (out / "summary.json").read_text() == (reference[0] / "summary.json").read_text()
    capsys.readouterr()
    assert main(["run", str(QUICKSTART), "--out", str(out), *ARGS, "--set", "time.t1=1e11"]) == 2
    err = capsys.readouterr().err
    assert "time.t1" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    (out / "figures" / "loss.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "figures" / "loss.png").stat().st_size > 10_000
    assert "loss.png" in capsys.readouterr().out


def test_progress_bar_on_a_terminal_only():
    import io

    from mimflow._progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = Progress(4, 1, label="x", stream=stream)
        bar.advance()
        bar.advance()
        bar.close()
    assert pipe.getvalue() == ""
    assert "3/4 chunks" in terminal.getvalue() and "ETA" in terminal.getvalue()
    quiet = Terminal()
    Progress(4, stream=quiet, enabled=False).advance()
    assert quiet.getvalue() == ""


def test_python_api_as_in_the_readme(reference, tmp_path):
    """`load_config` / `run_config` / `load_results` / `summarize` / `figures` from Python,
    on a copy of the finished reference run (so nothing is recomputed)."""
    import mimflow

    out = tmp_path / "api"
    out.mkdir()
    (out / "results.nc").write_bytes((reference[0] / "results.nc").read_bytes())
    config = mimflow.load_config(QUICKSTART, ["output.batch_size=2"], smoke=True, out=str(out))
    results, summary = mimflow.run_config(config, progress=False)
    assert summary == json.loads((reference[0] / "summary.json").read_text())
    xr.testing.assert_identical(results, mimflow.load_results(out))
    assert set(mimflow.figures(results, mimflow.summarize(results))) == {"loss", "singular_values", "escape_times"}
    with pytest.raises(mimflow.ConfigError, match="sweep.seed"):
        mimflow.load_config(QUICKSTART, ["sweep.seed=-1"])


def test_output_directory_with_files_mimflow_did_not_write(tmp_path, capsys):
    """`mimflow run --out DIR` never replaces or removes files it did not write: a
    directory holding `summary.json` or `figures/` without a run's `config.yaml`, or a
    `config.yaml` of another program, is refused (exit 2, naming output.dir), with or
    without --overwrite. In a run's directory, --overwrite removes only the run's files
    (before, `--out .` with --overwrite deleted ./figures and ./partial whole)."""
    from mimflow._config import dump_config
    from mimflow._runner import _clear

    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    mine = tmp_path / "mine"
    (mine / "figures").mkdir(parents=True)
    (mine / "figures" / "loss.png").write_text("my figure")
    (mine / "summary.json").write_text("{}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("model: resnet\n")
    for out in (mine, other):
        before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
        for extra in ([], ["--overwrite"]):
            assert main(["run", str(config), "--quiet", "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert "output.dir" in err and "choose another --out" in err and len(err.strip().splitlines()) == 1
        assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    # a run's directory, with files of the user's beside the run's
    run = tmp_path / "run"
    for name in ("figures", "partial"):
        (run / name).mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(load_config(config)))
    for name in (
        "results.nc",
        "summary.json",
        "figures/loss.png",
        "partial/meta.json",
        "partial/job000-chunk00000.npz",
    ):
        (run / name).write_text("the run's")
    for name in ("notes.txt", "figures/sketch.png", "partial/mine.npz"):
        (run / name).write_text("the user's")
    _clear(run)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        "figures",
        "figures/sketch.png",
        "notes.txt",
        "partial",
        "partial/mine.npz",
    ]


def test_sweep_plan_arguments_are_checked():
    """`devices` and a chunk index are checked, each error naming the argument (were a bare
    AssertionError from JAX for a repeated device, a TypeError for a single device or a
    float index, and `devices=["cpu"]` silently ignored by reduced sweeps)."""
    import jax

    import mimflow

    experiment = mimflow.ReducedExperiment(mimflow.links.hermite(1), jax.random.key(0), t1=10.0, num_saves=4)
    grid = {"seed": range(2), "d": [10.0]}
    device = jax.devices()[0]
    for devices, message in [
        ([device, device], r"`devices\[1\]` repeats"),
        (["cpu"], r"`devices\[0\]` must be a jax.Device"),
        (device, "`devices` must be a list of jax.Device, got the single device"),
        ("cpu", "`devices` must be a list"),
        ([], "`devices` is empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            SweepPlan(experiment, grid, devices=devices)
    plan = SweepPlan(experiment, grid, devices=[device])
    for index in (0.5, "0", True, -1, plan.num_chunks):
        with pytest.raises(ValueError, match="chunk `index` must be an integer in"):
            plan.run_chunk(index)
    with pytest.raises(ValueError, match="`chunks`"):
        plan.dataset(None)
