"""Configs: validation (a battery of malformed files, each exit code 2 with one line
naming the field), defaults, overrides, and the commands that run no simulation
(`mimflow links`, `mimflow theory`)."""

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mimflow._cli import main
from mimflow._config import build_jobs, dump_config, load_config, resolve_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

BASE = """
name: base
target: {link: hermite, degree: 3}
dynamics: reduced
time: {t1: 1.0e+6}
sweep: {d: [100, 1000], seed: 2}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def _edit(**changes) -> str:
    """BASE with top-level fields replaced (None deletes them)."""
    raw = yaml.safe_load(BASE)
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return yaml.safe_dump(raw, sort_keys=False)


MALFORMED = {
    "unknown link": (_edit(target={"link": "hermit", "degree": 3}), "target.link", "hermit"),
    "missing field": (_edit(time=None), "time", "missing"),
    "missing t1": (_edit(time={"num_saves": 16}), "time.t1", "missing"),
    "missing link parameter": (_edit(target={"link": "hermite"}), "target.degree", "missing"),
    "wrong type": (_edit(time={"t1": "forever"}), "time.t1", "'forever'"),
    "wrong type of n": (
        _edit(dynamics="finite-sample", n="many", fit={"kind": "hermite-features", "degree": 3}),
        "n",
        "'many'",
    ),
    "negative n": (
        _edit(dynamics="finite-sample", n=-5, fit={"kind": "hermite-features", "degree": 3}),
        "n",
        "-5",
    ),
    "r > d": (_edit(r=3, sweep={"d": [3, 100]}), "sweep.d[0]", "r = 3"),
    "r > d (fixed d)": (_edit(r=8, d=5, sweep={"seed": 2}), "d", "5"),
    "unknown key": (_edit(tmax=3), "tmax", "unknown key"),
    "unknown nested key": (_edit(time={"t1": 1e6, "num_save": 3}), "time.num_save", "did you mean 'num_saves'"),
    "python object": ("!!python/object/apply:os.system ['echo pwned']\n", "line 1", "constructor"),
    "python object in a field": (BASE + "description: !!python/object/new:os.getcwd []\n", "line", "constructor"),
    "not YAML": ("target: {link: hermite\n", "line", "YAML"),
    "duplicate key": (BASE + "dynamics: population\n", "duplicate key 'dynamics'", "line 7"),
    "not a mapping": ("- 1\n- 2\n", "config", "list"),
    "bad dynamics": (_edit(dynamics="stochastic"), "dynamics", "'stochastic'"),
    "seed count 0": (_edit(sweep={"seed": 0, "d": [100]}), "sweep.seed", "0"),
    "empty axis": (_edit(sweep={"d": []}), "sweep.d", "[]"),
    "repeated value": (_edit(sweep={"d": [100, 100]}), "sweep.d[1]", "100"),
    "axis of another dynamics": (_edit(sweep={"d": [100], "noise": [0.1]}), "sweep.noise", "finite-sample"),
    "t1 below t_min": (_edit(time={"t1": 1e-3}), "time.t1", "0.001"),
    "link of another k": (
        _edit(sweep={"d": [100], "link": [{"link": "hermite", "degree": 1}, {"link": "staircase", "k": 2}]}),
        "sweep.link[1]",
        "staircase",
    ),
    "link parameter out of range": (
        _edit(target={"link": "hermite", "degree": 1, "dim": 2, "index": 5}),
        "target.index",
        "5",
    ),
    "link parameter refused by its constructor": (
        _edit(target={"link": "harmonic", "degree": 0}),
        "target.degree",
        "0",
    ),
    "bad multi-index": (_edit(target={"hermite": {"1,x": 1.0}}), "target.hermite", "1,x"),
    "planted with r != k": (_edit(problem="planted", r=2), "r", "2"),
    "planted with a ridge": (_edit(problem="planted", ridge=0.1), "ridge", "0.1"),
    "planted with rho": (_edit(sweep={"d": [100], "problem": ["two-timescale", "planted"]}, rho=0.5), "rho", "0.5"),
    "fit for reduced": (_edit(fit={"kind": "hermite-features", "degree": 2}), "fit", "population or finite-sample"),
    "finite samples without a fit": (_edit(dynamics="finite-sample", n=100), "fit", "missing"),
    "unknown kernel": (
        _edit(dynamics="finite-sample", n=100, fit={"kind": "kernel-ridge", "kernel": "gauss"}),
        "fit.kernel",
        "'gauss'",
    ),
    "rho outside (0, 1)": (
        _edit(dynamics="finite-sample", n=100, fit={"kind": "kernel-ridge", "kernel": "mehler", "rho": 1.0}),
        "fit.rho",
        "1",
    ),
    "population in sweep.n with a fit it has no closed form for": (
        _edit(
            dynamics="finite-sample",
            fit={"kind": "kernel-ridge", "kernel": "rbf"},
            sweep={"d": [100], "n": [100, None]},
        ),
        "sweep.n[1]",
        "rbf",
    ),
    "flow d not an integer": (_edit(dynamics="population", sweep={"d": [10.5]}), "sweep.d[0]", "10.5"),
    "unknown solver": (_edit(solver={"name": "euler2"}), "solver.name", "'euler2'"),
    "batch size 0": (_edit(output={"batch_size": 0}), "output.batch_size", "0"),
    # links the Python API refuses to build (`_checks.check_link_size`), and a constant
    # link on so large an ℝ^k that its default k × k overlap would not fit (`_config._check_link_size`)
    "link too large (staircase)": (_edit(target={"link": "staircase", "k": 8}), "target", "8^8"),
    "link too large (degree)": (_edit(target={"link": "hermite", "degree": 40, "dim": 3}), "target", "3^40"),
    "link too large (table)": (_edit(target={"hermite": {",".join("1" * 10): 1.0}}), "target.hermite", "10^10"),
    "link too large (sweep)": (
        _edit(sweep={"d": [100], "link": [{"link": "hermite", "degree": 3}, {"link": "hermite", "degree": 65}]}),
        "sweep.link[1]",
        "degree 65",
    ),
    "staircase on k = 0": (_edit(target={"link": "staircase", "k": 0}), "target.k", "0"),
    "constant link on too large a space": (
        _edit(target={"link": "hermite", "degree": 0, "dim": 1025}),
        "target",
        "1025²",
    ),
    # two spellings of one multi-index: one coefficient was silently dropped
    "same multi-index twice": (
        _edit(target={"hermite": {"1,0": 1.0, "(0,3)": 1.0, "0 3": 5.0}}),
        "target.hermite",
        "'0 3'",
    ),
    "same multi-index twice (sweep)": (
        _edit(target={"hermite": {"1,0": 1.0}}, sweep={"d": [100], "link": [{"hermite": {"0,1": 1.0, "0, 01": 2.0}}]}),
        "sweep.link[0].hermite",
        "'0, 01'",
    ),
    "non-ASCII digit in a multi-index": (_edit(target={"hermite": {"1,²": 1.0}}), "target.hermite", "'1,²'"),
    # results/.. and results/. are not directories of their own (--overwrite cleared them)
    "name ..": (_edit(name=".."), "name", "'..'"),
    "name .": (_edit(name="."), "name", "'.'"),
    # sizes that cannot fit in memory (were tracebacks, or accepted)
    "too many saves": (_edit(time={"t1": 1e6, "num_saves": 1e30}), "time.num_saves", "1e+30"),
    "too many directions": (_edit(r=2**21), "r", "2097152"),
    "flow d too large": (_edit(dynamics="population", sweep={"d": [8, 1e9]}), "sweep.d[1]", "1000000000"),
    "too many samples": (
        _edit(dynamics="finite-sample", n=1e12, fit={"kind": "hermite-features", "degree": 3}, sweep={"d": [8]}),
        "n",
        "1000000000000",
    ),
    "too many samples for a kernel ridge": (
        _edit(
            dynamics="finite-sample", fit={"kind": "kernel-ridge", "kernel": "rbf"}, sweep={"d": [8], "n": [10, 1e6]}
        ),
        "sweep.n[1]",
        "1000000",
    ),
    "too many random features": (
        _edit(dynamics="finite-sample", n=1000, fit={"kind": "random-features", "num_features": 1e9}, sweep={"d": [8]}),
        "fit.num_features",
        "1000000000",
    ),
    "Hermite features of too high a degree": (
        _edit(dynamics="finite-sample", n=100, fit={"kind": "hermite-features", "degree": 1e6}, sweep={"d": [8]}),
        "fit.degree",
        "1000000",
    ),
    "Hermite features of too many multi-indices": (
        _edit(dynamics="finite-sample", n=100, r=5, fit={"kind": "hermite-features", "degree": 63}, sweep={"d": [8]}),
        "fit.degree",
        "63",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_config_exit_code_2_one_line_naming_the_field(case, tmp_path, capsys):
    text, field, value = MALFORMED[case]
    path = _write(tmp_path, text)
    for command in (["run", str(path), "--out", str(tmp_path / "out")], ["theory", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert field in lines[0] and value in lines[0], lines[0]
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a bad config


def test_config_accepts_the_links_the_python_api_builds():
    """A config refuses a link exactly when the Python API does (`check_link_size`: the
    tensor `k^D` and the multi-index table `binom(D + k − 1, D) × k` at most 2^20), plus
    `k² > 2^20`, which binds only for degree 0. Before, it also capped `(D + 1)^k` (left
    from an enumeration of multi-indices since replaced), refusing `staircase(7)`
    (`8^7 = 2^21`) and `hermite(1, dim=21)` (`2^21`), which the API builds."""
    from mimflow._checks import MAX_LINK_SIZE, check_link_size
    from mimflow._config import ConfigError, _check_link_size, _check_term

    for k, degree in itertools.product(
        [1, 2, 3, 7, 8, 16, 21, 100, 1024, 1025, 4096], [0, 1, 2, 3, 7, 8, 20, 63, 64, 65]
    ):
        try:
            check_link_size(k, degree, "api")
            api = True
        except ValueError:
            api = False
        try:
            _check_link_size(k, degree, "target")
            config = True
        except ConfigError as error:
            config = False
            assert str(error).startswith("target: a link on") and "too large to build" in str(error)
        assert config == (api and k * k <= MAX_LINK_SIZE), (k, degree, api, config)
    # staircase(7) passes the config's checks (building it compiles for seconds: not here)
    assert _check_term({"link": "staircase", "k": 7}, "target")["k"] == 7
    for target in ({"link": "hermite", "degree": 1, "dim": 21}, {"link": "hermite", "degree": 2, "dim": 16}):
        config = resolve_config(yaml.safe_load(_edit(target=target, sweep={"d": [100]})))
        assert config["r"] == target["dim"]


def test_run_config_validates_an_edited_config(tmp_path):
    """`run_config` resolves its config again: a resolved config edited in Python is
    checked like a file (were KeyErrors, or a float16 run that computed in float32),
    before anything is written."""
    from mimflow._config import ConfigError
    from mimflow._runner import run_config

    out = tmp_path / "out"
    config = load_config(_write(tmp_path, BASE), out=str(out))
    edits = {
        "target": ("target", {"link": "foo"}, "target.link"),
        "solver": ("solver", {**config["solver"], "name": "rk4"}, "solver.name"),
        "dynamics": ("dynamics", "foo", "dynamics"),
        "precision": ("precision", "float16", "precision"),
        "name": ("name", "..", "name"),
        "num_saves": ("time", {**config["time"], "num_saves": 10**30}, "time.num_saves"),
    }
    for key, value, field in edits.values():
        with pytest.raises(ConfigError, match=f"^{field}:"):
            run_config({**config, key: value}, progress=False)
    assert not out.exists()


def test_python_object_is_never_constructed(tmp_path):
    """A tag that would run code is refused before anything is built."""
    marker = tmp_path / "ran"
    path = _write(tmp_path, f"!!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["theory", str(path)]) == 2
    assert not marker.exists()


def test_bad_command_line_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err
    path = _write(tmp_path, BASE)
    assert main(["run", str(path), "--set", "sweep.d"]) == 2
    assert "key.path=value" in capsys.readouterr().err
    assert main(["run", str(path), "--set", "time.t1=-1"]) == 2
    assert "time.t1" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2
    assert "results.nc" in capsys.readouterr().err


def test_defaults_and_overrides(tmp_path):
    """Defaults fill every field; `--set` values are read as YAML; YAML 1.1's `1e6`
    (a string to PyYAML) is read as a number."""
    path = _write(tmp_path, BASE.replace("1.0e+6", "1e6"))
    config = load_config(path, ["sweep.d=[50, 500]", "time.num_saves=12", "solver.rtol=1e-7"], out=str(tmp_path / "o"))
    assert config["time"] == {"t1": 1e6, "num_saves": 12, "t_min": 0.01}
    assert config["sweep"] == {"d": [50.0, 500.0], "seed": [0, 1]}
    assert config["solver"] == {"name": "default", "rtol": 1e-7, "atol": None, "max_steps": 16384}
    assert config["r"] == 1 and config["ridge"] == 0.0 and config["rho"] == 1.0 and config["seed"] == 0
    assert config["output"] == {"dir": str(tmp_path / "o"), "batch_size": None, "escape_threshold": 0.5}
    assert resolve_config(config) == config  # resolving is idempotent
    empty_output = _write(tmp_path, BASE + "output:\n")  # an empty section, then --out
    assert load_config(empty_output, out="elsewhere")["output"]["dir"] == "elsewhere"
    ((static, experiment, axes),) = build_jobs(config)
    assert static == {} and axes == {"d": [50.0, 500.0], "seed": [0, 1]}
    assert experiment.num_saves == 12 and float(experiment.rtol) == 1e-7 and experiment.atol is None


def test_static_axes_make_one_job_per_value(tmp_path):
    text = _edit(
        dynamics="finite-sample",
        fit={"kind": "kernel-ridge", "kernel": "mehler", "rho": 0.5},
        noise=0.1,
        sweep={"n": [64, None], "problem": ["two-timescale", "planted"], "d": [8, 12]},
    )
    config = load_config(_write(tmp_path, text))
    jobs = build_jobs(config)
    assert [static for static, _, _ in jobs] == [
        {"n": 64, "problem": "two-timescale"},
        {"n": 64, "problem": "planted"},
        {"n": None, "problem": "two-timescale"},
        {"n": None, "problem": "planted"},
    ]
    assert [(e.n, e.problem, e.fit is None, e.d_max) for _, e, _ in jobs] == [
        (64, "two-timescale", False, 12),
        (64, "planted", True, 12),
        (None, "two-timescale", False, 12),
        (None, "planted", True, 12),
    ]
    assert float(jobs[0][1].noise) == 0.1 and float(jobs[2][1].noise) == 0.0


def test_hermite_table_and_sums_build_the_same_link(tmp_path):
    """`{hermite: {'1,0': 1, '0,3': 1}}` and the sum of two catalogue terms are the same link."""
    from mimflow._config import build_link

    table = resolve_config(yaml.safe_load(_edit(target={"hermite": {"1,0": 1.0, "(0, 3)": 1.0}}, sweep={"d": [100]})))
    terms = [{"link": "hermite", "degree": 1, "dim": 2}, {"link": "hermite", "degree": 3, "dim": 2, "index": 1}]
    summed = resolve_config(yaml.safe_load(_edit(target=terms, sweep={"d": [100]})))
    a, b = build_link(table["target"]), build_link(summed["target"])
    z = np.random.default_rng(0).standard_normal((50, 2))
    # h1(z1) + h3(z2) with h3 = (z³ − 3z)/√6
    expected = z[:, 0] + (z[:, 1] ** 3 - 3 * z[:, 1]) / math.sqrt(6)
    np.testing.assert_allclose(np.asarray(a(z)), expected, atol=1e-12)
    np.testing.assert_allclose(np.asarray(b(z)), expected, atol=1e-12)


def test_links_command_lists_the_catalogue(capsys):
    assert main(["links"]) == 0
    out = capsys.readouterr().out
    for name in ("hermite(degree, dim=1, index=0)", "relu(", "sign(", "tanh(", "staircase(k)", "harmonic(degree"):
        assert name in out


def test_theory_json_against_closed_forms(tmp_path, capsys):
    """`mimflow theory --json` for h1..h4 (escape_scaling.yaml): laws log d, d, d², d³
    with constants 1/2 and 1/(2 (s−1) s) (DESIGN §2, α_s = 1), plateau ½, and the
    predicted times at the config's d."""
    assert main(["theory", str(CONFIGS / "escape_scaling.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [g["saddles"][0]["law"] for g in report] == ["log d", "d^1", "d^2", "d^3"]
    dims = np.asarray(report[0]["dims"])
    for s, group in enumerate(report, start=1):
        (saddle,) = group["saddles"]
        constant = 0.5 if s == 1 else 1 / (2 * (s - 1) * s)
        assert saddle["constant"] == pytest.approx(constant, rel=1e-12)
        assert saddle["plateau_loss"] == pytest.approx(0.5, rel=1e-12)
        law = np.log(dims) if s == 1 else dims ** (s - 1)
        np.testing.assert_allclose(saddle["predicted_time"], constant * law, rtol=1e-12)
    assert main(["theory", str(CONFIGS / "planted_vs_two_timescale.yaml")]) == 0
    out = capsys.readouterr().out
    assert "problem=two-timescale" in out and "problem=planted" in out and "d^0.5" in out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate_at_both_sizes(path):
    """Each shipped config validates at both sizes, and its resolved form (what `mimflow run`
    writes to `DIR/config.yaml`) is itself a valid config that resolves to itself."""
    full, smoke = load_config(path), load_config(path, smoke=True)
    assert full["name"] == path.stem and full["description"]
    assert all(len(build_jobs(c)) >= 1 for c in (full, smoke))
    total = lambda c: math.prod(len(v) for v in c["sweep"].values())
    assert total(smoke) < total(full)
    for config in (full, smoke):
        assert resolve_config(yaml.safe_load(dump_config(config))) == config


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "mimflow", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "theory", "plot", "links"):
        assert command in out


_KEYS = [
    "name", "target", "dynamics", "problem", "r", "d", "n", "noise", "fit", "ridge", "rho", "solver", "time",
    "sweep", "output", "smoke", "seed", "link", "degree", "dim", "index", "k", "hermite", "scale", "kind",
    "kernel", "t1", "num_saves", "t_min", "rtol", "atol", "max_steps", "batch_size", "dir", "problem",
]  # fmt: skip


def _values():
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["hermite", "staircase", "reduced", "planted", "1e6", "1,0", "mehler", "x", ""]),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.sampled_from(_KEYS), children, max_size=5)
        ),
        max_leaves=12,
    )


def test_random_configs_never_raise_anything_but_config_error():
    """Random nested values under the schema's keys (valid and invalid mixed): resolving
    either returns a config or raises a ConfigError (a ValueError) with one line that
    names a field; nothing else escapes (no TypeError, KeyError, traceback)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mimflow._config import ConfigError

    base = yaml.safe_load(BASE)

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(_KEYS), _values(), max_size=4), st.booleans())
    def check(raw, on_base):
        config = {**base, **raw} if on_base else raw
        try:
            resolve_config(config)
        except ConfigError as error:
            assert "\n" not in str(error) and str(error)

    check()


def test_prediction_of_a_flow_uses_its_fits_shrinkage():
    """A finite-sample flow's prediction is its fit's population limit: a Mehler kernel
    ridge (ρ = ½, swept μ = 1) keeps w_3 = ρ³/(ρ³ + μ) = 1/9 of h3, so the d² saddle's
    constant 1/12 (DESIGN §2) becomes 9/12; an RBF kernel has no closed form and says so."""
    from mimflow._report import _prediction

    base = {
        "target": {"link": "hermite", "degree": 3},
        "time": {"t1": 100},
        "d": 20,
        "dynamics": "finite-sample",
        "n": 100,
    }
    mehler = resolve_config({**base, "fit": {"kind": "kernel-ridge", "kernel": "mehler", "rho": 0.5, "ridge": 0.1}})
    prediction, notes = _prediction(mehler, {"ridge": 1.0})
    assert prediction.saddles[0].constant == pytest.approx(9 / 12, rel=1e-12)
    assert notes == ["finite samples: the prediction is the population limit n → ∞"]
    rbf = resolve_config({**base, "fit": {"kind": "kernel-ridge", "kernel": "rbf"}})
    prediction, notes = _prediction(rbf, {})
    assert prediction.saddles[0].constant == pytest.approx(1 / 12, rel=1e-12)
    assert any("no closed form" in note for note in notes)
