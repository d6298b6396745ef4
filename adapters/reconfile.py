"""The reconstruction HDF5 file and its export to Berkeley EMD (docs/file-format.md).

    /volumes/<name>        float32 [n_slices, n_det, n_det], one per element (or 'HAADF')
    /convergence/<term>    float64 [iterations]: haadf, chem, tv, haadf_scale, n_haadf_tilts,
                           n_chem_tilts (empty for methods that keep no history)
    /std_error/<name>      float32 [n_slices, n_det, n_det] (optional)
    /bias/<name>           float32 [n_slices, n_det, n_det] (optional): the estimated
                           per-voxel bias (the volume less what it estimates)
    / attrs                format="fusetomo-recon", version=1, method, iterations, device,
                           source_file, elapsed_s, created, ... and the solver parameters
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fusetomo.adapters.seriesfile import (
    atomic_h5,
    attr_value,
    open_h5,
    set_attr,
    write_dataset,
)
from fusetomo.core.errors import FusetomoError

FORMAT = "fusetomo-recon"
VERSION = 1
CONVERGENCE_TERMS = ("haadf", "chem", "tv", "haadf_scale", "n_haadf_tilts", "n_chem_tilts")


class ReconFileError(FusetomoError, ValueError):
    """A reconstruction file that cannot be read or written; names the file and dataset."""


@dataclass
class Reconstruction:
    """The content of a reconstruction file."""

    volumes: dict[str, np.ndarray]
    convergence: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    std_error: dict[str, np.ndarray] = field(default_factory=dict)
    bias: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.volumes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.volumes.values())).shape)


def _version() -> str:
    try:
        return metadata.version("fusetomo")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_recon(
    path: str | Path,
    volumes: Mapping[str, np.ndarray],
    *,
    convergence: Any = None,
    attrs: Mapping[str, Any] | None = None,
    std_error: Mapping[str, np.ndarray] | None = None,
    bias: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a reconstruction atomically. `attrs` become root attributes (None skipped)."""
    path = Path(path)
    if not volumes:
        raise ReconFileError(f"{path}: no volumes to write")
    shapes = {k: np.shape(v) for k, v in volumes.items()}
    if any(len(s) != 3 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ReconFileError(f"{path}: volumes must share one 3-D shape, got {shapes}")
    # the solver's CostHistory (anything with as_arrays), or a mapping of arrays
    conv = convergence.as_arrays() if hasattr(convergence, "as_arrays") else convergence
    conv = dict(conv or {})
    for term in CONVERGENCE_TERMS:
        conv.setdefault(term, np.zeros(0))
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        f.attrs["fusetomo_version"] = _version()
        for k, v in (attrs or {}).items():
            if k in ("format", "version"):
                raise ReconFileError(f"{path}: attribute {k!r} is reserved")
            set_attr(f, k, v, str(path), ReconFileError)
        g = f.create_group("volumes", track_order=True)
        for name, vol in volumes.items():
            write_dataset(g, name, vol, np.float32)
        c = f.create_group("convergence", track_order=True)
        for term, values in conv.items():
            c.create_dataset(term, data=np.asarray(values, dtype=np.float64).ravel())
        for group, vols in (("std_error", std_error), ("bias", bias)):
            if not vols:
                continue
            s = f.create_group(group, track_order=True)
            for name, vol in vols.items():
                if np.shape(vol) != shapes[next(iter(shapes))]:
                    raise ReconFileError(f"{path}: /{group}/{name} shape {np.shape(vol)} "
                                         "differs from the volumes")
                write_dataset(s, name, vol, np.float32)
    return path


def _read_group(f: h5py.File, group: str, path: Path, ndim: int | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if group not in f:
        return out
    if not isinstance(f[group], h5py.Group):
        raise ReconFileError(f"{path}: /{group} is a dataset, expected a group")
    for name, ds in f[group].items():
        where = f"/{group}/{name}"
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
            raise ReconFileError(f"{path}: {where} is not a real-valued dataset")
        if ndim is not None and ds.ndim != ndim:
            raise ReconFileError(f"{path}: {where} has shape {ds.shape}, expected {ndim} axes")
        data = np.asarray(ds[()])
        if not np.all(np.isfinite(data)):
            raise ReconFileError(f"{path}: {where} holds NaN/inf values")
        out[name] = data.astype(np.float32) if ndim == 3 else data
    return out


def read_recon(path: str | Path) -> Reconstruction:
    """Read and check a reconstruction file; problems raise ReconFileError."""
    path = Path(path)
    with open_h5(path, ReconFileError) as f:
        fmt = attr_value(f.attrs.get("format", ""))
        if fmt != FORMAT:
            raise ReconFileError(f"{path}: attribute format is {fmt!r}, expected {FORMAT!r}")
        version = attr_value(f.attrs.get("version"))
        if not isinstance(version, int) or version > VERSION:
            raise ReconFileError(f"{path}: format version {version!r} is not supported")
        volumes = _read_group(f, "volumes", path, 3)
        if not volumes:
            raise ReconFileError(f"{path}: /volumes holds no volume")
        shapes = {k: v.shape for k, v in volumes.items()}
        if len(set(shapes.values())) != 1:
            raise ReconFileError(f"{path}: /volumes differ in shape {shapes}")
        conv = _read_group(f, "convergence", path, 1)
        std = _read_group(f, "std_error", path, 3)
        bias = _read_group(f, "bias", path, 3)
        attrs = {k: attr_value(v) for k, v in f.attrs.items()}
    return Reconstruction(volumes, conv, attrs, std, bias)


# -- Berkeley EMD export --------------------------------------------------------------------
DIM_NAMES = ("s (tilt axis)", "u", "v")


def _write_emd_group(parent: h5py.Group, name: str, vol: np.ndarray, px: float | None) -> None:
    g = parent.create_group(name)
    g.attrs["emd_group_type"] = 1
    g.create_dataset("data", data=np.asarray(vol, np.float32), compression="gzip",
                     compression_opts=4)
    step, units = (px, "nm") if px else (1.0, "pixels")
    for i, n in enumerate(vol.shape):
        d = g.create_dataset(f"dim{i + 1}", data=np.arange(n, dtype=np.float64) * step)
        d.attrs["name"] = DIM_NAMES[i]
        d.attrs["units"] = units


def export_emd(recon_path: str | Path, out_path: str | Path) -> Path:
    """Write the volumes of a reconstruction file as a Berkeley EMD (v0.2) file: one
    `/data/<name>` group per volume (plus `<name>_std_error` where present), dims in nm
    when the pixel size is known; the reconstruction attributes go to `/user`."""
    rec = read_recon(recon_path)
    px = rec.attrs.get("pixel_size_nm")
    px = float(px) if isinstance(px, int | float) and px > 0 else None
    with atomic_h5(out_path) as f:
        f.attrs["version_major"] = 0
        f.attrs["version_minor"] = 2
        data = f.create_group("data", track_order=True)
        for name, vol in rec.volumes.items():
            _write_emd_group(data, name, vol, px)
        for name, vol in rec.std_error.items():
            _write_emd_group(data, f"{name}_std_error", vol, px)
        f.create_group("microscope")
        f.create_group("sample")
        user = f.create_group("user")
        for k, v in rec.attrs.items():
            set_attr(user, k, v, str(out_path), ReconFileError)
        user.attrs["source_recon"] = str(recon_path)
        comments = f.create_group("comments")
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S (UTC)")
        comments.attrs[stamp] = f"exported by fusetomo {_version()} from {recon_path}"
    return Path(out_path)


def describe_model(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The nuisance model and fit check recorded by a fused reconstruction (None for other
    methods and for files written before they were recorded)."""
    if "model_gamma" not in attrs:
        return None
    els = [str(e) for e in np.atleast_1d(attrs.get("model_elements", []))]
    bg = np.atleast_1d(attrs.get("model_background", []))
    est = np.atleast_1d(attrs.get("model_background_estimated", []))
    out: dict[str, Any] = {
        "gamma": round(float(attrs["model_gamma"]), 3),
        "gamma_estimated": bool(attrs.get("model_gamma_estimated", False)),
        "chem_kind": attrs.get("model_chem_kind", "counts"),
        "background": {e: round(float(b), 4) for e, b in zip(els, bg, strict=False)},
        "background_estimated": [e for e, x in zip(els, est, strict=False) if bool(x)],
    }
    if "model_subtracted_level" in attrs:
        lv = np.atleast_1d(attrs["model_subtracted_level"])
        out["subtracted_level"] = {e: round(float(v), 4) for e, v in zip(els, lv,
                                                                           strict=False)}
    if "model_chem_snr" in attrs:
        snr = np.atleast_1d(attrs["model_chem_snr"])
        out["chem_snr"] = {e: round(float(v), 2) for e, v in zip(els, snr, strict=False)}
        out["chem_dark_scale"] = round(float(attrs.get("model_chem_dark_scale", 1.0)), 3)
    off = attrs.get("model_haadf_offsets")
    if off is not None and np.size(off):
        off = np.atleast_1d(off).astype(float)
        out["haadf_offset"] = {"median": float(np.median(off)), "min": float(off.min()),
                               "max": float(off.max())}
    fit = {k[len("fit_"):]: attr_value(v) for k, v in attrs.items()
           if k.startswith("fit_") and k != "fit_warnings"}
    out["fit"] = {k: (round(float(v), 4) if isinstance(v, float) else v)
                  for k, v in fit.items()}
    w = attrs.get("fit_warnings")
    out["warnings"] = [str(x) for x in np.atleast_1d(w)] if w is not None else []
    return out


def model_lines(attrs: Mapping[str, Any]) -> list[str]:
    """The recorded nuisance model as lines for a terminal (empty when none)."""
    m = describe_model(attrs)
    if m is None:
        return []
    def how(flag: bool) -> str:
        return "estimated" if flag else "stated"
    lines = [f"gamma {m['gamma']:.3f} ({how(m['gamma_estimated'])})"]
    bg = ", ".join(f"{e} {v:.3g}" + (" est." if e in m["background_estimated"] else "")
                   for e, v in m["background"].items())
    lines.append(f"background (counts/pixel): {bg}")
    if "subtracted_level" in m:
        lv = ", ".join(f"{e} {v:.3g}" for e, v in m["subtracted_level"].items())
        lines.append(f"maps background-subtracted; level added back: {lv}")
    if "chem_snr" in m:
        snr = ", ".join(f"{e} {v:.2g}" for e, v in m["chem_snr"].items())
        lines.append(f"chemical SNR (est.): {snr}; dark-step factor {m['chem_dark_scale']:.2f}")
    if "haadf_offset" in m:
        o = m["haadf_offset"]
        lines.append(f"HAADF offset: median {o['median']:.4g} (range {o['min']:.4g} .. "
                     f"{o['max']:.4g})")
    fit = m["fit"]
    chem = ", ".join(f"{k[len('chem_chi2_'):]} {v:.2f}" for k, v in fit.items()
                     if k.startswith("chem_chi2_"))
    parts = [f"maps {chem}"] if chem else []
    if "haadf_unexplained" in fit:
        parts.append(f"HAADF {100 * fit['haadf_unexplained']:.2f} % of contrast unexplained")
    if parts:
        lines.append("fit chi^2/dof: " + "; ".join(parts))
    return lines


def describe_recon(path: str | Path) -> dict[str, Any]:
    """A summary of a reconstruction file, with the same keys as a series summary."""
    rec = read_recon(path)
    a = rec.attrs
    return {
        "file": str(path),
        "kind": "recon",
        "method": a.get("method"),
        "iterations": a.get("iterations"),
        "device": a.get("device"),
        "elapsed_s": a.get("elapsed_s"),
        "source_file": a.get("source_file"),
        "haadf_tilts": a.get("haadf_tilts"),
        "chem_tilts": a.get("chem_tilts"),
        "elements": rec.names,
        "shape": list(rec.shape),
        "dose_e_per_A2": a.get("dose_e_per_A2"),
        "duplicates": 0,
        "complete": True,
        "problem": None,
        "model": describe_model(a),
    }
