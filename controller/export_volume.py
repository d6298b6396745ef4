"""Reconstructed volumes to the files other tomography tools open (docs/file-format.md §5).

- MRC (mrcfile, the CCP-EM reference library; IMOD, tomviz, Chimera, Avizo, Fiji): float32
  (mode 2), axes as in fusetomo's volume V[s, u, v] = MRC sections (z) along the tilt axis,
  rows (y) u, columns (x) v; the voxel size in Å in the header (`voxel_size`), from the
  reconstruction's pixel size (1 Å when unknown, and the header label says so).
- TIFF stack (tifffile; Fiji/ImageJ hyperstack conventions): float32 pages along s, with
  `resolution` in pixels per nm, ImageJ metadata `unit='nm'` and `spacing` (the slice
  spacing), so that Fiji reports the voxel size.

One file per volume: OUT_<name>.ext, or OUT.ext itself for a single volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.adapters.reconfile import ReconFileError, read_recon
from fusetomo.adapters.series import TiltSeries

__all__ = ["export_mrc", "export_tiff", "write_stack_mrc"]

INSTALL_HINT = 'pip install "fusetomo[io]"'


def _module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ReconFileError(f"writing this format needs {name}, which is not installed: "
                             f"{INSTALL_HINT}") from None


def _targets(out: str | Path, names: list[str]) -> dict[str, Path]:
    out = Path(out)
    if len(names) == 1:
        return {names[0]: out}
    return {n: out.with_name(f"{out.stem}_{n}{out.suffix}") for n in names}


def _pixel_nm(attrs: dict[str, Any]) -> float | None:
    px = attrs.get("pixel_size_nm")
    return float(px) if isinstance(px, int | float) and px > 0 else None


def _write_mrc(path: Path, data: np.ndarray, px_nm: float | None, label: str) -> Path:
    mrcfile = _module("mrcfile")
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(np.ascontiguousarray(data, dtype=np.float32))
        m.voxel_size = px_nm * 10.0 if px_nm else 1.0
        m.update_header_stats()
        text = label if px_nm else label + " (pixel size unknown: 1 A written)"
        m.header.label[0] = text[:80].encode("ascii", "replace")
        m.header.nlabl = 1
    return path


def export_mrc(recon_path: str | Path, out: str | Path) -> list[Path]:
    """Each volume of a reconstruction file as an MRC file (module docstring)."""
    rec = read_recon(recon_path)
    px = _pixel_nm(rec.attrs)
    return [_write_mrc(p, rec.volumes[n], px, f"fusetomo {rec.attrs.get('method')} {n}")
            for n, p in _targets(out, rec.names).items()]


def export_tiff(recon_path: str | Path, out: str | Path) -> list[Path]:
    """Each volume of a reconstruction file as a TIFF stack (module docstring)."""
    tifffile = _module("tifffile")
    rec = read_recon(recon_path)
    px = _pixel_nm(rec.attrs)
    paths = []
    for n, p in _targets(out, rec.names).items():
        p.parent.mkdir(parents=True, exist_ok=True)
        md: dict[str, Any] = {"axes": "ZYX"}
        kw: dict[str, Any] = {}
        if px:
            md.update(unit="nm", spacing=px)
            kw["resolution"] = (1.0 / px, 1.0 / px)
        tifffile.imwrite(p, np.ascontiguousarray(rec.volumes[n], dtype=np.float32),
                         imagej=True, metadata=md, **kw)
        paths.append(p)
    return paths


def write_stack_mrc(out: str | Path, series: TiltSeries) -> Path:
    """The series' HAADF stack as MRC (sections = tilts), with an IMOD `.tlt` of its angles
    beside it."""
    out = Path(out)
    _write_mrc(out, series.haadf, series.pixel_size_nm, "fusetomo aligned HAADF stack")
    out.with_suffix(".tlt").write_text("".join(f"{a:.2f}\n" for a in series.haadf_angles))
    return out
