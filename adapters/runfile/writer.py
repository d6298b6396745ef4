"""`RunFile`: the append-only, crash-safe writer of one live run."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fusetomo.adapters.protocol import (
    ChemTilt,
    HaadfTilt,
    Message,
    ProtocolError,
    SeriesEnd,
    SeriesStart,
    Tilt,
    finite_float,
    typed,
)
from fusetomo.adapters.runfile import history
from fusetomo.adapters.runfile.layout import (
    COST_TERMS,
    build,
    frames_crc,
    layout_from_file,
    layout_from_start,
    meta_crc,
    rebuild,
    volume_crc,
)
from fusetomo.adapters.runfile.storage import stored
from fusetomo.adapters.runfile.store import (
    MODALITIES,
    RecordRefusedError,
    RunFileError,
    State,
    WriterLock,
    create_file,
    event_rows,
    now_us,
    open_read,
    open_swmr_write,
    read_state,
    remove_stale_temps,
    rows,
    temp_name,
    to_json,
    truncate,
)
from fusetomo.core.angles import angle_key


def as_typed(msg: Message | Mapping[str, Any], want: type, where: str) -> Any:
    """A typed message of class `want` from a Message or a header mapping; RunFileError
    naming `where` when it is not one or its fields are bad."""
    if isinstance(msg, want):
        return msg
    m = msg if isinstance(msg, Message) else Message(dict(msg))
    try:
        out = typed(m)
    except ProtocolError as e:
        raise RunFileError(f"{where}: {e}") from None
    if not isinstance(out, want):
        raise RecordRefusedError("not_a_tilt" if want is Tilt else "unexpected_type",
                            f"{where}: cannot record a {m.header.get('type')!r} message as "
                            f"a {'tilt' if want is Tilt else want.__name__}")
    return out


class RunFile:
    """Append-only, crash-safe record of one live run (see the package docstring).

    >>> run = RunFile.create("run.h5", start_msg)      # or RunFile.resume("run.h5")
    >>> run.record_tilt(msg); run.record_event("advice", angle=35.0)
    >>> run.mark_complete(end_msg); run.close()
    """

    def __init__(self, path: Path, f: h5py.File, lock: WriterLock, durable: bool) -> None:
        self.path, self._f, self._durable = path, f, durable
        self._lock: WriterLock | None = lock
        lay = layout_from_file(f, path)
        self.layout = lay
        self.series_id: str = str(lay.attrs.get("series_id", ""))
        self.elements: list[str] = list(lay.elements)
        self.shape: tuple[int, int] = lay.shape
        self.cost_terms: tuple[str, ...] = lay.cost_terms
        try:
            self.start_header: dict[str, Any] = json.loads(lay.attrs.get("start_header", "{}"))
        except ValueError:
            self.start_header = {}
        self._state = read_state(f, path)
        book = history.load_book(f, path, self._state, lay)  # checks every tilt's CRC
        self._seqs, self._last_seq = book.seqs, book.last_seq
        self._angles, self._dose = book.angles, book.dose

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, start: SeriesStart | Message | Mapping[str, Any], *,
               overwrite: bool = False, cost_terms: tuple[str, ...] = COST_TERMS,
               durable: bool = True) -> RunFile:
        """A new run file for the series announced by `start` (a SERIES_START message or
        its header). Refuses an existing file unless `overwrite`, and a live one always."""
        path = Path(path)
        return cls(path, *_create(path, start, overwrite, tuple(cost_terms)), durable)

    @classmethod
    def resume(cls, path: str | Path, *, durable: bool = True,
               allow_complete: bool = False) -> RunFile:
        """Reopen an interrupted run for appending. A run whose writer died is rebuilt from
        its committed records first. Refuses a missing, damaged or live run, and a complete
        one unless `allow_complete` (to add its final reconstruction)."""
        path = Path(path)
        return cls(path, *_reopen(path, allow_complete), durable)

    # -- state ------------------------------------------------------------------------------
    haadf_count = property(lambda self: self._state.haadf)
    chem_count = property(lambda self: self._state.chem)
    complete = property(lambda self: bool(self._state.complete))
    last_seq = property(lambda self: self._last_seq)
    closed = property(lambda self: self._lock is None)

    def has_seq(self, seq: int) -> bool:
        return int(seq) in self._seqs

    def angles(self, modality: str) -> list[float]:
        """The recorded tilt angles of `modality` ('haadf' or 'chem'), ascending."""
        if modality not in self._angles:
            raise RunFileError(f"{self.path}: modality must be one of {list(self._angles)}, "
                               f"got {modality!r}")
        return sorted(self._angles[modality].values())

    @property
    def dose_e_per_A2(self) -> dict[str, float]:  # noqa: N802 (the protocol's name)
        """Dose recorded so far: per modality and in total (e/A^2)."""
        return {**self._dose, "total": sum(self._dose.values())}

    # -- recording ------------------------------------------------------------------------
    def check_tilt(self, tilt: Tilt) -> None:
        """RecordRefusedError (with its protocol code) when `tilt` does not fit the
        series."""
        _check_fit(self, tilt)

    def record_tilt(self, msg: Tilt | Message) -> None:
        """Append a HAADF_TILT or CHEM_TILT; returns once it is committed to the file.
        A message that does not fit the series raises RunFileError (RecordRefusedError for what
        needs the series) and leaves the file as it was."""
        self._check_open()
        where = f"{self.path}: {msg.header.get('type')} seq {msg.header.get('seq')!r}"
        tilt: Tilt = as_typed(msg, Tilt, where)
        self.check_tilt(tilt)
        m = tilt.modality
        if isinstance(tilt, HaadfTilt):
            frames = np.asarray(tilt.image, np.float32)[None]
        else:
            frames = np.stack([np.asarray(tilt.maps[e], np.float32) for e in self.elements])
        n = getattr(self._state, m)
        total = self._dose["haadf"] + self._dose["chem"] + tilt.dose_e_per_A2
        book = {"seq": tilt.seq, "t_received": time.time(), "t_sent": _time(tilt, "t_sent"),
                "t_acquired": math.nan if tilt.t_acquired is None else tilt.t_acquired,
                "dose_e_per_A2": tilt.dose_e_per_A2, "cumulative_dose_e_per_A2": total,
                "crc32": frames_crc(frames)}
        if self.layout.checksums:
            book["meta_crc32"] = meta_crc(tilt.seq, tilt.angle, tilt.dose_e_per_A2, total)
        if m == "haadf":
            data = {"haadf/data": frames, "haadf/angles": [tilt.angle]}
        else:
            data = {}
            for i, e in enumerate(self.elements):
                data[f"chem/{e}/data"] = frames[i][None]
                data[f"chem/{e}/angles"] = [tilt.angle]
        data.update({f"run/{m}/{k}": [v] for k, v in book.items()})
        self._append(data, m, n, where, sync=True)
        self._seqs.add(tilt.seq)
        self._last_seq = max(self._last_seq, tilt.seq)
        self._angles[m][angle_key(tilt.angle)] = tilt.angle
        self._dose[m] += tilt.dose_e_per_A2

    def record_event(self, kind: str, **payload: Any) -> None:
        """Append one event (decision, error reply, advice, command, resume, ...): a JSON
        object {"kind": kind, "time": <Unix s>, **payload}."""
        self._check_open()
        where = f"{self.path}: event {kind!r}"
        if not isinstance(kind, str) or not kind:
            raise RunFileError(f"{self.path}: event kind must be a non-empty string, got "
                               f"{kind!r}")
        if "time" in payload:
            raise RunFileError(f"{where}: 'time' is reserved (set when recording)")
        lines = event_rows(to_json({"kind": kind, "time": time.time(), **payload}, where))
        self._append({"run/events": lines}, "events", self._state.events, where,
                     count=len(lines))

    def record_costs(self, iteration: int, costs: Mapping[str, float]) -> None:
        """Append one row of solver costs; terms left out are stored as NaN."""
        self._check_open()
        where = f"{self.path}: costs of iteration {iteration!r}"
        self._append(history.cost_rows(iteration, costs, self.cost_terms, where), "costs",
                     self._state.costs, where)

    def record_snapshot(self, iteration: int, volumes: Mapping[str, np.ndarray], *,
                        final: bool = False) -> None:
        """Append the current volumes (element -> [ns, nd, nd]); `final` marks the
        reconstruction of the finished run."""
        self._record_volumes("snapshots", iteration, volumes, final)

    def record_std_error(self, iteration: int, volumes: Mapping[str, np.ndarray], *,
                         final: bool = False) -> None:
        """Append per-voxel standard-error volumes (element -> [ns, nd, nd])."""
        self._record_volumes("std_error", iteration, volumes, final)

    def _record_volumes(self, group: str, iteration: int,
                        volumes: Mapping[str, np.ndarray], final: bool) -> None:
        self._check_open()
        where = f"{self.path}: {group} of iteration {iteration!r}"
        stack = stored(history.volume_stack(volumes, list(self.layout.volume_names),
                                            self.shape, iteration, where), group, final)
        n_tilts, fin = [self._state.haadf, self._state.chem], int(bool(final))
        data = {f"run/{group}/volumes": stack, f"run/{group}/iteration": [int(iteration)],
                f"run/{group}/n_tilts": [n_tilts], f"run/{group}/final": [fin]}
        if self.layout.checksums:
            data[f"run/{group}/crc32"] = [volume_crc(stack[0], iteration, n_tilts, fin)]
        self._append(data, group, getattr(self._state, group), where)

    def mark_complete(self, end: SeriesEnd | Message | Mapping[str, Any]) -> None:
        """Record the SERIES_END (with the counts it claims and those recorded) and mark the
        run complete: no more tilts; events, costs and volumes may still follow."""
        self._check_open()
        where = f"{self.path}: series_end"
        e: SeriesEnd = as_typed(end, SeriesEnd, where)
        claimed = {"n_haadf": e.n_haadf, "n_chem": e.n_chem}
        recorded = {"n_haadf": self._state.haadf, "n_chem": self._state.chem}
        doc = {"kind": "series_end", "time": time.time(), "seq": e.seq, "claimed": claimed,
               "recorded": recorded, "match": claimed == recorded}
        lines = event_rows(to_json(doc, where))
        self._append({"run/events": lines}, "events", self._state.events, where,
                     count=len(lines), sync=True, complete=1)

    # -- reading back -----------------------------------------------------------------------
    def tilts(self) -> tuple[list[tuple[float, np.ndarray]],
                             list[tuple[float, dict[str, np.ndarray]]]]:
        """The recorded HAADF and chemical tilts in arrival order: (angle, image) and
        (angle, {element: map})."""
        self._check_open()
        return history.tilts(self._f, self.path, self._state, self.elements)

    def events(self) -> list[dict[str, Any]]:
        """The recorded events, oldest first."""
        self._check_open()
        return history.events(self._f, self.path, self._state)

    def costs(self) -> dict[str, np.ndarray]:
        """The recorded cost rows: iteration and each term (NaN where not given)."""
        self._check_open()
        return history.costs(self._f, self.path, self._state, self.cost_terms)

    def iteration_schedule(self) -> list[tuple[int, int]]:
        """(HAADF, chemical) tilts the solver held at each recorded iteration."""
        return history.iteration_schedule(self.costs(), self.path, self.cost_terms)

    def tilts_since_ready(self, *, need_haadf: bool = True) -> int:
        """Tilts recorded (both modalities, in seq order) from the one that first gave the
        run a chemical tilt and, if `need_haadf`, a HAADF tilt, inclusive; 0 before."""
        seqs = {m: rows(self._f, f"run/{m}/seq", getattr(self._state, m), self.path)
                for m in MODALITIES}
        return history.tilts_since_ready(seqs, need_haadf)

    # -- plumbing ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._lock is None:
            raise RunFileError(f"{self.path}: run file is closed")

    def _append(self, data: Mapping[str, Any], counter: str, n: int, where: str,
                count: int = 1, sync: bool = False, **state: int) -> None:
        """Write `count` rows at [n, n + count) of every dataset in `data`, flush, then
        commit the new count (and `state` changes). `sync`: fsync too (if durable)."""
        try:
            for name, values in data.items():
                ds = self._f[name]
                ds.resize(n + count, axis=0)
                ds[n:n + count] = values
            self._flush(sync)
            self._commit(sync, **{counter: n + count}, **state)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
            with contextlib.suppress(Exception):  # best effort: back to the commit
                truncate(self._f, self._state)
            raise RunFileError(f"{where}: writing failed ({e}); the run keeps its "
                               f"{n} committed rows") from e

    def _commit(self, sync: bool, **changes: int) -> None:
        new = replace(self._state, generation=self._state.generation + 1,
                      updated_us=now_us(), **changes)
        self._f["run/state"][new.generation % 2] = new.row()
        self._state = new
        self._flush(sync)

    def _flush(self, sync: bool) -> None:
        self._f.flush()
        if sync and self._durable and self._lock is not None:
            self._lock.fsync()

    def close(self) -> None:
        """Flush and close (an incomplete run may be resumed later). Idempotent."""
        if self._lock is None:
            return
        try:
            self._f.flush()
            self._f.close()
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"RunFile({str(self.path)!r}, series={self.series_id!r}, haadf="
                f"{self.haadf_count}, chem={self.chem_count}, complete={self.complete})")


def _check_fit(run: RunFile, tilt: Tilt) -> None:
    """RecordRefusedError (with its protocol code) when `tilt` does not fit the series:
    another series, a complete run, a recorded seq or angle, other elements or shape."""
    where = f"{run.path}: {tilt.type} seq {tilt.seq}"
    if tilt.series != run.series_id:
        raise RecordRefusedError("wrong_series", f"{where}: series {tilt.series!r} is not "
                            f"this run's {run.series_id!r}")
    if run._state.complete:
        raise RecordRefusedError("series_complete", f"{where}: the run is complete; no more "
                            "tilts")
    if tilt.seq in run._seqs:
        raise RecordRefusedError("duplicate_seq", f"{where}: seq {tilt.seq} is already "
                            "recorded")
    if angle_key(tilt.angle) in run._angles[tilt.modality]:
        raise RecordRefusedError("duplicate_tilt", f"{where}: a {tilt.modality} tilt at "
                            f"{tilt.angle} degrees is already recorded")
    if isinstance(tilt, ChemTilt):
        extra = [e for e in tilt.elements if e not in run.elements]
        missing = [e for e in run.elements if e not in tilt.elements]
        if extra:
            raise RecordRefusedError("element_mismatch", f"{where}: element {extra[0]!r} is "
                                f"not in the series {run.elements}")
        if missing:
            raise RecordRefusedError("element_mismatch", f"{where}: elements "
                                f"{list(tilt.elements)} must name each of "
                                f"{run.elements} once (missing {missing})")
    shape = tuple(tilt.frames[0].shape)
    if shape != run.shape:
        raise RecordRefusedError("shape_mismatch", f"{where}: image shape {list(shape)}, the "
                            f"series has {list(run.shape)}")


def _create(path: Path, start: SeriesStart | Message | Mapping[str, Any], overwrite: bool,
            cost_terms: tuple[str, ...]) -> tuple[h5py.File, WriterLock]:
    """Build the file under a temporary name, start SWMR writing, then move it into place."""
    start = as_typed(start, SeriesStart, f"{path}: series_start")
    lay = layout_from_start(start, path, cost_terms)
    bad = [t for t in cost_terms if not t or "/" in t or t == "iteration"]
    if bad or len(set(cost_terms)) != len(cost_terms):
        raise RunFileError(f"{path}: cost terms {list(cost_terms)} must be unique names "
                           "without '/' (and not 'iteration')")
    if path.exists():
        if not overwrite:
            raise RunFileError(f"{path}: file exists; pass overwrite=True or resume it")
        if path.is_dir():
            raise RunFileError(f"{path}: is a folder")
        if WriterLock.held(path):
            raise RunFileError(f"{path}: the run is being written by a live process")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    f, lock = None, None
    try:
        f = create_file(tmp)
        build(f, lay)
        f.flush()
        f.swmr_mode = True
        lock = WriterLock(tmp)
        os.replace(tmp, path)  # the name appears only once SWMR writing is on
        return f, lock
    except BaseException as e:
        if lock is not None:
            lock.release()
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise RunFileError(f"{path}: cannot create run file ({e})") from None
        raise


def _reopen(path: Path, allow_complete: bool) -> tuple[h5py.File, WriterLock]:
    """Open an existing run for appending in SWMR mode (rebuilt first if a dead writer
    left it flagged), with uncommitted rows dropped."""
    with open_read(path) as f:  # checks existence, format, damage and completeness
        lay = layout_from_file(f, path)
        state = read_state(f, path)
    if state.complete and not allow_complete:
        raise RunFileError(f"{path}: the run is complete (series_end recorded); nothing "
                           "to resume")
    lock = WriterLock(path)
    remove_stale_temps(path)
    f = None
    try:
        try:
            f = open_swmr_write(path)
        except OSError:  # left flagged by a dead SWMR writer, or held by a reader
            lock = rebuild(path, lay, lock)
            f = open_swmr_write(path)
        truncate(f, read_state(f, path))
        f.flush()
        return f, lock
    except BaseException as e:
        lock.release()
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        if isinstance(e, OSError):
            raise RunFileError(f"{path}: cannot reopen the run for appending ({e})") \
                from None
        raise


def _time(msg: Message, key: str) -> float:
    v = finite_float(msg.header.get(key))
    return math.nan if v is None else v


__all__ = ["RunFile", "State", "as_typed"]
