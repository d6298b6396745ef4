"""Broken series files for the reader and CLI tests: each case damages a valid file in
place and names the words the error message must contain (dataset and problem)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from fusetomo.adapters.series import TiltSeries
from fusetomo.simulators.forward import AcquisitionParams, TiltScheme, simulate


def small_simulation(size: int = 16, seed: int = 3):
    """A quick simulated series (3 elements, 29 HAADF and 5 chemical tilts) with truth."""
    scheme = TiltScheme(tilt_range=(-70.0, 70.0), haadf_step=5.0, chem_step=35.0)
    return simulate("core-shell", size, scheme, AcquisitionParams(oversample=1), seed=seed)


def _replace(path: Path, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    with h5py.File(path, "r+") as f:
        data = fn(f[name][()])
        del f[name]
        f[name] = data


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def not_hdf5(path: Path) -> None:
    path.write_text("this is not an HDF5 file\n")


def nan_haadf(path: Path) -> None:
    def fn(a: np.ndarray) -> np.ndarray:
        a[1, 2, 3] = np.nan
        return a

    _replace(path, "/haadf/data", fn)


def negative_counts(path: Path) -> None:
    def fn(a: np.ndarray) -> np.ndarray:
        a[0, 4, 5] = -3.0
        return a

    _replace(path, "/chem/Co/data", fn)


def unknown_element(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f.copy(f["/chem/Co"], "/chem/Xx")


def shape_mismatch(path: Path) -> None:
    _replace(path, "/chem/S/data", lambda a: a[:, :, :-2])


def missing_haadf_angles(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f["/haadf/angles"]


def missing_chem_angles(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f["/chem/O/angles"]


def duplicate_angle(path: Path) -> None:
    def fn(a: np.ndarray) -> np.ndarray:
        a[1] = a[0]
        return a

    _replace(path, "/haadf/angles", fn)


def angle_count(path: Path) -> None:
    _replace(path, "/haadf/angles", lambda a: a[:-1])


def elements_disagree(path: Path) -> None:
    _replace(path, "/chem/O/angles", lambda a: a + 1.0)


def string_data(path: Path) -> None:
    _replace(path, "/haadf/data", lambda a: np.array([b"x"] * 3))


def two_axes(path: Path) -> None:
    _replace(path, "/haadf/data", lambda a: a[0])


def wrong_format(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "fusetomo-recon"


def bad_z(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["/chem/Co"].attrs["Z"] = "cobalt"


def negative_background(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["/chem/S"].attrs["background"] = -1.0


def no_chem(path: Path) -> None:
    """A version-2 file without /chem (version 3 allows a HAADF-only series)."""
    with h5py.File(path, "r+") as f:
        del f["/chem"]
        f.attrs["version"] = 2


# (id, damage, words the message must contain besides the file name)
CASES: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("truncated", truncate, ("not a readable HDF5 file", "truncated")),
    ("not-hdf5", not_hdf5, ("not a readable HDF5 file",)),
    ("nan", nan_haadf, ("/haadf/data", "NaN", "(1, 2, 3)")),
    ("negative", negative_counts, ("/chem/Co/data", "negative counts", "-3")),
    ("unknown-element", unknown_element, ("/chem/Xx", "unknown element", "'Xx'")),
    ("shape", shape_mismatch, ("/chem/S/data", "shape")),
    ("missing-haadf-angles", missing_haadf_angles, ("/haadf/angles", "missing")),
    ("missing-chem-angles", missing_chem_angles, ("/chem/O/angles", "missing")),
    ("duplicate", duplicate_angle, ("/haadf/angles", "duplicate tilt angle", "-70")),
    ("angle-count", angle_count, ("/haadf/angles", "28 angles for 29")),
    ("elements-disagree", elements_disagree, ("/chem/", "angles", "differ")),
    ("dtype", string_data, ("/haadf/data", "dtype")),
    ("ndim", two_axes, ("/haadf/data", "expected 3 axes")),
    ("format", wrong_format, ("format", "fusetomo-recon")),
    ("z", bad_z, ("/chem/Co", "Z", "cobalt")),
    ("background", negative_background, ("/chem/S", "background", "-1")),
    ("no-chem", no_chem, ("/chem", "missing", "version 2")),
]


def series_equal(a: TiltSeries, b: TiltSeries) -> None:
    """Assert two series hold the same data and metadata."""
    np.testing.assert_array_equal(a.haadf, b.haadf)
    np.testing.assert_array_equal(a.haadf_angles, b.haadf_angles)
    assert a.elements == b.elements
    for e in a.elements:
        np.testing.assert_array_equal(a.chem[e], b.chem[e])
        np.testing.assert_array_equal(a.chem_angles[e], b.chem_angles[e])
    assert a.Z == b.Z
    assert a.background == b.background
    assert (a.gamma, a.pixel_size_nm) == (b.gamma, b.pixel_size_nm)
    assert a.attrs.keys() == b.attrs.keys()
    for k, v in a.attrs.items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(b.attrs[k]), err_msg=k)
