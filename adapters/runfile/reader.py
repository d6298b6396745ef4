"""Reading a run file in any state (live, crashed, complete): its committed records, one
snapshot, a summary for `inspect`, and a full check of every checksum (`verify_run`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.adapters.runfile.history import angle_dataset, check_tilts
from fusetomo.adapters.runfile.layout import Layout, layout_from_file, volume_crc
from fusetomo.adapters.runfile.store import (
    MODALITIES,
    VOLUME_GROUPS,
    RunFileError,
    State,
    WriterLock,
    events_from_rows,
    open_read,
    read_state,
    rows,
)
from fusetomo.adapters.series import SeriesError, TiltSeries
from fusetomo.core.angles import angle_key


@dataclass
class RunRecord:
    """The committed content of a run file (snapshot volumes are read with read_snapshot)."""

    series: TiltSeries
    seq: dict[str, np.ndarray]
    dose_e_per_A2: dict[str, np.ndarray]  # noqa: N815
    t_received: dict[str, np.ndarray]
    events: list[dict[str, Any]]
    costs: dict[str, np.ndarray]
    snapshot_iterations: np.ndarray
    complete: bool
    attrs: dict[str, Any]
    volume_names: tuple[str, ...]  # of the snapshots: the elements, or ("HAADF",) (Layout)


def read_run(path: str | Path) -> RunRecord:
    """Read the committed records of a run file without changing it: works while the writer
    is live (SWMR reading), after it died, and once it is complete. CRCs are checked."""
    path = Path(path)
    with open_read(path) as f:
        s = read_state(f, path)
        lay = layout_from_file(f, path)
        h_ang = rows(f, "haadf/angles", s.haadf, path)
        c_ang = {e: rows(f, f"chem/{e}/angles", s.chem, path) for e in lay.elements}
        book = {m: {k: rows(f, f"run/{m}/{k}", getattr(s, m), path) for k in lay.tilt_fields}
                for m in MODALITIES}
        # First, so that a damaged tilt is named (its compressed frames may not even read).
        check_tilts(f, path, s, lay, book,
                    {"haadf": h_ang,
                     "chem": rows(f, angle_dataset("chem", lay.elements), s.chem, path)})
        haadf = rows(f, "haadf/data", s.haadf, path)
        chem = {e: rows(f, f"chem/{e}/data", s.chem, path) for e in lay.elements}
        events = events_from_rows(rows(f, "run/events", s.events, path), path)
        costs = {k: rows(f, f"run/costs/{k}", s.costs, path)
                 for k in ("iteration", *lay.cost_terms)}
        snaps = rows(f, "run/snapshots/iteration", s.snapshots, path)
    attrs = {k: v for k, v in lay.attrs.items()
             if k not in ("format", "version", "gamma", "pixel_size_nm")}
    try:
        series = TiltSeries(haadf, h_ang, chem, c_ang, Z=dict(lay.Z),
                            background=dict(lay.background), gamma=lay.attrs.get("gamma"),
                            pixel_size_nm=lay.attrs.get("pixel_size_nm"), attrs=attrs)
    except SeriesError as e:
        raise RunFileError(f"{path}: {e}") from None
    return RunRecord(series, {m: book[m]["seq"] for m in MODALITIES},
                     {m: book[m]["dose_e_per_A2"] for m in MODALITIES},
                     {m: book[m]["t_received"] for m in MODALITIES},
                     events, costs, snaps, bool(s.complete), lay.attrs, lay.volume_names)


def _check_volume(f: Any, path: Path, lay: Layout, group: str, i: int, n: int,
                  vol: np.ndarray) -> None:
    if not lay.checksums:
        return
    it = int(rows(f, f"run/{group}/iteration", n, path)[i])
    n_tilts = rows(f, f"run/{group}/n_tilts", n, path)[i]
    final = int(rows(f, f"run/{group}/final", n, path)[i])
    want = int(rows(f, f"run/{group}/crc32", n, path)[i])
    if volume_crc(vol, it, n_tilts, final) != want:
        raise RunFileError(f"{path}: /run/{group}/volumes entry {i} (iteration {it}) fails "
                           f"its CRC-32 (/run/{group}/crc32); file damaged")


def read_snapshot(path: str | Path, index: int = -1,
                  group: str = "snapshots") -> tuple[int, dict[str, np.ndarray]]:
    """One recorded snapshot (default: the latest) as (iteration, element -> volume);
    `group="std_error"` reads the standard-error volumes instead. Its CRC is checked."""
    path = Path(path)
    if group not in VOLUME_GROUPS:
        raise RunFileError(f"{path}: no volume group {group!r}; choose from "
                           f"{list(VOLUME_GROUPS)}")
    with open_read(path) as f:
        s = read_state(f, path)
        lay = layout_from_file(f, path)
        n = getattr(s, group)
        if not -n <= index < n:
            raise RunFileError(f"{path}: /run/{group}: no entry {index} (it holds {n})")
        i = index % n
        it = rows(f, f"run/{group}/iteration", n, path)[i]
        vol = rows(f, f"run/{group}/volumes", i + 1, path, i)[0]
        _check_volume(f, path, lay, group, i, n, vol)
    return int(it), {e: vol[k] for k, e in enumerate(lay.volume_names)}


def verify_run(path: str | Path) -> dict[str, int]:
    """Check every checksum of a run file: the commit record, every committed tilt (frames,
    seq, angle, doses), every snapshot and standard-error volume (version 3), and that every
    event is JSON. RunFileError naming the first damaged dataset; else the counts checked."""
    path = Path(path)
    with open_read(path) as f:
        s = read_state(f, path)
        lay = layout_from_file(f, path)
        check_tilts(f, path, s, lay)
        events = events_from_rows(rows(f, "run/events", s.events, path), path)
        for group in VOLUME_GROUPS:
            n = getattr(s, group)
            for i in range(n):
                _check_volume(f, path, lay, group, i, n,
                              rows(f, f"run/{group}/volumes", i + 1, path, i)[0])
    return {"haadf_tilts": s.haadf, "chem_tilts": s.chem, "events": len(events),
            "snapshots": s.snapshots, "std_errors": s.std_error}


def _duplicates(seq: np.ndarray, angles: np.ndarray) -> int:
    """Rows whose seq or angle repeats an earlier row's."""
    seen_seq: set[int] = set()
    seen_angle: set[int] = set()
    dup = 0
    for q, a in zip(seq, angles, strict=True):
        dup += int(int(q) in seen_seq or angle_key(a) in seen_angle)
        seen_seq.add(int(q))
        seen_angle.add(angle_key(a))
    return dup


def describe_run(path: str | Path) -> dict[str, Any]:
    """A summary of a run file for `fusetomo inspect`, live or not. Damage found while
    reading the committed records is reported under `problem` rather than raised."""
    path = Path(path)
    with open_read(path) as f:
        lay = layout_from_file(f, path)
        s: State = read_state(f, path)
        counts = {m: getattr(s, m) for m in MODALITIES}
        seq = {m: rows(f, f"run/{m}/seq", counts[m], path) for m in MODALITIES}
        ang = {m: rows(f, angle_dataset(m, lay.elements), counts[m], path) for m in MODALITIES}
        dose = {m: float(np.sum(rows(f, f"run/{m}/dose_e_per_A2", counts[m], path)))
                for m in MODALITIES}
    dups = {m: _duplicates(seq[m], ang[m]) for m in MODALITIES}
    try:
        record = read_run(path)
        problem = None
        n_events = len(record.events)
    except RunFileError as e:
        problem, n_events = str(e), None
    updated = datetime.fromtimestamp(s.updated_us / 1e6, UTC).isoformat(timespec="seconds")
    return {
        "file": str(path),
        "kind": "run",
        "series_id": lay.attrs.get("series_id"),
        "haadf_tilts": counts["haadf"],
        "chem_tilts": counts["chem"],
        "elements": list(lay.elements),
        "shape": list(lay.shape),
        "dose_e_per_A2": dose["haadf"] + dose["chem"],
        "duplicates": dups["haadf"] + dups["chem"],
        "duplicates_by_modality": dups,
        "last_seq": int(max([-1, *seq["haadf"].tolist(), *seq["chem"].tolist()])),
        "events": n_events,
        "cost_rows": s.costs,
        "snapshots": s.snapshots,
        "std_errors": s.std_error,
        "complete": bool(s.complete),
        "writer_live": WriterLock.held(path),
        "created": lay.attrs.get("created"),
        "updated": updated,
        "problem": problem,
    }
