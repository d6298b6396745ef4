"""Alignment's image operations (split from solver/alignment.py, which re-exports every
public name here): the vacuum level and its removal, the correcting interpolation
(`apply_alignment`) and its frames, binning, and sub-pixel registration of two images.
NumPy or CuPy, whichever holds the array; registration runs on the CPU."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import sigpy as sp
from skimage.registration import phase_cross_correlation

from fusetomo.core.errors import FusetomoError
from fusetomo.solver.backend import to_numpy

__all__ = [
    "AlignmentError",
    "BackgroundMethod",
    "apply_alignment",
    "bin_images",
    "register",
    "remove_background",
    "to_axis_frame",
    "to_image_frame",
    "vacuum_level",
]

BackgroundMethod = Literal["border", "percentile", "none"]


class AlignmentError(FusetomoError, ValueError):
    """Images or parameters that alignment cannot work with; the message names the value."""


# -- images ---------------------------------------------------------------------------------
def _stack(images: Any, what: str = "images") -> Any:
    xp = sp.get_device(images).xp
    a = images if xp is not np else np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise AlignmentError(f"{what}: expected [n_tilts, n_slices, n_det], got {a.shape}")
    if a.shape[1] < 4 or a.shape[2] < 4:
        raise AlignmentError(f"{what}: images of {a.shape[1:]} px are too small to align")
    if not bool(xp.all(xp.isfinite(a))):
        raise AlignmentError(f"{what}: contains NaN or inf")
    return a.astype(xp.float32, copy=False)


def _angles(angles: Any, n: int) -> np.ndarray:
    a = np.atleast_1d(np.asarray(angles, dtype=np.float64)).ravel()
    if a.size != n:
        raise AlignmentError(f"{a.size} angles for {n} images")
    if not np.all(np.isfinite(a)) or np.any(np.abs(a) > 90):
        raise AlignmentError(f"angles must be finite and within [-90, 90], got {a.tolist()}")
    return a


def vacuum_level(image: np.ndarray, *, method: BackgroundMethod = "border",
                 border_px: int = 2, percentile: float = 5.0) -> float:
    """The vacuum level of one projection: the median of its outer frame `border_px` wide
    ('border', for a specimen inside the field of view) or a low percentile of all pixels
    ('percentile', for one that touches the frame); 0 for 'none'."""
    img = to_numpy(image)
    if method == "none":
        return 0.0
    if method == "percentile":
        return float(np.percentile(img, percentile))
    if method != "border":
        raise AlignmentError(f"background method must be border|percentile|none, got "
                             f"{method!r}")
    b = int(border_px)
    if 2 * b >= min(img.shape):
        raise AlignmentError(f"border_px {b} too wide for an image of {img.shape}")
    frame = np.concatenate([img[:b].ravel(), img[-b:].ravel(), img[b:-b, :b].ravel(),
                            img[b:-b, -b:].ravel()])
    return float(np.median(frame))


def remove_background(images: Any, *, method: BackgroundMethod = "border", border_px: int = 2,
                      percentile: float = 5.0) -> tuple[Any, np.ndarray]:
    """Each projection minus its vacuum level: (stack, levels [n])."""
    a = _stack(images)
    levels = np.array([vacuum_level(im, method=method, border_px=border_px,
                                    percentile=percentile) for im in a])
    xp = sp.get_device(a).xp
    with sp.get_device(a):
        return a - xp.asarray(levels, dtype=xp.float32)[:, None, None], levels


def _ndimage(x: Any) -> Any:
    if sp.get_device(x) == sp.cpu_device:
        import scipy.ndimage

        return scipy.ndimage
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage


def _rotation_matrix(rotation_deg: float) -> np.ndarray:
    """How scipy.ndimage.rotate(angle, reshape=False) moves points, in (s, d) coordinates."""
    t = np.deg2rad(rotation_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s], [s, c]])


def apply_alignment(images: Any, shifts: Any, rotation_deg: float = 0.0, *, order: int = 3,
                    counts: bool = False) -> Any:
    """Undo `measured = shift(rotate(P, rotation_deg), shift)` for each image of a stack (or
    one image) in one interpolation (spline of `order`, edges repeated). `counts`: clip at
    0. NumPy in, NumPy out; CuPy in, CuPy out."""
    single = np.ndim(images) == 2
    a = _stack(images)
    sh = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    if sh.shape[0] != a.shape[0]:
        raise AlignmentError(f"{sh.shape[0]} shifts for {a.shape[0]} images")
    if not np.all(np.isfinite(sh)):
        raise AlignmentError(f"shifts must be finite, got {sh.tolist()}")
    nd = _ndimage(a)
    xp = sp.get_device(a).xp
    m = _rotation_matrix(rotation_deg)
    c = (np.asarray(a.shape[1:], dtype=np.float64) - 1) / 2.0
    out = xp.empty_like(a)
    with sp.get_device(a):
        for i in range(a.shape[0]):
            offset = c + sh[i] - m @ c
            if rotation_deg == 0.0:
                out[i] = nd.shift(a[i], tuple(-sh[i]), order=order, mode="nearest")
            else:
                out[i] = nd.affine_transform(a[i], xp.asarray(m), offset=tuple(offset),
                                             order=order, mode="nearest")
        if counts:
            out = xp.maximum(out, 0)
    return out[0] if single else out


def to_axis_frame(shifts: Any, rotation_deg: float) -> np.ndarray:
    """Image-frame shifts (those of `apply_alignment`) as seen in de-rotated images:
    de-rotating shift(rotate(P), delta) gives P shifted by R^-1 delta."""
    sh = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    return sh @ _rotation_matrix(rotation_deg)  # rows: (R^T applied) = R^-1 delta


def to_image_frame(shifts: Any, rotation_deg: float) -> np.ndarray:
    """The inverse of `to_axis_frame`."""
    sh = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    return sh @ _rotation_matrix(rotation_deg).T


def bin_images(images: Any, f: int) -> Any:
    """Block means of f x f pixels (trailing rows/columns that do not fill a block dropped)."""
    a = _stack(images)
    if f == 1:
        return a
    n, h, w = a.shape
    h2, w2 = h // f, w // f
    if h2 < 4 or w2 < 4:
        raise AlignmentError(f"binning {f} leaves images of {(h2, w2)} px, too small")
    return a[:, :h2 * f, :w2 * f].reshape(n, h2, f, w2, f).mean(axis=(2, 4))


# -- registration ---------------------------------------------------------------------------
def register(reference: Any, moving: Any, *, upsample: int = 20,
             normalization: Literal["phase", "none"] = "phase") -> np.ndarray:
    """The shift (ds, dd) by which `moving` is displaced relative to `reference` (so that
    apply_shift(reference, shift) ~ moving), to 1/upsample px, by scikit-image's upsampled
    phase correlation. CPU; CuPy arrays are copied over (the images are small)."""
    ref, mov = to_numpy(reference), to_numpy(moving)
    if ref.shape != mov.shape or ref.ndim != 2:
        raise AlignmentError(f"register: images of {ref.shape} and {mov.shape}; need two "
                             "2D images of one shape")
    shift, _, _ = phase_cross_correlation(
        ref, mov, upsample_factor=upsample,
        normalization="phase" if normalization == "phase" else None)
    # skimage returns the shift that registers `moving` onto `reference`: the opposite.
    return -np.asarray(shift, dtype=np.float64)

