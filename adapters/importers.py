"""Vendor files -> a fusetomo tilt series (`TiltSeries`), written with `seriesfile`.

Files (or folders of per-tilt files) are read by `adapters.vendor_read` (RosettaSciIO, with
ncempy as the fallback). Each signal found becomes frames:
- a 2D image: one HAADF image (when a file holds several 2D images and some are titled
  HAADF, as Velox files with BF/DF images do, only those);
- a 3D image stack (no energy axis): one HAADF image per index of its first axis, unless
  that axis is time (units s/ms, e.g. frames of one scan), when the frames are averaged;
- a spectrum image (last axis in eV or keV, or signal type EELS/EDS/EDX) [y, x, E], or a
  stack of them [t, y, x, E]: one set of element maps per spectrum image, by
  `adapters.spectra` (EELS: power-law background fitted before each edge, subtracted, then
  integrated; EDX: line windows with a linear background from side windows). EELS or EDX is
  read from the signal type or the energy unit (eV: EELS, keV: EDX) unless `spectrum` says.
  Velox files from several EDS detectors are summed over the detectors by RosettaSciIO;
- a 1D signal (e.g. one EDS detector's sum spectrum, which Velox files also hold): no
  image, skipped, and listed in the series attribute `import_skipped`.

Maps are background-subtracted, so the series says so (`chem_kind` "subtracted") and
records, per element, `subtracted_level`: the mean integrated background subtracted under
the element's window (counts per pixel, averaged over the map and then over the spectrum
images). Nothing is clipped.

Tilt angles, in this order of precedence: the explicit lists (`angles` for HAADF frames,
`chem_angles` for spectrum images, in file order); an angle file (`angle_file`, one angle
per HAADF frame in file order); the file's own angles: a navigation axis in degrees
(stacks) or the stage tilt in the metadata (`Acquisition_instrument.TEM.Stage.tilt_alpha`,
which RosettaSciIO fills from DM, Velox and HyperSpy files, else DM's `Stage Alpha` tag in
the original metadata); an IMOD `.tlt`/`.rawtlt` beside a stack that holds no angle of its
own (adapters/sidecar.py; MRC stacks hold none; when the file has its own, they are used
and the series' `angle_source` says the angle file beside it was not); a regular expression
on the file name (`angle_regex`, its group 'angle' or its first group). A frame left
without an angle is an error naming the file.

Images are [n_slices, n_det] with the tilt axis along image axis `tilt_axis` (0: rows run
along it, as fusetomo keeps them; 1: transposed on import). `crop` (y0, y1, x0, x1 in the
file's pixels) is applied first, then `binning` (HAADF: means of N x N blocks; spectrum
images: sums, they are counts); the pixel size follows. The HAADF images keep their values
(a signed-integer file's vacuum at -31880 stays there: the fused solver fits each image's
offset, and the HAADF-only methods and alignment subtract it, solver/nuisance.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import write_series
from fusetomo.adapters.sidecar import find_sidecar, read_angle_file
from fusetomo.adapters.spectra import (
    SpectrumError,
    edx_maps_with_background,
    edx_window,
    eels_maps_with_background,
    eels_window,
)
from fusetomo.adapters.vendor_read import (
    RSCIIO_PLUGINS,
    VendorFileError,
    expand_paths,
    read_signals,
)
from fusetomo.core.elements import UnknownElementError, atomic_number

__all__ = ["RSCIIO_PLUGINS", "ImportParams", "VendorFileError", "import_series",
           "import_to_file", "read_frames"]

DEGREE_UNITS = ("deg", "degree", "degrees", "°")
TIME_UNITS = ("s", "ms", "µs", "us")
ENERGY_UNITS = {"ev": 1.0, "kev": 1000.0}  # to eV


@dataclass(frozen=True)
class ImportParams:
    """How vendor files become a tilt series."""

    angles: tuple[float, ...] | None = None  # HAADF tilt angles in file order (overrides)
    chem_angles: tuple[float, ...] | None = None  # spectrum-image angles in file order
    angle_file: str | None = None  # a text file of HAADF angles in file order
    angle_regex: str | None = None  # on the file name; group 'angle' or the first group
    sidecar: bool = True  # IMOD .tlt/.rawtlt beside a stack
    elements: tuple[str, ...] = ()  # elements mapped from the spectrum images
    lines: Mapping[str, str] = field(default_factory=dict)  # element -> X-ray line or edge
    spectrum: Literal["auto", "eels", "edx"] = "auto"
    tilt_axis: int = 0  # image axis parallel to the tilt axis
    pixel_size_nm: float | None = None  # overrides the files' calibration
    binning: int = 1  # N x N blocks
    crop: tuple[int, int, int, int] | None = None  # y0, y1, x0, x1 in the file's pixels

    def __post_init__(self) -> None:
        if self.spectrum not in ("auto", "eels", "edx"):
            raise VendorFileError(f"spectrum must be auto|eels|edx, got {self.spectrum!r}")
        if self.tilt_axis not in (0, 1):
            raise VendorFileError(f"tilt_axis must be 0 or 1, got {self.tilt_axis!r}")
        if self.angle_regex is not None:
            try:
                re.compile(self.angle_regex)
            except re.error as e:
                raise VendorFileError(f"angle regex {self.angle_regex!r}: {e}") from None
        for e in (*self.elements, *self.lines):
            try:
                atomic_number(e)
            except UnknownElementError as err:
                raise VendorFileError(str(err)) from None
        extra = sorted(set(self.lines) - set(self.elements))
        if extra:
            raise VendorFileError(f"--line given for {extra}, which are not in --elements "
                                  f"{list(self.elements)}")
        if self.pixel_size_nm is not None and not (math.isfinite(self.pixel_size_nm)
                                                   and self.pixel_size_nm > 0):
            raise VendorFileError(f"pixel_size_nm must be > 0, got {self.pixel_size_nm}")
        if isinstance(self.binning, bool) or not isinstance(self.binning, int) \
                or self.binning < 1:
            raise VendorFileError(f"binning must be an integer >= 1, got {self.binning!r}")
        if self.crop is not None:
            y0, y1, x0, x1 = self.crop
            if not (0 <= y0 < y1 and 0 <= x0 < x1):
                raise VendorFileError(f"crop must be y0:y1,x0:x1 with 0 <= y0 < y1 and "
                                      f"0 <= x0 < x1, got {self.crop}")


@dataclass
class Frame:
    """One HAADF image or one spectrum image found in a file."""

    kind: Literal["image", "spectrum"]
    data: np.ndarray  # [ny, nx] or [ny, nx, n_energy]
    source: str  # file name and index
    angle: float | None = None
    energy_ev: np.ndarray | None = None
    spectrum_type: str | None = None  # 'eels' | 'edx' | None (unknown)
    pixel_size_nm: float | None = None
    path: Path | None = None
    stack_index: int | None = None  # index in its file's stack, None for a single image
    title: str = ""


@dataclass
class FoundFrames:
    """The frames of a set of files, and what was skipped (with why)."""

    frames: list[Frame]
    skipped: list[str] = field(default_factory=list)
    angle_sources: list[str] = field(default_factory=list)


# -- metadata -----------------------------------------------------------------------------
def _get(md: Mapping[str, Any], *keys: str) -> Any:
    cur: Any = md
    for k in keys:
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    return cur


def _find_key(tree: Any, key: str, depth: int = 0) -> Any:
    """The first value stored under `key` anywhere in a nested mapping (DM tags)."""
    if depth > 12 or not isinstance(tree, Mapping):
        return None
    if key in tree:
        return tree[key]
    for v in tree.values():
        found = _find_key(v, key, depth + 1)
        if found is not None:
            return found
    return None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) \
        and math.isfinite(v) else None


def _stage_tilt(sig: Mapping[str, Any]) -> float | None:
    md = sig.get("metadata") or {}
    a = _number(_get(md, "Acquisition_instrument", "TEM", "Stage", "tilt_alpha"))
    if a is None:
        a = _number(_find_key(sig.get("original_metadata") or {}, "Stage Alpha"))
    return a


def _axis_values(ax: Mapping[str, Any]) -> np.ndarray:
    if "axis" in ax and ax["axis"] is not None:
        return np.asarray(ax["axis"], dtype=np.float64)
    n = int(ax.get("size", 0))
    return float(ax.get("offset", 0.0) or 0.0) + float(ax.get("scale", 1.0) or 1.0) \
        * np.arange(n, dtype=np.float64)


def _units(ax: Mapping[str, Any]) -> str:
    u = ax.get("units")
    return "" if u is None else str(u).strip()


def _pixel_nm(ax: Mapping[str, Any]) -> float | None:
    scale = abs(float(ax.get("scale", 1.0) or 1.0))
    factor = {"nm": 1.0, "µm": 1e3, "um": 1e3, "Å": 0.1, "A": 0.1, "pm": 1e-3,
              "m": 1e9}.get(_units(ax))
    return None if factor is None else scale * factor


def _stack_angles(ax: Mapping[str, Any]) -> np.ndarray | None:
    return _axis_values(ax) if _units(ax).lower() in DEGREE_UNITS else None


# -- signals -> frames ----------------------------------------------------------------------
def _signal_frames(sig: Mapping[str, Any], path: Path, k: int, found: FoundFrames) -> None:
    data = np.asarray(sig["data"])
    axes = list(sig.get("axes") or [])
    md = sig.get("metadata") or {}
    if len(axes) != data.ndim:
        axes = [{"size": s, "scale": 1.0, "offset": 0.0, "units": ""} for s in data.shape]
    name = f"{path.name}[{k}]"
    angle = _stage_tilt(sig)
    stype = str(_get(md, "Signal", "signal_type") or "").upper()
    last_unit = _units(axes[-1]).lower() if axes else ""
    if data.ndim <= 1:
        what = (f"a 1D spectrum of {data.size} channels (e.g. one EDS detector's sum "
                "spectrum)") if data.ndim == 1 else "a single value"
        found.skipped.append(f"{name}: {what}: neither an image nor a spectrum image")
        return
    is_spectrum = data.ndim >= 3 and (last_unit in ENERGY_UNITS or "EELS" in stype
                                      or "EDS" in stype or "EDX" in stype)
    if is_spectrum:
        energy = _axis_values(axes[-1]) * ENERGY_UNITS.get(last_unit, 1.0)
        kind = "eels" if "EELS" in stype else "edx" if ("EDS" in stype or "EDX" in stype) \
            else ("eels" if last_unit == "ev" else "edx" if last_unit == "kev" else None)
        px = _pixel_nm(axes[-2])
        if data.ndim == 3:
            found.frames.append(Frame("spectrum", data, name, angle, energy, kind, px, path))
            return
        if data.ndim == 4:
            sa = _stack_angles(axes[0])
            found.frames.extend(Frame("spectrum", data[i], f"{name}[{i}]",
                                      sa[i] if sa is not None else None, energy, kind, px,
                                      path) for i in range(data.shape[0]))
            return
        raise VendorFileError(f"{name}: a spectrum image of {data.ndim} axes {data.shape}; "
                              "expected [y, x, E] or [tilt, y, x, E]")
    px = _pixel_nm(axes[-1])
    title = str(_get(md, "General", "title") or "")
    if data.ndim == 2:
        found.frames.append(Frame("image", data, name, angle, pixel_size_nm=px, path=path,
                                  title=title))
        return
    if data.ndim == 3:
        if _units(axes[0]).lower() in TIME_UNITS:
            found.frames.append(Frame("image", data.astype(np.float64).mean(axis=0), name,
                                      angle, pixel_size_nm=px, path=path, title=title))
            found.skipped.append(f"{name}: {data.shape[0]} frames over time averaged into "
                                 "one image")
            return
        sa = _stack_angles(axes[0])
        found.frames.extend(Frame("image", data[i], f"{name}[{i}]",
                                  sa[i] if sa is not None else None, pixel_size_nm=px,
                                  path=path, stack_index=i) for i in range(data.shape[0]))
        return
    raise VendorFileError(f"{name}: {data.ndim} axes {data.shape}: neither an image, an image "
                          "stack nor a spectrum image")


def _keep_haadf(frames: list[Frame], found: FoundFrames) -> list[Frame]:
    """Of several 2D images from one file (Velox: HAADF, BF, DF...), the HAADF ones."""
    singles = [f for f in frames if f.kind == "image" and f.stack_index is None]
    if len(singles) < 2 or not any("HAADF" in f.title.upper() for f in singles):
        return frames
    drop = [f for f in singles if "HAADF" not in f.title.upper()]
    for f in drop:
        found.skipped.append(f"{f.source} ({f.title or 'untitled'}): not the HAADF image of "
                             "its file")
    return [f for f in frames if f not in drop]


def _regex_angle(path: Path, regex: str) -> float | None:
    m = re.search(regex, path.name)
    if m is None:
        return None
    g = m.groupdict().get("angle") or (m.group(1) if m.groups() else m.group(0))
    try:
        return float(g)
    except ValueError:
        raise VendorFileError(f"{path.name}: angle regex matched {g!r}, not a number") \
            from None


def read_frames(paths: Sequence[str | Path], params: ImportParams | None = None
                ) -> list[Frame]:
    """Every HAADF image and spectrum image in `paths`, in file order, angles resolved."""
    return _read(paths, params or ImportParams()).frames


def _read(paths: Sequence[str | Path], p: ImportParams) -> FoundFrames:
    found = FoundFrames([])
    files = expand_paths(paths)
    explicit = p.angles is not None or p.angle_file is not None
    for path in files:
        mine = FoundFrames([])
        for k, sig in enumerate(read_signals(path)):
            _signal_frames(sig, path, k, mine)
        found.skipped.extend(mine.skipped)
        frames = _keep_haadf(mine.frames, found)
        images = [f for f in frames if f.kind == "image"]
        side = find_sidecar(path) if p.sidecar and images and not explicit else None
        if side is not None and all(f.angle is not None for f in images):
            found.angle_sources.append(f"{path.name}: its own angles ({side.name} beside it "
                                       "not used)")
        elif side is not None:
            _apply_list(images, tuple(read_angle_file(side)), str(side), "HAADF images of "
                        f"{path.name}")
            found.angle_sources.append(f"{path.name}: {side.name}")
        if p.angle_regex is not None:
            value = _regex_angle(path, p.angle_regex)
            if value is not None:
                for f in frames:
                    if f.angle is None:
                        f.angle = value
        found.frames.extend(frames)
    images = [f for f in found.frames if f.kind == "image"]
    if p.angle_file is not None:
        _apply_list(images, tuple(read_angle_file(p.angle_file)), p.angle_file, "HAADF images")
        found.angle_sources.append(f"angle file {Path(p.angle_file).name}")
    _apply_list(images, p.angles, "--angles", "HAADF images")
    _apply_list([f for f in found.frames if f.kind == "spectrum"], p.chem_angles,
                "--chem-angles", "spectrum images")
    for f in found.frames:
        if f.angle is None:
            raise VendorFileError(f"{f.source}: no tilt angle (none in the metadata, beside the "
                                  "file or in its name); give --angles/--chem-angles, "
                                  "--angle-file or --angle-regex")
    return found


def _apply_list(frames: list[Frame], angles: tuple[float, ...] | None, option: str,
                what: str) -> None:
    if angles is None:
        return
    if len(angles) != len(frames):
        raise VendorFileError(f"{option}: {len(angles)} angles for {len(frames)} {what}")
    for f, a in zip(frames, angles, strict=True):
        f.angle = float(a)


# -- cropping and binning -------------------------------------------------------------------
def _crop(data: np.ndarray, crop: tuple[int, int, int, int] | None, source: str
          ) -> np.ndarray:
    if crop is None:
        return data
    y0, y1, x0, x1 = crop
    if y1 > data.shape[0] or x1 > data.shape[1]:
        raise VendorFileError(f"{source}: crop {y0}:{y1},{x0}:{x1} exceeds its "
                              f"{data.shape[0]} x {data.shape[1]} pixels")
    return data[y0:y1, x0:x1]


def _bin(data: np.ndarray, n: int, *, counts: bool, source: str) -> np.ndarray:
    """N x N blocks of the first two axes: means (images) or sums (spectrum counts);
    trailing rows/columns that do not fill a block are dropped."""
    if n == 1:
        return data
    h, w = data.shape[0] // n, data.shape[1] // n
    if h < 1 or w < 1:
        raise VendorFileError(f"{source}: binning {n} leaves no pixel of its "
                              f"{data.shape[0]} x {data.shape[1]}")
    blocks = data[:h * n, :w * n].astype(np.float64).reshape(h, n, w, n, *data.shape[2:])
    return blocks.sum(axis=(1, 3)) if counts else blocks.mean(axis=(1, 3))


def _prepare(f: Frame, p: ImportParams, *, counts: bool) -> np.ndarray:
    return _bin(_crop(f.data, p.crop, f.source), p.binning, counts=counts, source=f.source)


# -- building the series ------------------------------------------------------------------
def _orient(img: np.ndarray, tilt_axis: int) -> np.ndarray:
    return np.swapaxes(img, 0, 1) if tilt_axis == 1 else img


def _windows(kind: str, p: ImportParams) -> dict[str, Any]:
    build = eels_window if kind == "eels" else edx_window
    try:
        return {e: build(e, name) for e, name in p.lines.items()}
    except SpectrumError as e:
        raise VendorFileError(str(e)) from None


def _maps(f: Frame, data: np.ndarray, p: ImportParams
          ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    kind = f.spectrum_type if p.spectrum == "auto" else p.spectrum
    if kind is None:
        raise VendorFileError(f"{f.source}: cannot tell EELS from EDX (energy unit not eV or "
                              "keV, no signal type); give --spectrum eels|edx")
    assert f.energy_ev is not None
    try:
        if kind == "eels":
            return eels_maps_with_background(data, f.energy_ev, list(p.elements),
                                             _windows("eels", p))
        return edx_maps_with_background(data, f.energy_ev / 1000.0, list(p.elements),
                                        _windows("edx", p))
    except SpectrumError as e:
        raise VendorFileError(f"{f.source}: {e}") from None


def _same_shape(images: list[Frame]) -> list[Frame]:
    ref = images[0].data.shape
    for f in images:
        if f.data.shape != ref:
            raise VendorFileError(f"{f.source}: image of {f.data.shape} pixels, "
                                  f"{images[0].source} has {ref}")
    return images


def import_series(paths: Sequence[str | Path], params: ImportParams | None = None
                  ) -> TiltSeries:
    """A TiltSeries from vendor files: HAADF images sorted by angle, and element maps from
    the spectrum images (sorted by angle) when there are any; a series of HAADF images
    alone is a HAADF-only series."""
    p = params or ImportParams()
    found = _read(paths, p)
    images = sorted((f for f in found.frames if f.kind == "image"), key=lambda f: f.angle)
    spectra = sorted((f for f in found.frames if f.kind == "spectrum"), key=lambda f: f.angle)
    if not images:
        raise VendorFileError("no HAADF image among the files")
    if spectra and not p.elements:
        raise VendorFileError(f"{len(spectra)} spectrum image(s) need --elements (the "
                              "elements to map)")
    if p.elements and not spectra:
        raise VendorFileError(f"--elements {','.join(p.elements)}: no spectrum image among "
                              "the files to map them from")
    haadf = np.stack([_orient(_prepare(f, p, counts=False).astype(np.float32), p.tilt_axis)
                      for f in _same_shape(images)])
    shape = haadf.shape[1:]
    per: dict[str, list[np.ndarray]] = {e: [] for e in p.elements}
    levels: dict[str, list[float]] = {e: [] for e in p.elements}
    kinds = set()
    for f in spectra:
        maps, level = _maps(f, _prepare(f, p, counts=True), p)
        kinds.add(p.spectrum if p.spectrum != "auto" else str(f.spectrum_type))
        for e, m in maps.items():
            m = _orient(m, p.tilt_axis)
            if m.shape != shape:
                raise VendorFileError(f"{f.source}: spectrum image of {m.shape} pixels, the "
                                      f"HAADF images have {shape}")
            per[e].append(m)
            levels[e].append(level[e])
    chem_angles = np.array([f.angle for f in spectra])
    px = p.pixel_size_nm if p.pixel_size_nm is not None else images[0].pixel_size_nm
    if px is not None and p.pixel_size_nm is None:
        px = px * p.binning
    attrs: dict[str, Any] = {
        "imported_from": ";".join(Path(x).name for x in paths),
        "haadf_source_dtype": str(images[0].data.dtype),
        "import_tilt_axis": p.tilt_axis, "import_binning": p.binning,
    }
    if p.crop is not None:
        attrs["import_crop"] = list(p.crop)
    if found.angle_sources:
        attrs["angle_source"] = "; ".join(found.angle_sources)
    if found.skipped:
        attrs["import_skipped"] = "; ".join(found.skipped)
    if spectra:
        attrs["spectrum_maps"] = ",".join(sorted(kinds))
        attrs["element_windows"] = ",".join(f"{e}:{p.lines.get(e, 'default')}"
                                            for e in p.elements)
    return TiltSeries(
        haadf=haadf, haadf_angles=np.array([f.angle for f in images]),
        chem={e: np.stack(v) for e, v in per.items()} if spectra else {},
        chem_angles={e: chem_angles for e in p.elements} if spectra else {},
        pixel_size_nm=px, attrs=attrs,
        chem_kind="subtracted" if spectra else "counts",
        subtracted_level=_levels(levels, attrs))


def _levels(levels: Mapping[str, list[float]], attrs: dict[str, Any]) -> dict[str, float]:
    """Per element, the mean subtracted background over the spectrum images; a negative mean
    (a background fit gone wrong) is not stated, so that the solver estimates it, and the
    series' attribute `subtracted_level_unknown` says so."""
    out, unknown = {}, []
    for e, v in levels.items():
        mean = float(np.mean(v))
        if mean >= 0:
            out[e] = mean
        else:
            unknown.append(f"{e} (mean {mean:.4g})")
    if unknown:
        attrs["subtracted_level_unknown"] = ", ".join(unknown)
    return out


def import_to_file(paths: Sequence[str | Path], out: str | Path,
                   params: ImportParams | None = None) -> tuple[Path, TiltSeries]:
    """`import_series` written to the series file `out`."""
    series = import_series(paths, params)
    return write_series(out, series), series
