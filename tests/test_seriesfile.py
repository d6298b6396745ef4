"""The series file: round trip, atomic writing, and one specific error per kind of damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from bad_series import CASES, series_equal, small_simulation

from fusetomo.adapters.series import SeriesError, TiltSeries
from fusetomo.adapters.seriesfile import (
    FORMAT,
    VERSION,
    SeriesFileError,
    describe_series,
    read_series,
    read_truth,
    total_dose,
    write_series,
)


@pytest.fixture(scope="module")
def sim():
    return small_simulation()


@pytest.fixture(scope="module")
def valid_file(sim, tmp_path_factory) -> Path:
    return write_series(tmp_path_factory.mktemp("series") / "series.h5", sim.series, sim.truth)


def test_round_trip_keeps_data_and_attrs(sim, valid_file):
    back = read_series(valid_file)
    series_equal(sim.series, back)
    assert back.elements == ["Co", "S", "O"]  # file keeps the element order
    assert back.attrs["specimen"] == "core-shell"
    assert isinstance(back.attrs["seed"], int)
    truth = read_truth(valid_file)
    assert truth is not None and list(truth) == list(sim.truth)
    for e, v in sim.truth.items():
        np.testing.assert_array_equal(truth[e], v)


def test_layout_follows_the_contract(sim, valid_file):
    n_h, ns, nd = sim.series.haadf.shape
    with h5py.File(valid_file, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["version"] == VERSION
        assert f["/chem"].attrs["kind"] == "counts"
        assert f.attrs["gamma"] == pytest.approx(1.7)
        assert f["/haadf/data"].dtype == np.float32 and f["/haadf/data"].shape == (n_h, ns, nd)
        assert f["/haadf/angles"].shape == (n_h,)
        for e in sim.series.elements:
            assert f[f"/chem/{e}/data"].shape == (5, ns, nd)
            assert f[f"/chem/{e}"].attrs["Z"] == sim.series.Z[e]
            assert f[f"/chem/{e}"].attrs["background"] >= 0
            assert f[f"/truth/{e}"].shape == (ns, nd, nd)


def test_minimal_hand_written_file_reads(tmp_path):
    """Z comes from the periodic table, no background means an unknown one (the solver
    estimates it), no format attribute."""
    path = tmp_path / "hand.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["/haadf/data"] = rng.random((3, 4, 5))  # float64 is accepted
        f["/haadf/angles"] = [-30, 0, 30]  # integers too
        f["/chem/Fe/data"] = rng.poisson(2.0, (2, 4, 5)).astype(np.uint16)
        f["/chem/Fe/angles"] = [-30.0, 30.0]
    s = read_series(path)
    assert s.Z == {"Fe": 26} and s.background == {} and s.stated_background() == [None]
    assert s.gamma is None and s.attrs == {}
    assert read_truth(path) is None


def test_no_truth_and_overwrite_leave_no_temp_files(sim, tmp_path):
    path = tmp_path / "s.h5"
    write_series(path, sim.series)
    write_series(path, sim.series)  # overwrite in place
    assert read_truth(path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]


def test_failed_write_keeps_the_old_file(sim, tmp_path):
    path = tmp_path / "s.h5"
    write_series(path, sim.series)
    before = path.read_bytes()
    bad = TiltSeries(sim.series.haadf, sim.series.haadf_angles, sim.series.chem,
                     sim.series.chem_angles, attrs={"note": {"a": 1}})
    with pytest.raises(SeriesFileError, match="attribute 'note'"):
        write_series(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]


def test_reserved_attr_is_refused(sim, tmp_path):
    bad = TiltSeries(sim.series.haadf, sim.series.haadf_angles, sim.series.chem,
                     sim.series.chem_angles, attrs={"format": "mine"})
    with pytest.raises(SeriesFileError, match="format"):
        write_series(tmp_path / "s.h5", bad)


@pytest.mark.parametrize(("damage", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damaged_file_gives_specific_error(valid_file, tmp_path, damage, words):
    path = tmp_path / "bad.h5"
    shutil.copy(valid_file, path)
    damage(path)
    with pytest.raises(SeriesFileError) as info:
        read_series(path)
    msg = str(info.value)
    assert isinstance(info.value, SeriesError)
    assert str(path) in msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_missing_file(tmp_path):
    with pytest.raises(SeriesFileError, match="no such file"):
        read_series(tmp_path / "absent.h5")


def test_truth_with_nan_is_refused(sim, tmp_path):
    path = write_series(tmp_path / "s.h5", sim.series, {"Co": np.full((16, 16, 16), np.nan)})
    with pytest.raises(SeriesFileError, match=r"/truth/Co.*NaN"):
        read_truth(path)


def test_describe_valid_and_duplicate(valid_file, tmp_path):
    info = describe_series(valid_file)
    assert info["haadf_tilts"] == 29 and info["chem_tilts"] == 5
    assert info["elements"] == ["Co", "S", "O"] and info["shape"] == [16, 16]
    assert info["duplicates"] == 0 and info["complete"] and info["truth"]
    assert info["dose_e_per_A2"] > 0
    path = tmp_path / "dup.h5"
    shutil.copy(valid_file, path)
    with h5py.File(path, "r+") as f:
        f["/haadf/angles"][2] = f["/haadf/angles"][0]
    info = describe_series(path)
    assert info["duplicates"] == 1 and not info["complete"]
    assert "duplicate" in info["problem"]


def test_total_dose():
    assert total_dose({"haadf_dose_e_per_A2": 2.0, "chem_dose_e_per_A2": 10.0}, 3, 2) == 26.0
    assert total_dose({"haadf_dose_e_per_A2": 2.0}, 3, 2) is None


def haadf_only(sim) -> TiltSeries:
    s = sim.series
    return TiltSeries(s.haadf, s.haadf_angles, {}, {}, pixel_size_nm=0.5,
                      attrs={"imported_from": "x.mrc"})


def test_haadf_only_series_round_trips_without_chem(sim, tmp_path):
    series = haadf_only(sim)
    assert series.haadf_only and series.elements == [] and series.common_chem_angles.size == 0
    path = write_series(tmp_path / "h.h5", series)
    with h5py.File(path, "r") as f:
        assert "chem" not in f and f.attrs["version"] == VERSION == 3
    back = read_series(path)
    assert back.haadf_only and back.chem_kind == "counts"
    np.testing.assert_array_equal(back.haadf, series.haadf)
    np.testing.assert_array_equal(back.haadf_angles, series.haadf_angles)
    info = describe_series(path)
    assert info["complete"] and info["elements"] == [] and info["chem_tilts"] == 0


def test_old_versions_still_read(valid_file, tmp_path):
    """Version-1 and version-2 files (always with /chem) read as before."""
    for version in (1, 2):
        path = tmp_path / f"v{version}.h5"
        shutil.copy(valid_file, path)
        with h5py.File(path, "r+") as f:
            f.attrs["version"] = version
        assert read_series(path).elements == ["Co", "S", "O"]


def test_angles_without_maps_are_refused(sim):
    s = sim.series
    with pytest.raises(SeriesError, match=r"angles given for elements \['Co'\]"):
        TiltSeries(s.haadf, s.haadf_angles, {}, {"Co": np.array([0.0])})
