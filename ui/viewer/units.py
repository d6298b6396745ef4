"""What the viewer writes beside its images and plots, in physical units (no Qt): the scale
bar's length from the pixel size, the colour bars' labels, the panes' titles with the slice
position in nm, the cost terms' plain names and weighted values, dose and angle texts.

Where the pixel size is unknown, lengths and positions are in pixels ("px"), never in an
invented nm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fusetomo.ui.slices import SliceCalibration

DOSE_UNIT = "e⁻/Å²"
TERM_NAMES = {"haadf": "HAADF data term", "chem": "chemical data term", "tv": "TV"}
TOTAL_NAME = "total cost"
PLANE_NAMES = {"s": "s (normal to tilt axis)", "u": "u", "v": "v"}
NICE_STEPS = (1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ScaleBar:
    """A scale bar: `length_px` image pixels long, reading `label` ('5 nm', '4 px')."""

    length_px: float
    value: float
    unit: str

    @property
    def label(self) -> str:
        return f"{self.value:g} {self.unit}"


def nice_value(limit: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above `limit` (> 0)."""
    if not (limit > 0 and math.isfinite(limit)):
        raise ValueError(f"a scale bar needs a positive finite length, got {limit!r}")
    k = math.floor(math.log10(limit))
    best = 10.0**k
    for step in NICE_STEPS:
        v = step * 10.0**k
        if v <= limit * (1 + 1e-12):
            best = v
    return best


def scale_bar(pixel_nm: float | None, width_px: int, fraction: float = 0.3) -> ScaleBar:
    """A bar at most `fraction` of an image `width_px` pixels wide: a round number of nm
    when the pixel size is known (`pixel_nm`: one displayed pixel's side), else of px."""
    if width_px < 1:
        raise ValueError(f"an image is at least 1 pixel wide, got {width_px}")
    limit_px = max(fraction * width_px, 1.0)
    if pixel_nm is None:
        v = nice_value(limit_px)
        return ScaleBar(v, v, "px")
    v = nice_value(limit_px * pixel_nm)
    return ScaleBar(v / pixel_nm, v, "nm")


def pane_title(plane: str, cal: SliceCalibration | None) -> str:
    """A slice column's title: the plane and where its central slice lies from the volume's
    centre, in nm ('s (normal to tilt axis) at +0.25 nm'), in px without a pixel size."""
    name = PLANE_NAMES.get(plane, plane)
    if cal is None:
        return name
    nm = cal.position_nm(plane)
    if nm is not None:
        return f"{name} at {nm:+.3g} nm"
    vox = cal.position_voxels(plane)
    return name if vox is None else f"{name} at {vox:+.3g} px"


def colour_bar_label(element: str, cal: SliceCalibration | None, std: bool) -> str:
    """'Co (counts/voxel)' for a reconstruction, 'Co std. error (counts/voxel)' for its
    standard error (the same unit)."""
    units = (cal or SliceCalibration()).units
    return f"{element} std. error ({units})" if std else f"{element} ({units})"


def dose_text(value: float) -> str:
    return f"{value:.3g} {DOSE_UNIT}"


def angle_text(deg: float) -> str:
    return f"{deg:+.1f}°"


def weighted_costs(costs: Mapping[str, Sequence[float]],
                   weights: Mapping[str, float] | None) -> dict[str, list[float]]:
    """Each term times its λ (unweighted when no weights are known), and their sum under
    TOTAL_NAME's key 'total' (NaN where a term is missing)."""
    terms = [t for t in TERM_NAMES if t in costs]
    n = min((len(costs[t]) for t in terms), default=0)
    out: dict[str, list[float]] = {}
    for t in terms:
        w = 1.0 if weights is None else float(weights.get(t, math.nan))
        out[t] = [w * float(v) for v in costs[t][:n]]
    out["total"] = [math.fsum(out[t][i] for t in terms) if terms else math.nan
                    for i in range(n)]
    return out
