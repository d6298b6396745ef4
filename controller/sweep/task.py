"""One task of a sweep: the parameters it sets, and its evaluation."""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusetomo.controller.sweep.config import (
    VERSION,
    SpecimenConfig,
    SweepConfig,
    TaskError,
    build_parameters,
)
from fusetomo.solver.fusion import FusionParams


# -- one task ---------------------------------------------------------------------------------
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
