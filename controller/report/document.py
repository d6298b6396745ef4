"""The report itself: which figures, the summary (report.json) and index.html."""
from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fusetomo.adapters.reconfile import describe_model, model_lines
from fusetomo.controller.report.convergence import verdict
from fusetomo.controller.report.figures import (
    fig_advice,
    fig_convergence,
    fig_dose,
    fig_fractions,
    fig_orthoslices,
    fig_overlay,
    fig_progress,
    fig_std_error,
    fig_stoichiometry,
)
from fusetomo.controller.report.inputs import ADVICE_COLUMNS, load_input
from fusetomo.controller.report.model import ReportInput, ReportParams, Skip
from fusetomo.controller.report.numbers import _masked_mean, _stats, _support, composition_fractions
from fusetomo.controller.report.stoichiometry import StoichiometryParams, region_table
from fusetomo.core.jsonable import lenient_default
from fusetomo.solver.metrics import nrmse_per_element


# -- the report -----------------------------------------------------------------------------
@dataclass
class FigureEntry:
    name: str
    title: str
    file: str | None = None
    skipped: str | None = None


def _entries(inp: ReportInput, p: ReportParams) -> list[tuple[FigureEntry, Callable[[], Figure]]]:
    out: list[tuple[FigureEntry, Callable[[], Figure]]] = [
        (FigureEntry(f"orthoslices_{e}", f"Orthoslices of {e}"),
         (lambda e=e: fig_orthoslices(inp, e))) for e in inp.elements]
    out += [
        (FigureEntry("overlay", "Colour overlay"), lambda: fig_overlay(inp)),
        (FigureEntry("std_error", "Standard-error maps"), lambda: fig_std_error(inp)),
        (FigureEntry("fractions", "Atomic fraction per voxel"),
         lambda: fig_fractions(inp, p)),
        (FigureEntry("convergence", "Convergence: total cost and weighted terms"),
         lambda: fig_convergence(inp)),
        (FigureEntry("progress", "Uncertainty and <NRMSE> against tilt number"),
         lambda: fig_progress(inp)),
        (FigureEntry("dose", "Dose per modality"), lambda: fig_dose(inp)),
        (FigureEntry("stoichiometry", "Stoichiometry histograms"),
         lambda: fig_stoichiometry(inp, p)),
        (FigureEntry("advice", "Spectroscopy advice"), lambda: fig_advice(inp)),
    ]
    if inp.series is not None:  # a series file: its raw tilts (report/tilts.py)
        from fusetomo.controller.report.tilts import fig_tilts

        out.insert(0, (FigureEntry("tilts", "Raw tilts and maps"),
                       lambda: fig_tilts(inp.series)))
    return out


def summary(inp: ReportInput, p: ReportParams) -> dict[str, Any]:
    """The report's numbers (written to report.json)."""
    out: dict[str, Any] = {"file": str(inp.path), "kind": inp.kind, "elements": inp.elements,
                           "volumes": inp.volumes_label or None,
                           "truth": inp.truth_note or None,
                           "pixel_size_nm": inp.pixel_size_nm,
                           "truth_counts_per_unit": inp.truth_counts_per_unit}
    if inp.volumes is not None and inp.truth is not None:
        scores = nrmse_per_element({e: inp.truth[e] for e in inp.volumes}, inp.volumes)
        out["nrmse"] = scores
        out["nrmse_mean"] = float(np.mean(list(scores.values())))
    if inp.volumes is not None and len(inp.volumes) >= 2:
        out["stoichiometry"] = _stats(composition_fractions(inp.volumes, p))
        if inp.truth is not None:
            out["stoichiometry_truth"] = _stats(composition_fractions(
                {e: inp.truth[e] for e in inp.volumes}, p))
    if inp.volumes is not None and len(inp.volumes) >= 2:
        rows = region_table(inp.volumes, inp.std_error, None,
                            StoichiometryParams(p.fraction_support))
        out["regions"] = [asdict(r) for r in rows]
    if inp.convergence.get("iteration", np.zeros(0)).size:
        v = verdict(inp.convergence, inp.fit_params)
        out["convergence"] = {"state": v.state, "detail": v.detail}
    out["units"] = {"volumes": "counts per voxel", "std_error": "counts per voxel",
                    "fractions": "atomic fraction", "dose": "e⁻/Å²", "angles": "degree",
                    "pixel_size": "nm"}
    if inp.std_error is not None:
        ref = inp.truth if inp.truth is not None else inp.volumes
        mask = _support(ref, p) if ref is not None else None
        out["mean_std_error"] = {e: _masked_mean(v, mask) for e, v in inp.std_error.items()}
    if inp.dose:
        d = {m: float(np.sum(v)) for m, v in inp.dose.items()}
        out["dose_e_per_A2"] = {**d, "total": sum(d.values())}
        out["images"] = {m: int(v.size) for m, v in inp.dose.items()}
    if inp.nrmse_per_tilt:
        out["nrmse_per_tilt"] = [asdict(q) for q in inp.nrmse_per_tilt]
    if inp.std_per_tilt:
        out["std_error_per_tilt"] = [asdict(q) for q in inp.std_per_tilt]
    if inp.events:
        out["events"] = inp.events
    if inp.advice:
        out["advice"] = inp.advice
    model = describe_model(inp.parameters) if inp.kind == "recon" else None
    if model is not None:
        out["model"] = model
    out["report_params"] = {k: str(v) if isinstance(v, Path) else v
                            for k, v in asdict(p).items()}
    return out


def make_report(path: str | Path, out_dir: str | Path,
                params: ReportParams | None = None) -> dict[str, Any]:
    """Write the figures, report.json and index.html of `path` into `out_dir`; return the
    summary (report.json's content)."""
    p = params or ReportParams()
    out = Path(out_dir)
    inp = load_input(path, p)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[FigureEntry] = []
    for entry, draw in _entries(inp, p):
        try:
            fig = draw()
        except Skip as why:
            entry.skipped = str(why)
        else:
            entry.file = f"{entry.name}.png"
            fig.savefig(out / entry.file, dpi=p.dpi)
        figures.append(entry)
    doc = summary(inp, p)
    doc["figures"] = {f.name: f.file for f in figures if f.file}
    doc["skipped"] = {f.name: f.skipped for f in figures if f.skipped}
    (out / "report.json").write_text(json.dumps(doc, indent=2, default=lenient_default) + "\n")
    (out / "index.html").write_text(_html(inp, doc, figures))
    return doc


# -- index.html -----------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;
text-align:left;font-size:90%}figure{margin:1.5em 0}img{max-width:100%}
.skip{color:#a33}"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_cell(x)}" for k, x in v.items())
    return html.escape(json.dumps(v, default=lenient_default) if isinstance(v, list) else str(v))


def _table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>"
                   for k, v in rows.items() if v is not None)
    return f"<table>{body}</table>"


def _rows_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _regions_table(rows: list[dict[str, Any]], elements: list[str]) -> str:
    head = "<th>region</th><th>voxels</th>" + "".join(f"<th>{html.escape(e)}</th>"
                                                      for e in elements)
    body = ""
    for r in rows:
        cells = ""
        for e in elements:
            se = f" ± {r['std_error'][e]:.3f}" if r.get("std_error") else ""
            cells += f"<td>{r['fraction'][e]:.3f}{se} ({r['spread'][e]:.3f})</td>"
        body += f"<tr><td>{html.escape(r['region'])}</td><td>{r['voxels']}</td>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(inp: ReportInput, doc: Mapping[str, Any], figures: list[FigureEntry]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fusetomo report: "
             f"{e(inp.path.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>fusetomo report: {e(inp.path.name)}</h1>",
             f"<p>{e(inp.kind)} file <code>{e(str(inp.path))}</code>; volumes: "
             f"{e(inp.volumes_label or 'none')}; truth: {e(inp.truth_note or 'none')}.</p>"]
    numbers: dict[str, Any] = {}
    if "nrmse_mean" in doc:
        numbers["<NRMSE>"] = doc["nrmse_mean"]
        numbers["NRMSE per element"] = doc["nrmse"]
    if "convergence" in doc:
        numbers["convergence"] = (f"{doc['convergence']['state']} "
                                  f"({doc['convergence']['detail']})")
    for key, label in (("dose_e_per_A2", "dose (e⁻/Å²)"), ("images", "images"),
                       ("mean_std_error", "mean standard error in the specimen (counts "
                                          "per voxel)")):
        if key in doc:
            numbers[label] = doc[key]
    for key, label in (("stoichiometry", "stoichiometry (mean ± std)"),
                       ("stoichiometry_truth", "stoichiometry of the truth")):
        if key in doc:
            numbers[label] = {el: f"{s['mean']:.3f} ± {s['std']:.3f}"
                              for el, s in doc[key].items()}
    if numbers:
        parts += ["<h2>Results</h2>", _table(numbers)]
    if doc.get("regions"):
        parts += ["<h2>Stoichiometry per region</h2>",
                  "<p>Mean atomic fraction of each element in each connected region of the "
                  "specimen ± its standard error (voxel errors taken as independent: a lower "
                  "bound), and in brackets the spread over the region's voxels.</p>",
                  _regions_table(doc["regions"], inp.elements)]
    if "model" in doc:
        parts.append("<h2>Model of the data (stated or estimated)</h2><ul>")
        parts += [f"<li>{e(line)}</li>" for line in model_lines(inp.parameters)]
        parts.append("</ul>")
        parts += [f"<p class='skip'><b>warning:</b> {e(w)}</p>" for w in doc["model"]["warnings"]]
    parts.append("<h2>Figures</h2>")
    for f in figures:
        if f.file:
            parts.append(f"<figure><h3>{e(f.title)}</h3><img src='{e(f.file)}' "
                         f"alt='{e(f.title)}'><figcaption>{e(f.file)}</figcaption></figure>")
    skipped = [f for f in figures if f.skipped]
    if skipped:
        parts.append("<h2>Not shown</h2><ul>")
        parts += [f"<li class='skip'><b>{e(f.title)}</b> ({e(f.name)}.png): "
                  f"{e(str(f.skipped))}</li>" for f in skipped]
        parts.append("</ul>")
    parts += ["<h2>Run parameters</h2>", _table(inp.parameters)]
    if inp.advice:
        parts += ["<h2>Spectroscopy advice</h2>", _rows_table(inp.advice, ADVICE_COLUMNS)]
    if inp.events:
        parts += ["<h2>Recorded events</h2>", _table(inp.events)]
    parts += ["<h2>Report parameters</h2>", _table(doc["report_params"]), "</body></html>"]
    return "\n".join(parts) + "\n"
