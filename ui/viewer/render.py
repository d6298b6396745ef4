"""Images the viewer draws, computed with NumPy only (no Qt): the RGB chemical overlay, the
central slices of a full volume (recorded runs), and the polar plot's line ends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fusetomo.ui.slices import PLANES, OrthoSlices

# Additive primaries first (three elements make a true RGB overlay), then their mixtures.
ELEMENT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 0), (0, 80, 255), (255, 200, 0), (255, 0, 255), (0, 255, 255),
    (255, 128, 64), (160, 160, 255),
)


def element_colour(i: int) -> tuple[int, int, int]:
    return ELEMENT_COLOURS[i % len(ELEMENT_COLOURS)]


def rgb_overlay(slices: Mapping[str, OrthoSlices], elements: Sequence[str],
                plane: str) -> np.ndarray:
    """[h, w, 3] uint8: each element's slice scaled by its own vmax (0..1), times its
    colour, summed and clipped. Elements without slices are skipped; an empty selection
    gives a black 1x1 image."""
    if plane not in PLANES:
        raise ValueError(f"no slice plane {plane!r}; choose from {list(PLANES)}")
    acc: np.ndarray | None = None
    for i, el in enumerate(elements):
        sl = slices.get(el)
        if sl is None:
            continue
        img = sl.plane(plane).astype(np.float32)
        norm = img / sl.vmax if sl.vmax > 0 else np.zeros_like(img)
        term = np.clip(norm, 0.0, 1.0)[..., None] * np.asarray(element_colour(i), np.float32)
        if acc is None:
            acc = term
        elif acc.shape == term.shape:
            acc = acc + term
        else:
            raise ValueError(f"slice {plane!r} of {el} has shape {img.shape}, the others "
                             f"{acc.shape[:2]}")
    if acc is None:
        return np.zeros((1, 1, 3), np.uint8)
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)


def central_slices(volume: np.ndarray) -> OrthoSlices:
    """The central slices of one volume [n_slices, n, n] (a recorded snapshot), unscaled;
    vmax is the largest value shown (1 when all are <= 0)."""
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"a volume has 3 axes [n_slices, n, n], got shape {vol.shape}")
    ns, n1, n2 = vol.shape
    s = np.array(vol[ns // 2], dtype=np.float32)
    u = np.array(vol[:, n1 // 2, :], dtype=np.float32)
    v = np.array(vol[:, :, n2 // 2], dtype=np.float32)
    vmax = max(float(np.nanmax(a)) for a in (s, u, v))
    return OrthoSlices(vmax if np.isfinite(vmax) and vmax > 0 else 1.0, s, u, v)


def polar_rays(angles_deg: Sequence[float], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Line segments from the origin for each tilt angle (0 deg: straight up, positive
    angles clockwise, as the stage seen along the tilt axis), as x, y arrays with NaN
    breaks, ready for one `PlotDataItem(connect='finite')`."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    x = np.empty(3 * a.size)
    y = np.empty(3 * a.size)
    x[0::3], y[0::3] = 0.0, 0.0
    x[1::3], y[1::3] = radius * np.sin(a), radius * np.cos(a)
    x[2::3], y[2::3] = np.nan, np.nan
    return x, y
