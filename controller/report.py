"""`fusetomo report`: PNG figures and an index.html for a run, reconstruction or series file.

    make_report("run.h5", "report/")   # -> report/index.html, report/report.json, *.png

What goes in (docs/file-format.md): a run file (§3, read through adapters/runfile.py), a
reconstruction file (§2, controller/reconfile.py) or a series file (§1, whose /truth is then
shown). Figures, each skipped with its reason (in index.html and report.json) when its input
is absent:

    orthoslices_<El>.png  three orthogonal planes of each element (truth below when known),
                          scale bar from pixel_size_nm
    overlay.png           additive colour overlay of all elements on the same planes
    std_error.png         per-voxel standard error of each element (when recorded)
    convergence.png       the three cost terms (HAADF, chemical, TV) against iteration
    progress.png          <NRMSE> (truth known) and mean standard error against tilts taken
    dose.png              cumulative dose per modality in acquisition order, and totals
    stoichiometry.png     histograms of per-voxel fractions x_i / sum_j x_j in the specimen
    advice.png            the spectroscopy advisor's predicted gain per dose at each tilt and
                          the tilts where a spectrum image was taken (advice events of a run)

The truth of a run is found, in this order: `truth=` (a series file with /truth); the
/truth of the series file the instrument replayed (its `source` in the start header);
else, for a simulated instrument (no source, a `seed`), the specimen re-simulated from the
start header's specimen and seed as `fusetomo demo` does. A reconstruction's truth is its
`source_file`'s. The figures are drawn with matplotlib's Agg canvas directly (no pyplot, no
global backend switch), so a report can be made inside a Qt viewer process.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from fusetomo.adapters.runfile import FORMAT as RUN_FORMAT
from fusetomo.adapters.runfile import describe_run, read_run, read_snapshot
from fusetomo.adapters.seriesfile import file_format, read_series, read_truth
from fusetomo.controller.reconfile import FORMAT as RECON_FORMAT
from fusetomo.controller.reconfile import describe_model, model_lines, read_recon
from fusetomo.solver.metrics import nrmse_per_element

MODALITIES = ("haadf", "chem")
PLANES = ("s", "u", "v")
PLANE_TITLES = {"s": "s (normal to the tilt axis)", "u": "u", "v": "v"}
# distinct additive colours for the overlay (RGB first, then yellow, magenta, cyan, ...)
PALETTE = ((1.0, 0.1, 0.1), (0.1, 1.0, 0.1), (0.2, 0.45, 1.0), (1.0, 0.85, 0.0),
           (1.0, 0.1, 1.0), (0.0, 1.0, 1.0), (1.0, 0.55, 0.0), (0.7, 0.7, 0.7))


class ReportError(ValueError):
    """Input a report cannot be made from; the message names the file and what is wrong."""


class Skip(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """A figure whose input is absent; the message says which."""


@dataclass(frozen=True)
class ReportParams:
    """How the report reads its input."""

    # the specimen support: voxels whose summed volumes exceed this fraction of their max
    support_fraction: float = 0.25
    # an element is present in a support voxel above this fraction of its own max there
    presence_fraction: float = 0.25
    bins: int = 50                 # stoichiometry histogram bins on [0, 1]
    dpi: int = 110
    max_snapshots: int = 60        # per-tilt curves read at most this many snapshots
    truth: Path | None = None      # a series file with /truth (overrides the automatic one)

    def __post_init__(self) -> None:
        for name in ("support_fraction", "presence_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ReportError(f"{name} must lie in [0, 1), got {v}")
        for name in ("bins", "dpi", "max_snapshots"):
            if getattr(self, name) < 2:
                raise ReportError(f"{name} must be >= 2, got {getattr(self, name)}")


@dataclass
class TiltPoint:
    """A value recorded after `n_haadf` HAADF and `n_chem` chemical tilts."""

    n_haadf: int
    n_chem: int
    iteration: int
    values: dict[str, float]


@dataclass
class ReportInput:
    """What the figures are drawn from (None / empty: absent, with the reason in notes)."""

    path: Path
    kind: str                                  # run | recon | series
    elements: list[str]
    volumes: dict[str, np.ndarray] | None = None
    volumes_label: str = ""
    std_error: dict[str, np.ndarray] | None = None
    truth: dict[str, np.ndarray] | None = None
    truth_note: str = ""
    pixel_size_nm: float | None = None
    convergence: dict[str, np.ndarray] = field(default_factory=dict)
    chem_added: list[int] = field(default_factory=list)   # iterations a chemical tilt joined
    nrmse_per_tilt: list[TiltPoint] = field(default_factory=list)
    std_per_tilt: list[TiltPoint] = field(default_factory=list)
    dose: dict[str, np.ndarray] = field(default_factory=dict)      # per image, by modality
    dose_seq: dict[str, np.ndarray] | None = None  # acquisition order (None: unknown)
    dose_budget: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    advice: list[dict[str, Any]] = field(default_factory=list)  # the advisor's log
    notes: dict[str, str] = field(default_factory=dict)  # figure -> why its input is absent
    # a run's record counts and cost rows, for the per-tilt curves
    snapshots: int = 0
    std_errors: int = 0
    costs: dict[str, np.ndarray] = field(default_factory=dict)
    series: Any = None  # the TiltSeries of a series file (raw tilts figure)


# -- reading the input ------------------------------------------------------------------------
def load_input(path: str | Path, params: ReportParams | None = None) -> ReportInput:
    """Read a run, reconstruction or series file into what the figures need."""
    p = params or ReportParams()
    path = Path(path)
    _refuse_truncated(path)
    fmt = file_format(path)
    if fmt == RUN_FORMAT:
        inp = _load_run(path, p)
    elif fmt == RECON_FORMAT:
        inp = _load_recon(path, p)
    else:
        inp = _load_series(path)
    if p.truth is not None:
        truth = read_truth(p.truth)
        if not truth:
            raise ReportError(f"{p.truth}: group /truth is missing: no truth to compare with")
        inp.truth, inp.truth_note = truth, f"/truth of {p.truth} (--truth)"
    _check_truth(inp)
    if inp.kind == "run":
        if inp.snapshots >= 2 and inp.truth is not None:
            inp.nrmse_per_tilt = _snapshot_nrmse(path, inp, p)
        if inp.std_errors >= 2:
            inp.std_per_tilt = _std_points(path, inp, p)
    return inp


def _refuse_truncated(path: Path) -> None:
    """Refuse a truncated HDF5 file before it is opened for SWMR reading: an SWMR reader
    skips HDF5's end-of-file check and then retries its metadata reads for minutes (seen
    with HDF5 2.0 on a run file cut to 3 kB). A plain open checks the end of file; it
    refuses a file being written (or left by a dead writer) for other reasons, which are
    left to the SWMR reader."""
    if not path.is_file():
        return
    try:
        with h5py.File(path, "r"):
            pass
    except (OSError, ValueError) as e:
        if "truncated file" in str(e):
            raise ReportError(f"{path}: not a readable HDF5 file ({e})") from None


def _check_truth(inp: ReportInput) -> None:
    """Keep a truth only when it covers the volumes' elements with their shape."""
    if inp.truth is None or inp.volumes is None:
        return
    missing = [e for e in inp.volumes if e not in inp.truth]
    shapes = {inp.truth[e].shape for e in inp.volumes if e in inp.truth}
    want = next(iter(inp.volumes.values())).shape
    if missing or shapes != {want}:
        inp.truth_note = (f"{inp.truth_note} does not match the volumes (elements missing "
                          f"{missing}, shapes {sorted(shapes)} vs {want}): not used")
        inp.truth = None


def _start_header(attrs: Mapping[str, Any], path: Path) -> dict[str, Any]:
    raw = attrs.get("start_header", "{}")
    try:
        h = json.loads(raw)
    except (TypeError, ValueError):
        raise ReportError(f"{path}: root attribute start_header is not JSON") from None
    if not isinstance(h, dict):
        raise ReportError(f"{path}: root attribute start_header is not a JSON object")
    return h


def simulated_truth(header: Mapping[str, Any], size: int,
                    beside: Path | None = None) -> tuple[dict | None, str]:
    """The truth behind a run, from its series_start header (see the module docstring); a
    relative replay source is looked for as written, then in the folder `beside`."""
    from fusetomo.simulators.forward import AcquisitionParams, bin_volume
    from fusetomo.simulators.specimens import SpecimenError, make_specimen, resample

    source = header.get("source")
    if source:
        src = _source_path(str(source), beside) or Path(str(source))
        if src.is_file():
            try:
                truth = read_truth(src)
            except ValueError as e:
                return None, f"the replayed file's truth cannot be read ({e})"
            if truth:
                return truth, f"/truth of the replayed file {src}"
        return None, f"replayed from {src}, which is gone or has no /truth"
    specimen, seed = header.get("specimen"), header.get("seed")
    if not isinstance(specimen, str) or isinstance(seed, bool) or not isinstance(seed, int):
        return None, "the run's start header names no simulated specimen and seed"
    o = AcquisitionParams().oversample
    try:
        spec = make_specimen(specimen, size * o, seed=seed)
    except SpecimenError as e:
        return None, f"specimen {specimen!r} cannot be re-simulated ({e})"
    if spec.size != size * o:
        spec = resample(spec, size * o)
    truth = {e: bin_volume(spec.volumes[i], o) for i, e in enumerate(spec.elements)}
    return truth, f"specimen {specimen!r}, seed {seed}, re-simulated (as fusetomo demo does)"


def _tilts_at(costs: Mapping[str, np.ndarray], iteration: int) -> tuple[int, int]:
    """HAADF and chemical tilts the solver held at `iteration` (from the cost rows)."""
    its = costs.get("iteration", np.zeros(0))
    kh, kc = ("n_haadf", "n_chem") if "n_haadf" in costs else ("n_haadf_tilts",
                                                                 "n_chem_tilts")
    if kh not in costs or kc not in costs or its.size == 0:
        return -1, -1
    i = int(np.searchsorted(its, iteration, side="right")) - 1
    if i < 0:
        return 0, 0
    return int(costs[kh][i]), int(costs[kc][i])


def _pick(n: int, k: int) -> list[int]:
    """At most k indices of range(n), evenly spread, always with the last."""
    if n <= k:
        return list(range(n))
    return sorted(set(np.rint(np.linspace(0, n - 1, k)).astype(int).tolist()))


def _load_run(path: Path, p: ReportParams) -> ReportInput:
    info = describe_run(path)
    if info.get("problem"):
        raise ReportError(str(info["problem"]))
    rec = read_run(path)
    s = rec.series
    header = _start_header(rec.attrs, path)
    inp = ReportInput(path, "run", list(s.elements), pixel_size_nm=s.pixel_size_nm)
    n_snap, n_std = int(info["snapshots"]), int(info["std_errors"])
    if n_snap:
        it, inp.volumes = read_snapshot(path, -1)
        inp.volumes_label = f"latest snapshot (iteration {it}, {n_snap} recorded)"
    else:
        inp.notes["volumes"] = "the run file holds no reconstruction snapshot"
    inp.snapshots, inp.std_errors, inp.costs = n_snap, n_std, rec.costs
    if n_std:
        it_s, inp.std_error = read_snapshot(path, -1, group="std_error")
        inp.parameters["std_error"] = f"iteration {it_s} ({n_std} recorded)"
        if n_std < 2:
            inp.notes["std_per_tilt"] = "only one standard-error map was recorded"
    else:
        inp.notes["std_error"] = "the run file holds no standard-error maps (/run/std_error)"
        inp.notes["std_per_tilt"] = inp.notes["std_error"]
    if n_snap < 2:
        inp.notes["nrmse_per_tilt"] = "fewer than two snapshots were recorded"
    c = rec.costs
    if c.get("iteration", np.zeros(0)).size:
        inp.convergence = {k: c[k] for k in ("iteration", "haadf", "chem", "tv") if k in c}
        if "n_chem" in c:
            grow = np.flatnonzero(np.diff(c["n_chem"], prepend=0) > 0)
            inp.chem_added = [int(c["iteration"][i]) for i in grow]
    else:
        inp.notes["convergence"] = "the run file holds no solver cost rows (/run/costs)"
    inp.dose = {m: np.asarray(rec.dose_e_per_A2[m], np.float64) for m in MODALITIES}
    inp.dose_seq = {m: np.asarray(rec.seq[m]) for m in MODALITIES}
    budget = rec.attrs.get("dose_budget_e_per_A2")
    inp.dose_budget = float(budget) if isinstance(budget, int | float) else None
    inp.truth, inp.truth_note = simulated_truth(header, s.shape[1], path.parent)
    inp.events = dict(Counter(str(e.get("kind")) for e in rec.events))
    inp.advice = advice_log(rec.events)
    controller = next((e for e in rec.events if e.get("kind") == "controller"), {})
    inp.parameters.update(_run_parameters(info, header, controller))
    return inp


ADVICE_COLUMNS = ("id", "tilt_seq", "angle", "action", "gain_per_dose", "best_angle",
                  "chem_maps_used", "answer", "decision", "reason")


def advice_log(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The spectroscopy advisor's recorded advice (`advice` events), each with the answer
    and decision of its last `advice_decision` event."""
    rows: dict[Any, dict[str, Any]] = {}
    for ev in events:
        if ev.get("kind") == "advice":
            rows[ev.get("id")] = {k: ev.get(k) for k in ADVICE_COLUMNS}
        elif ev.get("kind") == "advice_decision" and ev.get("advice_id") in rows:
            row = rows[ev["advice_id"]]
            row["answer"], row["decision"] = ev.get("answer"), ev.get("decision")
    return list(rows.values())


def _run_parameters(info: Mapping[str, Any], header: Mapping[str, Any],
                    controller: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: info.get(k) for k in ("series_id", "created", "updated", "complete",
                                    "haadf_tilts", "chem_tilts", "elements", "shape",
                                    "dose_e_per_A2", "snapshots", "std_errors")}
    scheme = header.get("scheme") if isinstance(header.get("scheme"), dict) else {}
    planned = {k: len(v) for k, v in scheme.items() if isinstance(v, list)}
    out["scheme"] = {"order": scheme.get("order"), **{f"planned {k}": v
                                                      for k, v in planned.items()}}
    for k in ("specimen", "seed", "source", "pixel_size_nm", "gamma", "haadf_dose_e_per_A2",
              "chem_dose_e_per_A2", "dose_budget_e_per_A2", "speed", "drift_sigma_px"):
        if header.get(k) is not None:
            out[k] = header[k]
    for k, v in controller.items():
        if k not in ("kind", "time"):
            out[f"controller {k}"] = v
    return out


def _std_points(path: Path, inp: ReportInput, p: ReportParams) -> list[TiltPoint]:
    ref = inp.truth if inp.truth is not None else inp.volumes
    mask = _support(ref, p) if ref is not None else None
    points = []
    for i in _pick(inp.std_errors, p.max_snapshots):
        it, std = read_snapshot(path, i, group="std_error")
        h, c = _tilts_at(inp.costs, it)
        points.append(TiltPoint(h, c, it, {e: _masked_mean(v, mask) for e, v in std.items()}))
    return points


def _snapshot_nrmse(path: Path, inp: ReportInput, p: ReportParams) -> list[TiltPoint]:
    assert inp.truth is not None
    points = []
    for i in _pick(inp.snapshots, p.max_snapshots):
        it, vols = read_snapshot(path, i)
        scores = nrmse_per_element({e: inp.truth[e] for e in vols}, vols)
        h, c = _tilts_at(inp.costs, it)
        points.append(TiltPoint(h, c, it, scores))
    return points


def _load_recon(path: Path, p: ReportParams) -> ReportInput:
    rec = read_recon(path)
    a = rec.attrs
    px = a.get("pixel_size_nm")
    inp = ReportInput(path, "recon", list(rec.volumes), volumes=rec.volumes,
                      volumes_label=f"{a.get('method', '?')} reconstruction",
                      std_error=rec.std_error or None,
                      pixel_size_nm=float(px) if isinstance(px, int | float) else None)
    if not rec.std_error:
        inp.notes["std_error"] = ("the reconstruction file holds no /std_error (reconstruct "
                                  "with --uncertainty cheap|accurate)")
    inp.notes["nrmse_per_tilt"] = inp.notes["std_per_tilt"] = (
        "a reconstruction file holds one result, not one per tilt (report on the run file)")
    conv = rec.convergence
    if conv.get("haadf", np.zeros(0)).size:
        n = conv["haadf"].size
        inp.convergence = {"iteration": np.arange(1, n + 1),
                           **{k: conv[k] for k in ("haadf", "chem", "tv") if k in conv}}
    else:
        inp.notes["convergence"] = (f"method {a.get('method')!r} keeps no cost history "
                                    "(/convergence is empty)")
    inp.parameters = dict(a)
    inp.notes["advice"] = "a reconstruction file holds no run record (report on the run file)"
    src = _source_path(a.get("source_file"), path.parent)
    if src is not None:
        _recon_source(src, inp)
    else:
        inp.truth_note = "the reconstruction names no readable source file"
        inp.notes["dose"] = "the reconstruction's source file is unknown or gone"
    return inp


def _source_path(src: Any, folder: Path | None) -> Path | None:
    """A file named in another (a reconstruction's source, a replay's source): as written
    (relative to the folder the writer ran in), else by its name in `folder`."""
    if not isinstance(src, str) or not src:
        return None
    for cand in (Path(src), *([folder / Path(src).name] if folder is not None else [])):
        if cand.is_file():
            return cand
    return None


def _recon_source(src: Path, inp: ReportInput) -> None:
    """Truth and dose of a reconstruction from the file it was made from."""
    if file_format(src) == RUN_FORMAT:
        rec = read_run(src)
        inp.truth, inp.truth_note = simulated_truth(_start_header(rec.attrs, src),
                                                    rec.series.shape[1], src.parent)
        inp.dose = {m: np.asarray(rec.dose_e_per_A2[m], np.float64) for m in MODALITIES}
        inp.dose_seq = {m: np.asarray(rec.seq[m]) for m in MODALITIES}
        return
    truth = read_truth(src)
    inp.truth, inp.truth_note = (truth, f"/truth of {src}") if truth else (
        None, f"the source file {src} has no /truth")
    _series_dose(read_series(src), inp)


def _series_dose(series: Any, inp: ReportInput) -> None:
    a = series.attrs
    h, c = a.get("haadf_dose_e_per_A2"), a.get("chem_dose_e_per_A2")
    if isinstance(h, int | float) and isinstance(c, int | float):
        inp.dose = {"haadf": np.full(series.haadf.shape[0], float(h)),
                    "chem": np.full(series.common_chem_angles.size, float(c))}
    else:
        inp.notes["dose"] = ("the series has no per-image dose attributes "
                             "(haadf_dose_e_per_A2, chem_dose_e_per_A2)")


def _load_series(path: Path) -> ReportInput:
    series = read_series(path)
    truth = read_truth(path)
    inp = ReportInput(path, "series", list(series.elements), pixel_size_nm=series.pixel_size_nm,
                      series=series)
    if truth:
        inp.volumes, inp.volumes_label = truth, "the series' /truth (simulated specimen)"
        inp.truth_note = "the volumes shown are the truth itself"
    else:
        inp.notes["volumes"] = "a series file without /truth holds no volume"
    inp.notes["advice"] = "a series file holds no run record"
    for key in ("convergence", "std_error"):
        inp.notes[key] = "a series file holds no reconstruction"
    inp.notes["nrmse_per_tilt"] = inp.notes["std_per_tilt"] = inp.notes["convergence"]
    _series_dose(series, inp)
    inp.parameters = {"haadf_tilts": int(series.haadf.shape[0]),
                      "chem_tilts": int(series.common_chem_angles.size),
                      "elements": series.elements, "shape": list(series.shape),
                      "gamma": series.gamma, "pixel_size_nm": series.pixel_size_nm,
                      **{k: v for k, v in series.attrs.items()
                         if isinstance(v, str | int | float)}}
    return inp


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
    return {"s": v[k], "u": v[:, k, :], "v": v[:, :, k]}[plane]


def _vmax(v: np.ndarray) -> float:
    top = float(np.percentile(v, 99.9))
    return top if top > 0 else (float(v.max()) or 1.0)


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


def _show_row(fig: Figure, axes: Any, vol: np.ndarray, planes: Mapping[str, int], label: str,
              cmap: str, units: str, px: float | None) -> None:
    vmax = _vmax(vol)
    im = None
    for ax, a in zip(axes, PLANES, strict=True):
        im = ax.imshow(_cut(vol, a, planes[a]), cmap=cmap, vmin=0, vmax=vmax,
                       interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        _scale_bar(ax, _cut(vol, a, planes[a]).shape[1], px)
    axes[0].set_ylabel(label)
    fig.colorbar(im, ax=list(axes), shrink=0.85, label=units)


def _plane_titles(axes: Any, planes: Mapping[str, int]) -> None:
    for ax, a in zip(axes, PLANES, strict=True):
        ax.set_title(f"{PLANE_TITLES[a]} = {planes[a]}", fontsize=9)


def fig_orthoslices(inp: ReportInput, element: str) -> Figure:
    if inp.volumes is None:
        raise Skip(inp.notes.get("volumes", "no volumes"))
    planes = _planes(inp.volumes)
    rows = [(inp.volumes[element], "reconstruction" if inp.kind != "series" else "truth",
             "magma", "counts / voxel" if inp.kind != "series" else "concentration")]
    if inp.truth is not None and element in inp.truth:
        rows.append((inp.truth[element], "truth", "magma", "concentration"))
    fig = _figure(9.5, 3.0 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (vol, label, cmap, units) in enumerate(rows):
        _show_row(fig, axes[r], vol, planes, label, cmap, units, inp.pixel_size_nm)
    _plane_titles(axes[0], planes)
    fig.suptitle(f"{element}: {inp.volumes_label}")
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
        _show_row(fig, axes[r], inp.std_error[e], planes, e, "viridis", "std error (volume units)",
                  inp.pixel_size_nm)
    _plane_titles(axes[0], planes)
    fig.suptitle("per-voxel standard error"
                 + (f" ({inp.parameters['std_error']})" if "std_error" in inp.parameters
                    else ""))
    return fig


def fig_convergence(inp: ReportInput) -> Figure:
    c = inp.convergence
    if not c or c.get("iteration", np.zeros(0)).size == 0:
        raise Skip(inp.notes.get("convergence", "no cost history"))
    terms = [(k, t) for k, t in (("haadf", "HAADF data term (Psi1)"),
                                 ("chem", "chemical data term (Psi2)"),
                                 ("tv", "total variation")) if k in c]
    fig = _figure(9.5, 2.3 * len(terms) + 0.4)
    axes = fig.subplots(len(terms), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (k, title) in zip(axes, terms, strict=True):
        y = np.asarray(c[k], np.float64)
        ok = np.isfinite(y)
        ax.plot(c["iteration"][ok], y[ok], lw=1.0, color="C0")
        if ok.any() and np.all(y[ok] > 0):
            ax.set_yscale("log")
        for it in inp.chem_added:
            ax.axvline(it, color="C3", lw=0.6, ls=":")
        ax.set_ylabel(k)
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("iteration" + ("  (dotted: a spectrum image joined)"
                                       if inp.chem_added else ""))
    fig.suptitle("convergence of the three cost terms")
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
            ax.set_ylabel("std error (volume units)")
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
        ax.set_ylabel("cumulative dose (e/Å²)")
        ax.legend(fontsize=8)
    ax = axes[-1]
    bars = ax.bar(list(totals), list(totals.values()), color=["C0", "C1"][:len(totals)])
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in totals.values()], fontsize=8)
    counts = {m: inp.dose[m].size for m in inp.dose}
    ax.set_xticks(range(len(totals)), [f"{m}\n({counts[m]} images)" for m in totals])
    ax.set_ylabel("dose (e/Å²)")
    ax.set_title(f"total {sum(totals.values()):.4g} e/Å²", fontsize=9)
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
    ax.set_xlabel("stage tilt at the advice (deg)")
    ax.set_ylabel("nats per e/Å²")
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
        ax.set_xlabel("fraction x_i / Σ x_j")
        ax.set_yticks([])
    for ax in axes[len(els):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle("stoichiometry: per-voxel fractions where each element is present")
    return fig


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
        (FigureEntry("convergence", "Convergence of the three terms"),
         lambda: fig_convergence(inp)),
        (FigureEntry("progress", "Uncertainty and <NRMSE> against tilt number"),
         lambda: fig_progress(inp)),
        (FigureEntry("dose", "Dose per modality"), lambda: fig_dose(inp)),
        (FigureEntry("stoichiometry", "Stoichiometry histograms"),
         lambda: fig_stoichiometry(inp, p)),
        (FigureEntry("advice", "Spectroscopy advice"), lambda: fig_advice(inp)),
    ]
    if inp.series is not None:  # a series file: its raw tilts (controller/report_tilts.py)
        from fusetomo.controller.report_tilts import fig_tilts

        out.insert(0, (FigureEntry("tilts", "Raw tilts and maps"),
                       lambda: fig_tilts(inp.series)))
    return out


def summary(inp: ReportInput, p: ReportParams) -> dict[str, Any]:
    """The report's numbers (written to report.json)."""
    out: dict[str, Any] = {"file": str(inp.path), "kind": inp.kind, "elements": inp.elements,
                           "volumes": inp.volumes_label or None,
                           "truth": inp.truth_note or None,
                           "pixel_size_nm": inp.pixel_size_nm}
    if inp.volumes is not None and inp.truth is not None:
        scores = nrmse_per_element({e: inp.truth[e] for e in inp.volumes}, inp.volumes)
        out["nrmse"] = scores
        out["nrmse_mean"] = float(np.mean(list(scores.values())))
    if inp.volumes is not None and len(inp.volumes) >= 2:
        out["stoichiometry"] = _stats(composition_fractions(inp.volumes, p))
        if inp.truth is not None:
            out["stoichiometry_truth"] = _stats(composition_fractions(
                {e: inp.truth[e] for e in inp.volumes}, p))
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
    (out / "report.json").write_text(json.dumps(doc, indent=2, default=_json) + "\n")
    (out / "index.html").write_text(_html(inp, doc, figures))
    return doc


def _json(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


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
    return html.escape(json.dumps(v, default=_json) if isinstance(v, list) else str(v))


def _table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>"
                   for k, v in rows.items() if v is not None)
    return f"<table>{body}</table>"


def _rows_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
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
    for key, label in (("dose_e_per_A2", "dose (e/Å²)"), ("images", "images"),
                       ("mean_std_error", "mean standard error in the specimen")):
        if key in doc:
            numbers[label] = doc[key]
    for key, label in (("stoichiometry", "stoichiometry (mean ± std)"),
                       ("stoichiometry_truth", "stoichiometry of the truth")):
        if key in doc:
            numbers[label] = {el: f"{s['mean']:.3f} ± {s['std']:.3f}"
                              for el, s in doc[key].items()}
    if numbers:
        parts += ["<h2>Results</h2>", _table(numbers)]
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
