"""Vendor files -> RosettaSciIO signal dicts (data, axes, metadata, original_metadata).

Readers by extension (RosettaSciIO plugin modules): .emd (NCEM/Berkeley and Velox) `emd`;
.dm3/.dm4 `digitalmicrograph`; .hspy/.hdf5 `hspy`; .zspy `zspy`; .tif/.tiff `tiff`;
.ser/.emi `tia`; .mrc/.ali/.st/.preali/.mrcs (IMOD and SerialEM stacks) `mrc`; .bcf
`bruker`. ncempy's `ncempy.io.read` is the fallback for .emd, .ser, .dm3/.dm4, .mrc when
RosettaSciIO cannot read a file; both errors are reported when neither can.

Checks that turn silent misreads into errors naming the file: RosettaSciIO itself missing
(the `io` extra); a Velox EMD holding a spectrum stream without the `sparse` package, with
which RosettaSciIO would drop the spectrum image and return only its HAADF frames.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusetomo.adapters.series import SeriesError

__all__ = ["RSCIIO_PLUGINS", "VendorFileError", "expand_paths", "read_signals"]

INSTALL_HINT = 'pip install "fusetomo[io]"'
RSCIIO_PLUGINS: dict[str, str] = {
    ".emd": "emd", ".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph",
    ".hspy": "hspy", ".hdf5": "hspy", ".zspy": "zspy", ".tif": "tiff", ".tiff": "tiff",
    ".ser": "tia", ".emi": "tia", ".mrc": "mrc", ".ali": "mrc", ".st": "mrc",
    ".preali": "mrc", ".mrcs": "mrc", ".bcf": "bruker",
}
NCEMPY_EXTENSIONS = (".emd", ".ser", ".dm3", ".dm4", ".mrc")
DIRECTORY_FORMATS = (".zspy",)  # a zarr store is a folder
# Extensions RosettaSciIO's MRC reader knows by another name: read through a link named .mrc.
MRC_ALIASES = (".ali", ".st", ".preali", ".mrcs")


class VendorFileError(SeriesError):
    """A vendor file that cannot become (part of) a tilt series; names the file and value."""


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The files to read: each path as given, a folder replaced by the readable files in it
    (natural order: tilt_2 before tilt_10; the .emi of a TIA pair skipped when its .ser is
    there)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and p.suffix.lower() not in DIRECTORY_FORMATS:
            found = sorted((q for q in p.iterdir()
                            if q.is_file() and q.suffix.lower() in RSCIIO_PLUGINS),
                           key=_natural_key)
            sers = {q.stem.rsplit("_", 1)[0] for q in found if q.suffix.lower() == ".ser"}
            found = [q for q in found if not (q.suffix.lower() == ".emi" and q.stem in sers)]
            if not found:
                raise VendorFileError(f"{p}: a folder with no readable file (extensions "
                                      f"{sorted(RSCIIO_PLUGINS)})")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise VendorFileError("no input files")
    return out


def _rsciio_reader(plugin: str, path: Path) -> Any:
    try:
        importlib.import_module("rsciio")
    except ImportError:
        raise VendorFileError(f"{path}: reading vendor files needs RosettaSciIO, which is not "
                              f"installed: {INSTALL_HINT}") from None
    try:
        return importlib.import_module(f"rsciio.{plugin}").file_reader
    except ImportError as e:
        raise VendorFileError(f"{path}: RosettaSciIO's {plugin!r} reader needs a package "
                              f"that is not installed ({e}): {INSTALL_HINT}") from None


def _velox_stream_without_sparse(path: Path) -> bool:
    """A Velox EMD with a spectrum stream, and no `sparse` package to decode it."""
    if importlib.util.find_spec("sparse") is not None:
        return False
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "Data" in f and "SpectrumStream" in f["Data"]
    except (OSError, ValueError):
        return False


def _mrc_path(path: Path, tmpdir: Path) -> Path:
    """RosettaSciIO's MRC reader takes IMOD's .ali/.st/... under an .mrc name."""
    if path.suffix.lower() not in MRC_ALIASES:
        return path
    link = tmpdir / (path.stem + ".mrc")
    try:
        link.symlink_to(path.resolve())
    except OSError:
        import shutil

        shutil.copyfile(path, link)
    return link


def read_signals(path: Path) -> list[dict[str, Any]]:
    """Signal dicts of one file: RosettaSciIO, else ncempy (see the module docstring)."""
    if not (path.is_file() or (path.is_dir() and path.suffix.lower() in DIRECTORY_FORMATS)):
        raise VendorFileError(f"{path}: no such file")
    ext = path.suffix.lower()
    plugin = RSCIIO_PLUGINS.get(ext)
    if plugin is None and ext not in NCEMPY_EXTENSIONS:
        raise VendorFileError(f"{path}: unknown file type {ext!r}; readable: "
                              f"{sorted(RSCIIO_PLUGINS)}")
    if ext == ".emd" and _velox_stream_without_sparse(path):
        raise VendorFileError(f"{path}: a Velox EMD with a spectrum stream; decoding it needs "
                              f"the 'sparse' package (without it RosettaSciIO drops the "
                              f"spectrum image): {INSTALL_HINT}")
    errors = []
    if plugin is not None:
        reader = _rsciio_reader(plugin, path)
        try:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                sigs = reader(str(_mrc_path(path, Path(tmp))))
                sigs = [_materialise(s) for s in sigs or []]
            if sigs:
                return sigs
            errors.append("RosettaSciIO found no signal")
        except Exception as e:  # any reader failure: try the next library, report all
            errors.append(f"RosettaSciIO ({plugin}): {type(e).__name__}: {e}")
    if ext in NCEMPY_EXTENSIONS:
        try:
            import ncempy.io

            return [_from_ncempy(ncempy.io.read(str(path)))]
        except Exception as e:  # as above
            errors.append(f"ncempy: {type(e).__name__}: {e}")
    raise VendorFileError(f"{path}: cannot read it: " + "; ".join(errors))


def _materialise(sig: Mapping[str, Any]) -> dict[str, Any]:
    """The signal with its data as a NumPy array (readers may hand out memory maps or dask
    arrays tied to the file)."""
    import numpy as np

    out = dict(sig)
    data = out["data"]
    if hasattr(data, "compute"):
        data = data.compute()
    out["data"] = np.array(data)
    return out


def _from_ncempy(d: Mapping[str, Any]) -> dict[str, Any]:
    import numpy as np

    data = np.asarray(d["data"])
    sizes = list(np.atleast_1d(d.get("pixelSize", [1.0] * data.ndim)))
    units = list(np.atleast_1d(d.get("pixelUnit", [""] * data.ndim)))
    origin = list(np.atleast_1d(d.get("pixelOrigin", [0.0] * data.ndim)))
    axes = []
    for i in range(data.ndim):
        axes.append({"size": data.shape[i], "scale": float(sizes[i]) if i < len(sizes) else 1.0,
                     "offset": float(origin[i]) if i < len(origin) else 0.0,
                     "units": str(units[i]) if i < len(units) else "", "name": f"dim{i}"})
    return {"data": data, "axes": axes, "metadata": {}, "original_metadata": {}}
