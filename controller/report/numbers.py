"""The numbers behind the figures: the specimen support, composition fractions, planes."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fusetomo.controller.report.model import PLANES, ReportParams


# -- numbers --------------------------------------------------------------------------------
def _support(volumes: Mapping[str, np.ndarray], p: ReportParams) -> np.ndarray:
    total = np.sum([np.clip(v, 0, None) for v in volumes.values()], axis=0)
    peak = float(total.max())
    return total > p.support_fraction * peak if peak > 0 else np.zeros(total.shape, bool)


def _masked_mean(v: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is None or not mask.any():
        return float(np.mean(v))
    return float(np.mean(v[mask]))


def composition_fractions(volumes: Mapping[str, np.ndarray],
                          params: ReportParams | None = None) -> dict[str, np.ndarray]:
    """Per-voxel fractions x_i / sum_j x_j of each element where it is present inside the
    specimen support (ReportParams.support_fraction, presence_fraction): what the 3D paper's
    stoichiometry histograms show (negative values clipped to 0)."""
    p = params or ReportParams()
    vols = {e: np.clip(np.asarray(v, np.float64), 0, None) for e, v in volumes.items()}
    total = np.sum(list(vols.values()), axis=0)
    support = _support(vols, p)
    out = {}
    for e, v in vols.items():
        inside = v[support]
        peak = float(inside.max()) if inside.size else 0.0
        present = support & (v > p.presence_fraction * peak) if peak > 0 else support & False
        out[e] = v[present] / total[present]
    return out


def _stats(fractions: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {e: {"mean": float(f.mean()), "std": float(f.std()), "voxels": int(f.size)}
            for e, f in fractions.items() if f.size}


def _planes(volumes: Mapping[str, np.ndarray]) -> dict[str, int]:
    """For each axis the plane holding the most signal (summed over the elements)."""
    total = np.sum([np.clip(v, 0, None) for v in volumes.values()], axis=0)
    return {a: int(np.argmax(total.sum(axis=tuple(j for j in range(3) if j != i))))
            for i, a in enumerate(PLANES)}


def _cut(v: np.ndarray, plane: str, k: int) -> np.ndarray:
    """Plane k normal to axis `plane` (only that one is indexed: the axes may differ in
    length, e.g. fewer slices than detector pixels)."""
    if plane == "s":
        return v[k]
    if plane == "u":
        return v[:, k, :]
    return v[:, :, k]


def _vmax(v: np.ndarray) -> float:
    top = float(np.percentile(v, 99.9))
    return top if top > 0 else (float(v.max()) or 1.0)
