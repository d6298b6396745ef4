"""Vendor files -> a fusetomo tilt series (`TiltSeries`), written with `seriesfile`.

Files are read by RosettaSciIO (`rsciio.<plugin>.file_reader`, chosen by extension: .emd
(NCEM/Berkeley and Velox), .dm3/.dm4, .hspy/.hdf5, .zspy, .tif/.tiff, .ser, .mrc), with
ncempy's `ncempy.io.read` as the fallback when RosettaSciIO cannot read a file (.emd, .ser,
.dm3/.dm4, .mrc). Each signal found becomes frames:
- a 2D image: one HAADF image;
- a 3D image stack (no energy axis): one HAADF image per index of its first axis;
- a spectrum image (last axis in eV or keV) [y, x, E], or a stack of them [t, y, x, E]: one
  set of element maps per spectrum image, by `adapters.spectra` (EELS: power-law background
  fitted before each edge and subtracted, then integrated; EDX: line windows), the Nion
  adapter's map extraction. EELS or EDX is read from the signal type (EELS, EDS_TEM) or the
  energy unit (eV: EELS, keV: EDX) unless `spectrum` says.

Tilt angles, in this order of precedence: the explicit lists (`angles` for HAADF frames,
`chem_angles` for spectrum images, in file order); a navigation axis in degrees (stacks); the
stage tilt in the metadata (`Acquisition_instrument.TEM.Stage.tilt_alpha`, which
RosettaSciIO fills from DM, Velox and HyperSpy files); a regular expression on the file name
(`angle_regex`, its group 'angle' or its first group). A frame left without an angle is an
error naming the file. Images are [n_slices, n_det] with the tilt axis along image axis
`tilt_axis` (0: rows run along it, as fusetomo keeps them; 1: transposed on import).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fusetomo.adapters.series import SeriesError, TiltSeries
from fusetomo.adapters.seriesfile import write_series
from fusetomo.adapters.spectra import SpectrumError, edx_maps, eels_maps
from fusetomo.core.elements import atomic_number

__all__ = ["ImportParams", "VendorFileError", "import_series", "import_to_file",
           "read_frames"]

# Extension -> RosettaSciIO plugin module.
RSCIIO_PLUGINS: dict[str, str] = {
    ".emd": "emd", ".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph",
    ".hspy": "hspy", ".hdf5": "hspy", ".zspy": "zspy", ".tif": "tiff", ".tiff": "tiff",
    ".ser": "tia", ".mrc": "mrc",
}
NCEMPY_EXTENSIONS = (".emd", ".ser", ".dm3", ".dm4", ".mrc")
DEGREE_UNITS = ("deg", "degree", "degrees", "°")
ENERGY_UNITS = {"ev": 1.0, "kev": 1000.0}  # to eV


class VendorFileError(SeriesError):
    """A vendor file that cannot become (part of) a tilt series; names the file and value."""


@dataclass(frozen=True)
class ImportParams:
    """How vendor files become a tilt series."""

    angles: tuple[float, ...] | None = None  # HAADF tilt angles in file order (overrides)
    chem_angles: tuple[float, ...] | None = None  # spectrum-image angles in file order
    angle_regex: str | None = None  # on the file name; group 'angle' or the first group
    elements: tuple[str, ...] = ()  # elements mapped from the spectrum images
    spectrum: Literal["auto", "eels", "edx"] = "auto"
    tilt_axis: int = 0  # image axis parallel to the tilt axis
    pixel_size_nm: float | None = None  # overrides the files' calibration

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
        for e in self.elements:
            atomic_number(e)
        if self.pixel_size_nm is not None and not (math.isfinite(self.pixel_size_nm)
                                                   and self.pixel_size_nm > 0):
            raise VendorFileError(f"pixel_size_nm must be > 0, got {self.pixel_size_nm}")


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
    meta: dict[str, Any] = field(default_factory=dict)


# -- reading ------------------------------------------------------------------------------
def _read_signals(path: Path) -> list[dict[str, Any]]:
    """Signal dicts (data, axes, metadata) of a file: RosettaSciIO, else ncempy."""
    if not path.is_file():
        raise VendorFileError(f"{path}: no such file")
    ext = path.suffix.lower()
    errors = []
    plugin = RSCIIO_PLUGINS.get(ext)
    if plugin is not None:
        try:
            reader = importlib.import_module(f"rsciio.{plugin}").file_reader
            sigs = reader(str(path))
            if sigs:
                return list(sigs)
            errors.append("RosettaSciIO found no signal")
        except Exception as e:  # any reader failure: try the next library, report all
            errors.append(f"RosettaSciIO ({plugin}): {type(e).__name__}: {e}")
    if ext in NCEMPY_EXTENSIONS:
        try:
            import ncempy.io

            d = ncempy.io.read(str(path))
            return [_from_ncempy(d)]
        except Exception as e:  # as above
            errors.append(f"ncempy: {type(e).__name__}: {e}")
    if plugin is None and ext not in NCEMPY_EXTENSIONS:
        raise VendorFileError(f"{path}: unknown file type {ext!r}; readable: "
                              f"{sorted(RSCIIO_PLUGINS)}")
    raise VendorFileError(f"{path}: cannot read it: " + "; ".join(errors))


def _from_ncempy(d: Mapping[str, Any]) -> dict[str, Any]:
    data = np.asarray(d["data"])
    sizes = list(np.atleast_1d(d.get("pixelSize", [1.0] * data.ndim)))
    units = list(np.atleast_1d(d.get("pixelUnit", [""] * data.ndim)))
    origin = list(np.atleast_1d(d.get("pixelOrigin", [0.0] * data.ndim)))
    axes = []
    for i in range(data.ndim):
        axes.append({"size": data.shape[i], "scale": float(sizes[i]) if i < len(sizes) else 1.0,
                     "offset": float(origin[i]) if i < len(origin) else 0.0,
                     "units": str(units[i]) if i < len(units) else "", "name": f"dim{i}"})
    return {"data": data, "axes": axes, "metadata": {}}


def _get(md: Mapping[str, Any], *keys: str) -> Any:
    cur: Any = md
    for k in keys:
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    return cur


def _axis_values(ax: Mapping[str, Any]) -> np.ndarray:
    if "axis" in ax and ax["axis"] is not None:
        return np.asarray(ax["axis"], dtype=np.float64)
    n = int(ax.get("size", 0))
    return float(ax.get("offset", 0.0) or 0.0) + float(ax.get("scale", 1.0) or 1.0) \
        * np.arange(n, dtype=np.float64)


def _units(ax: Mapping[str, Any]) -> str:
    u = ax.get("units")
    return "" if u is None or isinstance(u, type(None)) else str(u).strip()


def _pixel_nm(ax: Mapping[str, Any]) -> float | None:
    scale = float(ax.get("scale", 1.0) or 1.0)
    factor = {"nm": 1.0, "µm": 1e3, "um": 1e3, "Å": 0.1, "A": 0.1, "pm": 1e-3,
              "m": 1e9}.get(_units(ax))
    return None if factor is None else scale * factor


def _signal_frames(sig: Mapping[str, Any], path: Path, k: int) -> list[Frame]:
    data = np.asarray(sig["data"])
    axes = list(sig.get("axes") or [])
    md = sig.get("metadata") or {}
    if len(axes) != data.ndim:
        axes = [{"size": s, "scale": 1.0, "offset": 0.0, "units": ""} for s in data.shape]
    name = f"{path.name}[{k}]"
    stage = _get(md, "Acquisition_instrument", "TEM", "Stage", "tilt_alpha")
    angle = float(stage) if isinstance(stage, int | float) and math.isfinite(stage) else None
    stype = str(_get(md, "Signal", "signal_type") or "").upper()
    last_unit = _units(axes[-1]).lower() if axes else ""
    is_spectrum = data.ndim >= 3 and (last_unit in ENERGY_UNITS or "EELS" in stype
                                      or "EDS" in stype or "EDX" in stype)
    if is_spectrum:
        energy = _axis_values(axes[-1]) * ENERGY_UNITS.get(last_unit, 1.0)
        kind = "eels" if "EELS" in stype else "edx" if ("EDS" in stype or "EDX" in stype) \
            else ("eels" if last_unit == "ev" else "edx" if last_unit == "kev" else None)
        px = _pixel_nm(axes[-2])
        if data.ndim == 3:
            return [Frame("spectrum", data, name, angle, energy, kind, px)]
        if data.ndim == 4:
            stack_angles = _stack_angles(axes[0])
            return [Frame("spectrum", data[i], f"{name}[{i}]",
                          stack_angles[i] if stack_angles is not None else None, energy, kind,
                          px) for i in range(data.shape[0])]
        raise VendorFileError(f"{name}: a spectrum image of {data.ndim} axes {data.shape}; "
                              "expected [y, x, E] or [tilt, y, x, E]")
    px = _pixel_nm(axes[-1]) if axes else None
    if data.ndim == 2:
        return [Frame("image", data, name, angle, pixel_size_nm=px)]
    if data.ndim == 3:
        stack_angles = _stack_angles(axes[0])
        return [Frame("image", data[i], f"{name}[{i}]",
                      stack_angles[i] if stack_angles is not None else None, pixel_size_nm=px)
                for i in range(data.shape[0])]
    raise VendorFileError(f"{name}: {data.ndim} axes {data.shape}: neither an image, an image "
                          "stack nor a spectrum image")


def _stack_angles(ax: Mapping[str, Any]) -> np.ndarray | None:
    return _axis_values(ax) if _units(ax).lower() in DEGREE_UNITS else None


def read_frames(paths: Sequence[str | Path], params: ImportParams | None = None) -> list[Frame]:
    """Every HAADF image and spectrum image in `paths`, in file order, angles resolved."""
    p = params or ImportParams()
    if not paths:
        raise VendorFileError("no input files")
    frames: list[Frame] = []
    for path in (Path(x) for x in paths):
        found = []
        for k, sig in enumerate(_read_signals(path)):
            found.extend(_signal_frames(sig, path, k))
        if p.angle_regex is not None:
            m = re.search(p.angle_regex, path.name)
            if m is not None:
                g = m.groupdict().get("angle") or (m.group(1) if m.groups() else m.group(0))
                try:
                    value = float(g)
                except ValueError:
                    raise VendorFileError(f"{path.name}: angle regex matched {g!r}, not a "
                                          "number") from None
                for f in found:
                    if f.angle is None:
                        f.angle = value
        frames.extend(found)
    _apply_list([f for f in frames if f.kind == "image"], p.angles, "--angles", "HAADF images")
    _apply_list([f for f in frames if f.kind == "spectrum"], p.chem_angles, "--chem-angles",
                "spectrum images")
    for f in frames:
        if f.angle is None:
            raise VendorFileError(f"{f.source}: no tilt angle (none in the metadata or the "
                                  "file name); give --angles/--chem-angles or --angle-regex")
    return frames


def _apply_list(frames: list[Frame], angles: tuple[float, ...] | None, option: str,
                what: str) -> None:
    if angles is None:
        return
    if len(angles) != len(frames):
        raise VendorFileError(f"{option}: {len(angles)} angles for {len(frames)} {what}")
    for f, a in zip(frames, angles, strict=True):
        f.angle = float(a)


# -- building the series ------------------------------------------------------------------
def _orient(img: np.ndarray, tilt_axis: int) -> np.ndarray:
    return np.swapaxes(img, 0, 1) if tilt_axis == 1 else img


def _maps(f: Frame, p: ImportParams) -> dict[str, np.ndarray]:
    kind = f.spectrum_type if p.spectrum == "auto" else p.spectrum
    if kind is None:
        raise VendorFileError(f"{f.source}: cannot tell EELS from EDX (energy unit not eV or "
                              "keV, no signal type); give --spectrum eels|edx")
    assert f.energy_ev is not None
    try:
        if kind == "eels":
            return eels_maps(f.data, f.energy_ev, list(p.elements))
        return edx_maps(f.data, f.energy_ev / 1000.0, list(p.elements))
    except SpectrumError as e:
        raise VendorFileError(f"{f.source}: {e}") from None


def import_series(paths: Sequence[str | Path], params: ImportParams | None = None
                  ) -> TiltSeries:
    """A TiltSeries from vendor files: HAADF images sorted by angle, element maps from the
    spectrum images (sorted by angle)."""
    p = params or ImportParams()
    frames = read_frames(paths, p)
    images = sorted((f for f in frames if f.kind == "image"), key=lambda f: f.angle)
    spectra = sorted((f for f in frames if f.kind == "spectrum"), key=lambda f: f.angle)
    if not images:
        raise VendorFileError("no HAADF image among the files")
    if not spectra:
        raise VendorFileError("no spectrum image among the files: a fusetomo tilt series "
                              "needs element maps")
    if not p.elements:
        raise VendorFileError("spectrum images need --elements (the elements to map)")
    haadf = np.stack([_orient(np.asarray(f.data, dtype=np.float32), p.tilt_axis)
                      for f in _same_shape(images)])
    per: dict[str, list[np.ndarray]] = {e: [] for e in p.elements}
    for f in spectra:
        for e, m in _maps(f, p).items():
            per[e].append(_orient(m, p.tilt_axis))
    shape = haadf.shape[1:]
    for f, m in zip(spectra, per[p.elements[0]], strict=True):
        if m.shape != shape:
            raise VendorFileError(f"{f.source}: spectrum image of {m.shape} pixels, the HAADF "
                                  f"images have {shape}")
    chem_angles = np.array([f.angle for f in spectra])
    px = p.pixel_size_nm if p.pixel_size_nm is not None else images[0].pixel_size_nm
    return TiltSeries(
        haadf=haadf, haadf_angles=np.array([f.angle for f in images]),
        chem={e: np.stack(v) for e, v in per.items()},
        chem_angles={e: chem_angles for e in p.elements},
        pixel_size_nm=px,
        attrs={"imported_from": ";".join(Path(x).name for x in paths),
               "spectrum_maps": ",".join(sorted({str(p.spectrum if p.spectrum != "auto"
                                                     else f.spectrum_type) for f in spectra}))})


def _same_shape(images: list[Frame]) -> list[Frame]:
    ref = images[0].data.shape
    for f in images:
        if f.data.shape != ref:
            raise VendorFileError(f"{f.source}: image of {f.data.shape} pixels, "
                                  f"{images[0].source} has {ref}")
    return images


def import_to_file(paths: Sequence[str | Path], out: str | Path,
                   params: ImportParams | None = None) -> tuple[Path, TiltSeries]:
    """`import_series` written to the series file `out`."""
    series = import_series(paths, params)
    return write_series(out, series), series
