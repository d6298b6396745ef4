"""A sweep's configuration: the TOML file, its parameters and their values."""
from __future__ import annotations

import itertools
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fusetomo.core.errors import FusetomoError
from fusetomo.solver.fusion import FusionParams

FORMAT = "fusetomo-sweep"
VERSION = 1

FUSION_NAMES = frozenset(f.name for f in fields(FusionParams))
ACQUISITION_NAMES = frozenset({"chem_snr", "chem_dose", "dose", "haadf_snr",
                               "background_fraction", "acq_gamma"})
SAMPLING_NAMES = frozenset({"tilt_max", "haadf_step", "chem_step", "n_haadf_tilts",
                            "n_chem_tilts"})
PARAMETER_NAMES = FUSION_NAMES | ACQUISITION_NAMES | SAMPLING_NAMES
_TOP_KEYS = {"name", "method", "iterations", "seeds", "retries", "device", "specimen",
             "fixed", "grid", "space", "bayes", "plot"}

Log = Callable[[str], None]


class SweepConfigError(FusetomoError, ValueError):
    """A sweep file or value that cannot be used; the message names it."""


class SweepFailedError(FusetomoError, RuntimeError):
    """Tasks that still failed after their retries (they are in the results table)."""


class TaskError(FusetomoError, RuntimeError):
    """A task that ran but produced an unusable result (e.g. a non-finite NRMSE)."""


# -- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """A searched hyperparameter of Bayesian search: a range or a list of categories."""

    name: str
    low: float | None = None
    high: float | None = None
    prior: Literal["uniform", "log-uniform"] = "uniform"
    integer: bool = False
    categories: tuple[Any, ...] | None = None

    def to_skopt(self) -> Any:
        from skopt.space import Categorical, Integer, Real

        if self.categories is not None:
            return Categorical(list(self.categories), name=self.name)
        if self.integer:
            return Integer(int(self.low), int(self.high), prior=self.prior, name=self.name)
        return Real(float(self.low), float(self.high), prior=self.prior, name=self.name)


@dataclass(frozen=True)
class SpecimenConfig:
    """What is reconstructed: a simulated specimen (built-in name or specimen file) at
    `size`, or user-given series files that carry their truth (`/truth`)."""

    name: str = "nanocubes"
    size: int = 32
    series: tuple[str, ...] = ()


@dataclass(frozen=True)
class BayesConfig:
    n_calls: int = 16
    n_initial_points: int = 5
    parallel: int = 2
    acq_func: str = "gp_hedge"
    random_state: int = 0


@dataclass(frozen=True)
class SweepConfig:
    name: str
    method: Literal["grid", "bayes"] = "grid"
    iterations: int = 60
    seeds: tuple[int, ...] = (0,)
    retries: int = 2
    device: str = "auto"
    specimen: SpecimenConfig = field(default_factory=SpecimenConfig)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    space: Mapping[str, Any] = field(default_factory=dict)  # tuples (grid) or Dimensions
    bayes: BayesConfig = field(default_factory=BayesConfig)
    plot: tuple[str, str] | None = None
    source: str = ""  # the TOML text, kept with the results

    @property
    def replicates(self) -> list[tuple[int, str]]:
        """(replicate index, what it is): seeds of a simulation, or the series files."""
        if self.specimen.series:
            return list(enumerate(self.specimen.series))
        return [(int(s), f"{self.specimen.name}:{self.specimen.size}:seed{s}")
                for s in self.seeds]

    @property
    def varying(self) -> list[str]:
        return [*self.grid, *self.space]

    @property
    def parameter_columns(self) -> list[str]:
        return sorted({*self.fixed, *self.grid, *self.space})

    def cells(self) -> list[dict[str, Any]]:
        """The Cartesian product of the grid: one dict per map cell."""
        names = list(self.grid)
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(self.grid[n] for n in names))]


def _check_name(name: str, table: str) -> None:
    if name not in PARAMETER_NAMES:
        raise SweepConfigError(
            f"[{table}] {name!r} is not a parameter: use a FusionParams field, one of "
            f"{sorted(ACQUISITION_NAMES)} or one of {sorted(SAMPLING_NAMES)}")


def _values(name: str, v: Any, table: str) -> tuple[Any, ...]:
    if not isinstance(v, list) or not v:
        raise SweepConfigError(f"[{table}] {name} must be a non-empty list, got {v!r}")
    if len({json.dumps(x) for x in v}) != len(v):
        raise SweepConfigError(f"[{table}] {name} has duplicate values: {v}")
    return tuple(v)


def _dimension(name: str, v: Any) -> Dimension:
    if isinstance(v, list):
        return Dimension(name, categories=_values(name, v, "space"))
    if not isinstance(v, dict) or "low" not in v or "high" not in v:
        raise SweepConfigError(f"[space] {name} for bayes must be {{low = .., high = ..}} "
                               f"or a list of categories, got {v!r}")
    unknown = set(v) - {"low", "high", "prior", "integer"}
    if unknown:
        raise SweepConfigError(f"[space] {name}: unknown keys {sorted(unknown)}")
    low, high = v["low"], v["high"]
    if not (isinstance(low, int | float) and isinstance(high, int | float) and low < high):
        raise SweepConfigError(f"[space] {name}: need numbers low < high, got {low}, {high}")
    prior = v.get("prior", "uniform")
    if prior not in ("uniform", "log-uniform"):
        raise SweepConfigError(f"[space] {name}: prior must be 'uniform' or 'log-uniform', "
                               f"got {prior!r}")
    if prior == "log-uniform" and low <= 0:
        raise SweepConfigError(f"[space] {name}: a log-uniform range needs low > 0, got {low}")
    return Dimension(name, float(low), float(high), prior, bool(v.get("integer", False)))


def _positive(name: str, v: Any, lowest: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lowest:
        raise SweepConfigError(f"{name} must be a whole number >= {lowest}, got {v!r}")
    return v


def parse_config(text: str, *, base: Path | None = None) -> SweepConfig:
    """Read a sweep from TOML text (relative file names resolve against `base`)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SweepConfigError(f"not valid TOML: {e}") from None
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise SweepConfigError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SweepConfigError(f"name must be a non-empty string, got {name!r}")
    method = raw.get("method", "grid")
    if method not in ("grid", "bayes"):
        raise SweepConfigError(f"method must be 'grid' or 'bayes', got {method!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepConfigError(f"seeds must be a non-empty list of whole numbers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepConfigError(f"duplicate seeds in {seeds}")
    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "gpu"):
        raise SweepConfigError(f"device must be auto, cpu or gpu, got {device!r}")

    sp = raw.get("specimen", {})
    if not isinstance(sp, dict) or set(sp) - {"name", "size", "series"}:
        raise SweepConfigError(f"[specimen] takes name, size and series, got {sp!r}")
    series = sp.get("series", [])
    if not isinstance(series, list) or not all(isinstance(s, str) for s in series):
        raise SweepConfigError(f"[specimen] series must be a list of file names, got {series!r}")
    if base is not None:
        series = [str((base / s).resolve()) if not Path(s).is_absolute() else s
                  for s in series]
    sname = str(sp.get("name", "nanocubes"))
    if base is not None and sname.endswith((".h5", ".hdf5")) and not Path(sname).is_absolute():
        sname = str((base / sname).resolve())
    specimen = SpecimenConfig(sname, _positive("[specimen] size", sp.get("size", 32), 8),
                              tuple(series))

    tables: dict[str, dict[str, Any]] = {}
    for t in ("fixed", "grid", "space"):
        tab = raw.get(t, {})
        if not isinstance(tab, dict):
            raise SweepConfigError(f"[{t}] must be a table, got {tab!r}")
        for k in tab:
            _check_name(k, t)
        tables[t] = tab
    seen: dict[str, str] = {}
    for t, tab in tables.items():
        for k in tab:
            if k in seen:
                raise SweepConfigError(f"{k} appears in both [{seen[k]}] and [{t}]")
            seen[k] = t
    grid = {k: _values(k, v, "grid") for k, v in tables["grid"].items()}
    if method == "grid":
        space: dict[str, Any] = {k: _values(k, v, "space") for k, v in tables["space"].items()}
    else:
        if not tables["space"]:
            raise SweepConfigError("method 'bayes' needs a [space] of hyperparameter ranges")
        space = {k: _dimension(k, v) for k, v in tables["space"].items()}
    if series:
        acq = sorted((set(grid) | set(space) | set(tables["fixed"]))
                     & (ACQUISITION_NAMES | SAMPLING_NAMES))
        if acq:
            raise SweepConfigError(f"acquisition/sampling parameters {acq} need a simulated "
                                   "specimen, not [specimen] series files")

    b = raw.get("bayes", {})
    if not isinstance(b, dict) or set(b) - {f.name for f in fields(BayesConfig)}:
        raise SweepConfigError(f"[bayes] takes {[f.name for f in fields(BayesConfig)]}, "
                               f"got {b!r}")
    bayes = BayesConfig(
        n_calls=_positive("[bayes] n_calls", b.get("n_calls", 16)),
        n_initial_points=_positive("[bayes] n_initial_points", b.get("n_initial_points", 5)),
        parallel=_positive("[bayes] parallel", b.get("parallel", 2)),
        acq_func=str(b.get("acq_func", "gp_hedge")),
        random_state=int(b.get("random_state", 0)))

    plot = raw.get("plot")
    plot_axes = None
    if plot is not None:
        if not isinstance(plot, dict) or set(plot) != {"x", "y"}:
            raise SweepConfigError(f"[plot] needs x and y, got {plot!r}")
        for ax in (plot["x"], plot["y"]):
            if ax not in grid and ax not in space:
                raise SweepConfigError(f"[plot] axis {ax!r} is not a swept parameter")
        plot_axes = (str(plot["x"]), str(plot["y"]))

    cfg = SweepConfig(
        name=name, method=method,
        iterations=_positive("iterations", raw.get("iterations", 60)),
        seeds=tuple(seeds), retries=_positive("retries", raw.get("retries", 2), 0),
        device=device, specimen=specimen, fixed=dict(tables["fixed"]), grid=grid,
        space=space, bayes=bayes, plot=plot_axes, source=text)
    # Every combination must make valid parameter objects: fail here, not on a worker.
    for cell in cfg.cells()[:1] or [{}]:
        sample = {**cfg.fixed, **cell}
        for k, v in cfg.space.items():
            sample[k] = v[0] if isinstance(v, tuple) else (
                v.categories[0] if v.categories else v.low)
        try:
            build_parameters(sample)
        except ValueError as e:
            raise SweepConfigError(f"invalid parameters {sample}: {e}") from None
    return cfg


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SweepConfigError(f"{path}: cannot read the sweep file ({e})") from None
    try:
        return parse_config(text, base=path.resolve().parent)
    except SweepConfigError as e:
        raise SweepConfigError(f"{path}: {e}") from None


@dataclass(frozen=True)
class Built:
    """Parameter objects of one task (acquisition/scheme are None for series files)."""

    fusion: dict[str, Any]
    acquisition: Any
    scheme: Any


def build_parameters(params: Mapping[str, Any]) -> Built:
    """Split a flat parameter dict into FusionParams keywords, AcquisitionParams and
    TiltScheme (ValueError naming the problem)."""
    from fusetomo.simulators.forward import AcquisitionParams, TiltScheme

    fusion = {k: v for k, v in params.items() if k in FUSION_NAMES}
    FusionParams(**fusion)  # validates
    acq_kw: dict[str, Any] = {}
    if "acq_gamma" in params:
        acq_kw["gamma"] = float(params["acq_gamma"])
    for k in ("haadf_snr", "background_fraction"):
        if k in params:
            acq_kw[k] = float(params[k])
    dose = float(params.get("dose", 1.0))
    if dose <= 0:
        raise ValueError(f"dose factor must be > 0, got {dose}")
    if "chem_dose" in params:
        acq_kw.update(chem_dose=float(params["chem_dose"]) * dose, chem_snr=None)
    else:
        # Poisson-limited: SNR grows as the square root of the dose.
        acq_kw["chem_snr"] = float(params.get("chem_snr", 2.5)) * math.sqrt(dose)
    acq = AcquisitionParams(**acq_kw)
    t = float(params.get("tilt_max", 70.0))
    if not 0 < t <= 90:
        raise ValueError(f"tilt_max must lie in (0, 90], got {t}")
    sch: dict[str, Any] = {"tilt_range": (-t, t)}
    for k in ("haadf_step", "chem_step"):
        if k in params:
            sch[k] = float(params[k])
    for k, key in (("n_haadf_tilts", "haadf_angles"), ("n_chem_tilts", "chem_angles")):
        if k in params:
            n = int(params[k])
            if n < 1:
                raise ValueError(f"{k} must be >= 1, got {n}")
            sch[key] = tuple(np.linspace(-t, t, n).tolist()) if n > 1 else (0.0,)
    return Built(fusion, acq, TiltScheme(**sch))
