"""The controller's crash-safe record of a live run (`format = "fusetomo-run"`, version 1).

A run file is a tilt-series file (docs/file-format.md §1: `/haadf/*`, `/chem/<El>/*`, the
element attributes Z and background, root `gamma` and `pixel_size_nm`), written tilt by tilt
in arrival order, plus a `/run` group:

    /run/haadf/<field>, /run/chem/<field>   one row per tilt: seq (int64), t_received,
                        t_sent, t_acquired (Unix s, NaN when unknown), dose_e_per_A2 (this
                        image), cumulative_dose_e_per_A2 (the specimen's total, both
                        modalities, after this image), crc32 (of the stored float32 frames,
                        chemical ones concatenated in element order)
    /run/events         S1024 rows: JSON objects {"kind", "time", ...}; an event longer than
                        a row continues in the next rows, and a full row (1024 bytes, no
                        padding) means "continued" (an event of exactly k*1024 bytes ends
                        with an empty row)
    /run/costs/iteration, /run/costs/<term>    one row per recorded solver iteration; the
                        terms are fixed when the file is created (COST_TERMS by default)
    /run/snapshots/{volumes [k, n_el, ns, nd, nd] float32, iteration [k], n_tilts [k, 2]
                        (HAADF, chemical tilts recorded), final [k] (int8)}
    /run/std_error/{volumes, iteration, n_tilts, final}   the same, for error maps
    /run/state          int64 [2, 10]: the commit record (below)
    / attrs             format, version, series_id, created, fusetomo_version,
                        start_header (the SERIES_START header as JSON), gamma,
                        pixel_size_nm, dose_budget_e_per_A2 -- all fixed at creation

Crash safety. The writer uses HDF5 single-writer/multiple-reader mode (SWMR), in which HDF5
orders its metadata writes so that the file on disk is always coherent for a reader. The
whole layout is built in a temporary file, SWMR writing is switched on, and only then is the
file moved onto its name; a run is reopened directly in SWMR-write mode. So the file at
`path` is never open in plain write mode, whose crash leaves a file no reader opens. SWMR
forbids new objects and attributes, so everything that changes (counts, `complete`, update
time) lives in datasets created up front. Appending a record: resize and write the rows of
every dataset concerned, flush, write the commit record, flush, return. The commit record
holds how many rows of each kind are committed, `complete` and `updated_us`; it goes
alternately to one of two slots, each with a generation number and a CRC-32, and readers
take the valid slot of highest generation (a torn commit leaves the previous one). Readers
use only the committed prefix of each dataset; every tilt carries a CRC of its frames.
Hence, after `kill -9` of the writer at any moment, every tilt (event, cost row, snapshot)
whose `record_*` call returned is intact and present once; the one in flight is wholly
present or absent; rows past the commit record are ignored, and dropped on resume. With
`durable=True` (default) tilts and the completion are also fsync'ed before and after their
commit, against power loss (as far as the disk honours the barriers); events, costs and
volumes are flushed (they survive a crash of the process) but not fsync'ed, to keep the
solver loop fast.

Where SWMR falls short, and what is done instead:
- A file whose SWMR writer died keeps HDF5's "open for SWMR write" flag: only SWMR readers
  open it (`read_run`, `describe_run`, `read_snapshot` do; `read_series` and a plain
  `h5py.File(path)` are refused). `RunFile.resume` therefore rebuilds it: the committed
  prefix is copied into a fresh file, written under a temporary name and moved into place
  with `os.replace` (a kill during the copy leaves the old file). A cleanly closed run is
  reopened in place, without a copy. After `close`, any HDF5 reader opens the file.
- Variable-length strings are not relied on (SWMR's guarantees are about appending to
  chunked datasets of fixed-size types), hence the fixed-width event rows; no compression
  either (filtered chunks are reallocated when rewritten).
- HDF5 drops its own file lock once SWMR writing starts, so a live writer holds an
  open-file-description lock (Linux `F_OFD_SETLK`) on one byte far past the end of the
  file, which HDF5 readers' `flock` does not touch; `resume` and `create(overwrite=True)`
  refuse a file with a live writer (no such check where OFD locks do not exist), and
  `resume` deletes temporary files left by dead writers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import struct
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fusetomo.adapters.elements import UnknownElementError, atomic_number
from fusetomo.adapters.protocol import CHEM_TILT, HAADF_TILT, SERIES_END, SERIES_START, Message
from fusetomo.adapters.series import SeriesError, TiltSeries
from fusetomo.adapters.seriesfile import attr_value as _attr
from fusetomo.adapters.seriesfile import open_h5

try:  # POSIX only; without it there is no live-writer check
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FORMAT = "fusetomo-run"
# 2: an element's background attribute is written only when the series states it (version
# 1 wrote 0 for "not stated", which reading a version-1 file maps back)
VERSION = 2
MODALITIES = ("haadf", "chem")
# the solver's cost terms, the tilt counts it held, and whether the iteration was idle
COST_TERMS = ("haadf", "chem", "tv", "haadf_scale", "n_haadf", "n_chem", "idle")
EVENT_ROW_BYTES = 1024
VOLUME_GROUPS = ("snapshots", "std_error")
# per-tilt bookkeeping under /run/<modality>
TILT_FIELDS: dict[str, str] = {
    "seq": "i8", "t_received": "f8", "t_sent": "f8", "t_acquired": "f8",
    "dose_e_per_A2": "f8", "cumulative_dose_e_per_A2": "f8", "crc32": "u4",
}
_LIBVER = ("v110", "latest")  # SWMR needs the 1.10 format; stay readable by HDF5 >= 1.10
_ANGLE_DECIMALS = 6           # angles equal to 1e-6 degree are duplicates (as read_series)
_LOCK_OFFSET = 1 << 62        # the byte a live writer locks


class RunFileError(ValueError):
    """A run file that cannot be created, read or appended to, or a record that does not fit
    the series; the message names the file, the dataset or field, and the bad value."""


# -- the commit record ------------------------------------------------------------------------
@dataclass(frozen=True)
class _State:
    generation: int = 0
    haadf: int = 0
    chem: int = 0
    events: int = 0
    costs: int = 0
    snapshots: int = 0
    std_error: int = 0
    complete: int = 0
    updated_us: int = 0

    def row(self) -> np.ndarray:
        values = np.array([getattr(self, f.name) for f in fields(self)], dtype="<i8")
        return np.append(values, zlib.crc32(values.tobytes())).astype(np.int64)

    @classmethod
    def from_row(cls, row: np.ndarray) -> _State | None:
        values = np.asarray(row[:-1], dtype="<i8")
        if zlib.crc32(values.tobytes()) != int(row[-1]):
            return None
        return cls(*(int(v) for v in values))


STATE_FIELDS = (*(f.name for f in fields(_State)), "crc32")


def _read_state(f: h5py.File, path: Path) -> _State:
    ds = _dataset(f, "run/state", path)
    if ds.shape != (2, len(STATE_FIELDS)):
        raise RunFileError(f"{path}: /run/state has shape {ds.shape}, expected "
                           f"(2, {len(STATE_FIELDS)})")
    states = [s for s in (_State.from_row(r) for r in ds[()]) if s is not None]
    if not states:
        raise RunFileError(f"{path}: /run/state: neither commit record passes its checksum; "
                           "file damaged")
    return max(states, key=lambda s: s.generation)


def _counter(name: str) -> str | None:
    """Which count of the commit record bounds dataset `name` (None: not appendable)."""
    parts = name.strip("/").split("/")
    if parts[0] in MODALITIES:
        return parts[0]
    if parts[0] == "run" and len(parts) > 1:
        if parts[1] in MODALITIES or parts[1] in VOLUME_GROUPS:
            return parts[1]
        if parts[1] in ("events", "costs"):
            return parts[1]
    return None


# -- layout -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    """What the file's fixed structure is made of."""

    elements: tuple[str, ...]
    shape: tuple[int, int]
    Z: dict[str, float]
    background: dict[str, float]
    cost_terms: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


def _appendable(group: h5py.Group, name: str, row: tuple[int, ...], dtype: Any,
                chunk_rows: int = 256, chunk_row: tuple[int, ...] | None = None) -> h5py.Dataset:
    return group.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=dtype,
                                chunks=(chunk_rows, *(chunk_row or row)))


def _build(f: h5py.File, lay: _Layout) -> None:
    """Create every group, dataset and attribute of a run file (all before SWMR starts)."""
    ns, nd = lay.shape
    for k, v in lay.attrs.items():
        if v is not None:
            f.attrs[k] = v
    h = f.create_group("haadf")
    _appendable(h, "data", (ns, nd), np.float32, chunk_rows=1)
    _appendable(h, "angles", (), np.float64).attrs["units"] = "degree"
    chem = f.create_group("chem", track_order=True)
    for e in lay.elements:
        g = chem.create_group(e)
        z = lay.Z[e]
        g.attrs["Z"] = int(z) if float(z).is_integer() else float(z)
        if e in lay.background:
            g.attrs["background"] = float(lay.background[e])
        _appendable(g, "data", (ns, nd), np.float32, chunk_rows=1)
        _appendable(g, "angles", (), np.float64).attrs["units"] = "degree"
    run = f.create_group("run", track_order=True)
    for m in MODALITIES:
        g = run.create_group(m, track_order=True)
        for name, dtype in TILT_FIELDS.items():
            _appendable(g, name, (), dtype)
    ev = _appendable(run, "events", (), f"S{EVENT_ROW_BYTES}", chunk_rows=64)
    ev.attrs["row_bytes"] = EVENT_ROW_BYTES
    costs = run.create_group("costs", track_order=True)
    _appendable(costs, "iteration", (), np.int64)
    for term in lay.cost_terms:
        _appendable(costs, term, (), np.float64)
    slab = max(1, min(ns, (4 << 20) // (nd * nd * 4)))
    for name in VOLUME_GROUPS:
        g = run.create_group(name, track_order=True)
        _appendable(g, "volumes", (len(lay.elements), ns, nd, nd), np.float32, chunk_rows=1,
                    chunk_row=(1, slab, nd, nd)).attrs["elements"] = list(lay.elements)
        _appendable(g, "iteration", (), np.int64)
        _appendable(g, "n_tilts", (2,), np.int64).attrs["columns"] = list(MODALITIES)
        _appendable(g, "final", (), np.int8)
    state = run.create_dataset("state", data=np.zeros((2, len(STATE_FIELDS)), np.int64))
    state.attrs["fields"] = list(STATE_FIELDS)
    state[0] = _State(updated_us=_now_us()).row()


def _layout_from_start(start: Message | Mapping[str, Any], path: Path,
                       cost_terms: tuple[str, ...]) -> _Layout:
    h = dict(start.header if isinstance(start, Message) else start)
    where = f"{path}: series_start"
    if h.get("type", SERIES_START) != SERIES_START:
        raise RunFileError(f"{where}: message type is {h.get('type')!r}, expected "
                           f"{SERIES_START!r}")
    series = h.get("series")
    if not isinstance(series, str) or not series:
        raise RunFileError(f"{where}: field 'series' must be a non-empty string, got "
                           f"{series!r}")
    els = h.get("elements")
    if not isinstance(els, list) or not els or not all(isinstance(e, str) for e in els):
        raise RunFileError(f"{where}: elements must be a non-empty list of symbols, got "
                           f"{els!r}")
    if len(set(els)) != len(els):
        raise RunFileError(f"{where}: duplicate element in {els}")
    try:
        default_z = {e: float(atomic_number(e)) for e in els}
    except UnknownElementError as e:
        raise RunFileError(f"{where}: {e}") from None
    shape = h.get("shape")
    if (not isinstance(shape, list | tuple) or len(shape) != 2
            or not all(_is_int(s) and s >= 1 for s in shape)):
        raise RunFileError(f"{where}: shape must be [n_slices, n_det] of positive integers, "
                           f"got {shape!r}")
    Z = {e: _number(h.get("Z") or {}, e, default_z[e], f"{where}: Z", positive=True)
         for e in els}
    bg_in = h.get("background")
    if isinstance(bg_in, list | tuple):
        if len(bg_in) != len(els):
            raise RunFileError(f"{where}: background has {len(bg_in)} values for {len(els)} "
                               "elements")
        bg_in = dict(zip(els, bg_in, strict=True))
    if bg_in is not None and not isinstance(bg_in, Mapping):
        raise RunFileError(f"{where}: background must be a mapping element -> counts, got "
                           f"{bg_in!r}")
    # An element the mapping leaves out has an unknown background (the solver estimates it).
    background = {e: _number(bg_in, e, 0.0, f"{where}: background") for e in els
                  if bg_in is not None and e in bg_in}
    gamma = _optional(h, "gamma", where)
    if gamma is not None and not 1.0 <= gamma <= 2.5:
        raise RunFileError(f"{where}: gamma must lie in [1, 2.5], got {gamma}")
    pixel = _optional(h, "pixel_size_nm", where)
    if pixel is not None and pixel <= 0:
        raise RunFileError(f"{where}: pixel_size_nm must be > 0, got {pixel}")
    attrs = {
        "format": FORMAT, "version": VERSION, "series_id": series,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fusetomo_version": _package_version(),
        "start_header": _to_json(h, where),
        "gamma": gamma, "pixel_size_nm": pixel,
        "dose_budget_e_per_A2": _optional(h, "dose_budget_e_per_A2", where),
    }
    return _Layout(tuple(els), (int(shape[0]), int(shape[1])), Z, background, cost_terms,
                   attrs)


def _layout_from_file(f: h5py.File, path: Path) -> _Layout:
    fmt = _attr(f.attrs.get("format"))
    if fmt != FORMAT:
        raise RunFileError(f"{path}: attribute format is {fmt!r}, expected {FORMAT!r}")
    version = _attr(f.attrs.get("version"))
    if not isinstance(version, int) or version > VERSION:
        raise RunFileError(f"{path}: run format version {version!r} is not supported (this "
                           f"fusetomo reads up to {VERSION})")
    data = _dataset(f, "haadf/data", path)
    if data.ndim != 3:
        raise RunFileError(f"{path}: /haadf/data has shape {data.shape}, expected 3 axes")
    chem = f.get("chem")
    if not isinstance(chem, h5py.Group) or not len(chem):
        raise RunFileError(f"{path}: group /chem is missing or empty")
    elements = tuple(chem)
    Z = {e: float(_attr(chem[e].attrs.get("Z", atomic_number(e)))) for e in elements}
    bg = {e: float(_attr(chem[e].attrs["background"])) for e in elements
          if "background" in chem[e].attrs}
    if version < 2:  # version 1 wrote 0 for a background the series did not state
        bg = {e: b for e, b in bg.items() if b != 0}
    costs = f.get("run/costs")
    if not isinstance(costs, h5py.Group) or "iteration" not in costs:
        raise RunFileError(f"{path}: group /run/costs (with iteration) is missing")
    terms = tuple(k for k in costs if k != "iteration")
    attrs = {k: _attr(v) for k, v in f.attrs.items()}
    lay = _Layout(elements, (int(data.shape[1]), int(data.shape[2])), Z, bg, terms, attrs)
    for name in _dataset_names(lay):
        _dataset(f, name, path)
    return lay


def _dataset_names(lay: _Layout) -> list[str]:
    names = ["haadf/data", "haadf/angles"]
    names += [f"chem/{e}/{d}" for e in lay.elements for d in ("data", "angles")]
    names += [f"run/{m}/{k}" for m in MODALITIES for k in TILT_FIELDS]
    names += ["run/events", "run/costs/iteration"] + [f"run/costs/{t}" for t in lay.cost_terms]
    names += [f"run/{g}/{k}" for g in VOLUME_GROUPS
              for k in ("volumes", "iteration", "n_tilts", "final")]
    return names


# -- small helpers --------------------------------------------------------------------------
def _now_us() -> int:
    return int(time.time() * 1e6)


def _package_version() -> str:
    try:
        return metadata.version("fusetomo")
    except metadata.PackageNotFoundError:
        return "unknown"


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _number(d: Mapping[str, Any], key: str, default: float, where: str,
            positive: bool = False) -> float:
    v = d.get(key, default)
    if not _is_number(v) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        need = "> 0" if positive else ">= 0"
        raise RunFileError(f"{where}[{key!r}] must be a finite number {need}, got {v!r}")
    return float(v)


def _optional(h: Mapping[str, Any], key: str, where: str) -> float | None:
    v = h.get(key)
    if v is None:
        return None
    if not _is_number(v) or not math.isfinite(v):
        raise RunFileError(f"{where}: {key} must be a finite number or null, got {v!r}")
    return float(v)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def _to_json(doc: Mapping[str, Any], where: str) -> str:
    try:
        return json.dumps(doc, default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise RunFileError(f"{where}: cannot be stored as JSON ({e})") from None


def _event_rows(text: str) -> list[bytes]:
    raw = text.encode("ascii")  # json.dumps escapes non-ASCII (and NUL)
    rows = [raw[i:i + EVENT_ROW_BYTES] for i in range(0, len(raw), EVENT_ROW_BYTES)]
    if not rows or len(rows[-1]) == EVENT_ROW_BYTES:
        rows.append(b"")
    return rows


def _events_from_rows(rows: np.ndarray, path: Path) -> list[dict[str, Any]]:
    out, buf = [], b""
    for r in rows:
        buf += bytes(r)
        if len(r) < EVENT_ROW_BYTES:
            try:
                out.append(json.loads(buf))
            except ValueError as e:
                raise RunFileError(f"{path}: /run/events: event {len(out)} is not JSON "
                                   f"({e})") from None
            buf = b""
    return out


def _round_angle(a: float) -> float:
    return round(float(a), _ANGLE_DECIMALS)


def _crc(frames: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(frames, dtype="<f4").tobytes())


def _dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise RunFileError(f"{path}: dataset /{name} is missing")
    return ds


def _rows(f: h5py.File, name: str, n: int, path: Path) -> np.ndarray:
    """The committed rows [0, n) of an appendable dataset."""
    ds = _dataset(f, name, path)
    if ds.shape[0] < n and f.swmr_mode:
        ds.refresh()
    if ds.shape[0] < n:
        raise RunFileError(f"{path}: /{name} holds {ds.shape[0]} rows but {n} are committed; "
                           "file damaged")
    try:
        return ds[:n]
    except (OSError, RuntimeError, ValueError) as e:
        raise RunFileError(f"{path}: /{name} cannot be read, file damaged? ({e})") from None


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of `path` left by writers that died while creating or
    rebuilding it (named .<name>.<pid>.<random>.tmp, pid no longer running)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _create_file(path: Path) -> h5py.File:
    return h5py.File(path, "w", libver=_LIBVER)


def _open_swmr_write(path: Path) -> h5py.File:
    """Open for appending in SWMR mode in one step (never in plain write mode: a writer that
    dies there leaves a file that SWMR readers refuse)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_LATEST)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE,
                        fapl=fapl)
    return h5py.File(fid)


def _open_read(path: Path) -> contextlib.AbstractContextManager[h5py.File]:
    """Open a run file for reading, whether its writer is live, dead or done."""
    return open_h5(path, RunFileError, swmr=True)


# -- the live-writer lock ------------------------------------------------------------------------
class _WriterLock:
    """An exclusive open-file-description lock on one byte far beyond the end of the file:
    held by the writer for as long as it lives, released by the kernel when it dies."""

    def __init__(self, path: Path) -> None:
        try:
            self.fd: int | None = os.open(path, os.O_RDWR)
        except OSError as e:
            raise RunFileError(f"{path}: cannot open for writing ({e})") from None
        if not self._set(fcntl.F_WRLCK if fcntl else 0):
            os.close(self.fd)
            self.fd = None
            raise RunFileError(f"{path}: the run is being written by a live process; stop "
                               "it before resuming or overwriting")

    def _set(self, kind: int) -> bool:
        if fcntl is None or not hasattr(fcntl, "F_OFD_SETLK") or self.fd is None:
            return True
        arg = struct.pack("hhqqi4x", kind, os.SEEK_SET, _LOCK_OFFSET, 1, 0)
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, arg)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    @staticmethod
    def held(path: Path) -> bool | None:
        """Whether a live writer holds `path` (None where this cannot be known)."""
        if fcntl is None or not hasattr(fcntl, "F_OFD_GETLK"):
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            arg = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _LOCK_OFFSET, 1, 0)
            res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, arg)
            return struct.unpack("hhqqi4x", res)[0] != fcntl.F_UNLCK
        except OSError:
            return None
        finally:
            os.close(fd)

    def fsync(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the description drops its lock
            self.fd = None


# -- the writer ------------------------------------------------------------------------------
class RunFile:
    """Append-only, crash-safe record of one live run (see the module docstring).

    >>> run = RunFile.create("run.h5", start_msg)      # or RunFile.resume("run.h5")
    >>> run.record_tilt(msg); run.record_event("advice", angle=35.0)
    >>> run.mark_complete(end_msg); run.close()
    """

    def __init__(self, path: Path, f: h5py.File, lock: _WriterLock, durable: bool) -> None:
        self.path = path
        self._f = f
        self._lock: _WriterLock | None = lock
        self._durable = durable
        lay = _layout_from_file(f, path)
        self._layout = lay
        self.series_id: str = str(lay.attrs.get("series_id", ""))
        self.elements: list[str] = list(lay.elements)
        self.shape: tuple[int, int] = lay.shape
        self.cost_terms: tuple[str, ...] = lay.cost_terms
        try:
            self.start_header: dict[str, Any] = json.loads(lay.attrs.get("start_header", "{}"))
        except ValueError:
            self.start_header = {}
        self._state = _read_state(f, path)
        self._seqs: set[int] = set()
        self._angles: dict[str, set[float]] = {m: set() for m in MODALITIES}
        self._dose: dict[str, float] = dict.fromkeys(MODALITIES, 0.0)
        self._last_seq = -1
        self._load()

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, start: Message | Mapping[str, Any], *,
               overwrite: bool = False, cost_terms: tuple[str, ...] = COST_TERMS,
               durable: bool = True) -> RunFile:
        """A new run file for the series announced by `start` (a SERIES_START message or
        its header). Refuses an existing file unless `overwrite`, and a live one always."""
        path = Path(path)
        lay = _layout_from_start(start, path, tuple(cost_terms))
        bad = [t for t in cost_terms if not t or "/" in t or t == "iteration"]
        if bad or len(set(cost_terms)) != len(cost_terms):
            raise RunFileError(f"{path}: cost terms {list(cost_terms)} must be unique names "
                               "without '/' (and not 'iteration')")
        if path.exists():
            if not overwrite:
                raise RunFileError(f"{path}: file exists; pass overwrite=True or resume it")
            if path.is_dir():
                raise RunFileError(f"{path}: is a folder")
            if _WriterLock.held(path):
                raise RunFileError(f"{path}: the run is being written by a live process")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path)
        f, lock = None, None
        try:
            f = _create_file(tmp)
            _build(f, lay)
            f.flush()
            f.swmr_mode = True
            lock = _WriterLock(tmp)
            os.replace(tmp, path)  # the name appears only once SWMR writing is on
            return cls(path, f, lock, durable)
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

    @classmethod
    def resume(cls, path: str | Path, *, durable: bool = True) -> RunFile:
        """Reopen an interrupted run for appending. A run whose writer died is rebuilt from
        its committed records first. Refuses a missing, damaged, complete or live run."""
        path = Path(path)
        with _open_read(path) as f:  # checks existence, format, damage and completeness
            lay = _layout_from_file(f, path)
            state = _read_state(f, path)
        if state.complete:
            raise RunFileError(f"{path}: the run is complete (series_end recorded); nothing "
                               "to resume")
        lock = _WriterLock(path)
        _remove_stale_temps(path)
        f = None
        try:
            try:
                f = _open_swmr_write(path)
            except OSError:  # left flagged by a dead SWMR writer, or held by a reader
                lock = _rebuild(path, lay, lock)
                f = _open_swmr_write(path)
            _truncate(f, _read_state(f, path))
            f.flush()
            return cls(path, f, lock, durable)
        except BaseException as e:
            lock.release()
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()
            if isinstance(e, OSError):
                raise RunFileError(f"{path}: cannot reopen the run for appending ({e})") \
                    from None
            raise

    def _load(self) -> None:
        """Read the committed bookkeeping and check every committed tilt's CRC."""
        f, s, p = self._f, self._state, self.path
        for m in MODALITIES:
            n = getattr(s, m)
            seq = _rows(f, f"run/{m}/seq", n, p)
            crc = _rows(f, f"run/{m}/crc32", n, p)
            self._seqs.update(int(q) for q in seq)
            self._last_seq = max([self._last_seq, *(int(q) for q in seq)])
            self._dose[m] = float(np.sum(_rows(f, f"run/{m}/dose_e_per_A2", n, p)))
            angle_ds = "haadf/angles" if m == "haadf" else f"chem/{self.elements[0]}/angles"
            self._angles[m] = {_round_angle(a) for a in _rows(f, angle_ds, n, p)}
            for i in range(n):
                if _crc(self._frames(m, i)) != int(crc[i]):
                    raise RunFileError(f"{p}: {m} tilt {i} (seq {int(seq[i])}) fails its "
                                       f"CRC-32 (/run/{m}/crc32); file damaged")

    def _frames(self, modality: str, i: int) -> np.ndarray:
        if modality == "haadf":
            return self._f["haadf/data"][i]
        return np.stack([self._f[f"chem/{e}/data"][i] for e in self.elements])

    # -- state ------------------------------------------------------------------------------
    @property
    def haadf_count(self) -> int:
        return self._state.haadf

    @property
    def chem_count(self) -> int:
        return self._state.chem

    @property
    def complete(self) -> bool:
        return bool(self._state.complete)

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def has_seq(self, seq: int) -> bool:
        return int(seq) in self._seqs

    def angles(self, modality: str) -> list[float]:
        """The recorded tilt angles of `modality` ('haadf' or 'chem'), ascending."""
        if modality not in self._angles:
            raise RunFileError(f"{self.path}: modality must be one of {list(self._angles)}, "
                               f"got {modality!r}")
        return sorted(self._angles[modality])

    @property
    def dose_e_per_A2(self) -> dict[str, float]:  # noqa: N802 (the protocol's name)
        """Dose recorded so far: per modality and in total (e/A^2)."""
        return {**self._dose, "total": sum(self._dose.values())}

    @property
    def closed(self) -> bool:
        return self._lock is None

    # -- recording ------------------------------------------------------------------------
    def record_tilt(self, msg: Message) -> None:
        """Append a HAADF_TILT or CHEM_TILT; returns once it is committed to the file.
        A message that does not fit the series raises RunFileError and leaves the file as
        it was."""
        self._check_open()
        h = msg.header
        mtype = h.get("type")
        if mtype not in (HAADF_TILT, CHEM_TILT):
            raise RunFileError(f"{self.path}: cannot record a {mtype!r} message as a tilt")
        modality = "haadf" if mtype == HAADF_TILT else "chem"
        where = f"{self.path}: {mtype} seq {h.get('seq')!r}"
        if self._state.complete:
            raise RunFileError(f"{where}: the run is complete; no more tilts")
        seq, angle, dose = self._check_tilt_header(h, modality, where)
        frames = self._check_frames(msg, modality, where)
        n = getattr(self._state, modality)
        total = self._dose["haadf"] + self._dose["chem"] + dose
        book = {"seq": seq, "t_received": time.time(), "t_sent": _time(h, "t_sent"),
                "t_acquired": _time(h, "t_acquired"), "dose_e_per_A2": dose,
                "cumulative_dose_e_per_A2": total, "crc32": _crc(frames)}
        if modality == "haadf":
            rows = {"haadf/data": frames[None], "haadf/angles": [angle]}
        else:
            rows = {}
            for i, e in enumerate(self.elements):
                rows[f"chem/{e}/data"] = frames[i][None]
                rows[f"chem/{e}/angles"] = [angle]
        rows.update({f"run/{modality}/{k}": [v] for k, v in book.items()})
        self._append(rows, modality, n, where, sync=True)
        self._seqs.add(seq)
        self._last_seq = max(self._last_seq, seq)
        self._angles[modality].add(_round_angle(angle))
        self._dose[modality] += dose

    def _check_tilt_header(self, h: Mapping[str, Any], modality: str,
                           where: str) -> tuple[int, float, float]:
        series = h.get("series", self.series_id)
        if series != self.series_id:
            raise RunFileError(f"{where}: series {series!r} is not this run's "
                               f"{self.series_id!r}")
        seq = h.get("seq")
        if not _is_int(seq) or seq < 0:
            raise RunFileError(f"{where}: seq must be an integer >= 0")
        if int(seq) in self._seqs:
            raise RunFileError(f"{where}: seq {seq} is already recorded")
        angle, dose = h.get("angle"), h.get("dose_e_per_A2")
        if not _is_number(angle) or not math.isfinite(angle) or abs(angle) > 90:
            raise RunFileError(f"{where}: angle {angle!r} outside [-90, 90] degrees")
        if _round_angle(angle) in self._angles[modality]:
            raise RunFileError(f"{where}: a {modality} tilt at {float(angle)} degrees is "
                               "already recorded")
        if not _is_number(dose) or not math.isfinite(dose) or dose < 0:
            raise RunFileError(f"{where}: dose_e_per_A2 {dose!r} must be finite and >= 0")
        return int(seq), float(angle), float(dose)

    def _check_frames(self, msg: Message, modality: str, where: str) -> np.ndarray:
        """The frames as float32 [k, ns, nd], k = 1 (HAADF) or one per element in the
        series' element order."""
        if modality == "haadf":
            names = ["HAADF"]
        else:
            names = msg.header.get("elements")
            if not isinstance(names, list) or not all(isinstance(e, str) for e in names):
                raise RunFileError(f"{where}: elements must be a list of symbols, got "
                                   f"{names!r}")
            unknown = [e for e in names if e not in self.elements]
            if unknown:
                raise RunFileError(f"{where}: element {unknown[0]!r} is not in the series "
                                   f"{self.elements}")
            missing = [e for e in self.elements if e not in names]
            if missing or len(names) != len(set(names)):
                raise RunFileError(f"{where}: elements {names} must name each of "
                                   f"{self.elements} once")
        if len(msg.arrays) != len(names):
            raise RunFileError(f"{where}: {len(msg.arrays)} frames for {len(names)} "
                               f"{'elements' if modality == 'chem' else 'image'}")
        by_name = dict(zip(names, msg.arrays, strict=True))
        order = self.elements if modality == "chem" else names
        out = np.empty((len(order), *self.shape), np.float32)
        for i, name in enumerate(order):
            a = np.asarray(by_name[name])
            if a.shape != self.shape:
                raise RunFileError(f"{where}: frame {name} has shape {a.shape}, the series' "
                                   f"images are {self.shape}")
            if a.dtype.kind not in "fiu":
                raise RunFileError(f"{where}: frame {name} has dtype {a.dtype}, expected "
                                   "real numbers")
            out[i] = a
            if not np.all(np.isfinite(out[i])):
                raise RunFileError(f"{where}: frame {name} holds NaN/inf values")
            if modality == "chem" and float(out[i].min()) < 0:
                raise RunFileError(f"{where}: element {name} has negative counts (min "
                                   f"{float(out[i].min())})")
        return out

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
        rows = _event_rows(_to_json({"kind": kind, "time": time.time(), **payload}, where))
        self._append({"run/events": rows}, "events", self._state.events, where,
                     count=len(rows))

    def record_costs(self, iteration: int, costs: Mapping[str, float]) -> None:
        """Append one row of solver costs; terms left out are stored as NaN."""
        self._check_open()
        where = f"{self.path}: costs of iteration {iteration!r}"
        if not _is_int(iteration):
            raise RunFileError(f"{where}: iteration must be an integer")
        unknown = [k for k in costs if k not in self.cost_terms]
        if unknown:
            raise RunFileError(f"{where}: unknown cost term {unknown[0]!r}; this run records "
                               f"{list(self.cost_terms)}")
        rows: dict[str, Any] = {"run/costs/iteration": [int(iteration)]}
        for t in self.cost_terms:
            v = costs.get(t, math.nan)
            if not _is_number(v):
                raise RunFileError(f"{where}: cost {t!r} must be a number, got {v!r}")
            rows[f"run/costs/{t}"] = [float(v)]
        self._append(rows, "costs", self._state.costs, where)

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
        if not _is_int(iteration):
            raise RunFileError(f"{where}: iteration must be an integer")
        if set(volumes) != set(self.elements):
            raise RunFileError(f"{where}: volumes for {sorted(volumes)}, the series has "
                               f"{self.elements}")
        ns, nd = self.shape
        stack = np.empty((1, len(self.elements), ns, nd, nd), np.float32)
        for i, e in enumerate(self.elements):
            v = np.asarray(volumes[e])
            if v.shape != (ns, nd, nd):
                raise RunFileError(f"{where}: volume {e} has shape {v.shape}, expected "
                                   f"{(ns, nd, nd)}")
            stack[0, i] = v
        rows = {f"run/{group}/volumes": stack, f"run/{group}/iteration": [int(iteration)],
                f"run/{group}/n_tilts": [[self._state.haadf, self._state.chem]],
                f"run/{group}/final": [int(bool(final))]}
        self._append(rows, group, getattr(self._state, group), where)

    def mark_complete(self, end: Message | Mapping[str, Any]) -> None:
        """Record the SERIES_END (with the counts it claims and those recorded) and mark the
        run complete: no more tilts; events, costs and volumes may still follow."""
        self._check_open()
        h = dict(end.header if isinstance(end, Message) else end)
        where = f"{self.path}: series_end"
        if h.get("type", SERIES_END) != SERIES_END:
            raise RunFileError(f"{where}: message type is {h.get('type')!r}")
        claimed = {k: h.get(k) for k in ("n_haadf", "n_chem")}
        recorded = {"n_haadf": self._state.haadf, "n_chem": self._state.chem}
        doc = {"kind": "series_end", "time": time.time(), "seq": h.get("seq"),
               "claimed": claimed, "recorded": recorded, "match": claimed == recorded}
        rows = _event_rows(_to_json(doc, where))
        self._append({"run/events": rows}, "events", self._state.events, where,
                     count=len(rows), sync=True, complete=1)

    # -- reading back -----------------------------------------------------------------------
    def tilts(self) -> tuple[list[tuple[float, np.ndarray]],
                             list[tuple[float, dict[str, np.ndarray]]]]:
        """The recorded HAADF and chemical tilts in arrival order: (angle, image) and
        (angle, {element: map}), to rebuild the solver on resume."""
        self._check_open()
        f, s, p = self._f, self._state, self.path
        h_data, h_ang = _rows(f, "haadf/data", s.haadf, p), _rows(f, "haadf/angles", s.haadf, p)
        haadf = [(float(a), h_data[i]) for i, a in enumerate(h_ang)]
        maps = {e: _rows(f, f"chem/{e}/data", s.chem, p) for e in self.elements}
        c_ang = _rows(f, f"chem/{self.elements[0]}/angles", s.chem, p)
        chem = [(float(a), {e: maps[e][i] for e in self.elements}) for i, a in enumerate(c_ang)]
        return haadf, chem

    def events(self) -> list[dict[str, Any]]:
        """The recorded events, oldest first."""
        self._check_open()
        return _events_from_rows(_rows(self._f, "run/events", self._state.events, self.path),
                                 self.path)

    def costs(self) -> dict[str, np.ndarray]:
        """The recorded cost rows: iteration and each term (NaN where not given)."""
        self._check_open()
        return {k: _rows(self._f, f"run/costs/{k}", self._state.costs, self.path)
                for k in ("iteration", *self.cost_terms)}

    def iteration_schedule(self) -> list[tuple[int, int]]:
        """(HAADF, chemical) tilts the solver held at each recorded iteration, from the cost
        terms n_haadf and n_chem (or n_haadf_tilts and n_chem_tilts), to replay them."""
        c = self.costs()
        for h, k in (("n_haadf", "n_chem"), ("n_haadf_tilts", "n_chem_tilts")):
            if h in c and k in c:
                if np.any(~np.isfinite(c[h])) or np.any(~np.isfinite(c[k])):
                    raise RunFileError(f"{self.path}: /run/costs/{h} or /{k} has rows "
                                       "without a tilt count")
                return [(int(a), int(b)) for a, b in zip(c[h], c[k], strict=True)]
        raise RunFileError(f"{self.path}: the cost terms {list(self.cost_terms)} hold no "
                           "tilt counts (n_haadf and n_chem)")

    def tilts_since_ready(self, *, need_haadf: bool = True) -> int:
        """Tilts recorded (both modalities, in seq order) from the one that first gave the
        run a chemical tilt and, if `need_haadf`, a HAADF tilt, inclusive; 0 before."""
        seqs = {m: _rows(self._f, f"run/{m}/seq", getattr(self._state, m), self.path)
                for m in MODALITIES}
        order = sorted([(int(q), "haadf") for q in seqs["haadf"]]
                       + [(int(q), "chem") for q in seqs["chem"]])
        seen = {"haadf": 0, "chem": 0}
        for i, (_, m) in enumerate(order):
            seen[m] += 1
            if seen["chem"] and (seen["haadf"] or not need_haadf):
                return len(order) - i
        return 0

    # -- plumbing ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._lock is None:
            raise RunFileError(f"{self.path}: run file is closed")

    def _append(self, rows: Mapping[str, Any], counter: str, n: int, where: str,
                count: int = 1, sync: bool = False, **state: int) -> None:
        """Write `count` rows at [n, n + count) of every dataset in `rows`, flush, then
        commit the new count (and `state` changes). `sync`: fsync too (if durable)."""
        try:
            for name, values in rows.items():
                ds = self._f[name]
                ds.resize(n + count, axis=0)
                ds[n:n + count] = values
            self._flush(sync)
            self._commit(sync, **{counter: n + count}, **state)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
            self._rollback()
            raise RunFileError(f"{where}: writing failed ({e}); the run keeps its "
                               f"{n} committed rows") from e

    def _commit(self, sync: bool, **changes: int) -> None:
        new = replace(self._state, generation=self._state.generation + 1,
                      updated_us=_now_us(), **changes)
        self._f["run/state"][new.generation % 2] = new.row()
        self._state = new
        self._flush(sync)

    def _flush(self, sync: bool) -> None:
        self._f.flush()
        if sync and self._durable and self._lock is not None:
            self._lock.fsync()

    def _rollback(self) -> None:
        """Trim every dataset back to its committed count (best effort)."""
        with contextlib.suppress(Exception):
            _truncate(self._f, self._state)

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


def _time(h: Mapping[str, Any], key: str) -> float:
    v = h.get(key)
    return float(v) if _is_number(v) and math.isfinite(v) else math.nan


def _truncate(f: h5py.File, state: _State) -> None:
    """Drop rows written after the last commit (a record that was in flight)."""
    def visit(name: str, obj: Any) -> None:
        counter = _counter(name)
        if isinstance(obj, h5py.Dataset) and counter is not None:
            n = getattr(state, counter)
            if obj.shape[0] > n:
                obj.resize(n, axis=0)
    f.visititems(visit)


def _copy_rows(src: h5py.File, dst: h5py.File, name: str, n: int, path: Path) -> None:
    """Copy rows [0, n) of dataset `name`, about 64 MiB at a time."""
    a = _dataset(src, name, path)
    if a.shape[0] < n:
        raise RunFileError(f"{path}: /{name} holds {a.shape[0]} rows but {n} are committed; "
                           "file damaged")
    b = dst[name]
    b.resize(n, axis=0)
    step = max(1, (64 << 20) // max(1, a.dtype.itemsize * int(np.prod(a.shape[1:]))))
    for i in range(0, n, step):
        try:
            b[i:i + step] = a[i:min(n, i + step)]
        except (OSError, RuntimeError) as e:
            raise RunFileError(f"{path}: /{name} rows {i}.. cannot be read, file damaged? "
                               f"({e})") from None


def _rebuild(path: Path, lay: _Layout, lock: _WriterLock) -> _WriterLock:
    """Copy the committed records of `path` into a fresh file moved onto `path`; returns
    the writer lock of the new file (the old one is released)."""
    tmp = _temp_name(path)
    new_lock = None
    try:
        with _open_read(path) as src:
            state = _read_state(src, path)
            with _create_file(tmp) as dst:
                _build(dst, lay)
                for name in _dataset_names(lay):
                    _copy_rows(src, dst, name, getattr(state, str(_counter(name))), path)
                dst["run/state"][:] = 0
                dst["run/state"][state.generation % 2] = state.row()
        new_lock = _WriterLock(tmp)
        os.replace(tmp, path)
    except BaseException:
        if new_lock is not None:
            new_lock.release()
        tmp.unlink(missing_ok=True)
        raise
    lock.release()
    return new_lock


# -- reading (any state: live, crashed, complete) ---------------------------------------------
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


def read_run(path: str | Path) -> RunRecord:
    """Read the committed records of a run file without changing it: works while the writer
    is live (SWMR reading), after it died, and once it is complete. CRCs are checked."""
    path = Path(path)
    with _open_read(path) as f:
        s = _read_state(f, path)
        lay = _layout_from_file(f, path)
        h_ang = _rows(f, "haadf/angles", s.haadf, path)
        haadf = _rows(f, "haadf/data", s.haadf, path)
        chem = {e: _rows(f, f"chem/{e}/data", s.chem, path) for e in lay.elements}
        c_ang = {e: _rows(f, f"chem/{e}/angles", s.chem, path) for e in lay.elements}
        book = {m: {k: _rows(f, f"run/{m}/{k}", getattr(s, m), path) for k in TILT_FIELDS}
                for m in MODALITIES}
        events = _events_from_rows(_rows(f, "run/events", s.events, path), path)
        costs = {k: _rows(f, f"run/costs/{k}", s.costs, path)
                 for k in ("iteration", *lay.cost_terms)}
        snaps = _rows(f, "run/snapshots/iteration", s.snapshots, path)
    _check_crcs(path, book, haadf, np.stack([chem[e] for e in lay.elements], axis=1))
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
                     events, costs, snaps, bool(s.complete), lay.attrs)


def _check_crcs(path: Path, book: Mapping[str, Mapping[str, np.ndarray]],
                haadf: np.ndarray, chem: np.ndarray) -> None:
    for m, frames in (("haadf", haadf[:, None]), ("chem", chem)):
        for i, want in enumerate(book[m]["crc32"]):
            if _crc(frames[i]) != int(want):
                raise RunFileError(f"{path}: {m} tilt {i} (seq {int(book[m]['seq'][i])}) "
                                   f"fails its CRC-32 (/run/{m}/crc32); file damaged")


def read_snapshot(path: str | Path, index: int = -1,
                  group: str = "snapshots") -> tuple[int, dict[str, np.ndarray]]:
    """One recorded snapshot (default: the latest) as (iteration, element -> volume);
    `group="std_error"` reads the standard-error volumes instead."""
    path = Path(path)
    if group not in VOLUME_GROUPS:
        raise RunFileError(f"{path}: no volume group {group!r}; choose from "
                           f"{list(VOLUME_GROUPS)}")
    with _open_read(path) as f:
        s = _read_state(f, path)
        lay = _layout_from_file(f, path)
        n = getattr(s, group)
        if not -n <= index < n:
            raise RunFileError(f"{path}: /run/{group}: no entry {index} (it holds {n})")
        i = index % n
        it = _rows(f, f"run/{group}/iteration", n, path)[i]
        vol = _rows(f, f"run/{group}/volumes", n, path)[i]
    return int(it), {e: vol[k] for k, e in enumerate(lay.elements)}


def _duplicates(seq: np.ndarray, angles: np.ndarray) -> int:
    """Rows whose seq or angle repeats an earlier row's."""
    seen_seq: set[int] = set()
    seen_angle: set[float] = set()
    dup = 0
    for q, a in zip(seq, angles, strict=True):
        dup += int(int(q) in seen_seq or _round_angle(a) in seen_angle)
        seen_seq.add(int(q))
        seen_angle.add(_round_angle(a))
    return dup


def describe_run(path: str | Path) -> dict[str, Any]:
    """A summary of a run file for `fusetomo inspect`, live or not. Damage found while
    reading the committed records is reported under `problem` rather than raised."""
    path = Path(path)
    with _open_read(path) as f:
        lay = _layout_from_file(f, path)
        s = _read_state(f, path)
        counts = {m: getattr(s, m) for m in MODALITIES}
        seq = {m: _rows(f, f"run/{m}/seq", counts[m], path) for m in MODALITIES}
        ang = {"haadf": _rows(f, "haadf/angles", counts["haadf"], path),
               "chem": _rows(f, f"chem/{lay.elements[0]}/angles", counts["chem"], path)}
        dose = {m: float(np.sum(_rows(f, f"run/{m}/dose_e_per_A2", counts[m], path)))
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
        "writer_live": _WriterLock.held(path),
        "created": lay.attrs.get("created"),
        "updated": updated,
        "problem": problem,
    }
