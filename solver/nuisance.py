"""The nuisances of real acquisitions, estimated from the data (docs/model.md).

- where the vacuum is in each projection (`vacuum_mask`), from the HAADF image;
- the HAADF offset of each projection (detector black level, support film, signed-integer
  files): its vacuum level to start with (`haadf_offsets`), then fitted with the intensity
  scale in closed form at every iteration (`image_sums`, `scale_offsets`);
- the start of each chemical map's background (`chem_background_start`): the mean count
  over the vacuum; the fused solver then refines it by ML-EM with the volumes;
- for background-subtracted maps whose subtracted level is not stated, that level from the
  vacuum's variance (`vacuum_moments`, `subtracted_level`): a Poisson count n minus a
  level s has mean E[n] - s and variance E[n], so the shift that makes the data Poisson
  again is var - mean;
- the HAADF noise level (`haadf_noise`) and the fit statistics (`chi2_haadf`,
  `chi2_poisson`) the solver reports after a reconstruction.

Everything here takes NumPy arrays (the solver moves what it needs to the host once, when
tilts arrive); nothing here knows files or sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from fusetomo.solver.backend import array_module, to_numpy

__all__ = [
    "border_columns",
    "chem_background_start",
    "edge_touching",
    "haadf_noise",
    "haadf_offsets",
    "image_sums",
    "nearest_masks",
    "scale_offsets",
    "subtracted_level",
    "vacuum_mask",
    "vacuum_moments",
]

# Width of the detector-edge strips taken as vacuum when nothing better is known: a fraction
# of the detector, at least 2 pixels (tomography keeps the specimen inside the cylinder that
# every tilt sees, so the ends of the detector axis are vacuum).
BORDER_FRACTION = 1 / 16
# A pixel is vacuum when its HAADF value lies below the vacuum level plus this many noise
# standard deviations plus this fraction of the image's signal range. The fraction was 2 %:
# a thin light support (a SiO2 film under Pt particles, bench/robustness.py at 64^3) stays
# below 2 % of a heavy element's range, was taken for vacuum, and its Si and O read as
# background (1.18x the true one, 1.6-2.0x on subtracted maps; gamma 1.56 for 1.7). At
# 0.5 %: 0.99-1.01x and gamma 1.70 there, nanocubes, core-shell and rod unchanged.
VACUUM_SIGMAS = 3.0
VACUUM_RANGE_FRACTION = 0.005
# Detector-edge strips whose medians differ by more than this fraction of the signal range:
# the specimen reaches an edge of that image.
EDGE_FRACTION = 0.01
# Fewer vacuum pixels than this fraction of an image: fall back to the detector edges.
MIN_VACUUM_FRACTION = 0.05


def _strip_width(n_det: int) -> int:
    return max(2, round(n_det * BORDER_FRACTION))


def border_columns(shape: tuple[int, int]) -> np.ndarray:
    """Boolean [n_slices, n_det] mask of the two detector-edge strips."""
    ns, nd = shape
    w = _strip_width(nd)
    m = np.zeros((ns, nd), dtype=bool)
    m[:, :w] = True
    m[:, nd - w:] = True
    return m


def _robust_sigma(v: np.ndarray) -> float:
    """Standard deviation from the median absolute deviation (Gaussian-consistent)."""
    if v.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _strip_medians(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(images, dtype=np.float64)
    w = _strip_width(a.shape[2])
    return (np.median(a[:, :, :w].reshape(a.shape[0], -1), axis=1),
            np.median(a[:, :, -w:].reshape(a.shape[0], -1), axis=1))


def edge_touching(images: np.ndarray, fraction: float = EDGE_FRACTION) -> np.ndarray:
    """Which HAADF images [k, ns, nd] have specimen in a detector-edge strip: the two strips'
    medians differ by more than `fraction` of the image's signal range (their vacuum level
    is then not to be trusted, and the solver fits it)."""
    a = np.asarray(images, dtype=np.float64)
    left, right = _strip_medians(a)
    rng = np.percentile(a.reshape(a.shape[0], -1), 99.5, axis=1) - np.minimum(left, right)
    return np.abs(left - right) > fraction * np.maximum(rng, 1e-300)


def haadf_offsets(images: np.ndarray) -> np.ndarray:
    """The vacuum level of each HAADF image [k, ns, nd]: the lower of the medians of its two
    detector-edge strips (the lower, because a specimen reaching one edge raises that
    strip's median while the other still sees vacuum)."""
    left, right = _strip_medians(images)
    return np.minimum(left, right)


def haadf_noise(images: np.ndarray) -> float:
    """The HAADF noise standard deviation: the robust (MAD) spread of each image's two
    detector-edge strips, each strip about its own median, the median over the images."""
    a = np.asarray(images, dtype=np.float64)
    w = _strip_width(a.shape[2])
    sig = [min(_robust_sigma(im[:, :w].ravel()), _robust_sigma(im[:, -w:].ravel()))
           for im in a]
    return float(np.median(sig)) if sig else 0.0


def vacuum_mask(image: np.ndarray, offset: float, sigma: float) -> np.ndarray:
    """Boolean mask of the vacuum in one HAADF image: below the vacuum level plus
    VACUUM_SIGMAS noise and VACUUM_RANGE_FRACTION of the signal range, eroded by two pixels
    (away from the specimen's blurred edge). Falls back to the detector-edge strips when
    fewer than MIN_VACUUM_FRACTION of the pixels qualify."""
    im = np.asarray(image, dtype=np.float64)
    rng = float(np.percentile(im, 99.5)) - offset
    thr = offset + VACUUM_SIGMAS * sigma + VACUUM_RANGE_FRACTION * max(rng, 0.0)
    m = ndimage.binary_erosion(im < thr, iterations=2, border_value=1)
    if m.mean() < MIN_VACUUM_FRACTION:
        return border_columns(im.shape)
    return m


def nearest_masks(haadf: np.ndarray, haadf_angles: Sequence[float], angles: Sequence[float],
                  offsets: np.ndarray, sigma: float, max_gap_deg: float = 5.0,
                  ) -> np.ndarray:
    """Vacuum masks [m, ns, nd] for projections at `angles`, each from the HAADF image at
    the nearest angle (within `max_gap_deg`, else the detector-edge strips)."""
    ha = np.asarray(haadf_angles, dtype=np.float64)
    out = []
    for a in np.atleast_1d(np.asarray(angles, dtype=np.float64)):
        if ha.size:
            j = int(np.argmin(np.abs(ha - a)))
            if abs(ha[j] - a) <= max_gap_deg:
                out.append(vacuum_mask(haadf[j], float(offsets[j]), sigma))
                continue
        out.append(border_columns(haadf.shape[1:] if ha.size else _shape_of(angles)))
    return np.stack(out)


def _shape_of(_: Sequence[float]) -> tuple[int, int]:  # pragma: no cover - guarded above
    raise ValueError("no HAADF image to take the projection shape from")


def chem_background_start(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean counts of each map over its vacuum: [n_el, m] from maps [n_el, m, ns, nd] and
    masks [m, ns, nd]."""
    a = np.asarray(maps, dtype=np.float64)
    out = np.empty(a.shape[:2])
    for j in range(a.shape[1]):
        out[:, j] = a[:, j][:, masks[j]].mean(axis=1)
    return out


def vacuum_moments(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per element, [3, n_el]: the number of vacuum pixels, and the sums of the values and of
    their squares over them (maps [n_el, m, ns, nd], masks [m, ns, nd]); sums, so that the
    slabs of a volume split along the tilt axis add theirs up."""
    a = np.asarray(maps, dtype=np.float64)
    m = np.asarray(masks, dtype=bool)
    sel = np.where(m[None], a, 0.0)
    n = np.full(a.shape[0], float(m.sum()))
    return np.stack([n, sel.sum(axis=(1, 2, 3)), (sel * sel).sum(axis=(1, 2, 3))])


def subtracted_level(moments: np.ndarray) -> np.ndarray:
    """For background-subtracted maps, per element, the shift that makes them Poisson again,
    from their `vacuum_moments`: a count n minus a level s has mean E[n] - s and variance
    E[n], so the shift is variance - mean (at least 0)."""
    n, s1, s2 = (np.asarray(v, dtype=np.float64) for v in moments)
    n = np.maximum(n, 1.0)
    mean = s1 / n
    return np.maximum(s2 / n - mean * mean - mean, 0.0)


def image_sums(model: Any, data: Any) -> np.ndarray:
    """Per-image sums [4, k] (model, data, model^2, model*data), float64 on the host: what
    `scale_offsets` needs, and what a slab of a larger volume adds up with the others."""
    xp = array_module(model)
    ax = (1, 2)
    out = xp.stack([model.sum(axis=ax, dtype=xp.float64), data.sum(axis=ax, dtype=xp.float64),
                    (model * model).sum(axis=ax, dtype=xp.float64),
                    (model * data).sum(axis=ax, dtype=xp.float64)])
    return np.asarray(to_numpy(out), dtype=np.float64)


def scale_offsets(sums: np.ndarray, n_pixels: int, offsets: np.ndarray,
                  fit: np.ndarray | bool = True) -> tuple[float, np.ndarray]:
    """Least-squares scale c and per-image offsets o_t of data_t ~ c model_t + o_t from the
    per-image sums of `image_sums`: one c shared by all images; o_t fitted where `fit` (then
    o_t = mean(data_t) - c mean(model_t)), else the given `offsets`. Returns (c, o [k])."""
    sm, sd, smm, smd = sums
    off = np.asarray(offsets, dtype=np.float64)
    f = np.broadcast_to(np.asarray(fit, dtype=bool), sm.shape)
    den = float(np.sum(np.where(f, smm - sm * sm / n_pixels, smm)))
    num = float(np.sum(np.where(f, smd - sm * sd / n_pixels, smd - off * sm)))
    c = num / den if den > 0 else 1.0
    return c, np.where(f, (sd - c * sm) / n_pixels, off)
