"""Alignment's shift and rotation estimators (split from solver/alignment.py, which
re-exports every public name here): the gauge (what the data cannot determine) and the tilt
axis fit, coarse shifts by centre of mass or chained cross-correlation, and the in-plane
rotation from the slice-mass profiles. NumPy on the CPU."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize_scalar

from fusetomo.solver.alignment_images import (
    AlignmentError,
    _angles,
    _stack,
    apply_alignment,
    register,
)
from fusetomo.solver.backend import to_numpy

__all__ = [
    "com_shifts",
    "estimate_rotation",
    "fit_axis",
    "gauge_free",
    "remove_gauge",
    "xcorr_shifts",
]


# -- gauge and the tilt axis ----------------------------------------------------------------
def _gauge_basis(angles: np.ndarray) -> np.ndarray:
    t = np.deg2rad(angles)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def fit_axis(angles: Any, d: Any) -> tuple[float, np.ndarray]:
    """Least-squares fit of d(t) = c + a cos t + b sin t: (c, [a, b]). With a parallel beam
    the d centre of mass of a compact object follows this curve; c is the tilt axis' offset
    from the detector centre (plus the constant part of any drift)."""
    ang = np.asarray(angles, dtype=np.float64).ravel()
    y = np.asarray(d, dtype=np.float64).ravel()
    if ang.size < 3:
        raise AlignmentError(f"fitting the tilt axis needs >= 3 tilts, got {ang.size}")
    basis = np.column_stack([np.ones_like(ang), _gauge_basis(ang)])
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(coef[0]), coef[1:]


def gauge_free(angles: Any, shifts: Any) -> np.ndarray:
    """Shifts with the components the data cannot determine removed: the mean of ds, and the
    a cos t + b sin t part of dd (a translation of the object). Compare shifts this way."""
    ang = np.asarray(angles, dtype=np.float64).ravel()
    sh = np.asarray(shifts, dtype=np.float64).reshape(-1, 2).copy()
    sh[:, 0] -= sh[:, 0].mean()
    g = _gauge_basis(ang)
    coef, *_ = np.linalg.lstsq(g, sh[:, 1], rcond=None)
    sh[:, 1] -= g @ coef
    return sh


def remove_gauge(angles: np.ndarray, update: np.ndarray) -> np.ndarray:
    """An update with its unobservable components removed (keeps the gauge fixed); only when
    the tilts span enough angle to tell them apart."""
    if update.shape[0] < 4 or np.ptp(angles) < 20:
        return update
    return gauge_free(angles, update)


def com_shifts(images: Any, angles: Any) -> tuple[np.ndarray, float]:
    """Shifts from the centre of mass of background-free projections: (shifts [n, 2], axis
    offset). s: the centre of mass minus its mean over the series. d: the centre of mass
    minus the fitted a cos t + b sin t and minus the detector centre, so the constant part
    (the axis offset) stays in the shifts. Exact for a compact object wholly inside the field
    of view and a clean background; negative pixels (noise) are clipped."""
    a = to_numpy(_stack(images))
    ang = _angles(angles, a.shape[0])
    w = np.clip(a, 0, None).astype(np.float64)
    tot = w.sum(axis=(1, 2))
    if np.any(tot <= 0):
        bad = int(np.argmin(tot))
        raise AlignmentError(f"image {bad} (angle {ang[bad]}) has no signal above the vacuum "
                             "level: cannot take its centre of mass")
    s_idx = np.arange(a.shape[1], dtype=np.float64)
    d_idx = np.arange(a.shape[2], dtype=np.float64)
    cs = np.einsum("nij,i->n", w, s_idx) / tot
    cd = np.einsum("nij,j->n", w, d_idx) / tot
    centre_d = (a.shape[2] - 1) / 2.0
    shifts = np.zeros((a.shape[0], 2))
    shifts[:, 0] = cs - cs.mean()
    if a.shape[0] >= 3 and np.ptp(ang) >= 20:
        c, ab = fit_axis(ang, cd - centre_d)
        shifts[:, 1] = cd - centre_d - _gauge_basis(ang) @ ab
    else:  # too few tilts to separate the object's motion from the axis: centre them
        c = float(np.mean(cd - centre_d))
        shifts[:, 1] = cd - centre_d
    return shifts, c


def xcorr_shifts(images: Any, angles: Any, *, upsample: int = 20,
                 normalization: Literal["phase", "none"] = "phase") -> np.ndarray:
    """Shifts by registering each tilt to its neighbour towards 0 degrees, chained from the
    tilt nearest 0 (shift 0). Errors accumulate along the chain and the object's rotation
    between neighbours biases dd slightly: a coarse start for projection matching."""
    a = to_numpy(_stack(images))
    ang = _angles(angles, a.shape[0])
    order = np.argsort(ang)
    zero = int(np.argmin(np.abs(ang[order])))
    shifts = np.zeros((a.shape[0], 2))
    for direction in (1, -1):
        k = zero + direction
        while 0 <= k < order.size:
            i, j = order[k], order[k - direction]
            shifts[i] = shifts[j] + register(a[j], a[i], upsample=upsample,
                                             normalization=normalization)
            k += direction
    shifts[:, 0] -= shifts[:, 0].mean()
    return shifts


# -- the in-plane rotation ------------------------------------------------------------------
def _profile_spread(images: np.ndarray, rotation_deg: float) -> float:
    """How much the slice-mass profiles (sums along d) of de-rotated images differ between
    tilts, after each is moved to a common centre of mass (the s drift): relative variance."""
    derot = apply_alignment(images, np.zeros((images.shape[0], 2)), rotation_deg, order=3)
    prof = np.clip(derot.sum(axis=2), 0, None).astype(np.float64)  # [n, n_slices]
    s = np.arange(prof.shape[1], dtype=np.float64)
    tot = prof.sum(axis=1)
    com = (prof * s).sum(axis=1) / np.maximum(tot, 1e-30)
    freq = np.fft.rfftfreq(prof.shape[1])
    # Move every profile to the mean centre (Fourier shift of a 1D profile: exact for a
    # band-limited translation) and normalise its mass.
    phase = np.exp(2j * np.pi * freq[None, :] * (com - com.mean())[:, None])
    moved = np.fft.irfft(np.fft.rfft(prof, axis=1) * phase, n=prof.shape[1], axis=1)
    moved /= np.maximum(tot, 1e-30)[:, None]
    mean = moved.mean(axis=0)
    return float(np.sum((moved - mean) ** 2) / max(np.sum(mean**2) * moved.shape[0], 1e-30))


def estimate_rotation(images: Any, *, range_deg: float = 5.0, xtol_deg: float = 0.01) -> float:
    """The in-plane rotation (degrees, as passed to scipy.ndimage.rotate) of the tilt axis:
    the angle whose de-rotated images have the most tilt-invariant slice-mass profiles.
    Shift-invariant (the s drift is removed per profile). Needs background-free images of
    a specimen inside the field of view, over a tilt range wide enough for the object's
    projection to change (tens of degrees)."""
    a = to_numpy(_stack(images))
    if a.shape[0] < 3:
        raise AlignmentError(f"estimating the rotation needs >= 3 tilts, got {a.shape[0]}")
    # A coarse grid first (the spread is not unimodal far from the answer), then Brent.
    grid = np.linspace(-range_deg, range_deg, 21)
    vals = [_profile_spread(a, g) for g in grid]
    k = int(np.argmin(vals))
    step = grid[1] - grid[0]
    lo, hi = max(grid[k] - step, -range_deg), min(grid[k] + step, range_deg)
    res = minimize_scalar(lambda r: _profile_spread(a, r), bounds=(lo, hi), method="bounded",
                          options={"xatol": xtol_deg})
    if abs(abs(float(res.x)) - range_deg) <= 2 * xtol_deg:
        from fusetomo.solver.rotation import RotationWarning

        warnings.warn(f"the rotation estimate {float(res.x):.3f} deg sits at the edge of the "
                      f"searched range ±{range_deg:g} deg: the true rotation is likely "
                      "outside it (use the 'com' method, or give the rotation)",
                      RotationWarning, stacklevel=2)
    return float(res.x)

