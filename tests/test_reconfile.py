"""The reconstruction file, its EMD export (opened by ncempy) and reconstruct()."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
from bad_series import small_simulation
from ncempy.io import emd

from fusetomo.adapters.reconfile import (
    FORMAT,
    ReconFileError,
    describe_recon,
    export_emd,
    read_recon,
    write_recon,
)
from fusetomo.adapters.seriesfile import write_series
from fusetomo.controller.reconstruct import METHODS, MethodError, reconstruct
from fusetomo.solver.fusion import CostHistory, FusionParams
from fusetomo.solver.metrics import nrmse


@pytest.fixture(scope="module")
def sim():
    return small_simulation()


@pytest.fixture(scope="module")
def fused(sim):
    return reconstruct(sim.series, "fused", iterations=3, device="cpu", progress=False)


def _volumes(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {e: rng.random((n, n + 1, n + 1)).astype(np.float32) for e in ("Co", "O")}


def test_round_trip(tmp_path):
    vols = _volumes()
    hist = CostHistory(haadf=[3.0, 2.0], chem=[5.0, 4.0], tv=[1.0, 0.9], haadf_scale=[1, 1],
                       n_haadf_tilts=[9, 9], n_chem_tilts=[3, 3])
    attrs = {"method": "fused", "lambda_tv": 0.02, "refit_scale": True, "iterations": 2,
             "source_file": None}
    std = {"Co": np.ones((6, 7, 7), np.float32)}
    path = write_recon(tmp_path / "r.h5", vols, convergence=hist, attrs=attrs, std_error=std)
    rec = read_recon(path)
    assert rec.names == ["Co", "O"] and rec.shape == (6, 7, 7)
    for e, v in vols.items():
        np.testing.assert_array_equal(rec.volumes[e], v)
    for term, values in hist.as_arrays().items():
        np.testing.assert_array_equal(rec.convergence[term], values)
    np.testing.assert_array_equal(rec.std_error["Co"], std["Co"])
    assert rec.attrs["format"] == FORMAT and rec.attrs["version"] == 1
    assert rec.attrs["method"] == "fused" and rec.attrs["refit_scale"] is True
    assert rec.attrs["iterations"] == 2 and "source_file" not in rec.attrs
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"]


def test_baseline_without_history_has_empty_convergence(tmp_path):
    rec = read_recon(write_recon(tmp_path / "r.h5", _volumes(), attrs={"method": "sirt"}))
    assert set(rec.convergence) >= {"haadf", "chem", "tv", "haadf_scale"}
    assert all(v.size == 0 for v in rec.convergence.values())


def test_write_refuses_mixed_shapes(tmp_path):
    vols = {"Co": np.zeros((4, 5, 5)), "O": np.zeros((4, 6, 6))}
    with pytest.raises(ReconFileError, match="one 3-D shape"):
        write_recon(tmp_path / "r.h5", vols)
    with pytest.raises(ReconFileError, match="no volumes"):
        write_recon(tmp_path / "r.h5", {})


def test_read_errors_name_file_and_dataset(sim, tmp_path):
    series = write_series(tmp_path / "s.h5", sim.series)
    with pytest.raises(ReconFileError, match=r"s\.h5.*format is 'fusetomo-series'"):
        read_recon(series)
    path = write_recon(tmp_path / "r.h5", _volumes())
    with h5py.File(path, "r+") as f:
        f["/volumes/O"][0, 0, 0] = np.nan
    with pytest.raises(ReconFileError, match=r"r\.h5: /volumes/O holds NaN"):
        read_recon(path)
    (tmp_path / "x.h5").write_bytes(b"garbage")
    with pytest.raises(ReconFileError, match="not a readable HDF5"):
        read_recon(tmp_path / "x.h5")


def test_emd_export_opens_in_ncempy(tmp_path):
    vols = _volumes()
    std = {"O": np.full((6, 7, 7), 0.5, np.float32)}
    rec = write_recon(tmp_path / "r.h5", vols, std_error=std,
                      attrs={"method": "fused", "pixel_size_nm": 0.5})
    out = export_emd(rec, tmp_path / "r.emd")
    with emd.fileEMD(out) as f:
        assert f.version == (0, 2)
        names = [g.name for g in f.list_emds]
        assert names == ["/data/Co", "/data/O", "/data/O_std_error"]
        for i, e in enumerate(["Co", "O"]):
            data, dims = f.get_emdgroup(i)
            np.testing.assert_array_equal(data, vols[e])
            assert [d[2] for d in dims] == ["nm"] * 3
            assert [d[0].size for d in dims] == [6, 7, 7]
            assert dims[1][0][1] - dims[1][0][0] == pytest.approx(0.5)
        assert f.user.attrs["method"] == "fused"
    first = emd.emdReader(out)
    assert first["name"] == "Co" and first["pixelSize"] == pytest.approx([0.5] * 3)


def test_emd_export_without_pixel_size_uses_pixels(tmp_path):
    rec = write_recon(tmp_path / "r.h5", {"HAADF": np.ones((3, 4, 4))})
    with emd.fileEMD(export_emd(rec, tmp_path / "r.emd")) as f:
        _, dims = f.get_emdgroup(0)
        assert [d[2] for d in dims] == ["pixels"] * 3


def test_fused_result_saves_all_parameters(sim, fused, tmp_path):
    assert list(fused.volumes) == sim.series.elements
    assert len(fused.history.haadf) == 3 and fused.elapsed > 0
    path = fused.save(tmp_path / "r.h5", source="series.h5")
    rec = read_recon(path)
    a = rec.attrs
    assert a["method"] == "fused" and a["iterations"] == 3 and a["device"] == "cpu"
    assert a["source_file"] == "series.h5" and a["elapsed_s"] > 0
    assert a["haadf_tilts"] == 29 and a["chem_tilts"] == 5
    for name in (f.name for f in dataclasses.fields(FusionParams)):
        assert name in a, name
    assert a["gamma"] == pytest.approx(sim.series.gamma)
    assert rec.convergence["chem"].size == 3
    assert describe_recon(path)["elements"] == sim.series.elements
    for e in sim.series.elements:
        assert nrmse(sim.truth[e], rec.volumes[e]) < 1.0


def test_series_gamma_replaces_params_gamma(sim):
    res = reconstruct(sim.series, "fused", iterations=0, device="cpu",
                      params=FusionParams(gamma=1.5), progress=False)
    assert res.params["gamma"] == pytest.approx(sim.series.gamma)


def test_unknown_method():
    with pytest.raises(MethodError, match="unknown method 'art'"):
        reconstruct(small_simulation().series, "art", device="cpu")


@pytest.mark.parametrize("method", [m for m in METHODS if m != "fused"])
def test_baseline_methods(sim, method):
    res = reconstruct(sim.series, method, iterations=3, device="cpu", progress=False)
    names = ["HAADF"] if method == "haadf" else sim.series.elements
    assert list(res.volumes) == names
    for v in res.volumes.values():
        assert v.shape == (16, 16, 16) and v.dtype == np.float32 and np.all(np.isfinite(v))
    assert res.params["method"] == method and res.params["iterations"] == 3


def test_path_type(tmp_path):
    assert isinstance(write_recon(str(tmp_path / "r.h5"), _volumes()), Path)


def test_baseline_default_iterations_are_recorded(sim):
    res = reconstruct(sim.series, "conventional", device="cpu", progress=False)
    assert res.params["iterations"] == 30 and res.params["baseline"] == "chemical_mlem"
