"""A finished sweep's summaries: per-point table, results.h5, points.csv, the NRMSE map."""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.controller.sweep.config import FORMAT, VERSION, SweepConfig


# -- summaries, HDF5 and plots --------------------------------------------------------------------
def summarize(rows: Sequence[Mapping[str, str]], cfg: SweepConfig) -> list[dict[str, Any]]:
    """One entry per point with every replicate ok: mean and std of <NRMSE>."""
    by: dict[tuple[int, str], dict[str, Any]] = {}
    n_reps = len(cfg.replicates)
    for r in rows:
        if r["status"] != "ok":
            continue
        k = (int(r["cell"]), r["point"])
        e = by.setdefault(k, {"cell": k[0], "point": k[1], "values": {}, **{
            p: _as_float(r[p]) for p in cfg.parameter_columns}})
        e["values"][int(r["replicate"])] = float(r["nrmse_mean"])
    out = []
    for e in by.values():
        v = np.array(list(e.pop("values").values()))
        if v.size < n_reps:
            continue
        out.append({**e, "nrmse_mean": float(v.mean()), "nrmse_std": float(v.std()),
                    "replicates": int(v.size)})
    return sorted(out, key=lambda e: (e["cell"], e["nrmse_mean"]))


def _column(values: Sequence[Any]) -> np.ndarray:
    try:
        return np.asarray([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray([str(v) for v in values], dtype=object)


def write_tables(out: Path, cfg: SweepConfig, columns: Sequence[str],
                 rows: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]]) -> None:
    """results.h5 (/results: every attempt, /points: per-point summary, one dataset per
    column) and points.csv."""
    import h5py

    from fusetomo.adapters.seriesfile import atomic_h5

    pcols = ["cell", "point", *cfg.parameter_columns, "nrmse_mean", "nrmse_std",
             "replicates"]
    with (out / "points.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(pcols)
        for p in points:
            w.writerow([p[c] for c in pcols])
    str_t = h5py.string_dtype()
    with atomic_h5(out / "results.h5") as h:
        h.attrs["format"] = FORMAT
        h.attrs["version"] = VERSION
        h.attrs["name"] = cfg.name
        h.attrs["method"] = cfg.method
        h.attrs["config"] = cfg.source
        for gname, table, cols in (("results", rows, columns), ("points", points, pcols)):
            g = h.create_group(gname)
            for c in cols:
                col = _column([r.get(c, "") for r in table])
                g.create_dataset(c, data=col.astype(str_t) if col.dtype == object else col)


def plot_results(path: Path, cfg: SweepConfig, points: Sequence[Mapping[str, Any]]) -> None:
    """<NRMSE> map over two swept parameters (best over the others at each pixel, like
    the 3D paper's Fig. 4a), a line for one parameter, a scatter for continuous values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no complete point to plot")
    axes = list(cfg.plot) if cfg.plot else [n for n in cfg.varying
                                            if len({p[n] for p in points}) > 1][:2]
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    if len(axes) == 2:
        x, y = axes
        xs, ys = sorted({p[x] for p in points}), sorted({p[y] for p in points})
        if len(xs) * len(ys) <= 400:
            best = np.full((len(ys), len(xs)), np.nan)
            for p in points:
                i, j = ys.index(p[y]), xs.index(p[x])
                best[i, j] = np.nanmin([best[i, j], p["nrmse_mean"]])
            im = ax.imshow(best, origin="lower", cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v)
                                           for v in xs])
            ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v)
                                           for v in ys])
            for i in range(len(ys)):
                for j in range(len(xs)):
                    if np.isfinite(best[i, j]):
                        ax.text(j, i, f"{best[i, j]:.3f}", ha="center", va="center",
                                fontsize=7, color="w")
        else:
            im = ax.scatter([p[x] for p in points], [p[y] for p in points],
                            c=[p["nrmse_mean"] for p in points], cmap="viridis")
        fig.colorbar(im, ax=ax, label="<NRMSE> (best over other parameters)")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    elif len(axes) == 1:
        x = axes[0]
        xs = sorted({p[x] for p in points})
        ax.plot(xs, [min(p["nrmse_mean"] for p in points if p[x] == v) for v in xs], "o-")
        ax.set_xlabel(x)
        ax.set_ylabel("<NRMSE> (best over other parameters)")
    else:
        ax.bar(range(len(points)), [p["nrmse_mean"] for p in points])
        ax.set_ylabel("<NRMSE>")
    ax.set_title(f"{cfg.name}: {cfg.specimen.name} {cfg.specimen.size}^3, "
                 f"{len(cfg.replicates)} replicate(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _as_float(v: str) -> Any:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
