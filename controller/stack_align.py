"""Align a tilt series and resample it: the aligned stack that `fusetomo align` writes for
other tools (IMOD, tomviz, etspy) and that the HAADF-only methods reconstruct
(`fusetomo reconstruct --method haadf|sirt --align`).

1. Each HAADF image's offset (its vacuum level from the detector-edge strips,
   `solver.nuisance.haadf_offsets`, the estimate the fused solver starts from) is
   subtracted; nothing is clipped.
2. `solver.alignment.align_series`: the tilt axis' in-plane rotation (solver/rotation.py),
   centre-of-mass shifts, projection matching; then `solver.haadf_refine`: the shifts
   refined against a SIRT model with the shifts in the projector (Gauss-Newton steps,
   the HAADF-only form of the fused route's joint refinement).
3. The HAADF images are resampled in one spline interpolation (cubic), the tilt axis
   de-rotated onto the image's s axis and each image moved by its shift (the axis offset
   included, so the tilt axis ends at the image centre); the element maps move with the
   HAADF image taken at their angle (the nearest one when none was: listed), by linear
   interpolation (which keeps counts non-negative without clipping).

The fused method aligns differently (controller/offline_align.py: the shifts stay in the
model and are refined against it); this module is for a resampled stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fusetomo.adapters.series import TiltSeries
from fusetomo.solver import alignment as al
from fusetomo.solver.haadf_refine import HaadfRefineParams, refine_haadf_shifts
from fusetomo.solver.joint_align import chem_partners
from fusetomo.solver.nuisance import haadf_offsets

__all__ = ["StackAlignParams", "StackAlignment", "align_stack", "aligned_series"]


@dataclass(frozen=True)
class StackAlignParams:
    """rotation_deg: the tilt axis' in-plane rotation when known (a calibration), else
    estimated; alignment: how the HAADF images are aligned (its background option is
    replaced by the offsets of step 1)."""

    rotation_deg: float | None = None
    alignment: al.AlignmentParams = field(default_factory=al.AlignmentParams)
    refine: HaadfRefineParams | None = field(default_factory=HaadfRefineParams)  # None: skip


@dataclass
class StackAlignment:
    """Shifts (ds, dd) px per HAADF image in the measured image frame (what
    `apply_alignment` undoes), the rotation, the axis offset, the HAADF offsets subtracted
    and how the rotation was found."""

    angles: np.ndarray
    shifts: np.ndarray
    rotation_deg: float
    axis_offset_px: float
    offsets: np.ndarray
    history: list[dict[str, float]]
    rotation_info: dict[str, Any]

    def axis_frame_shifts(self) -> np.ndarray:
        return al.to_axis_frame(self.shifts, self.rotation_deg)

    def attrs(self, prefix: str = "align_") -> dict[str, Any]:
        """The alignment as file attributes (lists, numbers and strings)."""
        out: dict[str, Any] = {
            f"{prefix}rotation_deg": self.rotation_deg,
            f"{prefix}axis_offset_px": self.axis_offset_px,
            f"{prefix}shifts_px": self.shifts.tolist(),
            f"{prefix}shifts_frame": "measured image (ds, dd): measured = shift(rotate(P))",
            f"{prefix}haadf_offsets": self.offsets.tolist(),
            f"{prefix}projection_matching_iterations": len(self.history),
        }
        for k, v in self.rotation_info.items():
            key = k if k.startswith("rotation_") else f"rotation_{k}"
            out[f"{prefix}{key}"] = v
        out[f"{prefix}rotation_deg"] = self.rotation_deg
        return out


def align_stack(series: TiltSeries, params: StackAlignParams | None = None, *,
                device: Any = -1) -> StackAlignment:
    """Steps 1-2 of the module docstring on the series' HAADF images."""
    p = params or StackAlignParams()
    off = haadf_offsets(series.haadf)
    clean = series.haadf - off[:, None, None].astype(np.float32)
    a = al.align_series(clean, series.haadf_angles,
                        params=replace(p.alignment, background="none"),
                        rotation_deg=p.rotation_deg, device=device)
    shifts, history = a.shifts, list(a.history)
    if p.refine is not None and p.refine.rounds:
        ref = refine_haadf_shifts(clean, series.haadf_angles, a.axis_frame_shifts(),
                                  a.rotation_deg, p.refine, device=device)
        shifts = al.to_image_frame(ref.axis_shifts, a.rotation_deg)
        history += [{"scale": 0.0, "refine_round": h["round"],
                     "rms_update_px": h["update_rms_px"]} for h in ref.history]
    axis = al.to_axis_frame(shifts, a.rotation_deg)
    offset = al.fit_axis(a.angles, axis[:, 1])[0] if a.angles.size >= 3 \
        else float(axis[:, 1].mean())
    return StackAlignment(a.angles, shifts, a.rotation_deg, float(offset), off, history,
                          dict(a.rotation_info))


def aligned_series(series: TiltSeries, alignment: StackAlignment, *, order: int = 3
                   ) -> TiltSeries:
    """Step 3: the series resampled (HAADF offsets subtracted, tilt axis de-rotated and
    centred), with the alignment in its attributes."""
    clean = series.haadf - alignment.offsets[:, None, None].astype(np.float32)
    haadf = np.asarray(al.apply_alignment(clean, alignment.shifts, alignment.rotation_deg,
                                          order=order), dtype=np.float32)
    attrs = {**series.attrs, **alignment.attrs(), "aligned": 1,
             "haadf_offset_subtracted": 1}
    chem: dict[str, np.ndarray] = {}
    if not series.haadf_only:
        cang = series.common_chem_angles
        nearest, paired = chem_partners(series.haadf_angles, cang)
        sh = alignment.shifts[nearest]
        for e in series.elements:
            chem[e] = np.asarray(al.apply_alignment(series.chem[e], sh,
                                                    alignment.rotation_deg, order=1),
                                 dtype=np.float32)
        attrs["align_chem_shifts_px"] = sh.tolist()
        if not paired.all():
            attrs["align_unpaired_chem_deg"] = [float(a) for a in cang[~paired]]
    return TiltSeries(haadf, series.haadf_angles, chem, dict(series.chem_angles),
                      Z=dict(series.Z), background=dict(series.background),
                      gamma=series.gamma, pixel_size_nm=series.pixel_size_nm, attrs=attrs,
                      chem_kind=series.chem_kind,
                      subtracted_level=dict(series.subtracted_level))
