"""The fused solver's model of one tilt series: what the series states (gamma, backgrounds,
whether its maps are raw counts or background-subtracted) is used as given, and what it
leaves out is estimated by the solver. One place, so that every command builds the same
model from the same series."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fusetomo.adapters.series import TiltSeries
from fusetomo.solver.fusion import FusedSolver, FusionParams

__all__ = ["fusion_params_for", "model_kwargs", "solver_for_series"]


def fusion_params_for(series: TiltSeries, params: FusionParams | None = None) -> FusionParams:
    """`params` with the series' gamma when it states one; gamma None is estimated by the
    solver."""
    p = params or FusionParams()
    if series.gamma is not None:
        return replace(p, gamma=float(series.gamma))
    return p


def model_kwargs(series: TiltSeries) -> dict[str, Any]:
    """FusedSolver's data-model arguments for `series`: its stated backgrounds (None where
    not stated), the kind of its maps and the level subtracted from them."""
    return {"background": series.stated_background(), "chem_kind": series.chem_kind,
            "subtracted": series.stated_subtracted()}


def solver_for_series(series: TiltSeries, params: FusionParams | None = None, *,
                      device: Any = "auto", crop_px: int = 0) -> FusedSolver:
    """An empty FusedSolver for `series` (its size less a frame `crop_px` wide, its elements,
    Z, stated backgrounds and map kind); the caller adds the tilts."""
    ns, nd = series.shape
    els = series.elements
    return FusedSolver(nd - 2 * crop_px, ns - 2 * crop_px, els, [series.Z[e] for e in els],
                       fusion_params_for(series, params), device=device,
                       **model_kwargs(series))
