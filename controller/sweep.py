"""Parameter sweeps of the fused reconstruction as tasks on Dask (`fusetomo sweep`).

A sweep is a TOML file (`bench/sweeps/*.toml`; the format is in docs/scaling.md):

    name = "atlas-32"
    method = "grid"                 # grid | bayes
    iterations = 60
    seeds = [0, 1]                  # replicates: specimen and noise seed
    retries = 2                     # a failed task is retried this many times

    [specimen]                      # built-in name or a specimen file, or series files
    name = "nanocubes"
    size = 32

    [fixed]                         # parameters held fixed
    chem_snr = 2.5
    [grid]                          # conditions: one map cell per combination
    chem_step = [10, 15, 30]
    [space]                         # hyperparameters: lists (grid) or ranges (bayes)
    lambda_tv = [0.002, 0.005, 0.01]
    [bayes]                         # only for method = "bayes"
    n_calls = 16

Every parameter is one of FusionParams' fields (the solver's gamma and weights), an
acquisition setting (`chem_snr`, `chem_dose`, `dose` (a factor on the chemical dose),
`haadf_snr`, `background_fraction`, `acq_gamma`: the exponent the simulation uses) or a
sampling setting (`tilt_max`, `haadf_step`, `chem_step`, `n_haadf_tilts`, `n_chem_tilts`).
The objective is <NRMSE> (fusetomo.solver.metrics) against the truth, averaged over the
replicates of a point.

Grid search submits every (point, replicate) task at once; Bayesian search runs one
scikit-optimize `Optimizer` per map cell with asynchronous ask/tell: whenever a point's
replicates are all back it is told, and a new point is asked with the points still in
flight told to a copy of the optimiser at the best value so far (a constant liar), so
that workers never wait for a batch.

Every finished task is appended (flushed and fsynced) to `OUT/results.csv`, which is the
sweep's journal: a sweep started again on the same folder skips the tasks found there with
status `ok` (a task is named by a hash of everything that decides its result). A task that
raises is logged with status `error` and resubmitted up to `retries` times; one that still
fails is recorded as `failed`, reported, and makes the sweep end with SweepFailedError.
At the end `OUT/results.h5` holds the same table plus the per-point summary, and
`OUT/points.csv` and `OUT/nrmse_map.png` (the <NRMSE> map of the 3D paper's Fig. 4a: the
best point of each cell) are written.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import math
import os
import socket
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

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


class SweepConfigError(ValueError):
    """A sweep file or value that cannot be used; the message names it."""


class SweepFailedError(RuntimeError):
    """Tasks that still failed after their retries (they are in the results table)."""


class TaskError(RuntimeError):
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


# -- one task ---------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Task:
    """One reconstruction: a point of the sweep on one replicate."""

    key: str
    cell: int
    point: str
    replicate: int
    source: str
    params: Mapping[str, Any]
    specimen: SpecimenConfig
    iterations: int
    device: str


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def point_key(params: Mapping[str, Any]) -> str:
    """A point's name: its swept values, stable across runs."""
    return ";".join(f"{k}={params[k]!r}" for k in sorted(params))


def make_task(cfg: SweepConfig, cell: int, values: Mapping[str, Any], replicate: int,
              source: str) -> Task:
    params = {**cfg.fixed, **values}
    pkey = point_key({k: params[k] for k in cfg.varying if k in params})
    spec = {"params": params, "specimen": [cfg.specimen.name, cfg.specimen.size],
            "source": source, "iterations": cfg.iterations, "version": VERSION}
    key = hashlib.sha1(_canonical(spec).encode()).hexdigest()[:16]
    return Task(key, cell, pkey, replicate, source, params, cfg.specimen, cfg.iterations,
                cfg.device)


def _load(task: Task) -> tuple[Any, dict[str, np.ndarray]]:
    from fusetomo.simulators.forward import simulate

    if task.specimen.series:
        from fusetomo.adapters.seriesfile import read_series, read_truth

        path = task.specimen.series[task.replicate]
        truth = read_truth(path)
        if not truth:
            raise TaskError(f"{path}: the series has no /truth to score against")
        return read_series(path), truth
    b = build_parameters(task.params)
    sim = simulate(task.specimen.name, task.specimen.size, b.scheme, b.acquisition,
                   seed=task.replicate)
    return sim.series, sim.truth


def evaluate(task: Task) -> dict[str, Any]:
    """Run one reconstruction and score it: the function the workers run."""
    from fusetomo.controller.series_model import model_kwargs
    from fusetomo.solver.fusion import FusedSolver
    from fusetomo.solver.metrics import nrmse

    t0 = time.perf_counter()
    series, truth = _load(task)
    fusion = build_parameters(task.params).fusion
    if "gamma" not in fusion and series.gamma is not None:
        fusion["gamma"] = series.gamma  # as `fusetomo reconstruct` does; a swept one wins
    els = series.elements
    solver = FusedSolver(series.shape[1], series.shape[0], els, [series.Z[e] for e in els],
                         FusionParams(**fusion), device=task.device, **model_kwargs(series))
    solver.add_haadf(series.haadf_angles, series.haadf)
    solver.add_chem(series.common_chem_angles, series.chem)
    solver.run(task.iterations)
    vols = solver.volumes()
    per = {e: nrmse(truth[e], vols[e]) for e in els if e in truth}
    if not per or not all(math.isfinite(v) for v in per.values()):
        raise TaskError(f"task {task.key} ({task.point}, {task.source}): NRMSE {per}")
    return {"nrmse_mean": float(np.mean(list(per.values()))),
            **{f"nrmse_{e}": float(v) for e, v in per.items()},
            "elapsed_s": time.perf_counter() - t0,
            "worker": f"{socket.gethostname()}:{os.getpid()}"}


# -- the results table (journal) ----------------------------------------------------------------
def elements_of(cfg: SweepConfig) -> list[str]:
    """Element symbols of the sweep's specimen (for the table's columns)."""
    if cfg.specimen.series:
        from fusetomo.adapters.seriesfile import read_series

        return list(read_series(cfg.specimen.series[0]).elements)
    from fusetomo.simulators.specimens import BUILTIN, load_specimen

    if cfg.specimen.name in BUILTIN:
        return list(BUILTIN[cfg.specimen.name](cfg.specimen.size, 0).elements)
    return list(load_specimen(cfg.specimen.name).elements)


class Journal:
    """`results.csv`: one row per finished attempt, appended, flushed and fsynced."""

    BASE = ("task_key", "cell", "point", "replicate", "source", "status", "attempt",
            "nrmse_mean")
    TAIL = ("elapsed_s", "worker", "error")

    def __init__(self, path: Path, elements: Sequence[str], params: Sequence[str]) -> None:
        self.path = path
        self.columns = [*self.BASE, *(f"nrmse_{e}" for e in elements), *params, *self.TAIL]
        if path.exists() and path.stat().st_size > 0:
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            if header != self.columns:
                raise SweepConfigError(
                    f"{path}: its columns {header} differ from this sweep's {self.columns}; "
                    "the folder holds another sweep: use a new --out")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def rows(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def append(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else row.get(c)
                                    for c in self.columns])
            f.flush()
            os.fsync(f.fileno())


def _ok_rows(journal: Journal) -> dict[str, dict[str, str]]:
    return {r["task_key"]: r for r in journal.rows() if r["status"] == "ok"}


# -- running ------------------------------------------------------------------------------------
@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None) -> Iterator[Any]:
    """A Dask client: to `scheduler` when given; else a local cluster, with one worker per
    GPU (dask-cuda) when GPUs and dask-cuda are there, otherwise `n_workers` processes of
    one thread each (default: the CPU count). Local clusters bind to 127.0.0.1."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    cluster: Any = None
    from fusetomo.solver.backend import gpu_available

    if n_workers is None and gpu_available():
        with contextlib.suppress(ImportError):  # without dask-cuda: CPU workers below
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(threads_per_worker=1, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0")
    if cluster is None:
        # One core per worker process: its CPU kernels run one thread each (else every
        # worker would start a thread per core, solver/backend.py).
        cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1,
                               threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0",
                               env={"FUSETOMO_THREADS": "1"})
    with cluster, Client(cluster) as client:
        yield client


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    points: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    submitted: int
    skipped: int


class _Runner:
    """Submits tasks, retries failures, journals every outcome."""

    def __init__(self, client: Any, journal: Journal, retries: int, log: Log) -> None:
        from distributed import as_completed

        self.client, self.journal, self.retries, self.log = client, journal, retries, log
        self.ac = as_completed([], with_results=False)
        self.futures: dict[Any, tuple[Task, int]] = {}
        self.failed: list[dict[str, Any]] = []
        self.submitted = 0

    def submit(self, task: Task, attempt: int = 1) -> None:
        fut = self.client.submit(evaluate, task, key=f"fusetomo-{task.key}-a{attempt}",
                                 pure=False)
        self.futures[fut] = (task, attempt)
        self.ac.add(fut)
        self.submitted += 1

    def _row(self, task: Task, attempt: int, status: str, **extra: Any) -> dict[str, Any]:
        return {"task_key": task.key, "cell": task.cell, "point": task.point,
                "replicate": task.replicate, "source": task.source, "status": status,
                "attempt": attempt, **task.params, **extra}

    def results(self) -> Iterator[tuple[Task, dict[str, Any]]]:
        """Finished tasks with their journalled row, as they complete; failures are
        journalled and retried, and ones out of retries are kept in `failed`."""
        for fut in self.ac:
            task, attempt = self.futures.pop(fut)
            if fut.status == "finished":
                row = self._row(task, attempt, "ok", **fut.result())
                self.journal.append(row)
                yield task, row
                continue
            try:
                err: BaseException = fut.exception()
            except BaseException as e:  # a cancelled future raises instead of returning
                err = e
            text = f"{type(err).__name__}: {err}"
            final = attempt > self.retries
            row = self._row(task, attempt, "failed" if final else "error", error=text)
            self.journal.append(row)
            if final:
                self.log(f"task {task.key} ({task.point}, {task.source}) FAILED after "
                         f"{attempt} attempts: {text}")
                self.failed.append(row)
            else:
                self.log(f"task {task.key} ({task.point}, {task.source}) failed on attempt "
                         f"{attempt}: {text}; retrying")
                self.submit(task, attempt + 1)


def _grid_points(cfg: SweepConfig, cell_values: Mapping[str, Any]) -> list[dict[str, Any]]:
    names = list(cfg.space)
    combos = itertools.product(*(cfg.space[n] for n in names))
    return [{**cell_values, **dict(zip(names, c, strict=True))} for c in combos]


def _as_float(v: str) -> Any:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


class _Bayes:
    """Asynchronous ask/tell for one map cell (skopt Optimizer, GP with Matern kernel and
    the GP-hedge acquisition, as in the 3D paper)."""

    def __init__(self, cfg: SweepConfig, cell: int, cell_values: Mapping[str, Any]) -> None:
        from skopt import Optimizer

        self.cfg, self.cell, self.cell_values = cfg, cell, dict(cell_values)
        self.names = list(cfg.space)
        dims = [cfg.space[n].to_skopt() for n in self.names]
        b = cfg.bayes
        self.opt = Optimizer(dims, base_estimator="GP", acq_func=b.acq_func,
                             n_initial_points=b.n_initial_points,
                             random_state=b.random_state + cell)
        self.asked = 0
        self.pending: dict[str, list[Any]] = {}   # point key -> x
        self.results: dict[str, dict[int, float]] = {}

    def values(self, x: Sequence[Any]) -> dict[str, Any]:
        vals = {n: (v.item() if hasattr(v, "item") else v)
                for n, v in zip(self.names, x, strict=True)}
        return {**self.cell_values, **vals}

    def tell(self, x: list[Any], y: float) -> None:
        self.opt.tell(x, y)

    def ask(self) -> list[Any] | None:
        if self.asked >= self.cfg.bayes.n_calls:
            return None
        self.asked += 1
        if not self.pending:
            return list(self.opt.ask())
        # Constant liar: the points in flight are told at the best value so far, on a copy,
        # so that the next point is not proposed on top of them.
        tmp = self.opt.copy(random_state=self.cfg.bayes.random_state + 7919 * self.asked)
        lie = min(self.opt.yi) if self.opt.yi else 0.0
        for xp in self.pending.values():
            tmp.tell(xp, lie)
        return list(tmp.ask())


def run_sweep(cfg: SweepConfig, out: str | Path, client: Any, *,
              log: Log = lambda s: print(s, file=sys.stderr)) -> SweepResult:
    """Run (or resume) the sweep into folder `out` on a Dask `client`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.toml").write_text(cfg.source)
    journal = Journal(out / "results.csv", elements_of(cfg), cfg.parameter_columns)
    done = _ok_rows(journal)
    runner = _Runner(client, journal, cfg.retries, log)
    reps = cfg.replicates
    skipped = 0
    if cfg.method == "grid":
        for ci, cell in enumerate(cfg.cells()):
            for values in _grid_points(cfg, cell):
                for r, src in reps:
                    task = make_task(cfg, ci, values, r, src)
                    if task.key in done:
                        skipped += 1
                    else:
                        runner.submit(task)
        log(f"sweep {cfg.name}: {runner.submitted} tasks submitted, {skipped} already done")
        for task, row in runner.results():
            log(f"  {task.point} [{task.source}]: <NRMSE> {float(row['nrmse_mean']):.4f}")
    else:
        skipped = _run_bayes(cfg, runner, done, reps, log)
    table = journal.rows()
    points = summarize(table, cfg)
    write_tables(out, cfg, journal.columns, table, points)
    try:
        plot_results(out / "nrmse_map.png", cfg, points)
    except Exception as e:  # a plot must not cost the results; say why it is missing
        log(f"no plot written: {type(e).__name__}: {e}")
    result = SweepResult(table, points, runner.failed, runner.submitted, skipped)
    if runner.failed:
        raise SweepFailedError(
            f"{len(runner.failed)} task(s) failed after {cfg.retries} retries: "
            + "; ".join(f"{r['point']} [{r['source']}]: {r['error']}" for r in runner.failed)
            + f" (see {out / 'results.csv'}; run the sweep again to retry them)")
    return result


def _run_bayes(cfg: SweepConfig, runner: _Runner, done: Mapping[str, dict[str, str]],
               reps: list[tuple[int, str]], log: Log) -> int:
    skipped = 0
    optimizers: list[_Bayes] = []
    waiting: dict[tuple[int, str], set[int]] = {}
    previous: dict[int, dict[str, dict[str, Any]]] = {}
    for row in done.values():  # points already evaluated, per cell, in journal order
        vals = {k: _as_float(row[k]) for k in cfg.space}
        previous.setdefault(int(row["cell"]), {}).setdefault(row["point"], vals)

    def submit_point(b: _Bayes, x: list[Any]) -> None:
        nonlocal skipped
        values = b.values(x)
        key = point_key({k: values[k] for k in cfg.varying})
        b.pending[key] = x
        b.results.setdefault(key, {})
        waiting[(b.cell, key)] = set()
        for r, src in reps:
            task = make_task(cfg, b.cell, values, r, src)
            if task.key in done:
                b.results[key][r] = float(done[task.key]["nrmse_mean"])
                skipped += 1
            else:
                waiting[(b.cell, key)].add(r)
                runner.submit(task)

    def finish_point(b: _Bayes, key: str) -> None:
        x = b.pending.pop(key)
        waiting.pop((b.cell, key), None)
        y = float(np.mean(list(b.results[key].values())))
        b.tell(x, y)
        log(f"  cell {b.cell} point {len(b.opt.yi)}: {key} -> <NRMSE> {y:.4f}")

    for ci, cell in enumerate(cfg.cells()):
        b = _Bayes(cfg, ci, cell)
        optimizers.append(b)
        for vals in previous.get(ci, {}).values():  # resume: replay the journal
            b.asked += 1
            submit_point(b, [vals[n] for n in b.names])
        for key in [k for k, w in waiting.items() if k[0] == ci and not w]:
            finish_point(b, key[1])
        while len(b.pending) < cfg.bayes.parallel:
            x = b.ask()
            if x is None:
                break
            submit_point(b, x)
            for key in [k for k, w in waiting.items() if k[0] == ci and not w]:
                finish_point(b, key[1])
    log(f"sweep {cfg.name}: bayes over {len(optimizers)} cell(s), {cfg.bayes.n_calls} "
        f"points each, {runner.submitted} tasks in flight, {skipped} results reused")
    for task, row in runner.results():
        b = optimizers[task.cell]
        key = task.point
        b.results[key][task.replicate] = float(row["nrmse_mean"])
        waiting[(task.cell, key)].discard(task.replicate)
        if waiting[(task.cell, key)]:
            continue
        finish_point(b, key)
        while len(b.pending) < cfg.bayes.parallel:
            x = b.ask()
            if x is None:
                break
            submit_point(b, x)
            for k in [k for k, w in waiting.items() if k[0] == b.cell and not w]:
                finish_point(b, k[1])
    return skipped


# -- summaries, HDF5 and plots --------------------------------------------------------------------
def summarize(rows: Sequence[Mapping[str, str]], cfg: SweepConfig) -> list[dict[str, Any]]:
    """One entry per point with every replicate ok: mean and std of <NRMSE>."""
    by: dict[tuple[int, str], dict[str, Any]] = {}
    n_reps = len(cfg.replicates)
    for r in rows:
        if r["status"] != "ok":
            continue
        k = (int(r["cell"]), r["point"])
        e = by.setdefault(k, {"cell": k[0], "point": k[1], "values": {}, **{
            p: _as_float(r[p]) for p in cfg.parameter_columns}})
        e["values"][int(r["replicate"])] = float(r["nrmse_mean"])
    out = []
    for e in by.values():
        v = np.array(list(e.pop("values").values()))
        if v.size < n_reps:
            continue
        out.append({**e, "nrmse_mean": float(v.mean()), "nrmse_std": float(v.std()),
                    "replicates": int(v.size)})
    return sorted(out, key=lambda e: (e["cell"], e["nrmse_mean"]))


def _column(values: Sequence[Any]) -> np.ndarray:
    try:
        return np.asarray([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray([str(v) for v in values], dtype=object)


def write_tables(out: Path, cfg: SweepConfig, columns: Sequence[str],
                 rows: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]]) -> None:
    """results.h5 (/results: every attempt, /points: per-point summary, one dataset per
    column) and points.csv."""
    import h5py

    from fusetomo.adapters.seriesfile import atomic_h5

    pcols = ["cell", "point", *cfg.parameter_columns, "nrmse_mean", "nrmse_std",
             "replicates"]
    with (out / "points.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(pcols)
        for p in points:
            w.writerow([p[c] for c in pcols])
    str_t = h5py.string_dtype()
    with atomic_h5(out / "results.h5") as h:
        h.attrs["format"] = FORMAT
        h.attrs["version"] = VERSION
        h.attrs["name"] = cfg.name
        h.attrs["method"] = cfg.method
        h.attrs["config"] = cfg.source
        for gname, table, cols in (("results", rows, columns), ("points", points, pcols)):
            g = h.create_group(gname)
            for c in cols:
                col = _column([r.get(c, "") for r in table])
                g.create_dataset(c, data=col.astype(str_t) if col.dtype == object else col)


def plot_results(path: Path, cfg: SweepConfig, points: Sequence[Mapping[str, Any]]) -> None:
    """<NRMSE> map over two swept parameters (best over the others at each pixel, like
    the 3D paper's Fig. 4a), a line for one parameter, a scatter for continuous values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no complete point to plot")
    axes = list(cfg.plot) if cfg.plot else [n for n in cfg.varying
                                            if len({p[n] for p in points}) > 1][:2]
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    if len(axes) == 2:
        x, y = axes
        xs, ys = sorted({p[x] for p in points}), sorted({p[y] for p in points})
        if len(xs) * len(ys) <= 400:
            best = np.full((len(ys), len(xs)), np.nan)
            for p in points:
                i, j = ys.index(p[y]), xs.index(p[x])
                best[i, j] = np.nanmin([best[i, j], p["nrmse_mean"]])
            im = ax.imshow(best, origin="lower", cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v)
                                           for v in xs])
            ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v)
                                           for v in ys])
            for i in range(len(ys)):
                for j in range(len(xs)):
                    if np.isfinite(best[i, j]):
                        ax.text(j, i, f"{best[i, j]:.3f}", ha="center", va="center",
                                fontsize=7, color="w")
        else:
            im = ax.scatter([p[x] for p in points], [p[y] for p in points],
                            c=[p["nrmse_mean"] for p in points], cmap="viridis")
        fig.colorbar(im, ax=ax, label="<NRMSE> (best over other parameters)")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    elif len(axes) == 1:
        x = axes[0]
        xs = sorted({p[x] for p in points})
        ax.plot(xs, [min(p["nrmse_mean"] for p in points if p[x] == v) for v in xs], "o-")
        ax.set_xlabel(x)
        ax.set_ylabel("<NRMSE> (best over other parameters)")
    else:
        ax.bar(range(len(points)), [p["nrmse_mean"] for p in points])
        ax.set_ylabel("<NRMSE>")
    ax.set_title(f"{cfg.name}: {cfg.specimen.name} {cfg.specimen.size}^3, "
                 f"{len(cfg.replicates)} replicate(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
