"""Alignment (solver/alignment.py) against known shifts, rotations and offsets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.simulators.instrument import apply_shift
from fusetomo.solver import alignment as al

SCHEME = TiltScheme(tilt_range=(-60.0, 60.0), haadf_step=4.0, chem_step=30.0)
MARGIN = 8


@pytest.fixture(scope="module")
def series():
    return simulate("nanocubes", 32, SCHEME, seed=2).series


def blob(n: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((n, n))
    img[n // 4:3 * n // 4, n // 4:3 * n // 4] = rng.random((n // 2, n // 2))
    return ndi.gaussian_filter(img, 2.0).astype(np.float32)


def measured(images: np.ndarray, shifts: np.ndarray, rotation: float) -> np.ndarray:
    """Pad with vacuum, rotate (scipy.ndimage.rotate), move (spline): the model."""
    out = []
    for im, sh in zip(images, shifts, strict=True):
        p = np.pad(im, MARGIN)
        if rotation:
            p = ndi.rotate(p, rotation, reshape=False)
        out.append(ndi.shift(p, sh, order=3, mode="constant"))
    return np.stack(out).astype(np.float32)


def rms(angles, est, true) -> float:
    d = al.gauge_free(angles, est) - al.gauge_free(angles, true)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


@pytest.mark.parametrize("rotation", [0.0, 2.0])
def test_apply_alignment_undoes_rotation_and_shift(rotation):
    ref = np.pad(blob(), 8)
    sh = np.array([2.3, -1.6])
    meas = ndi.shift(ndi.rotate(ref, rotation, reshape=False), sh, order=3)
    back = al.apply_alignment(meas, sh, rotation)
    assert back.shape == ref.shape
    assert np.linalg.norm(back - ref) / np.linalg.norm(ref) < 0.03
    # and the wrong sign does not
    wrong = al.apply_alignment(meas, -sh, -rotation)
    assert np.linalg.norm(wrong - ref) / np.linalg.norm(ref) > 0.3


@pytest.mark.parametrize("shift", [(0.0, 0.0), (3.25, -1.5), (-4.6, 2.05)])
def test_register_returns_the_shift(shift):
    ref = np.pad(blob(), 8)
    moved = apply_shift(ref, shift)
    np.testing.assert_allclose(al.register(ref, moved), shift, atol=0.06)


def test_vacuum_level_and_background_removal():
    img = np.pad(blob(), 8) + 7.0
    assert al.vacuum_level(img) == pytest.approx(7.0, abs=1e-6)
    assert al.vacuum_level(img, method="percentile", percentile=5) == pytest.approx(7.0,
                                                                                    abs=1e-6)
    clean, levels = al.remove_background(np.stack([img, img + 3]))
    np.testing.assert_allclose(levels, [7.0, 10.0], atol=1e-5)
    assert float(np.median(clean[:, :4])) == pytest.approx(0.0, abs=1e-5)


def test_frames_are_inverse():
    sh = np.array([[1.0, 2.0], [-3.0, 0.5]])
    np.testing.assert_allclose(al.to_image_frame(al.to_axis_frame(sh, 1.3), 1.3), sh)


def test_centre_of_mass_recovers_drift_and_axis_offset(series):
    ang = series.haadf_angles
    rng = np.random.default_rng(5)
    true = rng.normal(0, 2.0, (ang.size, 2))
    true[:, 1] += 1.5
    meas = measured(series.haadf, true, 0.0)
    shifts, offset = al.com_shifts(al.remove_background(meas)[0], ang)
    assert rms(ang, shifts, true) < 0.3
    assert offset == pytest.approx(al.fit_axis(ang, true[:, 1])[0], abs=0.3)


def test_rotation_estimate(series):
    ang = series.haadf_angles
    rng = np.random.default_rng(6)
    meas = measured(series.haadf, rng.normal(0, 1.5, (ang.size, 2)), 2.0)
    est = al.estimate_rotation(al.remove_background(meas)[0])
    assert est == pytest.approx(2.0, abs=0.2)


def test_projection_matching_improves_a_coarse_start(series):
    ang = series.haadf_angles
    rng = np.random.default_rng(7)
    true = rng.normal(0, 2.0, (ang.size, 2))
    clean = al.remove_background(measured(series.haadf, true, 0.0))[0]
    start = al.xcorr_shifts(clean, ang)
    params = al.AlignmentParams(scales=(2, 1), max_iterations=5)
    refined, history = al.projection_matching(clean, ang, start, params=params)
    assert rms(ang, refined, true) < 0.5
    assert rms(ang, refined, true) < rms(ang, start, true)
    assert {h["scale"] for h in history} == {2, 1}
    assert all(h["iteration"] < 5 for h in history)


def test_align_series_end_to_end(series):
    ang = series.haadf_angles
    rng = np.random.default_rng(8)
    true = rng.normal(0, 2.0, (ang.size, 2))
    true[:, 1] += 1.0
    meas = measured(series.haadf, true, 1.0)
    res = al.align_series(meas, ang, params=al.AlignmentParams(scales=(2, 1),
                                                               max_iterations=4))
    assert res.rotation_deg == pytest.approx(1.0, abs=0.2)
    assert rms(ang, res.axis_frame_shifts(), al.to_axis_frame(true, 1.0)) < 0.5
    np.testing.assert_allclose(res.shift_at(ang[3]), res.shifts[3])
    with pytest.raises(al.AlignmentError, match="no aligned tilt"):
        res.shift_at(1.234)


def test_register_chem_finds_the_spectrum_images_own_drift(series):
    i = int(np.argmin(np.abs(series.haadf_angles - 0.0)))
    j = int(np.argmin(np.abs(series.common_chem_angles - 0.0)))
    haadf = np.pad(series.haadf[i], MARGIN)
    own = np.array([1.5, -1.0])
    bg = [series.background[e] for e in series.elements]
    maps = {e: np.clip(ndi.shift(np.pad(series.chem[e][j], MARGIN, constant_values=b), own,
                                 order=3, mode="nearest"), 0, None)
            for e, b in zip(series.elements, bg, strict=True)}
    est = al.register_chem(haadf, maps, [series.Z[e] for e in series.elements],
                           gamma=1.7, background=bg)
    np.testing.assert_allclose(est, own, atol=0.4)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"upsample": 0}, "upsample"), ({"scales": ()}, "scales"), ({"tol_px": 0}, "tol_px"),
    ({"background": "mode"}, "background"), ({"order": 7}, "order"),
])
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(al.AlignmentError, match=match):
        al.AlignmentParams(**kwargs)


def test_bad_inputs_are_named():
    img = np.pad(blob(), 4)
    with pytest.raises(al.AlignmentError, match="2 shifts for 1 images"):
        al.apply_alignment(img, np.zeros((2, 2)))
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(al.AlignmentError, match="NaN"):
        al.apply_alignment(bad, np.zeros(2))
    with pytest.raises(al.AlignmentError, match="3 angles for 2 images"):
        al.com_shifts(np.stack([img, img]), [0, 1, 2])
    with pytest.raises(al.AlignmentError, match="no signal"):
        al.com_shifts(np.zeros((3, 8, 8)), [0, 10, 20])
