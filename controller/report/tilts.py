"""The report's "tilts" figure: a series' raw HAADF images at a few tilts, each with the
element maps of the spectrum image taken nearest to it (controller/report.py draws it for
series files, imported or simulated, so that a series without a reconstruction still shows
what it holds)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from fusetomo.adapters.series import TiltSeries

__all__ = ["fig_tilts", "picked_tilts"]

MAX_COLUMNS = 6


def picked_tilts(angles: np.ndarray, k: int = MAX_COLUMNS) -> list[int]:
    """Indices of up to k tilts spread evenly over the series, in angle order."""
    order = np.argsort(angles)
    if order.size <= k:
        return [int(i) for i in order]
    return [int(order[j]) for j in np.linspace(0, order.size - 1, k).round().astype(int)]


def _limits(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def fig_tilts(series: TiltSeries) -> Figure:
    """One column per picked tilt: the HAADF image (its own contrast limits, 0.5-99.5th
    percentile), then one row per element: the map of the nearest spectrum image (its
    angle in the title; maps may be negative after background subtraction)."""
    cols = picked_tilts(series.haadf_angles)
    els = series.elements
    rows = 1 + len(els)
    fig = Figure(figsize=(2.2 * len(cols), 2.3 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, len(cols), squeeze=False))
    cang = series.common_chem_angles
    for c, i in enumerate(cols):
        img = series.haadf[i]
        ax = axes[0, c]
        ax.imshow(img, cmap="gray", vmin=_limits(img)[0], vmax=_limits(img)[1])
        ax.set_title(f"HAADF {series.haadf_angles[i]:+.1f}°", fontsize=9)
        for r, e in enumerate(els, start=1):
            ax = axes[r, c]
            if cang.size == 0:
                ax.set_axis_off()
                continue
            j = int(np.argmin(np.abs(cang - series.haadf_angles[i])))
            m = series.chem[e][j]
            lo, hi = _limits(m)
            ax.imshow(m, cmap="magma", vmin=lo, vmax=hi)
            ax.set_title(f"{e} {cang[j]:+.1f}°", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("s (tilt axis)")
    kind = "HAADF-only series" if series.haadf_only else \
        f"{cang.size} spectrum images ({series.chem_kind} maps)"
    fig.suptitle(f"{series.haadf.shape[0]} HAADF images, {kind}", fontsize=10)
    return fig
