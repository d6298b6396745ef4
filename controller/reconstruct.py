"""One call from a tilt series to element volumes, by the fused solver or a baseline.

Methods:
    fused         FusedSolver (science.md §2), with a progress bar of the cost terms
    conventional  Poisson ML-EM per element (the conventional chemical tomography)
    sirt          chemical SIRT per element; on a HAADF-only series, HAADF SIRT
    haadf         HAADF-only SIRT (one volume, named 'HAADF'; each image's offset, its
                  vacuum level, subtracted first: solver.nuisance.haadf_offsets)

A HAADF-only series (no spectrum image) reconstructs by `haadf` or `sirt`; the other
methods need element maps and say so. `align` with `haadf` or `sirt` aligns and resamples
the series first (controller/stack_align.py); with `fused` it keeps the shifts in the model
(controller/offline_align.py).
    hebt          HAADF-EELS bimodal tomography
    chemtv        chemical maps with TV regularisation, no HAADF
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sigpy as sp
from tqdm.auto import tqdm

from fusetomo.adapters.reconfile import write_recon
from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import total_dose
from fusetomo.controller.offline_align import (
    OfflineAlignParams,
    align_for_fusion,
    aligned_solver,
)
from fusetomo.controller.series_model import fusion_params_for, solver_for_series
from fusetomo.core.errors import FusetomoError
from fusetomo.solver.backend import resolve_device
from fusetomo.solver.fusion import (
    GAMMA_START,
    CostHistory,
    FusedSolver,
    FusionParams,
)
from fusetomo.solver.nuisance import haadf_offsets
from fusetomo.solver.stopping import StopRule

METHODS = ("fused", "conventional", "sirt", "haadf", "hebt", "chemtv")
# Standard errors: the Laplace approximation ('cheap', 'accurate', solver/uncertainty.py) or
# the data re-solved with added noise, with a bias estimate ('resample', solver/resample.py).
UNCERTAINTY = ("cheap", "accurate", "resample")
HAADF_ONLY_METHODS = ("haadf", "sirt")  # what a series without spectrum images allows


class MethodError(FusetomoError, ValueError):
    """An unknown reconstruction method, or one whose implementation is not installed."""


@dataclass
class ReconResult:
    """Volumes (name -> float32 [n_slices, n_det, n_det]), cost history (empty for the
    baselines), every parameter of the run, and the wall time in seconds."""

    volumes: dict[str, np.ndarray]
    history: CostHistory = field(default_factory=CostHistory)
    params: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    std_error: dict[str, np.ndarray] | None = None
    warnings: tuple[str, ...] = ()
    bias: dict[str, np.ndarray] | None = None  # estimated per-voxel bias ('resample')

    def save(self, path: str | Path, *, source: str | Path | None = None,
             attrs: Mapping[str, Any] | None = None) -> Path:
        """Write the reconstruction file (controller/reconfile.py)."""
        root = {**self.params, "elapsed_s": float(self.elapsed),
                "source_file": None if source is None else str(source), **(attrs or {})}
        return write_recon(path, self.volumes, convergence=self.history, attrs=root,
                           std_error=self.std_error, bias=self.bias)


def _device_name(choice: str) -> str:
    return "cpu" if resolve_device(choice) == sp.cpu_device else "gpu"


def _maps(series: TiltSeries) -> np.ndarray:
    """[n_el, m, n_slices, n_det] in the series' element order."""
    return np.stack([series.chem[e] for e in series.elements])


def _fused(series: TiltSeries, iterations: int | None, device: str, params: FusionParams,
           progress: bool, align: OfflineAlignParams | None = None,
           stop: StopRule | None = None) -> tuple[FusedSolver, dict[str, Any]]:
    """The fused reconstruction: `iterations` fixed, or None for the stopping rule
    (solver/stopping.py)."""
    p = fusion_params_for(series, params)
    extra: dict[str, Any] = {}
    if align is not None:
        alignment = align_for_fusion(series, align, fusion_params=p,
                                     device=resolve_device(device))
        # A fresh solve with the final shifts, so the recorded iterations are all the
        # reconstruction's (the refinement's own iterations started from worse shifts).
        solver = aligned_solver(series, alignment.haadf_shifts, alignment.chem_shifts,
                                alignment.rotation_deg, p, resolve_device(device))
        extra = alignment.attrs()
    else:
        solver = solver_for_series(series, p, device=resolve_device(device))
        solver.add_haadf(series.haadf_angles, series.haadf)
        solver.add_chem(series.common_chem_angles, series.chem)
    solver.initialize()
    rule = stop or StopRule()
    with tqdm(total=iterations or rule.max_iterations, desc="fused", unit="it",
              disable=not progress, leave=False) as bar:

        def show(_k: int, c: dict[str, float]) -> None:
            change = solver.history.change[-1]
            bar.set_postfix(haadf=f"{c['haadf']:.4g}", chem=f"{c['chem']:.4g}",
                            tv=f"{c['tv']:.4g}", change=f"{change:.2g}", refresh=False)
            bar.update()

        if iterations is None:
            extra["stop_reason"] = solver.run_until(rule, show)
            extra["stop_tol"] = rule.tol
        else:
            solver.run(iterations, show)
    return solver, {**asdict(p), **extra}


def _baseline(name: str) -> Callable[..., np.ndarray]:
    try:
        from fusetomo.solver import baselines
    except ImportError as e:
        raise MethodError(f"method {name!r} needs fusetomo.solver.baselines ({e})") from None
    return getattr(baselines, name)


def _default_iterations(func: Callable[..., Any]) -> int:
    default = inspect.signature(func).parameters["iterations"].default
    return int(default)


def _run_baseline(series: TiltSeries, method: str, iterations: int | None, device: str,
                  params: FusionParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if series.haadf_only:  # only haadf and sirt get here: both are HAADF SIRT
        method = "haadf"
    # A background the series does not state: 0 for the classic baselines (what they
    # assume), estimated by chemtv (the fused solver's own model without HAADF).
    stated = series.stated_background()
    bg = np.array([b or 0.0 for b in stated], dtype=np.float64)
    Z = np.array([series.Z[e] for e in series.elements], dtype=np.float64)
    gamma = fusion_params_for(series, params).gamma or GAMMA_START
    ang = series.common_chem_angles
    maps = _maps(series) if method != "haadf" else None
    # method -> (baseline function, positional arguments, keyword arguments to record)
    calls: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {
        "conventional": ("chemical_mlem", (ang, maps), {}),
        "sirt": ("chemical_sirt", (ang, maps), {}),
        "haadf": ("haadf_sirt", (series.haadf_angles,
                                 series.haadf - haadf_offsets(series.haadf)[:, None, None]), {}),
        "hebt": ("hebt", (series.haadf_angles, series.haadf, ang, maps, Z), {"gamma": gamma}),
        "chemtv": ("chemical_tv", (ang, maps), {"lambda_tv": params.lambda_tv}),
    }
    fname, args, kwargs = calls[method]
    func = _baseline(fname)
    k = _default_iterations(func) if iterations is None else iterations
    if method == "chemtv":
        kwargs_all = {**kwargs, "background": stated}
    elif "background" in inspect.signature(func).parameters:
        kwargs_all = {**kwargs, "background": bg}
    else:
        kwargs_all = kwargs
    out = np.asarray(func(*args, iterations=k, device=device, **kwargs_all), dtype=np.float32)
    if method == "haadf":
        volumes = {"HAADF": out}
        kwargs = {**kwargs, "haadf_offset": "subtracted (vacuum level of each image)"}
    else:
        volumes = {e: out[i] for i, e in enumerate(series.elements)}
    return volumes, {"iterations": k, "baseline": fname, **kwargs}


def _aligned_then(series: TiltSeries, method: str, iterations: int | None, device: str,
                  params: FusionParams | None, progress: bool,
                  align: OfflineAlignParams) -> ReconResult:
    """`haadf` or `sirt` on the series aligned and resampled (controller/stack_align.py)."""
    from fusetomo.controller.stack_align import StackAlignParams, align_stack, aligned_series

    t0 = time.perf_counter()
    a = align_stack(series, StackAlignParams(align.rotation_deg, align.alignment))
    res = reconstruct(aligned_series(series, a), method, iterations, device, params,
                      progress)
    res.params.update({k: v for k, v in a.attrs().items()})
    res.elapsed = time.perf_counter() - t0
    return res


def reconstruct(
    series: TiltSeries,
    method: str = "fused",
    iterations: int | None = None,
    device: str = "auto",
    params: FusionParams | None = None,
    progress: bool = True,
    uncertainty: str | None = None,
    align: OfflineAlignParams | bool | None = None,
    stop: StopRule | None = None,
) -> ReconResult:
    """Reconstruct `series` by `method` (see METHODS). For 'fused', the series' gamma
    (when set) replaces params.gamma, and Z and background come from the series;
    `uncertainty` ('cheap' or 'accurate': solver/uncertainty.py; 'resample', also a bias
    estimate: solver/resample.py; fused only) adds per-voxel standard errors to the
    result; `align` (True or OfflineAlignParams) aligns the series first and records the
    shifts (fused: controller/offline_align.py; haadf, sirt:
    controller/stack_align.py). A HAADF-only series takes `haadf` or `sirt` only. `stop`:
    the fused iterations' stopping rule when `iterations` is None (default StopRule())."""
    if method not in METHODS:
        raise MethodError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if iterations is not None and iterations < 0:
        raise MethodError(f"iterations must be >= 0, got {iterations}")
    if uncertainty not in (None, *UNCERTAINTY):
        raise MethodError(f"uncertainty must be one of {', '.join(UNCERTAINTY)}, got "
                          f"{uncertainty!r}")
    if uncertainty is not None and method != "fused":
        raise MethodError(f"standard errors are computed for the fused method only, not "
                          f"{method!r}")
    if align is True:
        align = OfflineAlignParams()
    elif align is False:
        align = None
    if series.haadf_only and method not in HAADF_ONLY_METHODS:
        raise MethodError(f"method {method!r} needs at least one spectrum image (element "
                          f"maps); this series is HAADF-only: use --method haadf or sirt")
    if align is not None and method not in ("fused", *HAADF_ONLY_METHODS):
        raise MethodError(f"--align works with the fused method (shifts in the model) and "
                          f"with haadf and sirt (aligned, resampled images); method "
                          f"{method!r} has no aligned form")
    if align is not None and method != "fused":
        return _aligned_then(series, method, iterations, device, params, progress, align)
    dev = _device_name(device)
    info: dict[str, Any] = {
        "method": method, "device": dev, "haadf_tilts": int(series.haadf.shape[0]),
        "chem_tilts": int(series.common_chem_angles.size),
        "pixel_size_nm": series.pixel_size_nm,
        "dose_e_per_A2": total_dose(series.attrs, series.haadf.shape[0],
                                    series.common_chem_angles.size),
    }
    t0 = time.perf_counter()
    history = CostHistory()
    std_error = bias = None
    warnings: tuple[str, ...] = ()
    if method == "fused":
        solver, fparams = _fused(series, iterations, dev, params or FusionParams(), progress,
                                 align, stop)
        volumes, history = solver.volumes(), solver.history
        info.update(iterations=len(history.haadf), **fparams)
        info.update(solver.model_summary())
        fit = solver.fit_check()
        info.update(fit.as_attrs())
        warnings = fit.warnings
        if uncertainty == "resample":
            from fusetomo.solver.resample import ResampleParams, resample_errors

            rs = resample_errors(solver, ResampleParams(), progress=_replica_bar(progress))
            std_error, bias = rs.std, rs.bias
            info.update(uncertainty=uncertainty, uncertainty_replicas=rs.replicas)
        elif uncertainty is not None:
            from fusetomo.solver.uncertainty import UncertaintyParams, estimate_std_error

            std_error, _ = estimate_std_error(solver, UncertaintyParams(mode=uncertainty))
            info["uncertainty"] = uncertainty
    else:
        with tqdm(total=1, desc=method, disable=not progress, leave=False) as bar:
            volumes, extra = _run_baseline(series, method, iterations, dev,
                                           params or FusionParams())
            bar.update()
        info.update(extra)
    return ReconResult(volumes, history, info, time.perf_counter() - t0, std_error, warnings,
                       bias)


def _replica_bar(progress: bool) -> Callable[[int, int], None] | None:
    """A progress bar over the resampled reconstructions (None without progress)."""
    if not progress:
        return None
    bar = tqdm(desc="standard errors (resampled)", unit="reconstruction", leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update
