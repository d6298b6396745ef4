"""What a run file is made of: its datasets and attributes, built all at once before SWMR
writing starts (SWMR forbids new objects), read back from a file, and the checksums that
protect what matters in it."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fusetomo.adapters.protocol import SeriesStart
from fusetomo.adapters.runfile import storage
from fusetomo.adapters.runfile.store import (
    EVENT_ROW_BYTES,
    H5_ERRORS,
    MODALITIES,
    STATE_FIELDS,
    VOLUME_GROUPS,
    RunFileError,
    State,
    WriterLock,
    copy_rows,
    counter,
    create_file,
    dataset,
    now_us,
    open_read,
    read_state,
    temp_name,
    to_json,
)
from fusetomo.adapters.seriesfile import attr_value
from fusetomo.core.elements import atomic_number

FORMAT = "fusetomo-run"
# 2: an element's background attribute is written only when the series states it (version
#    1 wrote 0 for "not stated", which reading a version-1 file maps back). Files written
#    since fusetomo 0.1 issue 18 also hold /run/<m>/meta_crc32 (a tilt's seq, angle and
#    doses) and /run/<group>/crc32 (each snapshot's volumes): optional datasets, checked
#    where present, so the version did not change.
VERSION = 2
# the solver's cost terms, the tilt counts it held, and whether the iteration was idle
COST_TERMS = ("haadf", "chem", "tv", "haadf_scale", "n_haadf", "n_chem", "idle")
# per-tilt bookkeeping under /run/<modality>
TILT_FIELDS: dict[str, str] = {
    "seq": "i8", "t_received": "f8", "t_sent": "f8", "t_acquired": "f8",
    "dose_e_per_A2": "f8", "cumulative_dose_e_per_A2": "f8", "crc32": "u4",
}
VOLUME_FIELDS = ("volumes", "iteration", "n_tilts", "final")


@dataclass(frozen=True)
class Layout:
    """What the file's fixed structure is made of."""

    elements: tuple[str, ...]
    shape: tuple[int, int]
    Z: dict[str, float]
    background: dict[str, float]
    cost_terms: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION
    checksums: bool = True  # meta_crc32 and volume crc32 datasets (see VERSION)

    @property
    def volume_names(self) -> tuple[str, ...]:
        """The volumes a snapshot holds: the elements, or the HAADF volume of a HAADF-only
        run (no element)."""
        return self.elements or ("HAADF",)

    def dataset_names(self) -> list[str]:
        names = ["haadf/data", "haadf/angles"]
        names += [f"chem/{e}/{d}" for e in self.elements for d in ("data", "angles")]
        names += [] if self.elements else ["chem/angles"]
        names += [f"run/{m}/{k}" for m in MODALITIES for k in self.tilt_fields]
        names += ["run/events", "run/costs/iteration"]
        names += [f"run/costs/{t}" for t in self.cost_terms]
        names += [f"run/{g}/{k}" for g in VOLUME_GROUPS for k in self.volume_fields]
        return names

    @property
    def tilt_fields(self) -> tuple[str, ...]:
        return (*TILT_FIELDS, "meta_crc32") if self.checksums else tuple(TILT_FIELDS)

    @property
    def volume_fields(self) -> tuple[str, ...]:
        return (*VOLUME_FIELDS, "crc32") if self.checksums else VOLUME_FIELDS


# -- checksums ----------------------------------------------------------------------------------
def frames_crc(frames: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(frames, dtype="<f4").tobytes())


def meta_crc(seq: int, angle: float, dose: float, cumulative: float) -> int:
    """The meta_crc32 of a tilt row: its seq, angle, dose and cumulative dose."""
    return zlib.crc32(struct.pack("<qddd", int(seq), float(angle), float(dose),
                                  float(cumulative)))


def volume_crc(volumes: np.ndarray, iteration: int, n_tilts: Any, final: int) -> int:
    c = zlib.crc32(np.ascontiguousarray(volumes, dtype="<f4").tobytes())
    extra = np.asarray([iteration, *np.asarray(n_tilts).ravel().tolist(), final], "<i8")
    return zlib.crc32(extra.tobytes(), c)


# -- building ----------------------------------------------------------------------------------
def _appendable(group: h5py.Group, name: str, row: tuple[int, ...], dtype: Any,
                chunk_rows: int = 256, chunk_row: tuple[int, ...] | None = None,
                compress: bool = False) -> h5py.Dataset:
    """An empty dataset growing along axis 0; `compress` only for one row per chunk, each
    chunk written once (storage.py: storage.CODEC, read when the file is built)."""
    return group.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=dtype,
                                chunks=(chunk_rows, *(chunk_row or row)),
                                **(storage.CODEC.h5_kwargs() if compress else {}))


def build(f: h5py.File, lay: Layout) -> None:
    """Create every group, dataset and attribute of a run file (all before SWMR starts)."""
    ns, nd = lay.shape
    for k, v in lay.attrs.items():
        if v is not None:
            f.attrs[k] = v
    h = f.create_group("haadf")
    _appendable(h, "data", (ns, nd), np.float32, chunk_rows=1, compress=True)
    _appendable(h, "angles", (), np.float64).attrs["units"] = "degree"
    chem = f.create_group("chem", track_order=True)
    for e in lay.elements:
        g = chem.create_group(e)
        z = lay.Z[e]
        g.attrs["Z"] = int(z) if float(z).is_integer() else float(z)
        if e in lay.background:
            g.attrs["background"] = float(lay.background[e])
        _appendable(g, "data", (ns, nd), np.float32, chunk_rows=1, compress=True)
        _appendable(g, "angles", (), np.float64).attrs["units"] = "degree"
    if not lay.elements:  # a HAADF-only run: no map, and chemical angles stay empty
        f.attrs["haadf_only"] = True
        _appendable(chem, "angles", (), np.float64).attrs["units"] = "degree"
    run = f.create_group("run", track_order=True)
    for m in MODALITIES:
        g = run.create_group(m, track_order=True)
        for name in lay.tilt_fields:
            _appendable(g, name, (), TILT_FIELDS.get(name, "u4"))
    ev = _appendable(run, "events", (), f"S{EVENT_ROW_BYTES}", chunk_rows=64)
    ev.attrs["row_bytes"] = EVENT_ROW_BYTES
    costs = run.create_group("costs", track_order=True)
    _appendable(costs, "iteration", (), np.int64)
    for term in lay.cost_terms:
        _appendable(costs, term, (), np.float64)
    slab = max(1, min(ns, (4 << 20) // (nd * nd * 4)))
    for name in VOLUME_GROUPS:
        g = run.create_group(name, track_order=True)
        _appendable(g, "volumes", (len(lay.volume_names), ns, nd, nd), np.float32,
                    chunk_rows=1, chunk_row=(1, slab, nd, nd), compress=True
                    ).attrs["elements"] = list(lay.volume_names)
        _appendable(g, "iteration", (), np.int64)
        _appendable(g, "n_tilts", (2,), np.int64).attrs["columns"] = list(MODALITIES)
        _appendable(g, "final", (), np.int8)
        if lay.checksums:
            _appendable(g, "crc32", (), np.uint32)
    state = run.create_dataset("state", data=np.zeros((2, len(STATE_FIELDS)), np.int64))
    state.attrs["fields"] = list(STATE_FIELDS)
    state[0] = State(updated_us=now_us()).row()


def layout_from_start(start: SeriesStart, path: Path, cost_terms: tuple[str, ...]) -> Layout:
    """The layout of a new run of the series `start` announces (checked when it was
    parsed)."""
    attrs = {
        "format": FORMAT, "version": VERSION, "series_id": start.series,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fusetomo_version": _package_version(),
        "start_header": to_json(start.header, f"{path}: series_start"),
        "gamma": start.gamma, "pixel_size_nm": start.pixel_size_nm,
        "dose_budget_e_per_A2": start.dose_budget_e_per_A2,
    }
    return Layout(start.elements, start.shape, dict(start.Z), dict(start.background),
                  cost_terms, attrs)


def layout_from_file(f: h5py.File, path: Path) -> Layout:
    try:
        fmt = attr_value(f.attrs.get("format"))
        version = attr_value(f.attrs.get("version"))
        attrs = {k: attr_value(v) for k, v in f.attrs.items()}
    except H5_ERRORS as e:
        raise RunFileError(f"{path}: root attributes cannot be read, file damaged? ({e})") \
            from None
    if fmt != FORMAT:
        raise RunFileError(f"{path}: attribute format is {fmt!r}, expected {FORMAT!r}")
    if not isinstance(version, int) or version > VERSION:
        raise RunFileError(f"{path}: run format version {version!r} is not supported (this "
                           f"fusetomo reads up to {VERSION})")
    data = dataset(f, "haadf/data", path)
    if data.ndim != 3:
        raise RunFileError(f"{path}: /haadf/data has shape {data.shape}, expected 3 axes")
    try:
        chem = f.get("chem")
        haadf_only = bool(attrs.get("haadf_only", False))
        if not isinstance(chem, h5py.Group) or not (len(chem) or haadf_only):
            raise RunFileError(f"{path}: group /chem is missing or empty")
        elements = () if haadf_only else tuple(chem)
        Z = {e: float(attr_value(chem[e].attrs.get("Z", atomic_number(e)))) for e in elements}
        bg = {e: float(attr_value(chem[e].attrs["background"])) for e in elements
              if "background" in chem[e].attrs}
        costs = f.get("run/costs")
        if not isinstance(costs, h5py.Group) or "iteration" not in costs:
            raise RunFileError(f"{path}: group /run/costs (with iteration) is missing")
        terms = tuple(k for k in costs if k != "iteration")
    except RunFileError:
        raise
    except H5_ERRORS as e:
        raise RunFileError(f"{path}: /chem or /run/costs cannot be read, file damaged? "
                           f"({e})") from None
    if version < 2:  # version 1 wrote 0 for a background the series did not state
        bg = {e: b for e, b in bg.items() if b != 0}
    lay = Layout(elements, (int(data.shape[1]), int(data.shape[2])), Z, bg, terms, attrs,
                 version, checksums="run/haadf/meta_crc32" in f)
    for name in lay.dataset_names():
        dataset(f, name, path)
    return lay


def rebuild(path: Path, lay: Layout, lock: WriterLock) -> WriterLock:
    """Copy the committed records of `path` into a fresh file moved onto `path` (clearing
    the "open for SWMR write" flag a dead writer leaves); returns the writer lock of the new
    file (the old one is released)."""
    tmp = temp_name(path)
    new_lock = None
    try:
        with open_read(path) as src:
            state = read_state(src, path)
            with create_file(tmp) as dst:
                build(dst, lay)
                for name in lay.dataset_names():
                    copy_rows(src, dst, name, getattr(state, str(counter(name))), path)
                dst["run/state"][:] = 0
                dst["run/state"][state.generation % 2] = state.row()
        new_lock = WriterLock(tmp)
        os.replace(tmp, path)
    except BaseException:
        if new_lock is not None:
            new_lock.release()
        tmp.unlink(missing_ok=True)
        raise
    lock.release()
    return new_lock


def _package_version() -> str:
    try:
        return metadata.version("fusetomo")
    except metadata.PackageNotFoundError:
        return "unknown"
