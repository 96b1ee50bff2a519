"""Experiments as files: the YAML config schema, its validation and the experiments it builds.

A config is loaded with a safe loader (no tag can construct a Python object), every
field is checked, and a `ConfigError` names the field's path and the bad value. The
*resolved* config (every default filled in) is a plain dict; `mimflow run` writes it
beside the results and uses it to decide whether a run can be resumed. The schema
is documented in `configs/README.md`.
"""

import copy
import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import diffrax
import jax
import yaml

from . import links
from ._checks import MAX_DEGREE, MAX_LINK_SIZE, check_link_size
from ._experiments import AbstractExperiment, FlowExperiment, ReducedExperiment
from ._fast import AbstractRosenbrock, Rodas4, Rodas5
from ._fits import RBF, AbstractFit, ArcCosine, HermiteFeatures, KernelRidge, Mehler, Polynomial, RandomFeatures
from ._integrate import MAX_SAVES, MAX_STEPS
from ._link import Link

__all__ = ["ConfigError", "load_config", "resolve_config", "build_link", "build_jobs", "CATALOGUE"]


class ConfigError(ValueError):
    """A config that does not follow the schema; the message starts with the field's path."""


# --- loading -----------------------------------------------------------------------


class _StrictSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only, never Python objects) that also rejects
    duplicate keys, which the plain loader silently overwrites."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: a key must be a plain value, got {key!r}"
            ) from None
        if key in mapping:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 -- a SafeLoader subclass
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        message = f"{context}; {problem}" if context else problem
        raise ConfigError(f"{source}: {where}not valid YAML for a config ({' '.join(message.split())})") from None


def load_config(
    path: str | Path, overrides: Sequence[str] = (), *, smoke: bool = False, out: str | None = None
) -> dict:
    """Read, override and validate a config file; return the resolved config.

    **Arguments:**
    - `path`: the YAML file.
    - `overrides`: `"key.path=value"` strings (`--set`), the value read as YAML
      (`sweep.d=[100, 1000]`), applied after the file's `smoke` section.
    - `smoke`: apply the config's `smoke` section (its reduced size, for tests).
    - `out`: the output directory, replacing `output.dir`.
    """
    if not isinstance(path, str | Path):
        raise ConfigError(f"`path` must be a file name, got {type(path).__name__}")
    if isinstance(overrides, str):
        raise ConfigError(f"`overrides` must be a list of key.path=value strings, got the string {overrides!r}")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror or error})") from None
    raw = _parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of fields, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    raw.setdefault("name", path.stem)
    if smoke:
        smoke_section = raw.get("smoke", {})
        _check_smoke(smoke_section)
        for key, value in smoke_section.items():
            _set_path(raw, key, value, "smoke")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key.path=value, got {override!r}")
        _set_path(raw, key.strip(), _parse_yaml(value, f"--set {key.strip()}"), "--set")
    if out is not None:
        if raw.get("output") is None:
            raw["output"] = {}
        if not isinstance(raw["output"], dict):
            raise ConfigError(f"output: must be a mapping, got {raw['output']!r}")
        raw["output"]["dir"] = str(out)
    return resolve_config(raw)


def _check_smoke(section: Any) -> None:
    if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
        raise ConfigError(f"smoke: must be a mapping of key.path → value, got {section!r}")


def _set_path(raw: dict, dotted: str, value: Any, origin: str) -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin} {dotted}: {'.'.join(parts[: i + 1])} is not a mapping, got {child!r}")
        node = child
    node[parts[-1]] = value


# --- field checks ------------------------------------------------------------------


def _fail(path: str, requirement: str, value: Any) -> ConfigError:
    return ConfigError(f"{path}: {requirement}, got {value!r}")


def _as_float(value: Any, path: str) -> float:
    # YAML 1.1 reads `1e12` (no dot) as a string: accept any string Python reads as a number
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(path, "must be a number", value)
    try:
        number = float(value)
    except ValueError:
        raise _fail(path, "must be a number", value) from None
    except OverflowError:  # an integer beyond float range
        raise _fail(path, "must be finite", value) from None
    if not math.isfinite(number):
        raise _fail(path, "must be finite", value)
    return number


def _number(
    value: Any,
    path: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float | int:
    number = _as_float(value, path)
    if integer:
        if number != round(number):
            raise _fail(path, "must be an integer", value)
        number = int(round(number))
    if low is not None and (number < low or (low_open and number == low)):
        raise _fail(path, f"must be {'>' if low_open else '≥'} {low:g}", value)
    if high is not None and (number > high or (high_open and number == high)):
        raise _fail(path, f"must be {'<' if high_open else '≤'} {high:{'d' if isinstance(high, int) else 'g'}}", value)
    return number


def _choice(value: Any, path: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _fail(path, f"must be one of {', '.join(choices)}{hint}", value)
    return value


def _mapping(value: Any, path: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, "must be a mapping", value)
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"{path}." if path else ""
            raise ConfigError(f"{where}{key}: unknown key{hint}; allowed here: {', '.join(allowed)}")
    for key in required:
        if key not in value or value[key] is None:
            raise ConfigError(f"{path + '.' if path else ''}{key}: missing (required)")
    return value


def _list(value: Any, path: str) -> list:
    if not isinstance(value, list) or not value:
        raise _fail(path, "must be a non-empty list", value)
    return value


def _unique(values: list, path: str) -> list:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise _fail(f"{path}[{i}]", "repeats an earlier value", value)
    return values


# --- links -------------------------------------------------------------------------

_INT, _FLOAT = "integer", "number"

CATALOGUE: dict[str, tuple[Callable[..., Link], dict[str, tuple[str, Any]]]] = {
    # name: (constructor, {parameter: (type, default; None = required)})
    "hermite": (links.hermite, {"degree": (_INT, None), "dim": (_INT, 1), "index": (_INT, 0)}),
    "relu": (links.relu, {"degree": (_INT, 8), "dim": (_INT, 1), "index": (_INT, 0)}),
    "sign": (links.sign, {"degree": (_INT, 9), "dim": (_INT, 1), "index": (_INT, 0)}),
    "tanh": (links.tanh, {"degree": (_INT, 9), "dim": (_INT, 1), "index": (_INT, 0)}),
    "staircase": (links.staircase, {"k": (_INT, None)}),
    "harmonic": (links.harmonic, {"degree": (_INT, None), "phase": (_FLOAT, 0.0)}),
}
"""The links a config can name: `{link: name, parameter: value, …}`."""


def _multi_index(key: Any, path: str) -> tuple[int, ...]:
    if isinstance(key, int) and not isinstance(key, bool):
        parts = [str(key)]
    elif isinstance(key, str):
        parts = [p for p in re.split(r"[\s,]+", key.strip().strip("()[]")) if p]
    else:
        parts = []
    # ASCII digits only: `str.isdigit` also accepts '²', which `int` refuses
    if not parts or not all(re.fullmatch(r"[0-9]+", p) for p in parts):
        raise _fail(path, "keys must be multi-indices of integers ≥ 0 such as '1,0'", key)
    return tuple(int(p) for p in parts)


def _check_term(term: Any, path: str) -> dict:
    """A term of a link spec, normalised: `{link: name, every parameter, scale}` or
    `{hermite: {'i,j': coefficient}, scale}`."""
    if not isinstance(term, dict):
        raise _fail(path, "must be a mapping such as {link: hermite, degree: 3}", term)
    if "hermite" in term:
        _mapping(term, path, ["hermite", "scale"])
        table = term["hermite"]
        if not isinstance(table, dict) or not table:
            raise _fail(f"{path}.hermite", "must be a non-empty mapping of multi-index → coefficient", table)
        coefficients, spellings = {}, {}
        for key, value in table.items():
            alpha = ",".join(map(str, _multi_index(key, f"{path}.hermite")))
            if alpha in spellings:  # '1,0', '1, 0', '(1,0)' and '01 0' are one multi-index
                raise ConfigError(
                    f"{path}.hermite: {spellings[alpha]!r} and {key!r} name the same multi-index ({alpha}); "
                    f"give each coefficient once"
                )
            spellings[alpha] = key
            coefficients[alpha] = _as_float(value, f"{path}.hermite[{key!r}]")
        lengths = {len(a.split(",")) for a in coefficients}
        if len(lengths) != 1:
            raise _fail(f"{path}.hermite", "multi-indices must all have the same length k", list(table))
        degree = max(sum(map(int, a.split(","))) for a in coefficients)
        _check_link_size(lengths.pop(), degree, f"{path}.hermite")
        return {"hermite": coefficients, "scale": _as_float(term.get("scale", 1.0), f"{path}.scale")}
    if "link" not in term:
        raise ConfigError(
            f"{path}.link: missing (required): a catalogue name ({', '.join(CATALOGUE)}) or a hermite table"
        )
    name = _choice(term["link"], f"{path}.link", list(CATALOGUE))
    _, parameters = CATALOGUE[name]
    _mapping(term, path, ["link", *parameters, "scale"], required=[p for p, (_, d) in parameters.items() if d is None])
    normal: dict[str, Any] = {"link": name}
    for parameter, (kind, default) in parameters.items():
        value = term.get(parameter, default)
        if kind == _INT:
            normal[parameter] = _number(value, f"{path}.{parameter}", low=0, integer=True)
        else:
            normal[parameter] = _as_float(value, f"{path}.{parameter}")
    if "index" in normal and normal["index"] >= normal["dim"]:
        raise _fail(f"{path}.index", f"must be < dim = {normal['dim']} (a coordinate of ℝ^dim)", normal["index"])
    # staircase(k) has degree k on ℝ^k; harmonic lives on ℝ²
    k, degree = (normal["k"], normal["k"]) if name == "staircase" else (normal.get("dim", 2), normal["degree"])
    _check_link_size(k, degree, path)
    normal["scale"] = _as_float(term.get("scale", 1.0), f"{path}.scale")
    return normal


def _check_link_size(k: int, degree: int, path: str) -> None:
    """Reject, before building it, a link on `ℝ^k` of degree `D` that the Python API
    refuses (`_checks.check_link_size`: `D ≤ 63`, the tensor's `k^D` entries and the
    multi-index table's `binom(D + k − 1, D) × k` at most `MAX_LINK_SIZE`), and one with
    `k² > MAX_LINK_SIZE`: the experiment's overlap is `k × k` at the default `r = k`.
    For `D ≥ 1` the table's bound already implies `k² ≤ MAX_LINK_SIZE`; the extra cap
    binds only for degree-0 (constant) links. `k = 0` is left to the
    link's constructor, whose error names the parameter."""
    if k < 1:
        return
    if k * k > MAX_LINK_SIZE:
        raise ConfigError(
            f"{path}: a link on ℝ^{k} of degree {degree} is too large to build (the default r = k overlap "
            f"would hold {k}² entries; at most 2^20)"
        )
    try:
        check_link_size(k, degree, path)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_link_spec(spec: Any, path: str) -> tuple[dict | list[dict], Link]:
    """A link spec normalised (one term, or a list of terms), and the link it builds."""
    if isinstance(spec, list):
        checked: dict | list[dict] = [_check_term(term, f"{path}[{i}]") for i, term in enumerate(_list(spec, path))]
    else:
        checked = _check_term(spec, path)
    link = build_link(checked, path)
    if not math.isfinite(float(link.norm2() + link.residual)):
        raise _fail(path, "must have a finite norm E f(z)² (smaller coefficients or scale)", link_label(checked))
    return checked, link


def _build_term(term: dict, path: str) -> Link:
    try:
        if "hermite" in term:
            coefficients = {tuple(int(a) for a in key.split(",")): c for key, c in term["hermite"].items()}
            link = Link.from_hermite(coefficients)
        else:
            constructor, parameters = CATALOGUE[term["link"]]
            link = constructor(**{p: term[p] for p in parameters})
    except ValueError as error:
        # name the parameter the constructor complains about (its message quotes it: `degree`)
        named = re.search(r"`(\w+)`", str(error))
        if named and named.group(1) in term:
            path = f"{path}.{named.group(1)}"
        raise ConfigError(f"{path}: {error}") from None
    return link if term["scale"] == 1.0 else term["scale"] * link


def build_link(spec: dict | list[dict], path: str = "target") -> Link:
    """The `Link` of a checked link spec (one term, or a list of terms that are summed)."""
    terms = spec if isinstance(spec, list) else [spec]
    built = [_build_term(term, f"{path}[{i}]" if isinstance(spec, list) else path) for i, term in enumerate(terms)]
    dims = [link.dim for link in built]
    if len(set(dims)) != 1:
        raise _fail(path, "terms must share one dimension k", dims)
    total = built[0]
    for link in built[1:]:
        total = total + link
    return total


def link_label(spec: dict | list[dict]) -> str:
    """A short name for a link spec, e.g. `hermite(degree=3, dim=2, index=1) + staircase(k=2)`."""

    def one(term: dict) -> str:
        scale = "" if term["scale"] == 1.0 else f"{term['scale']:g}·"
        if "hermite" in term:
            return scale + " + ".join(f"{c:g}·h[{a}]" for a, c in term["hermite"].items())
        _, parameters = CATALOGUE[term["link"]]
        args = ", ".join(f"{p}={term[p]:g}" for p, (_, default) in parameters.items() if term[p] != default)
        return f"{scale}{term['link']}({args})"

    return " + ".join(one(term) for term in (spec if isinstance(spec, list) else [spec]))


# --- the schema --------------------------------------------------------------------

DYNAMICS = ("reduced", "population", "finite-sample")
PROBLEMS = ("two-timescale", "planted")
SOLVERS: dict[str, type[diffrax.AbstractSolver] | type[AbstractRosenbrock] | None] = {
    "default": None,
    "rodas4": Rodas4,
    "rodas5": Rodas5,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
}
FITS = ("kernel-ridge", "hermite-features", "random-features")
PRECISIONS = ("float64", "float32")
"""`precision`: the float type of the run (`jax_enable_x64` on for float64, off for float32)."""
KERNELS = ("mehler", "rbf", "polynomial", "arc-cosine")
STATIC_AXES = ("problem", "n")
"""Sweep axes that change array shapes or the program: one compiled sweep per value."""

_TOP = (
    "name",
    "description",
    "seed",
    "target",
    "dynamics",
    "problem",
    "r",
    "d",
    "n",
    "noise",
    "fit",
    "ridge",
    "rho",
    "solver",
    "precision",
    "time",
    "sweep",
    "output",
    "smoke",
)


def _check_fit(fit: Any, path: str) -> dict:
    kind = _choice(_mapping(fit, path, ["kind", *_FIT_KEYS], required=["kind"])["kind"], f"{path}.kind", FITS)
    if kind == "kernel-ridge":
        _mapping(fit, path, ["kind", "kernel", "ridge", "rho", "lengthscale", "degree", "offset"], required=["kernel"])
        kernel = _choice(fit["kernel"], f"{path}.kernel", KERNELS)
        normal: dict[str, Any] = {"kind": kind, "kernel": kernel}
        normal["ridge"] = _number(fit.get("ridge", 1e-3), f"{path}.ridge", low=0)
        allowed = {"mehler": ["rho"], "rbf": ["lengthscale"], "polynomial": ["degree", "offset"], "arc-cosine": []}
        for key in ("rho", "lengthscale", "degree", "offset"):
            if key in fit and key not in allowed[kernel]:
                raise ConfigError(f"{path}.{key}: not a parameter of the {kernel} kernel")
        if kernel == "mehler":
            normal["rho"] = _number(fit.get("rho", 0.5), f"{path}.rho", low=0, high=1, low_open=True, high_open=True)
        if kernel == "rbf":
            normal["lengthscale"] = _number(fit.get("lengthscale", 1.0), f"{path}.lengthscale", low=0, low_open=True)
        if kernel == "polynomial":
            normal["degree"] = _number(fit.get("degree", 3), f"{path}.degree", low=1, integer=True)
            normal["offset"] = _number(fit.get("offset", 1.0), f"{path}.offset", low=0)
        return normal
    if kind == "hermite-features":
        _mapping(fit, path, ["kind", "degree", "ridge", "rho"], required=["degree"])
        return {
            "kind": kind,
            # the highest polynomial degree, as for links (`_checks.MAX_DEGREE`)
            "degree": _number(fit["degree"], f"{path}.degree", low=0, high=MAX_DEGREE, integer=True),
            "ridge": _number(fit.get("ridge", 0.0), f"{path}.ridge", low=0),
            "rho": _number(fit.get("rho", 1.0), f"{path}.rho", low=0, high=1, low_open=True),
        }
    _mapping(fit, path, ["kind", "num_features", "ridge", "features", "lengthscale"], required=["num_features"])
    return {
        "kind": kind,
        "num_features": _number(fit["num_features"], f"{path}.num_features", low=1, integer=True),
        "ridge": _number(fit.get("ridge", 1e-3), f"{path}.ridge", low=0),
        "features": _choice(fit.get("features", "relu"), f"{path}.features", ["relu", "fourier"]),
        "lengthscale": _number(fit.get("lengthscale", 1.0), f"{path}.lengthscale", low=0, low_open=True),
    }


_FIT_KEYS = ("kernel", "ridge", "rho", "lengthscale", "degree", "offset", "num_features", "features")


def _fit_has_rho(fit: dict | None) -> bool:
    """A Mehler kernel ridge or Hermite features: a fit with `rho`, whose population limit
    is the reduced problem with ridge shrinkage."""
    return fit is not None and (fit["kind"] == "hermite-features" or fit.get("kernel") == "mehler")


def resolve_config(raw: Mapping[str, Any]) -> dict:
    """Validate a config (a dict, as read from YAML) and return it with every default
    filled in. Raises a `ConfigError` naming the field path and the bad value."""
    raw = _mapping(dict(raw), "", _TOP, required=["time"])
    target_path = "target"
    if raw.get("target") is None:
        swept = (raw.get("sweep") or {}).get("link") if isinstance(raw.get("sweep"), dict) else None
        if not swept or not isinstance(swept, list):
            raise ConfigError("target: missing (required, unless sweep.link lists the links)")
        raw["target"], target_path = swept[0], "sweep.link[0]"
    c: dict[str, Any] = {}
    name = raw.get("name", "experiment")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise _fail("name", "must be a name of letters, digits, '.', '_' or '-'", name)
    if re.fullmatch(r"\.+", name):  # results/.. would be the current directory
        raise _fail("name", "must not be made of dots only (the output directory is results/<name>)", name)
    c["name"] = name
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _fail("description", "must be a string", description)
    c["description"] = description.strip()
    c["seed"] = _number(raw.get("seed", 0), "seed", low=0, high=2**32 - 1, integer=True)
    c["target"], link = _check_link_spec(raw["target"], target_path)
    k = link.dim
    c["dynamics"] = dynamics = _choice(raw.get("dynamics", "reduced"), "dynamics", DYNAMICS)
    c["problem"] = problem = _choice(raw.get("problem", "two-timescale"), "problem", PROBLEMS)
    flows = dynamics != "reduced"
    sweep_raw = raw.get("sweep") or {}
    if not isinstance(sweep_raw, dict):
        raise _fail("sweep", "must be a mapping of axis → values", sweep_raw)
    problems = [problem]
    if "problem" in sweep_raw:
        problems = _unique(
            [
                _choice(v, f"sweep.problem[{i}]", PROBLEMS)
                for i, v in enumerate(_list(sweep_raw["problem"], "sweep.problem"))
            ],
            "sweep.problem",
        )
    c["r"] = r = _number(raw.get("r", k), "r", low=1, integer=True)
    if k * r > MAX_LINK_SIZE:  # as the links' k² cap (`_check_link_size`)
        raise _fail("r", f"must be ≤ 2^20 / k (k = {k}): the k × r overlap would hold more than 2^20 entries", r)
    if "planted" in problems and r != k:
        raise _fail("r", f"the planted problem needs r = k = {k}", r)

    # what each dynamics takes
    def only(key: str, allowed: bool, why: str) -> None:
        if key in raw and not allowed:
            raise ConfigError(f"{key}: {why}, got {raw[key]!r}")

    only("ridge", dynamics == "reduced", "a reduced-dynamics field (for flows set fit.ridge)")
    only("rho", dynamics == "reduced", "a reduced-dynamics field (for flows set fit.rho)")
    only("fit", flows, "for population or finite-sample dynamics only")
    only("n", dynamics == "finite-sample", "for finite-sample dynamics only")
    only("noise", dynamics == "finite-sample", "for finite-sample dynamics only")
    if dynamics == "reduced":
        c["ridge"] = _number(raw.get("ridge", 0.0), "ridge", low=0)
        c["rho"] = _number(raw.get("rho", 1.0), "rho", low=0, high=1, low_open=True)
        # the neutral values (no shrinkage) are what a resolved planted config lists
        for key, neutral in (("ridge", 0.0), ("rho", 1.0)):
            if "planted" in problems and c[key] != neutral:
                raise _fail(key, f"the planted problem has no ridge shrinkage ({key} = {neutral} or unset)", raw[key])
    else:
        fit = raw.get("fit")
        c["fit"] = None if fit is None else _check_fit(fit, "fit")
        if c["fit"] is not None and problems == ["planted"]:
            raise ConfigError("fit: the planted problem has no fit")
        if dynamics == "population" and not (c["fit"] is None or _fit_has_rho(c["fit"])):
            raise ConfigError(
                f"fit.kind: the population flow has a closed form without a fit, or for a Mehler kernel ridge "
                f"or Hermite features, got {c['fit']['kind']} ({c['fit'].get('kernel', '')})"
            )
        if dynamics == "finite-sample":
            if c["fit"] is None and "two-timescale" in problems:
                raise ConfigError("fit: missing (finite-sample two-timescale dynamics need a fit)")
            if "n" in sweep_raw:
                only("n", False, "swept (sweep.n); set one or the other")
            else:
                if raw.get("n") is None:
                    raise ConfigError("n: missing (finite-sample dynamics need a sample size)")
                c["n"] = _number(raw["n"], "n", low=1, integer=True)
            c["noise"] = _number(raw.get("noise", 0.0), "noise", low=0)

    # time, solver, output
    time = _mapping(raw["time"], "time", ["t1", "num_saves", "t_min"], required=["t1"])
    t_min = _number(time.get("t_min", 1e-2), "time.t_min", low=0, low_open=True)
    c["time"] = {
        "t1": _number(time["t1"], "time.t1", low=t_min, low_open=True),
        "num_saves": _number(
            time.get("num_saves", 64 if flows else 128), "time.num_saves", low=2, high=MAX_SAVES, integer=True
        ),
        "t_min": t_min,
    }
    solver = _mapping(raw.get("solver") or {}, "solver", ["name", "rtol", "atol", "max_steps"])
    c["solver"] = {
        "name": _choice(solver.get("name", "default"), "solver.name", list(SOLVERS)),
        "rtol": None if solver.get("rtol") is None else _number(solver["rtol"], "solver.rtol", low=0, low_open=True),
        "atol": None if solver.get("atol") is None else _number(solver["atol"], "solver.atol", low=0, low_open=True),
        "max_steps": _number(solver.get("max_steps", 16384), "solver.max_steps", low=1, high=MAX_STEPS, integer=True),
    }
    solver_class = SOLVERS[c["solver"]["name"]]
    if isinstance(solver_class, type) and issubclass(solver_class, AbstractRosenbrock) and c["dynamics"] != "reduced":
        chosen = c["solver"]["name"]
        raise _fail("solver.name", f"{chosen} integrates the reduced dynamics only (dynamics: reduced)", chosen)
    c["precision"] = _choice(raw.get("precision", "float64"), "precision", PRECISIONS)
    output = _mapping(raw.get("output") or {}, "output", ["dir", "batch_size", "escape_threshold"])
    out_dir = output.get("dir", f"results/{name}")
    if not isinstance(out_dir, str) or not out_dir:
        raise _fail("output.dir", "must be a directory name", out_dir)
    batch = output.get("batch_size")
    c["output"] = {
        "dir": out_dir,
        "batch_size": None if batch is None else _number(batch, "output.batch_size", low=1, integer=True),
        "escape_threshold": _number(
            output.get("escape_threshold", 0.5), "output.escape_threshold", low=0, high=1, low_open=True
        ),
    }
    c["sweep"] = _check_sweep(sweep_raw, c, k, problems)
    if "d" in c["sweep"]:
        only("d", False, "swept (sweep.d); set one or the other")
    else:
        if raw.get("d") is None:
            raise ConfigError("d: missing (set d, or sweep it under sweep.d)")
        c["d"] = _check_d(raw["d"], "d", k, r, flows)
    if dynamics == "finite-sample":
        _check_memory(c, r)
    smoke = raw.get("smoke", {})
    _check_smoke(smoke)
    c["smoke"] = smoke
    return c


def _check_d(value: Any, path: str, k: int, r: int, integer: bool) -> float | int:
    d = _number(value, path, integer=integer)
    if d < k + r:
        raise _fail(path, f"must be ≥ k + r = {k + r} (k = {k}, r = {r})", value)
    if integer and d > MAX_FLOW_D:
        raise _fail(
            path, "must be ≤ 2^24 for a flow (d is carried as a float, exact in float32 only up to 2^24)", value
        )
    if integer and 8 * d * r > MAX_BYTES:
        raise _fail(path, f"too large for r = {r}: W (d × r) would hold more than 2^40 bytes (1 TiB)", value)
    return d


MAX_FLOW_D = 2**24
"""The largest `d` of a flow: the compiled sweep carries `d` as a float, which float32 holds
exactly only up to `2^24`."""
MAX_BYTES = 2**40
"""The largest array a config may ask for (1 TiB in float64): the data `X` (`n × d`), a kernel ridge's `n × n`
Gram matrix and a feature fit's `n × p` design; larger ones cannot fit in any device's memory."""


def _check_memory(c: dict, r: int) -> None:
    """Refuse a finite-sample config whose arrays could not fit in memory (`MAX_BYTES`): `X` of
    `n × d` (largest `n`, largest `d`), a kernel ridge's `n × n` Gram matrix, a feature fit's
    `n × p` design (random features: `p = num_features`; Hermite features: `p = binom(D + r, r)`)."""
    if "n" in c["sweep"]:
        ns = [(f"sweep.n[{i}]", n) for i, n in enumerate(c["sweep"]["n"]) if n is not None]
    else:
        ns = [("n", c["n"])]
    if not ns:
        return
    path, n = max(ns, key=lambda item: item[1])
    d = int(max(c["sweep"]["d"] if "d" in c["sweep"] else [c["d"]]))
    limit = "would hold more than 2^40 bytes (1 TiB), which cannot fit in memory"
    if 8 * n * d > MAX_BYTES:
        raise _fail(path, f"too many samples: the n × d data matrix (d = {d}) {limit}", n)
    fit = c.get("fit")
    if fit is None:
        return
    if fit["kind"] == "kernel-ridge" and 8 * n * n > MAX_BYTES:
        raise _fail(path, f"too many samples for a kernel ridge: its n × n Gram matrix {limit}", n)
    if fit["kind"] == "random-features" and 8 * n * fit["num_features"] > MAX_BYTES:
        raise _fail(
            "fit.num_features",
            f"too many features: the n × p design (n = {n}) {limit}",
            fit["num_features"],
        )
    if fit["kind"] == "hermite-features":
        degree, p = fit["degree"], math.comb(fit["degree"] + r, r)
        if math.comb(degree + r - 1, degree) * r > MAX_LINK_SIZE:  # what `multi_indices` lists, per degree
            raise _fail(
                "fit.degree",
                f"too high for Hermite features on ℝ^r (r = {r}): more than 2^20 multi-index entries to list",
                degree,
            )
        if 8 * n * p > MAX_BYTES:
            raise _fail(
                "fit.degree",
                f"too many features: the n × p design of {p} features (r = {r}, n = {n}) {limit}",
                fit["degree"],
            )


def _check_sweep(sweep: dict, c: dict, k: int, problems: list[str]) -> dict:
    dynamics, r = c["dynamics"], c["r"]
    flows = dynamics != "reduced"
    allowed = ["seed", "d", "link", "rtol", "atol", "problem"]
    if dynamics == "reduced" and "planted" not in problems:
        allowed += ["ridge", "rho"]
    if flows and c.get("fit") is not None and "planted" not in problems:
        allowed += ["ridge"] + (["rho"] if _fit_has_rho(c["fit"]) else [])
    if dynamics == "finite-sample":
        allowed += ["noise", "n"]
    for axis in sweep:
        if axis not in allowed:
            why = {
                "ridge": "needs the two-timescale problem (and for flows a fit)",
                "rho": "needs the two-timescale problem (reduced, or a Mehler kernel-ridge or Hermite-features fit)",
                "noise": "needs finite-sample dynamics",
                "n": "needs finite-sample dynamics",
            }.get(axis, "is not a sweep axis")
            raise ConfigError(f"sweep.{axis}: {why}; axes allowed here: {', '.join(allowed)}")
    if "noise" in sweep and None in (sweep.get("n") or []):
        raise ConfigError("sweep.noise: the population (null in sweep.n) has no noise; sweep noise at finite n only")
    mehler_ridge = c.get("fit") is not None and c["fit"]["kind"] == "kernel-ridge"  # its ρ must be < 1
    checked: dict[str, list] = {}
    for axis, values in sweep.items():
        path = f"sweep.{axis}"
        if axis == "seed" and not isinstance(values, list):
            count = _number(values, path, low=1, high=_MAX_SEEDS, integer=True)
            checked[axis] = list(range(count))
            continue
        values = _list(values, path)
        each = partial(_each, values, path)
        if axis == "seed":
            items = each(lambda v, p: _number(v, p, low=0, high=2**32 - 1, integer=True))
        elif axis == "d":
            items = each(lambda v, p: _check_d(v, p, k, r, flows))
        elif axis == "link":
            items = each(lambda v, p: _check_axis_link(v, p, k))
        elif axis == "problem":
            items = problems
        elif axis == "n":
            items = each(lambda v, p: None if v is None else _number(v, p, low=1, integer=True))
        elif axis == "rho":
            items = each(lambda v, p: _number(v, p, low=0, high=1, low_open=True, high_open=mehler_ridge))
        elif axis in ("rtol", "atol"):
            items = each(lambda v, p: _number(v, p, low=0, low_open=True))
        else:  # ridge, noise
            items = each(lambda v, p: _number(v, p, low=0))
        checked[axis] = _unique(items, path)
    fit = c.get("fit")
    if None in checked.get("n", []) and fit is not None and "two-timescale" in problems and not _fit_has_rho(fit):
        index = checked["n"].index(None)
        raise ConfigError(
            f"sweep.n[{index}]: null (the population) has a closed form without a fit, or for a Mehler kernel "
            f"ridge or Hermite features, got fit.kind {fit['kind']}"
            + (f" ({fit['kernel']})" if "kernel" in fit else "")
        )
    return checked


_MAX_SEEDS = 2**20
"""The largest seed count `sweep.seed: N` (the resolved config lists the seeds `0…N−1`)."""


def _each(values: list, path: str, check: Callable[[Any, str], Any]) -> list:
    """`check(value, "path[i]")` for each value of a list."""
    return [check(value, f"{path}[{i}]") for i, value in enumerate(values)]


def _check_axis_link(spec: Any, path: str, k: int) -> dict | list[dict]:
    checked, link = _check_link_spec(spec, path)
    if link.dim != k:
        raise _fail(path, f"must be a link on k = {k} (the target's)", link_label(checked))
    return checked


# --- building the experiments ------------------------------------------------------


def _build_fit(fit: dict | None, key: jax.Array) -> AbstractFit | None:
    if fit is None:
        return None
    if fit["kind"] == "kernel-ridge":
        kernel = {
            "mehler": lambda: Mehler(fit["rho"]),
            "rbf": lambda: RBF(fit["lengthscale"]),
            "polynomial": lambda: Polynomial(fit["degree"], fit["offset"]),
            "arc-cosine": ArcCosine,
        }[fit["kernel"]]()
        return KernelRidge(kernel, fit["ridge"])
    if fit["kind"] == "hermite-features":
        return HermiteFeatures(fit["degree"], fit["ridge"], fit["rho"])
    return RandomFeatures(fit["num_features"], key, fit["ridge"], fit["features"], fit["lengthscale"])


def static_points(config: dict) -> list[dict[str, Any]]:
    """The values of the static axes (`problem`, `n`) of each compiled sweep, in grid order."""
    points: list[dict[str, Any]] = [{}]
    for axis in config["sweep"]:
        if axis in STATIC_AXES:
            points = [{**point, axis: value} for point in points for value in config["sweep"][axis]]
    return points


def build_jobs(config: dict) -> list[tuple[dict[str, Any], AbstractExperiment, dict[str, Any]]]:
    """One `(static values, experiment, sweep axes)` per compiled sweep of a resolved config."""
    key = jax.random.key(config["seed"])
    link = build_link(config["target"])
    axes: dict[str, Any] = {}
    for axis, values in config["sweep"].items():
        if axis == "link":
            axes[axis] = [build_link(spec, f"sweep.link[{i}]") for i, spec in enumerate(values)]
        elif axis not in STATIC_AXES:
            axes[axis] = values
    if not any(axis not in STATIC_AXES for axis in config["sweep"]):
        axes["seed"] = [0]  # a single point still needs one axis
    solver_class = SOLVERS[config["solver"]["name"]]
    common = {
        "r": config["r"],
        "d": config.get("d"),
        "solver": None if solver_class is None else solver_class(),
        "rtol": config["solver"]["rtol"],
        "atol": config["solver"]["atol"],
        "num_saves": config["time"]["num_saves"],
        "t_min": config["time"]["t_min"],
        "max_steps": config["solver"]["max_steps"],
    }
    jobs = []
    # a point's key is fold_in(key, sweep seed) (see AbstractExperiment); random features draw from the split
    key_experiment, key_fit = key, jax.random.split(key)[1]
    for static in static_points(config):
        problem = static.get("problem", config["problem"])
        try:
            if config["dynamics"] == "reduced":
                ridge = {} if problem == "planted" else {"ridge": config["ridge"], "rho": config["rho"]}
                experiment = ReducedExperiment(
                    link, key_experiment, config["time"]["t1"], problem=problem, **ridge, **common
                )
            else:
                d_values = config["sweep"].get("d", [config.get("d")])
                n = static.get("n", config.get("n")) if config["dynamics"] == "finite-sample" else None
                experiment = FlowExperiment(
                    link,
                    key_experiment,
                    config["time"]["t1"],
                    d_max=int(max(d_values)),
                    n=n,
                    fit=None if problem == "planted" else _build_fit(config["fit"], key_fit),
                    noise=config.get("noise", 0.0) if n is not None else 0.0,
                    problem=problem,
                    **common,
                )
        except ValueError as error:
            raise ConfigError(f"{error}") from None
        jobs.append((static, experiment, axes))
    return jobs


def dump_config(config: dict) -> str:
    """The resolved config as YAML (what `mimflow run` writes beside the results)."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
