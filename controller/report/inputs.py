"""Reading a report's input: a run, reconstruction or series file, and the truth to compare with."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fusetomo.adapters.reconfile import FORMAT as RECON_FORMAT
from fusetomo.adapters.reconfile import read_recon
from fusetomo.adapters.runfile import FORMAT as RUN_FORMAT
from fusetomo.adapters.runfile import describe_run, read_run, read_snapshot
from fusetomo.adapters.seriesfile import file_format, read_series, read_truth
from fusetomo.adapters.truncated import describe_truncation
from fusetomo.controller.report.model import (
    MODALITIES,
    ReportError,
    ReportInput,
    ReportParams,
    TiltPoint,
)
from fusetomo.controller.report.numbers import _masked_mean, _support
from fusetomo.solver.metrics import nrmse_per_element


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
        cut = describe_truncation(path, str(e))
        if cut is not None:
            raise ReportError(f"{path}: not a readable HDF5 file, {cut} (HDF5: {e})") from None


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


def counts_per_unit(header: Mapping[str, Any], beside: Path | None = None) -> float | None:
    """Counts per voxel of a unit truth concentration behind a run: the replayed series'
    `counts_per_unit`, or for the simulated instrument its chemical dose turned back into
    its dose scale (simulators/forward.py: kappa = dose * (10 * pixel_size_nm)^2 * yield)."""
    from fusetomo.simulators.forward import CHEM_YIELD

    source = header.get("source")
    if source:
        src = _source_path(str(source), beside)
        return _series_counts_per_unit(src) if src is not None else None
    dose, px = header.get("chem_dose_e_per_A2"), header.get("pixel_size_nm")
    if not isinstance(header.get("specimen"), str) or not all(
            isinstance(v, int | float) and v > 0 for v in (dose, px)):
        return None
    return float(dose) * (10.0 * float(px)) ** 2 * CHEM_YIELD


def _series_counts_per_unit(path: Path) -> float | None:
    try:
        v = read_series(path).attrs.get("counts_per_unit")
    except (OSError, ValueError):
        return None
    return float(v) if isinstance(v, int | float | np.floating) and v > 0 else None


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
        inp.convergence = {k: c[k] for k in ("iteration", "haadf", "chem", "tv", "change",
                                             "n_haadf", "n_chem") if k in c}
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
    inp.truth_counts_per_unit = counts_per_unit(header, path.parent)
    inp.events = dict(Counter(str(e.get("kind")) for e in rec.events))
    inp.advice = advice_log(rec.events)
    controller = next((e for e in rec.events if e.get("kind") == "controller"), {})
    fusion = controller.get("fusion")
    inp.fit_params = dict(fusion) if isinstance(fusion, dict) else {}
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
                           **{k: conv[k] for k in ("haadf", "chem", "tv", "change",
                                                   "n_haadf_tilts", "n_chem_tilts")
                              if k in conv and conv[k].size == n}}
    else:
        inp.notes["convergence"] = (f"method {a.get('method')!r} keeps no cost history "
                                    "(/convergence is empty)")
    inp.parameters = dict(a)
    inp.fit_params = dict(a)
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
        header = _start_header(rec.attrs, src)
        inp.truth, inp.truth_note = simulated_truth(header, rec.series.shape[1], src.parent)
        inp.truth_counts_per_unit = counts_per_unit(header, src.parent)
        inp.dose = {m: np.asarray(rec.dose_e_per_A2[m], np.float64) for m in MODALITIES}
        inp.dose_seq = {m: np.asarray(rec.seq[m]) for m in MODALITIES}
        return
    truth = read_truth(src)
    inp.truth, inp.truth_note = (truth, f"/truth of {src}") if truth else (
        None, f"the source file {src} has no /truth")
    inp.truth_counts_per_unit = _series_counts_per_unit(src)
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
