"""The tilt-series HDF5 file (a contract, documented in docs/file-format.md).

    /haadf/data              float32 [n_tilts, n_slices, n_det]
    /haadf/angles            float64 [n_tilts], degrees
    /chem                    optional (absent: a HAADF-only series, version 3)
    /chem attrs              kind = "counts" (default) | "background-subtracted"
    /chem/<Symbol>/data      float32 [m, n_slices, n_det]: counts >= 0, or counts with a
                             background subtracted (may be negative)
    /chem/<Symbol>/angles    float64 [m], degrees (the same for every element)
    /chem/<Symbol> attrs     Z (optional, else the periodic table); background (counts per
                             pixel, only when known: absent means "estimate it");
                             subtracted_level (counts per pixel removed from
                             background-subtracted maps, when known)
    /truth/<Symbol>          float32 [n_slices, n_det, n_det] (optional, simulated series)
    / attrs                  format="fusetomo-series", version=3, gamma (absent: estimate
                             it), pixel_size_nm, plus the series' own attributes

Version 1 files always wrote a background, 0 when it was not known: on reading them, a
background of 0 counts as not stated. Versions 1 and 2 required /chem; version 3 files may
have none (a HAADF-only series), and a fusetomo that reads only up to version 2 refuses them
by their version rather than by a missing group.

Files are written atomically (temporary file in the same folder, then `os.replace`), so a
reader never sees half a file. Every problem found on reading raises `SeriesFileError`,
whose message names the file, the dataset and what is wrong with it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fusetomo.adapters.series import SeriesError, TiltSeries
from fusetomo.core.angles import duplicate_angles
from fusetomo.core.elements import UnknownElementError, atomic_number

FORMAT = "fusetomo-series"
RUN_FORMAT = "fusetomo-run"  # adapters/runfile.py: a series file plus the live record
VERSION = 3
# /chem's `kind` attribute for each TiltSeries.chem_kind
CHEM_KIND_ATTR = {"counts": "counts", "subtracted": "background-subtracted"}
RESERVED_ATTRS = frozenset({"format", "version", "gamma", "pixel_size_nm"})


class SeriesFileError(SeriesError):
    """A series file that cannot be read or breaks the format; names file and dataset."""


# -- writing ----------------------------------------------------------------------------
@contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file opened for writing under a temporary name in the target folder and
    moved onto `path` only when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name next to the target (same file system, so os.replace is atomic); h5py
    # creates it with the usual permissions (mkstemp's would be private to the user).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dataset(group: h5py.Group, name: str, data: np.ndarray, dtype: Any) -> h5py.Dataset:
    arr = np.asarray(data, dtype=dtype)
    if arr.ndim >= 2 and arr.size > 4096:
        return group.create_dataset(name, data=arr, compression="gzip", compression_opts=4,
                                    shuffle=True)
    return group.create_dataset(name, data=arr)


def set_attr(
    obj: h5py.Group | h5py.Dataset,
    key: str,
    value: Any,
    where: str,
    error: type[Exception] = SeriesFileError,
) -> None:
    """Store one attribute; None is skipped, unsupported types raise naming the key."""
    if value is None:
        return
    try:
        obj.attrs[key] = value
    except (TypeError, ValueError) as e:
        raise error(f"{where}: attribute {key!r} = {value!r} cannot be stored in "
                              f"HDF5 ({e})") from None


def write_series(
    path: str | Path, series: TiltSeries, truth: Mapping[str, np.ndarray] | None = None
) -> Path:
    """Write `series` (and the simulated `truth` volumes, if given) to `path` atomically."""
    path = Path(path)
    clash = sorted(RESERVED_ATTRS & set(series.attrs))
    if clash:
        raise SeriesFileError(f"{path}: series attrs {clash} clash with reserved root "
                              "attributes")
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        set_attr(f, "gamma", series.gamma, str(path))
        set_attr(f, "pixel_size_nm", series.pixel_size_nm, str(path))
        for k, v in series.attrs.items():
            set_attr(f, k, v, str(path))
        h = f.create_group("haadf")
        write_dataset(h, "data", series.haadf, np.float32)
        h.create_dataset("angles", data=np.asarray(series.haadf_angles, np.float64))
        h["angles"].attrs["units"] = "degree"
        if not series.haadf_only:  # a HAADF-only series has no /chem (version 3)
            _write_chem(f, series, path)
        if truth:
            t = f.create_group("truth", track_order=True)
            for e, vol in truth.items():
                write_dataset(t, e, vol, np.float32)
    return path


def _write_chem(f: h5py.File, series: TiltSeries, path: Path) -> None:
    chem = f.create_group("chem", track_order=True)
    chem.attrs["kind"] = CHEM_KIND_ATTR[series.chem_kind]
    for e in series.elements:
        g = chem.create_group(e)
        write_dataset(g, "data", series.chem[e], np.float32)
        g.create_dataset("angles", data=np.asarray(series.chem_angles[e], np.float64))
        g["angles"].attrs["units"] = "degree"
        g.attrs["Z"] = int(series.Z[e])
        set_attr(g, "background", series.background.get(e), str(path))
        set_attr(g, "subtracted_level", series.subtracted_level.get(e), str(path))


# -- reading ----------------------------------------------------------------------------
@contextmanager
def open_h5(path: str | Path, error: type[Exception] = SeriesFileError, *,
            swmr: bool = False) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; a missing, non-HDF5, truncated or damaged file raises
    `error` naming it. With `swmr`, open as an SWMR reader first (a run file whose writer is
    live or died opens only that way), falling back to a plain read (files not in the
    HDF5 1.10 format cannot be opened for SWMR reading)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    if not path.is_file():
        raise error(f"{path}: not a file")
    if swmr:
        # An SWMR reader skips HDF5's end-of-file check and retries metadata reads for
        # minutes on a truncated file: a plain open first tells truncation apart (a file
        # whose writer is live or died fails it differently, and is then opened as SWMR).
        try:
            h5py.File(path, "r").close()
        except (OSError, ValueError) as e:
            if "truncated" in str(e).lower() or "signature" in str(e).lower():
                raise error(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        f = h5py.File(path, "r", swmr=True) if swmr else h5py.File(path, "r")
    except (OSError, ValueError) as e:
        try:
            if swmr:
                f = h5py.File(path, "r")
            elif "open for write" in str(e):
                # A run file whose writer is live, or was killed before it closed it: only
                # an SWMR reader opens it (the committed records are intact).
                f = h5py.File(path, "r", swmr=True)
            else:
                raise
        except (OSError, ValueError):
            raise error(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        try:
            yield f
        except (OSError, RuntimeError, KeyError) as e:
            raise error(f"{path}: damaged HDF5 file ({e})") from None


def _read(f: h5py.File, name: str, path: Path, ndim: int) -> np.ndarray:
    """A real-valued dataset with `ndim` axes, as float64 (angles) or float32 (images)."""
    if name not in f:
        raise SeriesFileError(f"{path}: dataset {name} is missing")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise SeriesFileError(f"{path}: {name} is a group, expected a dataset")
    if ds.dtype.kind not in "fiu":
        raise SeriesFileError(f"{path}: {name} has dtype {ds.dtype}, expected real numbers")
    if ds.ndim != ndim:
        raise SeriesFileError(f"{path}: {name} has shape {ds.shape}, expected {ndim} axes")
    try:
        data = ds[()]
    except (OSError, ValueError, RuntimeError) as e:
        raise SeriesFileError(f"{path}: {name} cannot be read, file damaged? ({e})") from None
    return np.asarray(data, dtype=np.float64 if ndim == 1 else np.float32)


def attr_value(value: Any) -> Any:
    """HDF5 attribute values as plain Python where they are scalars or strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _number_attr(obj: h5py.Group, key: str, where: str) -> float | None:
    if key not in obj.attrs:
        return None
    v = attr_value(obj.attrs[key])
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        raise SeriesFileError(f"{where}: attribute {key} must be a finite number, got {v!r}")
    return float(v)


def check_format(f: h5py.File, path: Path, expected: str) -> int:
    """Check the root `format` attribute; returns the file's format version."""
    fmt = attr_value(f.attrs.get("format", expected))
    if fmt != expected:
        raise SeriesFileError(f"{path}: attribute format is {fmt!r}, expected {expected!r}")
    version = attr_value(f.attrs.get("version", VERSION))
    if not isinstance(version, int) or version > VERSION:
        raise SeriesFileError(f"{path}: format version {version!r} is not supported "
                              f"(this fusetomo reads up to {VERSION})")
    return version


def _element(path: Path, where: str, symbol: str) -> str:
    try:
        atomic_number(symbol)
    except UnknownElementError as e:
        raise SeriesFileError(f"{path}: {where}: {e}") from None
    return symbol


def read_chem_kind(group: h5py.Group, where: str) -> str:
    """TiltSeries.chem_kind from a /chem group's `kind` attribute (absent: counts)."""
    kind = attr_value(group.attrs.get("kind", "counts"))
    for k, v in CHEM_KIND_ATTR.items():
        if kind == v:
            return k
    raise SeriesFileError(f"{where}: attribute kind must be one of "
                          f"{list(CHEM_KIND_ATTR.values())}, got {kind!r}")


def _read_chem(f: h5py.File, path: Path, version: int) -> tuple[dict, ...]:
    chem, angles, Z, background, subtracted = {}, {}, {}, {}, {}
    if "chem" not in f and version >= 3:
        return chem, angles, Z, background, subtracted  # a HAADF-only series
    if "chem" not in f or not isinstance(f["chem"], h5py.Group):
        raise SeriesFileError(f"{path}: group /chem is missing (required before format "
                              f"version 3; this file says version {version})")
    for e in f["chem"]:
        where = f"/chem/{e}"
        _element(path, where, e)
        g = f["chem"][e]
        if not isinstance(g, h5py.Group):
            raise SeriesFileError(f"{path}: {where} is a dataset, expected a group with "
                                  "data and angles")
        chem[e] = _read(f, f"{where}/data", path, 3)
        angles[e] = _read(f, f"{where}/angles", path, 1)
        z = _number_attr(g, "Z", f"{path}: {where}")
        if z is not None:
            if z <= 0:
                raise SeriesFileError(f"{path}: {where}: attribute Z must be > 0, got {z}")
            Z[e] = int(z) if z.is_integer() else z
        bg = _number_attr(g, "background", f"{path}: {where}")
        if bg is not None and (version >= 2 or bg != 0):
            background[e] = bg
        level = _number_attr(g, "subtracted_level", f"{path}: {where}")
        if level is not None:
            subtracted[e] = level
    return chem, angles, Z, background, subtracted


def read_series(path: str | Path) -> TiltSeries:
    """Read and validate a series file, or the tilts of a run file (which has the same
    layout plus its commit records: read through them, so that a tilt half-written by a
    writer that crashed is never returned). Any problem raises SeriesFileError."""
    path = Path(path)
    if file_format(path) == RUN_FORMAT:
        from fusetomo.adapters.runfile import RunFileError, read_run

        try:
            return read_run(path).series
        except RunFileError as e:
            raise SeriesFileError(str(e)) from None
    with open_h5(path) as f:
        version = check_format(f, path, FORMAT)
        haadf = _read(f, "/haadf/data", path, 3)
        haadf_angles = _read(f, "/haadf/angles", path, 1)
        chem, chem_angles, Z, background, subtracted = _read_chem(f, path, version)
        kind = read_chem_kind(f["chem"], f"{path}: /chem") if "chem" in f else "counts"
        gamma = _number_attr(f, "gamma", str(path))
        pixel = _number_attr(f, "pixel_size_nm", str(path))
        attrs = {k: attr_value(v) for k, v in f.attrs.items() if k not in RESERVED_ATTRS}
    try:
        return TiltSeries(haadf, haadf_angles, chem, chem_angles, Z=Z, background=background,
                          gamma=gamma, pixel_size_nm=pixel, attrs=attrs, chem_kind=kind,
                          subtracted_level=subtracted)
    except SeriesError as e:
        raise SeriesFileError(f"{path}: {e}") from None


def read_truth(path: str | Path) -> dict[str, np.ndarray] | None:
    """The `/truth` volumes of a simulated series, or None when the file has none."""
    path = Path(path)
    with open_h5(path) as f:
        if "truth" not in f:
            return None
        out = {}
        for e in f["truth"]:
            _element(path, f"/truth/{e}", e)
            vol = _read(f, f"/truth/{e}", path, 3)
            if not np.all(np.isfinite(vol)):
                raise SeriesFileError(f"{path}: /truth/{e} holds NaN/inf values")
            out[e] = vol
    return out


# -- summaries ------------------------------------------------------------------------------
def total_dose(attrs: Mapping[str, Any], haadf_tilts: int, chem_tilts: int) -> float | None:
    """Total dose in e/A^2 (HAADF images + spectrum images) from the per-image dose
    attributes `haadf_dose_e_per_A2` and `chem_dose_e_per_A2`; None if either is missing."""
    h, c = attrs.get("haadf_dose_e_per_A2"), attrs.get("chem_dose_e_per_A2")
    if not isinstance(h, int | float) or not isinstance(c, int | float):
        return None
    return float(h) * haadf_tilts + float(c) * chem_tilts


def file_format(path: str | Path) -> str:
    """The root `format` attribute of an HDF5 file ('' when absent). A run file whose
    writer is live or died is open in SWMR mode: it is then read as an SWMR reader."""
    with open_h5(path, swmr=True) as f:
        return str(attr_value(f.attrs.get("format", "")))


def duplicate_count(angles: np.ndarray) -> int:
    """How many angles repeat an earlier one (to 1e-6 degree)."""
    return duplicate_angles(np.asarray(angles, dtype=np.float64).ravel())


def _raw_angles(ds: Any) -> np.ndarray:
    if isinstance(ds, h5py.Dataset) and ds.dtype.kind in "fiu":
        return np.asarray(ds[()], dtype=np.float64).ravel()
    return np.zeros(0)


def describe_series(path: str | Path) -> dict[str, Any]:
    """A summary of a series file that is read leniently, so that it also describes files
    that fail validation: `complete` is False and `problem` says why. `duplicates` counts
    the repeated HAADF angles plus the repeated chemical angles (the largest count over
    the elements, as all elements share the spectrum images' tilts)."""
    path = Path(path)
    with open_h5(path) as f:
        attrs = {k: attr_value(v) for k, v in f.attrs.items()}
        h = f.get("haadf/data")
        shape = list(h.shape[1:]) if isinstance(h, h5py.Dataset) and h.ndim == 3 else None
        h_ang = _raw_angles(f.get("haadf/angles"))
        chem = f.get("chem")
        elements = list(chem) if isinstance(chem, h5py.Group) else []
        c_ang = [_raw_angles(f.get(f"chem/{e}/angles")) for e in elements]
        has_truth = "truth" in f
    chem_tilts = int(c_ang[0].size) if c_ang else 0
    try:
        read_series(path)
        problem = None
    except SeriesFileError as e:
        problem = str(e)
    return {
        "file": str(path),
        "kind": "series",
        "haadf_tilts": int(h_ang.size),
        "chem_tilts": chem_tilts,
        "elements": elements,
        "shape": shape,
        "dose_e_per_A2": total_dose(attrs, int(h_ang.size), chem_tilts),
        "duplicates": duplicate_count(h_ang) + max((duplicate_count(a) for a in c_ang),
                                                   default=0),
        "truth": has_truth,
        "complete": problem is None,
        "problem": problem,
    }
