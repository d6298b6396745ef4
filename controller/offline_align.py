"""Offline alignment of a recorded tilt series before the fused reconstruction
(`fusetomo reconstruct SERIES.h5 --align`).

1. `solver.alignment.align_series` on the HAADF images: vacuum level, in-plane rotation,
   centre of mass, projection matching (shifts to ~0.2 px).
2. Each spectrum image's own drift relative to the HAADF image taken at its angle
   (`register_chem`); a spectrum image with no HAADF image at its angle takes the nearest
   HAADF image's shift and no drift of its own (named in `unpaired_chem_deg`).
3. `solver.joint_align.refine_jointly`: the images moved by whole pixels only, the fractions
   in the fused solver's projectors, refined against the fused model (shifts to ~0.02 px
   in bench/alignment.py).

The result holds the shifts (de-rotated frame, whole + fraction) for a fresh fused solve
and for the reconstruction file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusetomo.adapters.series import TiltSeries
from fusetomo.controller.series_model import solver_for_series
from fusetomo.solver import alignment as al
from fusetomo.solver import joint_align as ja
from fusetomo.solver.fusion import FusedSolver

__all__ = ["OfflineAlignParams", "SeriesAlignment", "align_for_fusion", "aligned_solver"]


@dataclass
class OfflineAlignParams:
    """rotation_deg: the in-plane rotation of the tilt axis if known (a calibration), else
    estimated; chem_own_drift: register each spectrum image to its HAADF image; joint: the
    joint refinement (rounds=0 skips it)."""

    rotation_deg: float | None = None
    chem_own_drift: bool = True
    alignment: al.AlignmentParams = field(default_factory=al.AlignmentParams)
    joint: ja.JointAlignParams = field(default_factory=ja.JointAlignParams)


@dataclass
class SeriesAlignment:
    """Shifts (ds, dd) px in the de-rotated frame: measured image = projection moved by the
    shift. haadf_shifts [n_haadf, 2], chem_shifts [n_chem, 2] in the series' order."""

    haadf_shifts: np.ndarray
    chem_shifts: np.ndarray
    rotation_deg: float
    axis_offset_px: float
    unpaired_chem_deg: list[float]
    projection_matching: list[dict[str, float]]
    joint: list[dict[str, float]]
    joint_converged: bool

    def attrs(self) -> dict[str, Any]:
        """The alignment as reconstruction-file attributes."""
        return {
            "align_rotation_deg": self.rotation_deg,
            "align_axis_offset_px": self.axis_offset_px,
            "align_haadf_shifts_px": self.haadf_shifts.tolist(),
            "align_chem_shifts_px": self.chem_shifts.tolist(),
            "align_unpaired_chem_deg": list(self.unpaired_chem_deg),
            "align_joint_rounds": len(self.joint),
            "align_joint_converged": self.joint_converged,
            "align_joint_last_update_px":
                self.joint[-1]["update_rms_px"] if self.joint else float("nan"),
        }


def aligned_solver(series: TiltSeries, haadf_shifts: np.ndarray, chem_shifts: np.ndarray,
                   rotation_deg: float, params: Any = None, device: Any = "cpu", *,
                   crop_px: int = 0) -> FusedSolver:
    """A fused solver on the series' images moved by the whole pixels of the shifts (after
    vacuum removal for HAADF; de-rotated if rotation_deg), the fractions in its projectors.
    `crop_px`: a frame this wide is dropped after the move (a field of view with a vacuum
    margin around the volume to reconstruct)."""
    ns, nd = series.shape
    if crop_px < 0 or 2 * crop_px >= min(ns, nd):
        raise al.AlignmentError(f"crop_px must be >= 0 and leave an image of the "
                                f"{ns} x {nd} field, got {crop_px}")
    field = (slice(crop_px, ns - crop_px), slice(crop_px, nd - crop_px))
    els = series.elements
    solver = solver_for_series(series, params, device=device, crop_px=crop_px)
    clean, _ = al.remove_background(series.haadf)
    h, fh = ja.prepare(clean, haadf_shifts, rotation_deg)
    solver.add_haadf(series.haadf_angles, h[:, field[0], field[1]], shifts=fh)
    maps: dict[str, np.ndarray] = {}
    fc = None
    for e in els:
        c, fc = ja.prepare(series.chem[e], chem_shifts, rotation_deg, counts=True)
        maps[e] = c[:, field[0], field[1]]
    solver.add_chem(series.common_chem_angles, maps, shifts=fc)
    return solver


def align_for_fusion(series: TiltSeries, params: OfflineAlignParams | None = None, *,
                     fusion_params: Any = None, device: Any = "cpu") -> SeriesAlignment:
    """Align `series` for the fused reconstruction (steps 1-3 of the module doc)."""
    p = params or OfflineAlignParams()
    ang, cang = series.haadf_angles, series.common_chem_angles
    A = al.align_series(series.haadf, ang, params=p.alignment, rotation_deg=p.rotation_deg)
    h_axis = A.axis_frame_shifts()
    nearest, paired = ja.chem_partners(ang, cang)
    own = np.zeros((cang.size, 2))
    if p.chem_own_drift:
        haadf_c, _ = al.remove_background(
            al.apply_alignment(series.haadf, A.shifts, A.rotation_deg))
        Z = [series.Z[e] for e in series.elements]
        bg = [b or 0.0 for b in series.stated_background()]
        for j in np.flatnonzero(paired):
            i = nearest[j]
            maps = {e: al.apply_alignment(series.chem[e][j], A.shifts[i], A.rotation_deg,
                                          counts=True) for e in series.elements}
            own[j] = al.register_chem(haadf_c[i], maps, Z, gamma=series.gamma or 1.7,
                                      background=bg)
    c_axis = h_axis[nearest] + own
    history: list[dict[str, float]] = []
    converged = False
    if p.joint.rounds:
        solver = aligned_solver(series, h_axis, c_axis, A.rotation_deg, fusion_params, device)
        whole_h, _ = ja.split_shifts(h_axis)
        whole_c, _ = ja.split_shifts(c_axis)
        res = ja.refine_jointly(solver, p.joint)
        h_axis, c_axis = whole_h + res.haadf_shifts, whole_c + res.chem_shifts
        history, converged = res.history, res.converged
    return SeriesAlignment(
        haadf_shifts=h_axis, chem_shifts=c_axis, rotation_deg=float(A.rotation_deg),
        axis_offset_px=float(al.fit_axis(ang, h_axis[:, 1])[0]) if ang.size >= 3
        else float(h_axis[:, 1].mean()),
        unpaired_chem_deg=[float(a) for a in cang[~paired]],
        projection_matching=A.history, joint=history, joint_converged=converged)
