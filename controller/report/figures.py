"""The report's figures, drawn on matplotlib's Agg canvas (no pyplot)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from fusetomo.controller.report.convergence import draw as draw_convergence
from fusetomo.controller.report.model import (
    MODALITIES,
    PALETTE,
    PLANE_TITLES,
    PLANES,
    ReportInput,
    ReportParams,
    Skip,
)
from fusetomo.controller.report.numbers import _cut, _planes, _vmax, composition_fractions
from fusetomo.controller.report.stoichiometry import StoichiometryParams, atomic_fractions


# -- figures --------------------------------------------------------------------------------
def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _nice_length(span: float) -> float:
    """A 1-2-5 length at most about a quarter of `span`."""
    target = span / 4
    base = 10 ** math.floor(math.log10(target))
    return max(m * base for m in (1, 2, 5) if m * base <= target)


def _scale_bar(ax: Any, n_px: int, pixel_size_nm: float | None) -> None:
    px = pixel_size_nm if pixel_size_nm and pixel_size_nm > 0 else None
    length = _nice_length(n_px * (px or 1.0))
    size = length / (px or 1.0)
    label = f"{length:g} nm" if px else f"{length:g} px"
    ax.add_artist(AnchoredSizeBar(ax.transData, size, label, "lower right", pad=0.3,
                                  color="white", frameon=False, size_vertical=max(n_px / 60, 0.5),
                                  fontproperties={"size": 8}))


COUNTS = "counts per voxel"


def _show_row(fig: Figure, axes: Any, vol: np.ndarray, planes: Mapping[str, int], label: str,
              cmap: str, units: str, px: float | None, vmax: float | None = None,
              vmin: float = 0.0) -> None:
    vmax = _vmax(vol) if vmax is None else vmax
    im = None
    for ax, a in zip(axes, PLANES, strict=True):
        cut = _cut(vol, a, planes[a])
        im = ax.imshow(cut, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        _scale_bar(ax, cut.shape[1], px)
    axes[0].set_ylabel(label)
    fig.colorbar(im, ax=list(axes), shrink=0.85, label=units)


def _plane_titles(axes: Any, planes: Mapping[str, int], px: float | None = None) -> None:
    for ax, a in zip(axes, PLANES, strict=True):
        at = f" ({planes[a] * px:.1f} nm)" if px else ""
        ax.set_title(f"{PLANE_TITLES[a]} = {planes[a]}{at}", fontsize=9)


def _truth_rows(inp: ReportInput, vol: np.ndarray, truth: np.ndarray | None,
                ) -> list[tuple[np.ndarray, str, str]]:
    """(volume, label, units) rows: the reconstruction and, when known, the truth in the
    same quantity (counts per voxel: the truth times the instrument's dose scale)."""
    if inp.kind == "series":
        return [(vol, "truth", "concentration (simulated specimen)")]
    rows = [(vol, "reconstruction", COUNTS)]
    if truth is not None:
        k = inp.truth_counts_per_unit
        rows.append((truth * k, "truth", COUNTS) if k else
                    (truth, "truth", "concentration (dose scale unknown: not comparable)"))
    return rows


def fig_orthoslices(inp: ReportInput, element: str) -> Figure:
    if inp.volumes is None:
        raise Skip(inp.notes.get("volumes", "no volumes"))
    planes = _planes(inp.volumes)
    truth = inp.truth.get(element) if inp.truth is not None else None
    rows = _truth_rows(inp, inp.volumes[element], truth)
    same = [r for r in rows if r[2] == COUNTS]
    top = max(_vmax(r[0]) for r in same) if same else None
    fig = _figure(9.5, 3.0 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (vol, label, units) in enumerate(rows):
        _show_row(fig, axes[r], vol, planes, label, "magma", units, inp.pixel_size_nm,
                  vmax=top if units == COUNTS else None)
    _plane_titles(axes[0], planes, inp.pixel_size_nm)
    fig.suptitle(f"{element}: {inp.volumes_label}" + ("; rows on one colour scale"
                                                      if len(same) > 1 else ""))
    return fig


def fig_fractions(inp: ReportInput, p: ReportParams) -> Figure:
    """Atomic fraction maps (stoichiometry.py) of each element, reconstruction above the
    truth, on one 0-1 scale; grey where the summed volumes are below the threshold."""
    if inp.volumes is None:
        raise Skip(inp.notes.get("volumes", "no volumes"))
    if len(inp.volumes) < 2:
        raise Skip("atomic fractions need at least two element volumes")
    sp = StoichiometryParams(p.fraction_support)
    rec = atomic_fractions(inp.volumes, sp)
    truth = atomic_fractions({e: inp.truth[e] for e in inp.volumes}, sp) \
        if inp.truth is not None and inp.kind != "series" else None
    planes = _planes(inp.volumes)
    rows = [(e, "", rec[e]) for e in inp.volumes]
    if truth is not None:
        rows = [r for e in inp.volumes for r in ((e, "", rec[e]), (e, " truth", truth[e]))]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.35")
    fig = _figure(9.5, 2.4 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (e, what, f) in enumerate(rows):
        _show_row(fig, axes[r], np.ma.masked_invalid(f), planes, f"{e}{what}", cmap,
                  "atomic fraction", inp.pixel_size_nm, vmax=1.0)
    _plane_titles(axes[0], planes, inp.pixel_size_nm)
    fig.suptitle(f"atomic fraction c_El / Σ c per voxel where Σ c > "
                 f"{100 * p.fraction_support:g} % of its max (grey: vacuum); equal counts "
                 "per atom assumed")
    return fig


def rgb_overlay(volumes: Mapping[str, np.ndarray], plane: str, k: int) -> np.ndarray:
    """Additive colour composite [h, w, 3] in [0, 1]: each element scaled to its 99.9th
    percentile and painted in its PALETTE colour."""
    out = None
    for i, (_e, v) in enumerate(volumes.items()):
        cut = np.clip(_cut(v, plane, k) / _vmax(v), 0, 1)[..., None]
        layer = cut * np.asarray(PALETTE[i % len(PALETTE)])
        out = layer if out is None else out + layer
    assert out is not None
    return np.clip(out, 0, 1)


def fig_overlay(inp: ReportInput) -> Figure:
    if inp.volumes is None:
        raise Skip(inp.notes.get("volumes", "no volumes"))
    if len(inp.volumes) < 2:
        raise Skip("an overlay needs at least two element volumes")
    planes = _planes(inp.volumes)
    rows = [("reconstruction" if inp.kind != "series" else "truth", inp.volumes)]
    if inp.truth is not None:
        rows.append(("truth", {e: inp.truth[e] for e in inp.volumes}))
    fig = _figure(9.5, 3.0 * len(rows) + 0.8)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (label, vols) in enumerate(rows):
        for ax, a in zip(axes[r], PLANES, strict=True):
            img = rgb_overlay(vols, a, planes[a])
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            _scale_bar(ax, img.shape[1], inp.pixel_size_nm)
        axes[r][0].set_ylabel(label)
    _plane_titles(axes[0], planes)
    handles = [Patch(color=PALETTE[i % len(PALETTE)], label=e)
               for i, e in enumerate(inp.volumes)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    fig.suptitle(f"colour overlay: {inp.volumes_label}")
    return fig


def fig_std_error(inp: ReportInput) -> Figure:
    if inp.std_error is None:
        raise Skip(inp.notes.get("std_error", "no standard error"))
    planes = _planes(inp.volumes if inp.volumes is not None else inp.std_error)
    els = list(inp.std_error)
    fig = _figure(9.5, 2.6 * len(els) + 0.4)
    axes = fig.subplots(len(els), 3, squeeze=False)
    for r, e in enumerate(els):
        _show_row(fig, axes[r], inp.std_error[e], planes, e, "viridis",
                  f"standard error ({COUNTS})", inp.pixel_size_nm)
    _plane_titles(axes[0], planes, inp.pixel_size_nm)
    fig.suptitle("per-voxel standard error"
                 + (f" ({inp.parameters['std_error']})" if "std_error" in inp.parameters
                    else ""))
    return fig


def fig_convergence(inp: ReportInput) -> Figure:
    c = inp.convergence
    if not c or c.get("iteration", np.zeros(0)).size == 0:
        raise Skip(inp.notes.get("convergence", "no cost history"))
    n = sum(k in c for k in ("haadf", "chem", "tv")) + 1 + int("change" in c)
    fig = _figure(9.5, 1.9 * n + 1.0)
    draw_convergence(fig, c, inp.fit_params, inp.chem_added)
    return fig


def fig_progress(inp: ReportInput) -> Figure:
    panels = []
    if inp.nrmse_per_tilt:
        panels.append(("nrmse", inp.nrmse_per_tilt, "NRMSE against the truth"))
    if inp.std_per_tilt:
        panels.append(("std", inp.std_per_tilt, "mean standard error in the specimen"))
    if not panels:
        why = [inp.notes.get("nrmse_per_tilt") or ("no truth: " + inp.truth_note),
               inp.notes.get("std_per_tilt", "")]
        raise Skip("; ".join(dict.fromkeys(w for w in why if w)))
    fig = _figure(9.5, 3.0 * len(panels) + 0.4)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (kind, pts, title) in zip(axes, panels, strict=True):
        x = [q.n_haadf for q in pts]
        for i, e in enumerate(pts[0].values):
            ax.plot(x, [q.values[e] for q in pts], "o-", ms=3, lw=1, label=e, color=f"C{i}")
        if kind == "nrmse":
            ax.plot(x, [np.mean(list(q.values.values())) for q in pts], "k-", lw=2,
                    label="<NRMSE>")
            ax.set_ylabel("NRMSE")
        else:
            ax.set_ylabel(f"standard error ({COUNTS})")
        for q in pts:
            ax.annotate(str(q.n_chem), (q.n_haadf, ax.get_ylim()[1]), fontsize=7,
                        ha="center", va="top", color="C3")
        ax.set_title(title + "  (red numbers: spectrum images taken)", fontsize=9)
        ax.legend(fontsize=8, ncols=min(len(pts[0].values) + 1, 5))
    axes[-1].set_xlabel("HAADF tilts taken (a last point at the same count: after the final "
                        "iterations)")
    fig.suptitle("progress against tilt number")
    return fig


def fig_dose(inp: ReportInput) -> Figure:
    if not inp.dose or not any(v.size for v in inp.dose.values()):
        raise Skip(inp.notes.get("dose", "no dose record"))
    ordered = inp.dose_seq is not None
    fig = _figure(9.5, 3.4)
    axes = fig.subplots(1, 2 if ordered else 1, squeeze=False)[0]
    totals = {m: float(np.sum(v)) for m, v in inp.dose.items()}
    if ordered:
        assert inp.dose_seq is not None
        ax = axes[0]
        seq = np.concatenate([inp.dose_seq[m] for m in MODALITIES])
        val = np.concatenate([inp.dose[m] for m in MODALITIES])
        mod = np.concatenate([np.full(inp.dose[m].size, i) for i, m in enumerate(MODALITIES)])
        order = np.argsort(seq, kind="stable")
        for i, m in enumerate(MODALITIES):
            ax.step(np.arange(1, order.size + 1), np.cumsum(np.where(mod[order] == i,
                                                                     val[order], 0)),
                    where="post", label=m, color=f"C{i}")
        ax.step(np.arange(1, order.size + 1), np.cumsum(val[order]), where="post",
                label="total", color="k")
        if inp.dose_budget:
            ax.axhline(inp.dose_budget, color="C3", ls="--", lw=1, label="budget")
        if np.all(np.cumsum(val[order]) > 0):
            ax.set_yscale("log")
        ax.set_xlabel("image number (acquisition order)")
        ax.set_ylabel("cumulative dose (e⁻/Å²)")
        ax.legend(fontsize=8)
    ax = axes[-1]
    bars = ax.bar(list(totals), list(totals.values()), color=["C0", "C1"][:len(totals)])
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in totals.values()], fontsize=8)
    counts = {m: inp.dose[m].size for m in inp.dose}
    ax.set_xticks(range(len(totals)), [f"{m}\n({counts[m]} images)" for m in totals])
    ax.set_ylabel("dose (e⁻/Å²)")
    ax.set_title(f"total {sum(totals.values()):.4g} e⁻/Å²", fontsize=9)
    fig.suptitle("dose per modality")
    return fig


def fig_advice(inp: ReportInput) -> Figure:
    pts = [a for a in inp.advice if isinstance(a.get("angle"), int | float)]
    if not pts:
        raise Skip(inp.notes.get("advice", "the run recorded no spectroscopy advice (advice "
                                 "events come from the controller's advisor, e.g. fusetomo "
                                 "demo --policy adaptive --chem-maps K)"))
    fig = _figure(9.5, 3.4)
    ax = fig.subplots()
    gain = [(a["angle"], a["gain_per_dose"]) for a in pts
            if isinstance(a.get("gain_per_dose"), int | float)]
    if gain:
        ax.plot(*zip(*gain, strict=True), "o-", ms=3, lw=1, color="C0",
                label="predicted gain here")
    taken = [a["angle"] for a in pts if a.get("decision") == "acquire"]
    for i, t in enumerate(taken):
        ax.axvline(t, color="C3", lw=1.2, label="spectrum image taken" if i == 0 else None)
    ax.set_xlabel("stage tilt at the advice (°)")
    ax.set_ylabel("nats per e⁻/Å²")
    if gain and all(g > 0 for _, g in gain):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.suptitle(f"spectroscopy advice: {len(pts)} advices, {len(taken)} spectrum images")
    return fig


def fig_stoichiometry(inp: ReportInput, p: ReportParams) -> Figure:
    if inp.volumes is None:
        raise Skip(inp.notes.get("volumes", "no volumes"))
    if len(inp.volumes) < 2:
        raise Skip("stoichiometry needs at least two element volumes")
    rec = composition_fractions(inp.volumes, p)
    truth = composition_fractions({e: inp.truth[e] for e in inp.volumes}, p) \
        if inp.truth is not None else None
    els = list(inp.volumes)
    ncol = min(len(els), 4)
    nrow = math.ceil(len(els) / ncol)
    fig = _figure(2.6 * ncol + 0.6, 2.5 * nrow + 0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    edges = np.linspace(0, 1, p.bins + 1)
    label = "reconstruction" if inp.kind != "series" else "truth"
    for i, (ax, e) in enumerate(zip(axes, els, strict=False)):
        f = rec[e]
        title = e
        if f.size:
            ax.hist(f, bins=edges, color=f"C{i}", alpha=0.75, label=label)
            title += f": {f.mean():.2f} ± {f.std():.2f}"
        if truth is not None and truth[e].size:
            ax.hist(truth[e], bins=edges, histtype="step", color="k", lw=1.2, label="truth")
            title += f"\n(truth {truth[e].mean():.2f} ± {truth[e].std():.2f})"
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("atomic fraction c_El / Σ c")
        ax.set_yticks([])
    for ax in axes[len(els):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle("stoichiometry: per-voxel fractions where each element is present")
    return fig
