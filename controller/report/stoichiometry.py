"""Stoichiometry: atomic fractions per voxel and per region, with standard errors.

The element volumes are in counts per voxel (the chemical maps' units). With a sensitivity
s_El per element (counts per atom, relative; equal for every element unless given, which is
exact for the simulated instrument: one dose scale for all elements), the atomic fraction of
an element in a voxel is

    f_El = (c_El / s_El) / S,   S = sum_j c_j / s_j,

shown only where S exceeds `support_fraction` of its maximum (elsewhere the voxel is vacuum
and the fraction is noise over noise; NaN there). Negative values (background-subtracted
maps) are clipped to 0 first.

Standard error per voxel, from the volumes' own (sigma_j, in the volumes' units) by first-
order propagation with independent element errors: d f_i / d c_j = (delta_ij - f_i) /
(s_j S), so var f_i = sum_j (delta_ij - f_i)^2 sigma_j^2 / (s_j S)^2.

Per region (each connected region of the support, 26-connected, with at least `min_voxels`
voxels, or masks given by the user): the mean of the per-voxel fractions, their spread
(standard deviation over the region's voxels: the stoichiometric precision of the 3D paper)
and the standard error of the mean, sqrt(sum var f) / N, which treats the voxels' errors as
independent (neighbouring voxels' errors are correlated under TV, so it is a lower bound).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from fusetomo.core.errors import FusetomoError

__all__ = ["RegionRow", "StoichiometryError", "StoichiometryParams", "atomic_fractions",
           "fraction_std_error", "region_table", "regions", "table_lines"]


class StoichiometryError(FusetomoError, ValueError):
    """Volumes, standard errors, masks or parameters a stoichiometry cannot be made from;
    the message names the element, mask or value."""


@dataclass(frozen=True)
class StoichiometryParams:
    """Where fractions are defined and what counts as a region."""

    support_fraction: float = 0.10  # S above this fraction of its maximum
    min_voxels: int = 8             # smaller connected regions are left out of the table
    sensitivity: Mapping[str, float] = field(default_factory=dict)  # counts per atom, rel.

    def __post_init__(self) -> None:
        if not 0.0 <= self.support_fraction < 1.0:
            raise StoichiometryError(f"support_fraction must lie in [0, 1), got "
                                     f"{self.support_fraction}")
        if self.min_voxels < 1:
            raise StoichiometryError(f"min_voxels must be >= 1, got {self.min_voxels}")
        for e, s in self.sensitivity.items():
            if not (isinstance(s, int | float) and np.isfinite(s) and s > 0):
                raise StoichiometryError(f"sensitivity of {e} must be a number > 0, got {s!r}")

    def scale(self, element: str) -> float:
        return float(self.sensitivity.get(element, 1.0))


@dataclass(frozen=True)
class RegionRow:
    """One row of the per-region table."""

    region: str
    voxels: int
    fraction: dict[str, float]           # mean atomic fraction per element
    spread: dict[str, float]             # standard deviation over the region's voxels
    std_error: dict[str, float] | None   # standard error of the mean (None: no sigma given)


def _stack(volumes: Mapping[str, np.ndarray], p: StoichiometryParams) -> np.ndarray:
    if len(volumes) < 2:
        raise StoichiometryError(f"a stoichiometry needs at least two element volumes, got "
                                 f"{list(volumes)}")
    unknown = [e for e in p.sensitivity if e not in volumes]
    if unknown:
        raise StoichiometryError(f"sensitivity given for {unknown[0]!r}, which has no volume "
                                 f"(elements {list(volumes)})")
    shapes = {e: np.shape(v) for e, v in volumes.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 3:
        raise StoichiometryError(f"element volumes must share one 3-D shape, got {shapes}")
    return np.stack([np.clip(np.asarray(v, np.float64), 0, None) / p.scale(e)
                     for e, v in volumes.items()])


def support(volumes: Mapping[str, np.ndarray],
            params: StoichiometryParams | None = None) -> np.ndarray:
    """Where fractions are defined: S above support_fraction of its maximum."""
    p = params or StoichiometryParams()
    total = _stack(volumes, p).sum(axis=0)
    peak = float(total.max())
    return total > p.support_fraction * peak if peak > 0 else np.zeros(total.shape, bool)


def atomic_fractions(volumes: Mapping[str, np.ndarray],
                     params: StoichiometryParams | None = None) -> dict[str, np.ndarray]:
    """Per voxel f_El (float64, NaN outside the support)."""
    p = params or StoichiometryParams()
    x = _stack(volumes, p)
    total = x.sum(axis=0)
    inside = support(volumes, p)
    out = {}
    for i, e in enumerate(volumes):
        f = np.full(total.shape, np.nan)
        f[inside] = x[i][inside] / total[inside]
        out[e] = f
    return out


def fraction_std_error(volumes: Mapping[str, np.ndarray], std_error: Mapping[str, np.ndarray],
                       params: StoichiometryParams | None = None) -> dict[str, np.ndarray]:
    """Per voxel standard error of f_El (NaN outside the support); `std_error` in the
    volumes' units, one per element."""
    p = params or StoichiometryParams()
    missing = [e for e in volumes if e not in std_error]
    if missing:
        raise StoichiometryError(f"no standard error for {missing[0]!r}")
    for e in volumes:
        if np.shape(std_error[e]) != np.shape(volumes[e]):
            raise StoichiometryError(f"standard error of {e} has shape "
                                     f"{np.shape(std_error[e])}, its volume "
                                     f"{np.shape(volumes[e])}")
    f = atomic_fractions(volumes, p)
    x = _stack(volumes, p)
    total = x.sum(axis=0)
    inside = np.isfinite(next(iter(f.values())))
    sig = np.stack([np.asarray(std_error[e], np.float64) / p.scale(e) for e in volumes])
    out = {}
    for i, e in enumerate(volumes):
        var = np.zeros(total.shape)
        for j in range(len(volumes)):
            d = (1.0 if i == j else 0.0) - f[e][inside]
            var[inside] += (d * sig[j][inside] / total[inside]) ** 2
        se = np.full(total.shape, np.nan)
        se[inside] = np.sqrt(var[inside])
        out[e] = se
    return out


def regions(volumes: Mapping[str, np.ndarray],
            params: StoichiometryParams | None = None) -> dict[str, np.ndarray]:
    """The connected regions of the support with at least min_voxels voxels, largest first,
    named "1", "2", ..."""
    p = params or StoichiometryParams()
    labels, n = ndimage.label(support(volumes, p), structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = [int(k) + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= p.min_voxels]
    return {str(i): labels == k for i, k in enumerate(order, start=1)}


def region_table(volumes: Mapping[str, np.ndarray],
                 std_error: Mapping[str, np.ndarray] | None = None,
                 masks: Mapping[str, np.ndarray] | None = None,
                 params: StoichiometryParams | None = None) -> list[RegionRow]:
    """One row per region (`masks`, else the support's connected regions): mean atomic
    fraction of each element, spread, and standard error of the mean where `std_error`."""
    p = params or StoichiometryParams()
    f = atomic_fractions(volumes, p)
    se = fraction_std_error(volumes, std_error, p) if std_error is not None else None
    shape = np.shape(next(iter(volumes.values())))
    if masks is None:
        masks = regions(volumes, p)
    rows = []
    for name, mask in masks.items():
        m = np.asarray(mask)
        if m.shape != shape or m.dtype != bool:
            raise StoichiometryError(f"mask {name!r} must be boolean with the volumes' shape "
                                     f"{shape}, got {m.dtype} {m.shape}")
        m = m & np.isfinite(next(iter(f.values())))
        n = int(m.sum())
        if n == 0:
            raise StoichiometryError(f"mask {name!r} has no voxel inside the specimen support "
                                     f"(S > {p.support_fraction} of its max)")
        rows.append(RegionRow(
            name, n, {e: float(f[e][m].mean()) for e in volumes},
            {e: float(f[e][m].std()) for e in volumes},
            None if se is None else {e: float(np.sqrt(np.sum(se[e][m] ** 2)) / n)
                                     for e in volumes}))
    return rows


def table_lines(rows: list[RegionRow], elements: list[str]) -> list[str]:
    """The table as text: one line per region, `mean ± standard error (spread)`."""
    head = f"{'region':<8}{'voxels':>8}  " + "  ".join(f"{e:>22}" for e in elements)
    lines = [head]
    for r in rows:
        cells = []
        for e in elements:
            se = f" ± {r.std_error[e]:.3f}" if r.std_error is not None else ""
            cells.append(f"{r.fraction[e]:.3f}{se} ({r.spread[e]:.3f})".rjust(22))
        lines.append(f"{r.region:<8}{r.voxels:>8}  " + "  ".join(cells))
    return lines
