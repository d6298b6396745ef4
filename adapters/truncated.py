"""What a truncation cut from an HDF5 file: the datasets whose bytes lay past the cut, and
the groups or datasets whose metadata did.

HDF5 refuses to open a file shorter than the end-of-file its superblock records, so the
error alone names only the file. To name what was lost, the file is opened read-only through
a view that pretends it is as long as recorded (zeros past the cut: nothing is copied or
written) and its objects' storage is compared with the cut. Hand-written because no library
does this; h5py's file-object driver does the I/O.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import h5py

__all__ = ["describe_truncation"]

_EOF = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")
MAX_NAMES = 8  # names listed in a message; the rest counted


class _Padded(io.RawIOBase):
    """A read-only view of an open file, `size` bytes long: zeros past its real end."""

    def __init__(self, raw: io.BufferedReader, real: int, size: int) -> None:
        self.raw, self.real, self.size, self.pos = raw, real, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        got = 0
        if self.pos < self.real:
            self.raw.seek(self.pos)
            got = self.raw.readinto(view[:min(n, self.real - self.pos)]) or 0
        view[got:n] = bytes(n - got)
        self.pos += n
        return n


def _past(ds: h5py.Dataset, cut: int) -> bool:
    """Whether any stored byte of `ds` lies at or past `cut`."""
    dsid = ds.id
    if ds.chunks:
        for i in range(dsid.get_num_chunks()):
            info = dsid.get_chunk_info(i)
            if info.byte_offset is not None and info.byte_offset + info.size > cut:
                return True
        return False
    offset = dsid.get_offset()
    return offset is not None and offset + dsid.get_storage_size() > cut


def _walk(group: h5py.Group, cut: int, lost: list[str], unreadable: list[str]) -> None:
    try:
        names = list(group.keys())
    except (OSError, RuntimeError, KeyError, ValueError):
        unreadable.append(group.name.lstrip("/") or "/")
        return
    for name in names:
        full = f"{group.name.rstrip('/')}/{name}".lstrip("/")
        try:
            obj = group[name]
            if isinstance(obj, h5py.Group):
                _walk(obj, cut, lost, unreadable)
            elif isinstance(obj, h5py.Dataset) and _past(obj, cut):
                lost.append(full)
        except (OSError, RuntimeError, KeyError, ValueError):
            unreadable.append(full)


def _listed(names: list[str]) -> str:
    more = len(names) - MAX_NAMES
    return ", ".join(names[:MAX_NAMES]) + (f" and {more} more" if more > 0 else "")


def describe_truncation(path: str | Path, error: str) -> str | None:
    """For HDF5's error `error` on opening `path`: a sentence naming what the cut took, or
    None when the error is not a truncation."""
    m = _EOF.search(error)
    if m is None:
        return None
    real, stored = int(m.group(1)), int(m.group(2))
    head = f"truncated at byte {real} of {stored}"
    lost: list[str] = []
    unreadable: list[str] = []
    try:
        with open(path, "rb") as raw, h5py.File(_Padded(raw, real, stored), "r") as f:
            _walk(f, real, lost, unreadable)
    except (OSError, RuntimeError, KeyError, ValueError):
        return f"{head}: the file's own HDF5 structure lay past the cut"
    parts = []
    if lost:
        parts.append(f"data past the cut in {_listed(lost)}")
    if unreadable:
        parts.append(f"structure past the cut for {_listed(unreadable)}")
    if not parts:
        parts.append("only HDF5's free space or bookkeeping lay past the cut")
    return f"{head}: " + "; ".join(parts)
