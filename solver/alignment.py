"""Tilt-series alignment: per-tilt shifts, the tilt-axis offset and in-plane rotation, and
projection matching against reprojections of the current reconstruction.

Model of a measured projection (science.md §5 geometry, images [n_slices, n_det] = (s, d)):

    measured = shift(rotate(P, rotation_deg), (ds, dd))

with `rotate` as `scipy.ndimage.rotate(P, rotation_deg, reshape=False)` (the tilt axis turned
about the beam axis by rotation_deg, about the image centre) and `shift` as
`simulators.instrument.apply_shift`. A shift (ds, dd) is how far the image was moved from its
aligned position; the constant part of dd over the series is the tilt-axis offset. Correction
(`apply_alignment`) undoes both in one interpolation.

What the data can tell (gauge): a translation of the object in the volume moves the d
coordinate of its projections by a cos t + b sin t and the s coordinate by a constant, so
shifts are determined only modulo those components. Every estimator here keeps them fixed
where the coarse centre-of-mass step put them (the object's centre of mass), and
`gauge_free` removes them when shifts are compared with a truth. The constant coefficient of
dd (the axis offset) is *not* a gauge: it is what makes arcs in a reconstruction.

Steps (each usable alone):
- `vacuum_level` / `remove_background`: per-projection vacuum level (median of the border
  frame, or a low percentile) subtracted;
- `estimate_rotation`: the in-plane rotation from the invariance of the slice-mass profile
  (the sum of each projection along d is the same at every tilt for a parallel beam, but only
  if the tilt axis runs along the image's s axis); shift-invariant, so done first;
- `com_shifts`: absolute shifts from the centre of mass (s: constant; d: a cos t + b sin t + c
  fitted; the residuals are the drift, the constant is the axis offset);
- `xcorr_shifts`: shifts by phase correlation of neighbouring tilts, chained from the tilt
  nearest 0 degrees (for objects not wholly inside the field of view);
- `projection_matching`: reconstruct (non-negative SIRT), reproject, register each tilt to its
  reprojection, update, on a coarse-to-fine schedule of binnings with a stop rule;
- `register_chem`: the spectrum image's own drift relative to its simultaneous HAADF image,
  by cross-correlating a Z^gamma-weighted composite of its maps with the aligned HAADF image.

Sub-pixel registration is scikit-image's upsampled-DFT phase correlation
(`skimage.registration.phase_cross_correlation`), run on the CPU on each 2D image (cheap);
reconstruction and reprojection run on NumPy or CuPy through `ParallelProjector`, and the
image resampling through scipy.ndimage or cupyx.scipy.ndimage, whichever holds the array.
No sockets, no files.

Where the code is: the image operations (vacuum level, `apply_alignment`, binning,
`register`) in solver/alignment_images.py, the shift and rotation estimators (gauge,
`com_shifts`, `xcorr_shifts`, `estimate_rotation`) in solver/alignment_shifts.py, and here
the parameters, projection matching, `align_series` and the chemical maps' registration;
every public name is importable from this module.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import sigpy as sp

from fusetomo.solver.alignment_images import (
    AlignmentError,
    BackgroundMethod,
    _angles,
    _stack,
    apply_alignment,
    bin_images,
    register,
    remove_background,
    to_axis_frame,
    to_image_frame,
    vacuum_level,
)
from fusetomo.solver.alignment_shifts import (
    com_shifts,
    estimate_rotation,
    fit_axis,
    gauge_free,
    remove_gauge,
    xcorr_shifts,
)
from fusetomo.solver.backend import to_device, to_numpy
from fusetomo.solver.iterative import sirt_step, sirt_weights
from fusetomo.solver.projector import ParallelProjector

__all__ = [
    "Alignment",
    "AlignmentError",
    "AlignmentParams",
    "align_series",
    "apply_alignment",
    "bin_images",
    "chem_composite",
    "com_shifts",
    "estimate_rotation",
    "fit_axis",
    "gauge_free",
    "projection_matching",
    "register",
    "register_chem",
    "remove_background",
    "remove_gauge",
    "to_axis_frame",
    "to_image_frame",
    "vacuum_level",
    "xcorr_shifts",
]

@dataclass(frozen=True)
class AlignmentParams:
    """How a tilt series is aligned. Distances in pixels of the full-size images."""

    upsample: int = 20  # sub-pixel registration to 1/upsample px
    normalization: Literal["phase", "none"] = "phase"  # phase correlation or plain xcorr
    background: BackgroundMethod = "border"
    border_px: int = 2  # width of the frame whose median is the vacuum level
    percentile: float = 5.0  # for background="percentile"
    coarse: Literal["com", "xcorr"] = "com"
    rotation: bool = True  # estimate the in-plane rotation of the tilt axis
    # 'com': the rows' centres of mass (solver/rotation.py; no bounded search, for any
    # specimen that stays in view); 'profile': the slice-mass profiles (compact specimens
    # wholly inside the field), searched in [-rotation_range_deg, rotation_range_deg];
    # 'auto': 'profile', and where its minimum sits at the edge of that range (the
    # rotation is larger, or the profiles cannot tell it, as for a needle that leaves the
    # field), 'com'
    rotation_method: Literal["auto", "com", "profile"] = "auto"
    rotation_range_deg: float = 5.0
    scales: tuple[int, ...] = (4, 2, 1)  # projection-matching binnings, coarse to fine
    max_iterations: int = 6  # projection-matching iterations per scale
    tol_px: float = 0.05  # stop a scale when the RMS shift update falls below this
    sirt_iterations: int = 25  # reconstruction inside each projection-matching iteration
    max_update_px: float = 8.0  # one update moves no tilt further than this
    order: int = 3  # spline order of the correcting interpolation

    def __post_init__(self) -> None:
        if isinstance(self.upsample, bool) or not isinstance(self.upsample, int) \
                or self.upsample < 1:
            raise AlignmentError(f"upsample must be an integer >= 1, got {self.upsample!r}")
        if self.normalization not in ("phase", "none"):
            raise AlignmentError(f"normalization must be 'phase' or 'none', got "
                                 f"{self.normalization!r}")
        if self.background not in ("border", "percentile", "none"):
            raise AlignmentError(f"background must be border|percentile|none, got "
                                 f"{self.background!r}")
        if self.border_px < 1:
            raise AlignmentError(f"border_px must be >= 1, got {self.border_px}")
        if not 0.0 <= self.percentile <= 50.0:
            raise AlignmentError(f"percentile must lie in [0, 50], got {self.percentile}")
        if self.coarse not in ("com", "xcorr"):
            raise AlignmentError(f"coarse must be 'com' or 'xcorr', got {self.coarse!r}")
        if self.rotation_method not in ("auto", "com", "profile"):
            raise AlignmentError(f"rotation_method must be auto|com|profile, got "
                                 f"{self.rotation_method!r}")
        if not 0.0 < self.rotation_range_deg <= 45.0:
            raise AlignmentError(f"rotation_range_deg must lie in (0, 45], got "
                                 f"{self.rotation_range_deg}")
        if not self.scales or any(int(f) != f or f < 1 for f in self.scales):
            raise AlignmentError(f"scales must be binning factors >= 1, got {self.scales}")
        for name in ("max_iterations", "sirt_iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise AlignmentError(f"{name} must be an integer >= 0, got {v!r}")
        if not self.tol_px > 0:
            raise AlignmentError(f"tol_px must be > 0, got {self.tol_px}")
        if not self.max_update_px > 0:
            raise AlignmentError(f"max_update_px must be > 0, got {self.max_update_px}")
        if self.order not in (0, 1, 2, 3, 4, 5):
            raise AlignmentError(f"order must be a spline order 0..5, got {self.order}")


@dataclass
class Alignment:
    """The alignment of a tilt series: per-tilt shifts (ds, dd) in pixels in the measured
    image frame (what `apply_alignment` takes), the in-plane rotation, the tilt-axis offset
    (in the de-rotated frame) and what the projection matching did (one row per
    iteration)."""

    angles: np.ndarray
    shifts: np.ndarray  # [n, 2]
    rotation_deg: float = 0.0
    axis_offset_px: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    rotation_info: dict[str, Any] = field(default_factory=dict)  # how it was found

    def __post_init__(self) -> None:
        self.angles = np.asarray(self.angles, dtype=np.float64).ravel()
        self.shifts = np.asarray(self.shifts, dtype=np.float64).reshape(-1, 2)
        if self.shifts.shape[0] != self.angles.size:
            raise AlignmentError(f"{self.shifts.shape[0]} shifts for {self.angles.size} angles")

    def axis_frame_shifts(self) -> np.ndarray:
        """The shifts in the frame of the de-rotated images (s along the tilt axis), where
        the gauge (`gauge_free`) and the axis offset are defined."""
        return to_axis_frame(self.shifts, self.rotation_deg)

    def shift_at(self, angle: float, tol_deg: float = 1e-3) -> np.ndarray:
        """The shift of the tilt at `angle` (AlignmentError if there is none)."""
        i = int(np.argmin(np.abs(self.angles - float(angle)))) if self.angles.size else -1
        if i < 0 or abs(self.angles[i] - float(angle)) > tol_deg:
            raise AlignmentError(f"no aligned tilt at {angle} degrees (have "
                                 f"{self.angles.tolist()})")
        return self.shifts[i].copy()


# -- projection matching --------------------------------------------------------------------
def _sirt(projector: ParallelProjector, b: Any, n_slices: int, iterations: int,
          x0: Any = None) -> Any:
    xp = projector.device.xp
    w = sirt_weights(projector)
    with projector.device:
        x = xp.zeros((n_slices, projector.n, projector.n), dtype=xp.float32) if x0 is None \
            else x0
        for _ in range(iterations):
            x = sirt_step(projector, x, b, w, nonnegative=True)
    return x


def projection_matching(images: Any, angles: Any, shifts: Any | None = None, *,
                        params: AlignmentParams | None = None,
                        device: sp.Device | int = -1,
                        budget_s: float | None = None) -> tuple[np.ndarray, list[dict]]:
    """Refine shifts by projection matching. `images` are background-free, de-rotated
    projections [n, n_slices, n_det]; `shifts` the start (zeros if None).

    For each binning f in params.scales (coarse to fine): repeat up to max_iterations times:
    correct the binned images with the current shifts, reconstruct (non-negative SIRT, warm
    started within a scale), reproject, register every corrected image to its reprojection
    and subtract the residual shifts (their unobservable components removed, each clipped to
    max_update_px). A scale stops when the RMS update falls below tol_px * f px (the
    coarse scales only need to bring the finer ones within reach), or when the reprojection
    error stops falling. Stops early when `budget_s` (seconds) is spent.
    Returns (shifts [n, 2], history rows: scale, iteration, rms_update_px,
    reprojection_error)."""
    p = params or AlignmentParams()
    a = to_numpy(_stack(images))
    ang = _angles(angles, a.shape[0])
    sh = np.zeros((a.shape[0], 2)) if shifts is None else \
        np.asarray(shifts, dtype=np.float64).reshape(-1, 2).copy()
    if sh.shape[0] != a.shape[0]:
        raise AlignmentError(f"{sh.shape[0]} start shifts for {a.shape[0]} images")
    dev = sp.Device(device)
    t0 = time.perf_counter()
    history: list[dict] = []
    for f in p.scales:
        f = int(f)
        if min(a.shape[1:]) // f < 8:
            continue  # too coarse to say anything
        binned = bin_images(a, f)
        _, ns, nd = binned.shape
        proj = ParallelProjector(nd, ang, device=dev)
        x = None
        last_err = np.inf
        tol = p.tol_px * f
        for it in range(p.max_iterations):
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                return sh, history
            corrected = apply_alignment(binned, sh / f, order=p.order)
            with dev:
                b = to_device(corrected, dev)
                x = _sirt(proj, b, ns, p.sirt_iterations, x)
                reproj = to_numpy(proj.forward(x))
            err = float(np.sqrt(np.sum((reproj - corrected) ** 2)
                                / max(np.sum(corrected**2), 1e-30)))
            resid = np.array([register(reproj[i], corrected[i], upsample=p.upsample,
                                       normalization=p.normalization)
                              for i in range(a.shape[0])]) * f
            upd = remove_gauge(ang, resid)
            upd = np.clip(upd, -p.max_update_px, p.max_update_px)
            sh += upd
            rms = float(np.sqrt(np.mean(np.sum(upd**2, axis=1))))
            history.append({"scale": f, "iteration": it, "rms_update_px": rms,
                            "reprojection_error": err})
            if rms < tol or err > last_err * (1 - 1e-4):
                break
            last_err = err
    return sh, history


# -- a whole series -------------------------------------------------------------------------
def align_series(images: Any, angles: Any, *, params: AlignmentParams | None = None,
                 rotation_deg: float | None = None, device: sp.Device | int = -1) -> Alignment:
    """Align a HAADF tilt series: background removal, the in-plane rotation (estimated unless
    `rotation_deg` is given or params.rotation is False), coarse shifts (centre of mass or
    chained cross-correlation), then multiscale projection matching."""
    p = params or AlignmentParams()
    a = to_numpy(_stack(images, "HAADF images"))
    ang = _angles(angles, a.shape[0])
    clean, _ = remove_background(a, method=p.background, border_px=p.border_px,
                                 percentile=p.percentile)
    info: dict[str, Any] = {"rotation_source": "given"}
    if rotation_deg is None:
        rotation_deg, info = _estimate_rotation(clean, ang, p)
    derot = apply_alignment(clean, np.zeros((a.shape[0], 2)), rotation_deg, order=p.order) \
        if rotation_deg else clean
    if p.coarse == "com":
        start, _ = com_shifts(derot, ang)
    else:
        start = xcorr_shifts(derot, ang, upsample=p.upsample, normalization=p.normalization)
    shifts, history = projection_matching(derot, ang, start, params=p, device=device)
    offset = fit_axis(ang, shifts[:, 1])[0] if a.shape[0] >= 3 else float(shifts[:, 1].mean())
    return Alignment(ang, to_image_frame(shifts, rotation_deg), float(rotation_deg), offset,
                     history, info)


# The rotation is estimated on images binned to at most this many pixels a side.
ROTATION_MAX_PX = 128


def _estimate_rotation(clean: np.ndarray, ang: np.ndarray, p: AlignmentParams
                       ) -> tuple[float, dict[str, Any]]:
    """(rotation, how it was found) for `align_series` (AlignmentParams.rotation_method)."""
    if not p.rotation or clean.shape[0] < 3:
        return 0.0, {"rotation_source": "not estimated"}
    f = max(1, min(clean.shape[1:]) // ROTATION_MAX_PX)
    small = bin_images(clean, f) if f > 1 else clean
    info: dict[str, Any] = {"rotation_source": "estimated", "rotation_binning": f}
    if p.rotation_method in ("auto", "profile"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rot = estimate_rotation(small, range_deg=p.rotation_range_deg)
        at_edge = bool(caught)
        info.update(rotation_profile_deg=rot, rotation_range_deg=p.rotation_range_deg)
        if p.rotation_method == "profile" or not at_edge:
            for w in caught:  # pass them on, and record them
                warnings.warn(w.message, w.category, stacklevel=3)
            info.update(rotation_method="slice-mass profiles",
                        rotation_warnings="; ".join(str(w.message) for w in caught))
            return rot, info
        info["rotation_note"] = (f"the slice-mass profiles' minimum sat at the edge of "
                                 f"±{p.rotation_range_deg:g} deg ({rot:.3f}): rows' centres "
                                 "of mass used instead")
    from fusetomo.solver.rotation import estimate_rotation_com

    est = estimate_rotation_com(small, ang)
    info.update(est.attrs())
    return est.rotation_deg, info


# -- chemical maps --------------------------------------------------------------------------
def chem_composite(maps: Mapping[str, Any] | Sequence[Any], Z: Sequence[float] | None = None,
                   gamma: float = 1.7, background: Sequence[float] | None = None,
                   smooth_px: float = 1.0) -> np.ndarray:
    """A HAADF-like image from one spectrum image's element maps: sum_i Z_i^gamma (m_i - bg_i)
    (the linearised HAADF model), Gaussian-smoothed by `smooth_px` against Poisson noise."""
    from scipy.ndimage import gaussian_filter

    arrs = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    if not arrs:
        raise AlignmentError("no element maps to register")
    stack = np.stack([np.asarray(to_numpy(m), dtype=np.float64) for m in arrs])
    if stack.ndim != 3:
        raise AlignmentError(f"element maps must be 2D images, got {stack.shape[1:]}")
    z = np.ones(len(arrs)) if Z is None else np.asarray(Z, dtype=np.float64)
    bg = np.zeros(len(arrs)) if background is None else np.asarray(background, np.float64)
    if z.shape != (len(arrs),) or bg.shape != (len(arrs),):
        raise AlignmentError(f"{len(arrs)} maps but {z.size} Z and {bg.size} background values")
    comp = np.tensordot(z**gamma, stack - bg[:, None, None], axes=1)
    return gaussian_filter(comp, smooth_px) if smooth_px > 0 else comp


def register_chem(haadf_aligned: Any, maps: Mapping[str, Any] | Sequence[Any],
                  Z: Sequence[float] | None = None, *, gamma: float = 1.7,
                  background: Sequence[float] | None = None, upsample: int = 20,
                  smooth_px: float = 1.0) -> np.ndarray:
    """The spectrum image's own drift: the shift of its (already HAADF-corrected) element
    maps relative to the aligned HAADF image of the same tilt, by plain (not phase-
    normalised: the maps are noisy) cross-correlation of `chem_composite` with the HAADF
    image smoothed alike. `apply_alignment(maps, shift)` then undoes it."""
    from scipy.ndimage import gaussian_filter

    comp = chem_composite(maps, Z, gamma, background, smooth_px)
    h = np.asarray(to_numpy(haadf_aligned), dtype=np.float64)
    if h.shape != comp.shape:
        raise AlignmentError(f"HAADF image {h.shape} and maps {comp.shape} differ in shape")
    h = h - vacuum_level(h)
    comp = comp - vacuum_level(comp)
    if smooth_px > 0:
        h = gaussian_filter(h, smooth_px)
    return register(h, comp, upsample=upsample, normalization="none")
