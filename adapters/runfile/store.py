"""The run file's plumbing: the two-slot commit record, the live-writer lock, opening the
file in the modes SWMR allows, committed rows, fixed-width event rows, and the repairs
(dropping uncommitted rows, copying committed ones). The module docstring of
`fusetomo.adapters.runfile` says why each exists."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fusetomo.adapters.seriesfile import open_h5
from fusetomo.core.errors import FusetomoError
from fusetomo.core.jsonable import numpy_default

try:  # POSIX only; without it there is no live-writer check
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MODALITIES = ("haadf", "chem")
EVENT_ROW_BYTES = 1024
VOLUME_GROUPS = ("snapshots", "std_error")
LIBVER = ("v110", "latest")  # SWMR needs the 1.10 format; stay readable by HDF5 >= 1.10
_LOCK_OFFSET = 1 << 62  # the byte a live writer locks
# What h5py raises on a damaged or truncated file, beside OSError.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


class RunFileError(FusetomoError, ValueError):
    """A run file that cannot be created, read or appended to, or a record that does not fit
    the series; the message names the file, the dataset or field, and the bad value."""


class RecordRefusedError(RunFileError):
    """A tilt (or series end) that does not fit the series recorded so far: `code` is the
    protocol's name for the reason (wrong_series, series_complete, duplicate_seq,
    duplicate_tilt, shape_mismatch, element_mismatch, not_a_tilt)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- the commit record ------------------------------------------------------------------------
@dataclass(frozen=True)
class State:
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
    def from_row(cls, row: np.ndarray) -> State | None:
        values = np.asarray(row[:-1], dtype="<i8")
        if zlib.crc32(values.tobytes()) != int(row[-1]):
            return None
        return cls(*(int(v) for v in values))


STATE_FIELDS = (*(f.name for f in fields(State)), "crc32")


def read_state(f: h5py.File, path: Path) -> State:
    ds = dataset(f, "run/state", path)
    if ds.shape != (2, len(STATE_FIELDS)):
        raise RunFileError(f"{path}: /run/state has shape {ds.shape}, expected "
                           f"(2, {len(STATE_FIELDS)})")
    try:
        rows = ds[()]
    except H5_ERRORS as e:
        raise RunFileError(f"{path}: /run/state cannot be read, file damaged? ({e})") from None
    states = [s for s in (State.from_row(r) for r in rows) if s is not None]
    if not states:
        raise RunFileError(f"{path}: /run/state: neither commit record passes its checksum; "
                           "file damaged")
    return max(states, key=lambda s: s.generation)


def counter(name: str) -> str | None:
    """Which count of the commit record bounds dataset `name` (None: not appendable)."""
    parts = name.strip("/").split("/")
    if parts[0] in MODALITIES:
        return parts[0]
    if parts[0] == "run" and len(parts) > 1 and (
            parts[1] in MODALITIES or parts[1] in VOLUME_GROUPS
            or parts[1] in ("events", "costs")):
        return parts[1]
    return None


def now_us() -> int:
    return int(time.time() * 1e6)


# -- rows -------------------------------------------------------------------------------------
def dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    try:
        ds = f.get(name)
    except H5_ERRORS as e:
        raise RunFileError(f"{path}: /{name} cannot be read, file damaged? ({e})") from None
    if not isinstance(ds, h5py.Dataset):
        raise RunFileError(f"{path}: dataset /{name} is missing")
    return ds


def rows(f: h5py.File, name: str, n: int, path: Path, start: int = 0) -> np.ndarray:
    """The committed rows [start, n) of an appendable dataset."""
    ds = dataset(f, name, path)
    try:
        if ds.shape[0] < n and f.swmr_mode:
            ds.refresh()
        if ds.shape[0] < n:
            raise RunFileError(f"{path}: /{name} holds {ds.shape[0]} rows but {n} are "
                               "committed; file damaged")
        return ds[start:n]
    except RunFileError:
        raise
    except H5_ERRORS as e:
        raise RunFileError(f"{path}: /{name} cannot be read, file damaged? ({e})") from None


def to_json(doc: Mapping[str, Any], where: str) -> str:
    try:
        return json.dumps(doc, default=numpy_default, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as e:
        raise RunFileError(f"{where}: cannot be stored as JSON ({e})") from None


def event_rows(text: str) -> list[bytes]:
    raw = text.encode("ascii")  # json.dumps escapes non-ASCII (and NUL)
    out = [raw[i:i + EVENT_ROW_BYTES] for i in range(0, len(raw), EVENT_ROW_BYTES)]
    if not out or len(out[-1]) == EVENT_ROW_BYTES:
        out.append(b"")
    return out


def events_from_rows(raw_rows: np.ndarray, path: Path) -> list[dict[str, Any]]:
    out, buf = [], b""
    for r in raw_rows:
        buf += bytes(r)
        if len(r) < EVENT_ROW_BYTES:
            try:
                out.append(json.loads(buf))
            except (ValueError, RecursionError) as e:
                raise RunFileError(f"{path}: /run/events: event {len(out)} is not JSON "
                                   f"({e})") from None
            buf = b""
    return out


# -- files ------------------------------------------------------------------------------------
def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temps(path: Path) -> None:
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


def create_file(path: Path) -> h5py.File:
    return h5py.File(path, "w", libver=LIBVER)


def open_swmr_write(path: Path) -> h5py.File:
    """Open for appending in SWMR mode in one step (never in plain write mode: a writer that
    dies there leaves a file that SWMR readers refuse)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_LATEST)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE,
                        fapl=fapl)
    return h5py.File(fid)


def open_read(path: Path) -> contextlib.AbstractContextManager[h5py.File]:
    """Open a run file for reading, whether its writer is live, dead or done: as an SWMR
    reader only when a plain reader is refused (a live or dead writer's file). HDF5 retries
    an SWMR reader's metadata reads that fail their checksum for minutes, so a closed file
    with a damaged object header is read plainly, which fails at once."""
    return open_h5(path, RunFileError, swmr=not _opens_plainly(path))


def _opens_plainly(path: Path) -> bool:
    try:
        h5py.File(path, "r").close()
    except (OSError, ValueError):
        return False
    return True


def truncate(f: h5py.File, state: State) -> None:
    """Drop rows written after the last commit (a record that was in flight)."""
    def visit(name: str, obj: Any) -> None:
        c = counter(name)
        if isinstance(obj, h5py.Dataset) and c is not None:
            n = getattr(state, c)
            if obj.shape[0] > n:
                obj.resize(n, axis=0)
    f.visititems(visit)


def copy_rows(src: h5py.File, dst: h5py.File, name: str, n: int, path: Path) -> None:
    """Copy rows [0, n) of dataset `name`, about 64 MiB at a time."""
    a = dataset(src, name, path)
    if a.shape[0] < n:
        raise RunFileError(f"{path}: /{name} holds {a.shape[0]} rows but {n} are committed; "
                           "file damaged")
    b = dst[name]
    b.resize(n, axis=0)
    step = max(1, (64 << 20) // max(1, a.dtype.itemsize * int(np.prod(a.shape[1:]))))
    for i in range(0, n, step):
        try:
            b[i:i + step] = a[i:min(n, i + step)]
        except H5_ERRORS as e:
            raise RunFileError(f"{path}: /{name} rows {i}.. cannot be read, file damaged? "
                               f"({e})") from None


# -- the live-writer lock ------------------------------------------------------------------------
class WriterLock:
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
