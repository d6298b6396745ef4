"""A series with no spectrum image (HAADF-only): every offline command either works on it
or exits 2 naming what it needs; the HAADF-only methods subtract each image's offset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from bad_series import small_simulation
from scipy import ndimage as ndi

from fusetomo.adapters.reconfile import read_recon
from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import read_series, write_series
from fusetomo.cli import main
from fusetomo.controller.reconstruct import reconstruct
from fusetomo.solver.alignment import gauge_free, to_axis_frame

OFFSET = -31880.0  # a signed-integer file's vacuum level, as in etspy's needle MRC


@pytest.fixture(scope="module")
def sim():
    return small_simulation()


@pytest.fixture(scope="module")
def files(sim, tmp_path_factory) -> dict[str, Path]:
    """A HAADF-only series with a large offset, and its HAADF reconstruction."""
    d = tmp_path_factory.mktemp("haadf_only")
    s = sim.series
    series = TiltSeries(s.haadf + OFFSET, s.haadf_angles, {}, {}, pixel_size_nm=0.5)
    path = write_series(d / "h.h5", series)
    recon = d / "r.h5"
    assert main(["reconstruct", str(path), "--out", str(recon), "--method", "haadf",
                 "--quiet"]) == 0
    return {"series": path, "recon": recon, "dir": d}


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect(files, capsys):
    code, out, _ = _run(capsys, ["inspect", str(files["series"]), "--json"])
    assert code == 0 and '"chem_tilts": 0' in out and '"elements": []' in out


def test_haadf_reconstruction_subtracts_the_offset(sim, files):
    """The offset is each image's vacuum level: SIRT of the offset series equals SIRT of the
    same images without it (non-negative SIRT of raw -31880 data would be all zeros)."""
    got = read_recon(files["recon"]).volumes["HAADF"]
    ref = reconstruct(TiltSeries(sim.series.haadf, sim.series.haadf_angles, {}, {}),
                      "haadf", progress=False).volumes["HAADF"]
    assert float(got.max()) > 0
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02


def test_sirt_on_a_haadf_only_series_is_haadf_sirt(files, tmp_path, capsys):
    out = tmp_path / "s.h5"
    code, _, _ = _run(capsys, ["reconstruct", str(files["series"]), "--out", str(out),
                               "--method", "sirt", "--quiet"])
    assert code == 0
    rec = read_recon(out)
    assert rec.names == ["HAADF"] and rec.attrs["baseline"] == "haadf_sirt"
    np.testing.assert_allclose(rec.volumes["HAADF"],
                               read_recon(files["recon"]).volumes["HAADF"], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("method", ["fused", "conventional", "hebt", "chemtv"])
@pytest.mark.parametrize("align", [False, True])
def test_methods_needing_maps_exit_2_saying_so(files, tmp_path, capsys, method, align):
    argv = ["reconstruct", str(files["series"]), "--out", str(tmp_path / "x.h5"),
            "--method", method, "--quiet"] + (["--align"] if align else [])
    code, _, err = _run(capsys, argv)
    assert code == 2
    assert f"method {method!r} needs at least one spectrum image" in err
    assert "HAADF-only" in err and "--method haadf or sirt" in err
    assert not (tmp_path / "x.h5").exists()


def test_reconstruct_align_then_haadf(tmp_path, capsys):
    """--align with haadf: drift and a 1 deg rotation put in (nanocubes: a specimen whose
    projections tell the rotation; a sphere's do not), the resampled stack reconstructed;
    the recorded shifts match the drift and the rotation is found."""
    from fusetomo.simulators.forward import TiltScheme, simulate

    s = simulate("nanocubes", 32, TiltScheme(tilt_range=(-60.0, 60.0), haadf_step=4.0,
                                             chem_step=30.0), seed=2).series
    rng = np.random.default_rng(8)
    true = rng.normal(0, 1.5, (s.haadf_angles.size, 2))
    moved = np.stack([ndi.shift(ndi.rotate(np.pad(im, 8), 1.0, reshape=False), d, order=3)
                      for im, d in zip(s.haadf, true, strict=True)]).astype(np.float32)
    path = write_series(tmp_path / "d.h5", TiltSeries(moved + OFFSET, s.haadf_angles, {}, {}))
    out = tmp_path / "r.h5"
    code, text, _ = _run(capsys, ["reconstruct", str(path), "--out", str(out), "--method",
                                  "haadf", "--align", "--quiet"])
    assert code == 0 and "aligned: rotation" in text
    a = read_recon(out).attrs
    assert a["align_rotation_deg"] == pytest.approx(1.0, abs=0.2)
    est = to_axis_frame(np.asarray(a["align_shifts_px"]), a["align_rotation_deg"])
    err = gauge_free(s.haadf_angles, est) - gauge_free(s.haadf_angles,
                                                       to_axis_frame(true, 1.0))
    assert float(np.sqrt(np.mean(np.sum(err**2, axis=1)))) < 0.5


def test_export_every_format(files, tmp_path, capsys):
    import mrcfile

    for flag, name in (("--emd", "v.emd"), ("--mrc", "v.mrc"), ("--tiff", "v.tif")):
        code, _, _ = _run(capsys, ["export", str(files["recon"]), flag, str(tmp_path / name)])
        assert code == 0 and (tmp_path / name).is_file()
    vol = read_recon(files["recon"]).volumes["HAADF"]
    with mrcfile.open(tmp_path / "v.mrc") as m:
        np.testing.assert_array_equal(m.data, vol)
        assert float(m.voxel_size.x) == pytest.approx(5.0)  # 0.5 nm = 5 A
    with tifffile.TiffFile(tmp_path / "v.tif") as t:
        np.testing.assert_array_equal(t.asarray(), vol)
        assert t.imagej_metadata["spacing"] == pytest.approx(0.5)
        assert t.imagej_metadata["unit"] == "nm"


def test_report(files, tmp_path, capsys):
    code, _, _ = _run(capsys, ["report", str(files["series"]), "--out", str(tmp_path)])
    assert code == 0 and (tmp_path / "tilts.png").is_file()
    code, _, _ = _run(capsys, ["report", str(files["recon"]), "--out",
                                  str(tmp_path / "r")])
    assert code == 0 and (tmp_path / "r" / "orthoslices_HAADF.png").is_file()


def test_align_command_writes_an_aligned_series(files, tmp_path, capsys):
    import mrcfile

    out, mrc = tmp_path / "a.h5", tmp_path / "a.mrc"
    code, text, _ = _run(capsys, ["align", str(files["series"]), "--out", str(out), "--mrc",
                                  str(mrc), "--rotation", "0"])
    assert code == 0 and "rotation 0.000 deg (given)" in text
    a = read_series(out)
    assert a.haadf_only and a.attrs["aligned"] == 1
    assert len(a.attrs["align_shifts_px"]) == a.haadf.shape[0]
    assert abs(float(np.median(a.haadf[:, :, :2]))) < 1.0  # offset subtracted
    with mrcfile.open(mrc) as m:
        np.testing.assert_allclose(m.data, a.haadf)
    angles = np.loadtxt(mrc.with_suffix(".tlt"))
    np.testing.assert_allclose(angles, a.haadf_angles, atol=0.005)


def test_import_a_haadf_only_tiff_stack_with_an_angle_file(sim, tmp_path, capsys):
    stack = sim.series.haadf[:5]
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    (tmp_path / "s.rawtlt").write_text("\n".join(f"{a:.1f}" for a in
                                                 sim.series.haadf_angles[:5]))
    out = tmp_path / "s.h5"
    code, text, _ = _run(capsys, ["import", str(tmp_path / "s.tif"), "--out", str(out)])
    assert code == 0 and "HAADF-only" in text and "s.rawtlt" in text
    s = read_series(out)
    assert s.haadf_only
    np.testing.assert_allclose(s.haadf_angles, sim.series.haadf_angles[:5], atol=0.05)


def test_view_series_screenshot(files, tmp_path, capsys):
    pytest.importorskip("pyqtgraph")
    pytest.importorskip("PySide6.QtWidgets")
    png = tmp_path / "v.png"
    code, text, _ = _run(capsys, ["view", "--series", str(files["series"]), "--screenshot",
                                  str(png), "--size", "400x300", "--tilt", "3"])
    assert code == 0 and png.is_file() and png.stat().st_size > 1000
    assert "no spectrum image (HAADF-only series)" in text
