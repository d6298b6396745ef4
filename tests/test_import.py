"""`fusetomo import`: small vendor files written by RosettaSciIO / tifffile are read back
into a tilt series (angles, images and element maps round-trip)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from fusetomo.adapters.importers import ImportParams, VendorFileError, import_series
from fusetomo.adapters.seriesfile import read_series
from fusetomo.adapters.spectra import edx_maps, eels_maps
from fusetomo.cli import main

rsciio_hspy = pytest.importorskip("rsciio.hspy")
rsciio_emd = pytest.importorskip("rsciio.emd")

SHAPE = (6, 8)


def signal(data, axes, metadata=None) -> dict:
    """The signal dict the RosettaSciIO writers take."""
    return {"data": data, "axes": axes, "metadata": metadata or {"General": {"title": "t"},
                                                                 "Signal": {}},
            "original_metadata": {}, "tmp_parameters": {}, "attributes": {"_lazy": False},
            "package_info": {"name": "fusetomo-test", "version": "0"},
            "learning_results": {}, "models": {}}


def image_axes(nav: dict | None = None) -> list[dict]:
    ax = [{"name": "y", "units": "nm", "size": SHAPE[0], "scale": 0.5, "offset": 0.0,
           "navigate": False},
          {"name": "x", "units": "nm", "size": SHAPE[1], "scale": 0.5, "offset": 0.0,
           "navigate": False}]
    return ([nav] if nav else []) + ax


def eels_si(rng) -> tuple[np.ndarray, np.ndarray]:
    """A spectrum image with a power-law background and an O K edge at 532 eV."""
    e = np.arange(400.0, 700.0, 2.0)
    amount = rng.uniform(0, 50, SHAPE)
    bg = 1e7 * e ** -2.5
    edge = np.where(e >= 532, (e / 532.0) ** -3, 0.0)
    si = bg[None, None, :] * rng.uniform(0.9, 1.1, SHAPE)[..., None] \
        + amount[..., None] * edge[None, None, :]
    return si.astype(np.float32), e


def edx_si(rng) -> tuple[np.ndarray, np.ndarray]:
    e = np.arange(0.0, 12.0, 0.01)
    cu = rng.uniform(0, 20, SHAPE)
    peak = np.exp(-0.5 * ((e - 8.04) / 0.06) ** 2)
    si = 2.0 + cu[..., None] * peak[None, None, :]
    return si.astype(np.float32), e


def test_hspy_images_with_stage_tilt_and_an_eels_spectrum_image(tmp_path):
    rng = np.random.default_rng(0)
    paths, images = [], {}
    for a in (-30.0, 0.0, 30.0):
        img = rng.random(SHAPE).astype(np.float32)
        images[a] = img
        md = {"General": {"title": f"haadf {a}"}, "Signal": {},
              "Acquisition_instrument": {"TEM": {"Stage": {"tilt_alpha": a}}}}
        p = tmp_path / f"haadf_{int(a)}.hspy"
        rsciio_hspy.file_writer(str(p), signal(img, image_axes(), md))
        paths.append(p)
    si, e = eels_si(rng)
    md = {"General": {"title": "si"}, "Signal": {"signal_type": "EELS"},
          "Acquisition_instrument": {"TEM": {"Stage": {"tilt_alpha": 0.0}}}}
    axes = [*image_axes(), {"name": "Energy loss", "units": "eV", "size": e.size,
                            "scale": 2.0, "offset": 400.0, "navigate": False}]
    p = tmp_path / "si_0.hspy"
    rsciio_hspy.file_writer(str(p), signal(si, axes, md))
    paths.append(p)
    series = import_series(paths[::-1], ImportParams(elements=("O",)))
    np.testing.assert_allclose(series.haadf_angles, [-30, 0, 30])
    for i, a in enumerate(series.haadf_angles):
        np.testing.assert_array_equal(series.haadf[i], images[a])
    np.testing.assert_allclose(series.common_chem_angles, [0.0])
    want = eels_maps(si, e, ["O"])["O"]
    np.testing.assert_allclose(series.chem["O"][0], want, rtol=1e-5)
    assert series.pixel_size_nm == pytest.approx(0.5)
    assert series.Z["O"] == 8


def test_emd_stack_with_degree_axis_and_edx_by_file_name(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.random((4, *SHAPE)).astype(np.float32)
    nav = {"name": "tilt", "units": "deg", "size": 4, "scale": 20.0, "offset": -30.0,
           "navigate": True}
    p_stack = tmp_path / "tilts.emd"
    rsciio_emd.file_writer(str(p_stack), signal(stack, image_axes(nav)))
    si, e = edx_si(rng)
    axes = [*image_axes(), {"name": "Energy", "units": "keV", "size": e.size, "scale": 0.01,
                            "offset": 0.0, "navigate": False}]
    p_si = tmp_path / "edx_+10.0deg.emd"
    rsciio_emd.file_writer(str(p_si), signal(si, axes))
    series = import_series([p_stack, p_si], ImportParams(
        elements=("Cu",), angle_regex=r"(?P<angle>[-+]?\d+(\.\d+)?)deg"))
    np.testing.assert_allclose(series.haadf_angles, [-30, -10, 10, 30])
    np.testing.assert_allclose(series.haadf, stack, rtol=1e-6)
    np.testing.assert_allclose(series.common_chem_angles, [10.0])
    np.testing.assert_allclose(series.chem["Cu"][0], edx_maps(si, e, ["Cu"])["Cu"], rtol=1e-5)


def test_tiff_stack_with_angle_list_through_the_command_line(tmp_path):
    rng = np.random.default_rng(2)
    stack = rng.random((3, *SHAPE)).astype(np.float32)
    p_tif = tmp_path / "stack.tif"
    tifffile.imwrite(p_tif, stack, photometric="minisblack")
    si, e = eels_si(rng)
    axes = [*image_axes(), {"name": "E", "units": "eV", "size": e.size, "scale": 2.0,
                            "offset": 400.0, "navigate": False}]
    p_si = tmp_path / "si.hspy"
    rsciio_hspy.file_writer(str(p_si), signal(si, axes))
    out = tmp_path / "series.h5"
    code = main(["import", str(p_tif), str(p_si), "--out", str(out), "--elements", "O",
                 "--angles=-20,0,20", "--chem-angles", "0", "--tilt-axis", "1"])
    assert code == 0
    s = read_series(out)
    np.testing.assert_allclose(s.haadf_angles, [-20, 0, 20])
    np.testing.assert_allclose(s.haadf, np.swapaxes(stack, 1, 2))  # tilt axis was image axis 1
    np.testing.assert_allclose(s.chem["O"][0], eels_maps(si, e, ["O"])["O"].T, rtol=1e-5)


def test_problems_are_named(tmp_path, capsys):
    rng = np.random.default_rng(3)
    p = tmp_path / "img.hspy"
    rsciio_hspy.file_writer(str(p), signal(rng.random(SHAPE).astype(np.float32),
                                           image_axes()))
    with pytest.raises(VendorFileError, match=r"img.hspy\[0\]: no tilt angle"):
        import_series([p], ImportParams(elements=("O",)))
    with pytest.raises(VendorFileError, match="no spectrum image"):
        import_series([p], ImportParams(angles=(0.0,), elements=("O",)))
    with pytest.raises(VendorFileError, match="2 angles for 1 HAADF"):
        import_series([p], ImportParams(angles=(0.0, 1.0)))
    odd = tmp_path / "x.xyz"
    odd.write_bytes(b"nothing")
    with pytest.raises(VendorFileError, match=r"unknown file type '\.xyz'"):
        import_series([odd])
    # No library writes DM3/DM4: a corrupt one goes through both readers, both named.
    dm = tmp_path / "broken.dm4"
    dm.write_bytes(b"\x00" * 64)
    with pytest.raises(VendorFileError, match=r"broken.dm4: cannot read it: RosettaSciIO "
                                              r"\(digitalmicrograph\).*ncempy"):
        import_series([dm])
    assert main(["import", str(p), "--out", str(tmp_path / "o.h5")]) == 2
    assert "no tilt angle" in capsys.readouterr().err
