"""The in-plane rotation of the tilt axis, from where each image row's centre of mass turns.

With a parallel beam, the centre of mass (along d) of one slice of the specimen follows
d(t) = c + a cos t + b sin t over the tilts t, where c is where the tilt axis crosses that
slice. If the tilt axis runs along the image's s axis, c is the same for every row; if it
is turned by phi in the image plane, c grows linearly along s with slope tan(phi). So:

1. for every image row s, the centre of mass over d at each tilt, and a least-squares fit
   of c_s + a_s cos t + b_s sin t (its residual says how well the row obeys the model);
2. a weighted straight line c_s = c0 + s tan(dphi) through the rows that hold specimen at
   every tilt and whose specimen stays clear of the detector ends (weights: the inverse
   square of each row's fit residual; rows more than 3 sigma off the line dropped once);
3. before the fit, move every image along s by its drift (its centre of mass along s minus
   the series' mean: each slice's mass is the same at every tilt), so that a row holds the
   same slice at every tilt;
4. the rotation is the root of g(phi), that slope after de-rotating the images by phi: at
   the true rotation the rows are perpendicular to the axis and the slope is 0 (unbiased,
   whatever the specimen). How fast g changes with phi depends on the specimen (about
   -tan(phi) for a needle along the axis, ten times less for a sphere), so the root is
   bracketed and then found by Brent's method rather than by fixed-point steps.

This search has no bounded range: it converges from any rotation that leaves the specimen
in view (checked from -40 to +40 degrees, tests/test_rotation.py). A result beyond
`max_abs_deg` (45 by default) means the tilt axis is nearer the image's other axis
(`fusetomo import --tilt-axis 1` transposes the images): it is returned with a warning, and
a search that brackets no root within ±89 degrees is an error. Drift along d moves every
row's c by the same amount, and step 3 removes drift along s. A specimen that looks alike
in every direction (a sphere) leaves the rotation undetermined: its estimate scatters by
tenths of a degree.
This is etspy's centre-of-mass tilt-axis method (`etspy.align.TiltCOMAligner`), made
iterative and weighted: it is ours because it works on the fusetomo image convention and
feeds `align_series`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusetomo.solver.backend import to_numpy

__all__ = ["RotationEstimate", "RotationWarning", "estimate_rotation_com", "row_axis"]

# A row's specimen must stay clear of the detector ends: the mass in the outer strips (this
# fraction of the row, at least 2 px) below this fraction of the row's mass, at every tilt.
END_FRACTION = 1 / 32
END_MASS = 0.02
# A row is used when its smallest mass over the tilts exceeds this fraction of the largest.
MIN_ROW_MASS = 0.2
RESIDUAL_FLOOR_PX = 0.05  # weights never exceed 1 / this^2


class RotationWarning(UserWarning):
    """A rotation estimate that should be checked (outside the expected range); the message
    says why and what to do."""


@dataclass
class RotationEstimate:
    """The rotation (degrees, as `solver.alignment.apply_alignment` takes it), with what the
    search did: evaluations of g, rows used at the answer, their scatter about the fitted
    line (px), and the warnings raised."""

    rotation_deg: float
    iterations: int
    rows_used: int
    scatter_px: float
    converged: bool
    warnings: list[str] = field(default_factory=list)

    def attrs(self, prefix: str = "rotation_") -> dict[str, Any]:
        return {f"{prefix}deg": self.rotation_deg, f"{prefix}method": "centre-of-mass rows",
                f"{prefix}evaluations": self.iterations, f"{prefix}rows_used": self.rows_used,
                f"{prefix}scatter_px": self.scatter_px, f"{prefix}converged": self.converged,
                f"{prefix}warnings": "; ".join(self.warnings)}


def row_axis(images: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Per image row s: (c_s the axis crossing in px, residual RMS of the row's sinusoid fit
    in px, usable mask). `images` [n, ns, nd] background-free (negative noise clipped here
    for the centres of mass only)."""
    w = np.clip(np.asarray(images, dtype=np.float64), 0, None)
    nd = w.shape[2]
    mass = w.sum(axis=2)
    d = np.arange(nd, dtype=np.float64)
    com = (w * d).sum(axis=2) / np.maximum(mass, 1e-300)
    t = np.deg2rad(angles)
    basis = np.column_stack([np.ones_like(t), np.cos(t), np.sin(t)])
    coef, *_ = np.linalg.lstsq(basis, com, rcond=None)
    resid = np.sqrt(np.mean((com - basis @ coef) ** 2, axis=0))
    k = max(2, round(nd * END_FRACTION))
    ends = w[:, :, :k].sum(axis=2) + w[:, :, nd - k:].sum(axis=2)
    clear = np.all(ends <= END_MASS * np.maximum(mass, 1e-300), axis=0)
    mmin = mass.min(axis=0)
    full = mmin > MIN_ROW_MASS * max(float(mmin.max()), 1e-300)
    return coef[0], resid, clear & full & np.isfinite(resid)


def _correct(a: np.ndarray, drift: np.ndarray, phi: float, order: int) -> np.ndarray:
    from fusetomo.solver.alignment import apply_alignment, to_image_frame

    if not phi and not drift.any():
        return a
    return apply_alignment(a, to_image_frame(drift, phi), phi, order=order)


def _s_drift(images: np.ndarray) -> np.ndarray:
    """Each image's centre of mass along s minus their mean: the mass of each slice is the
    same at every tilt, so this is drift along the axis (a row then holds the same slice
    at every tilt, which the row centres of mass assume)."""
    w = np.clip(np.asarray(images, dtype=np.float64), 0, None).sum(axis=2)  # [n, ns]
    s = np.arange(w.shape[1], dtype=np.float64)
    com = (w * s).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-300)
    return com - com.mean()


def _line_slope(c: np.ndarray, resid: np.ndarray, ok: np.ndarray) -> tuple[float, float, int]:
    s = np.arange(c.size, dtype=np.float64) - (c.size - 1) / 2.0
    use = ok.copy()
    slope, scatter = 0.0, float("nan")
    for _ in range(2):  # fit, drop rows > 3 sigma off the line, fit again
        if use.sum() < 4:
            break
        w = 1.0 / np.maximum(resid[use], RESIDUAL_FLOOR_PX) ** 2
        A = np.column_stack([np.ones(use.sum()), s[use]]) * np.sqrt(w)[:, None]
        coef = np.linalg.lstsq(A, c[use] * np.sqrt(w), rcond=None)[0]
        off = c - coef[0] - coef[1] * s
        scatter = float(np.sqrt(np.average(off[use] ** 2, weights=w)))
        slope = float(coef[1])
        use = use & (np.abs(off) <= 3 * max(scatter, RESIDUAL_FLOOR_PX))
    return slope, scatter, int(use.sum())


def _slope_at(a: np.ndarray, ang: np.ndarray, phi: float, order: int
              ) -> tuple[float, float, int]:
    """(slope of the rows' axis crossings, their scatter, rows used) after de-rotating by
    `phi` and removing the drift along s measured there."""
    from fusetomo.solver.alignment import AlignmentError

    drift = np.zeros((a.shape[0], 2))
    drift[:, 0] = _s_drift(_correct(a, drift, phi, order))
    c, resid, ok = row_axis(_correct(a, drift, phi, order), ang)
    slope, scatter, rows = _line_slope(c, resid, ok)
    if rows < 4:
        raise AlignmentError(
            f"rotation: only {rows} image rows hold specimen at every tilt clear of the "
            f"detector ends at {phi:.2f} deg (needs 4); give the rotation (--align-rotation "
            "DEG)")
    return slope, scatter, rows


# Bracketing steps (degrees) either side of 0: the nearest root to 0 is taken.
BRACKET_STEPS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 45.0, 60.0, 75.0, 89.0)


def _bracket(g: Any, g0: float, max_evaluations: int) -> tuple[float, float]:
    """The interval between 0 and the nearest step either side where g changes sign."""
    from fusetomo.solver.alignment import AlignmentError

    first = 1.0 if g0 > 0 else -1.0  # where a needle-like response points
    prev = {first: (0.0, g0), -first: (0.0, g0)}
    for h in BRACKET_STEPS:
        for side in (first, -first):
            p0, v0 = prev[side]
            v = g(side * h)
            if np.sign(v) != np.sign(v0):
                return min(p0, side * h), max(p0, side * h)
            prev[side] = (side * h, v)
    raise AlignmentError("rotation: no tilt-axis rotation within ±89 deg makes the rows' "
                         "axis crossings line up; give the rotation (--align-rotation DEG)")


def estimate_rotation_com(images: Any, angles: Any, *, tol_deg: float = 0.005,
                          max_evaluations: int = 40, max_abs_deg: float = 45.0,
                          order: int = 1) -> RotationEstimate:
    """The in-plane rotation of the tilt axis (module docstring) from background-free
    images [n, n_slices, n_det] at `angles` (degrees): the root of g(phi), the slope of the
    rows' axis crossings after de-rotating by phi. The root nearest 0 is bracketed by
    steps of growing size either side of 0 (BRACKET_STEPS, up to ±89 degrees), then found by
    Brent's method (scipy.optimize.brentq) to `tol_deg`. Raises AlignmentError when fewer
    than 4 rows hold specimen clear of the detector ends at every tilt, or when no root
    lies within ±89 degrees; warns (RotationWarning) beyond ±`max_abs_deg`."""
    from scipy.optimize import brentq

    from fusetomo.solver.alignment import AlignmentError

    a = np.asarray(to_numpy(images), dtype=np.float32)
    ang = np.asarray(angles, dtype=np.float64).ravel()
    if a.ndim != 3 or a.shape[0] != ang.size:
        raise AlignmentError(f"rotation: {ang.size} angles for images of shape {a.shape}")
    if a.shape[0] < 3 or np.ptp(ang) < 20:
        raise AlignmentError(f"estimating the rotation needs >= 3 tilts over >= 20 degrees, "
                             f"got {a.shape[0]} over {float(np.ptp(ang)):.1f}")
    calls = [0]
    last: dict[str, Any] = {}

    def g(phi: float) -> float:
        calls[0] += 1
        slope, scatter, rows = _slope_at(a, ang, phi, order)
        last.update(scatter=scatter, rows=rows)
        return slope

    g0 = g(0.0)
    if abs(math.degrees(math.atan(g0))) < tol_deg:
        phi = 0.0
    else:
        lo, hi = _bracket(g, g0, max_evaluations)
        phi = float(brentq(g, lo, hi, xtol=tol_deg, maxiter=max_evaluations))
    g(phi)  # the scatter and rows at the answer
    out = RotationEstimate(phi, calls[0], int(last["rows"]), float(last["scatter"]), True)
    if abs(phi) > max_abs_deg:
        out.warnings.append(f"the rotation {phi:.2f} deg lies beyond ±{max_abs_deg:g} deg: "
                            "the tilt axis is nearer the images' other axis (import with "
                            "--tilt-axis 1), or the estimate is wrong")
    for text in out.warnings:
        warnings.warn(text, RotationWarning, stacklevel=2)
    return out
