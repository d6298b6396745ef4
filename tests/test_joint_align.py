"""Joint refinement of the alignment against the fused model (solver/joint_align.py): exact
whole-pixel moves, the Gauss-Newton shift, and recovery of known sub-pixel shifts from a
projection-matching-sized error, with the reconstruction as good as with the true shifts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from shifted_series import shifted_series as make_shifted

from fusetomo.controller.offline_align import aligned_solver
from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.solver import alignment as al
from fusetomo.solver import joint_align as ja
from fusetomo.solver.fusion import FusedSolver
from fusetomo.solver.metrics import nrmse
from fusetomo.solver.projector import GeometryError

SCHEME = TiltScheme(tilt_range=(-60.0, 60.0), haadf_step=4.0, chem_step=30.0)


def test_split_and_move_integer_are_exact():
    whole, frac = ja.split_shifts([[2.4, -1.6], [-0.5, 0.49]])
    np.testing.assert_array_equal(whole, [[2, -2], [0, 0]])
    np.testing.assert_allclose(frac, [[0.4, 0.4], [-0.5, 0.49]])
    img = np.arange(30.0).reshape(5, 6)
    moved = ndi.shift(img, (2, -1), order=0, mode="constant")  # measured: moved by (2, -1)
    back = ja.move_integer(moved, [[2, -1]])
    np.testing.assert_array_equal(back[:3, 1:], img[:3, 1:])  # what stayed in the field
    assert np.all(back[3:] == 0) and np.all(back[:, 0] == 0)


@pytest.mark.parametrize("shift", [(0.3, -0.2), (-0.45, 0.1)])
def test_gauss_newton_step_finds_a_small_shift(shift):
    rng = np.random.default_rng(0)
    img = ndi.gaussian_filter(np.pad(rng.random((24, 24)), 8), 2.0)
    moved = np.fft.ifft2(ndi.fourier_shift(np.fft.fft2(img), shift)).real
    est = ja.gauss_newton_shifts(img[None], moved[None])[0]
    np.testing.assert_allclose(est, shift, atol=0.03)


def test_bad_input_is_named():
    with pytest.raises(al.AlignmentError, match="must be equal"):
        ja.gauss_newton_shifts(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(al.AlignmentError, match="3 shifts for 2 images"):
        ja.move_integer(np.zeros((2, 4, 4)), np.zeros((3, 2)))
    with pytest.raises(al.AlignmentError, match="rounds"):
        ja.JointAlignParams(rounds=-1)
    with pytest.raises(al.AlignmentError, match="max_step_px"):
        ja.JointAlignParams(max_step_px=0.0)
    s = FusedSolver(8, 8, ["A"], [30.0], device="cpu")
    with pytest.raises(al.AlignmentError, match="needs HAADF"):
        ja.refine_jointly(s)
    with pytest.raises(ValueError, match="no HAADF model"):
        s.model_haadf()


@pytest.fixture(scope="module")
def shifted_series():
    """A 32^3 series whose images sit at known sub-pixel shifts (made by the projector's own
    shift model, HAADF noise 1 %, Poisson maps), and an estimate off by 0.5 px RMS."""
    sim = simulate("nanocubes", 32, SCHEME, seed=2)
    s = sim.series
    rng = np.random.default_rng(7)
    ang, cang = s.haadf_angles, s.common_chem_angles
    true = al.gauge_free(ang, rng.uniform(-2.0, 2.0, (ang.size, 2)))
    partner = np.array([int(np.argmin(np.abs(ang - a))) for a in cang])
    made = make_shifted(sim, true, 8)
    haadf, chem = made.haadf, made.chem
    start = true + rng.normal(0, 0.5 / np.sqrt(2), true.shape)
    return sim, haadf, chem, true, partner, start


def _solver(sim, haadf, chem, shifts, partner, chem_shifts=None):
    s = sim.series
    els = s.elements
    solver = FusedSolver(32, 32, els, [s.Z[e] for e in els], device="cpu",
                         background=[s.background[e] for e in els])
    h, fh = ja.prepare(haadf, shifts)
    solver.add_haadf(s.haadf_angles, h, shifts=fh)
    maps = {}
    for e in els:
        maps[e], fc = ja.prepare(chem[e], shifts[partner] if chem_shifts is None
                                 else chem_shifts, counts=True)
    solver.add_chem(s.common_chem_angles, maps, shifts=fc)
    return solver, ja.split_shifts(shifts)[0]


@pytest.mark.slow
def test_joint_refinement_recovers_sub_pixel_shifts(shifted_series):
    sim, haadf, chem, true, partner, start = shifted_series
    ang = sim.series.haadf_angles

    def err(sh):
        d = al.gauge_free(ang, sh) - al.gauge_free(ang, true)
        return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))

    # the spectrum images start 0.57 px off their HAADF image (an own drift to find)
    chem_start = start[partner] + np.array([0.4, -0.4])
    solver, whole = _solver(sim, haadf, chem, start, partner, chem_start)
    res = ja.refine_jointly(solver, ja.JointAlignParams(rounds=12, iterations=5,
                                                        warmup_iterations=20))
    refined = whole + res.haadf_shifts
    assert err(start) > 0.35
    assert err(refined) < 0.05, [h["update_rms_px"] for h in res.history]
    # chemical tilts (here without their own drift) move with the HAADF image taken at
    # their angle, and their own offsets are refined on the maps: they end closer to the
    # truth than they started (those without a HAADF image, at -30 and 30 degrees, too)
    cang = sim.series.common_chem_angles
    paired = np.isin(np.round(cang, 6), np.round(ang, 6))
    assert paired.tolist() == [True, False, True, False, True]
    whole_c = ja.split_shifts(chem_start)[0]
    chem_err = np.linalg.norm(whole_c + res.chem_shifts - true[partner], axis=1)
    chem_err0 = np.linalg.norm(chem_start - true[partner], axis=1)
    assert np.all(chem_err < 0.25), chem_err  # 32^3 Poisson maps: ~0.1 px per tilt
    assert np.sqrt(np.mean(chem_err**2)) < 0.5 * np.sqrt(np.mean(chem_err0**2))
    # the misfit fell
    assert res.history[-1]["misfit"] < 0.5 * res.history[0]["misfit"]
    # and a reconstruction with the refined shifts is as good as with the true ones (both
    # afresh, 60 iterations), where the starting shifts are clearly worse
    def error(shifts):
        fresh, _ = _solver(sim, haadf, chem, shifts, partner)
        fresh.run(60)
        return np.mean([nrmse(sim.truth[e], fresh.volumes()[e]) for e in sim.truth])

    e_ref = error(true)
    assert error(refined) < 1.03 * e_ref
    assert error(start) > 1.1 * e_ref


def test_without_chem_refinement_spectrum_images_follow_their_haadf_image(shifted_series):
    sim, haadf, chem, _true, partner, start = shifted_series
    solver, _ = _solver(sim, haadf, chem, start, partner)
    res = ja.refine_jointly(solver, ja.JointAlignParams(rounds=3, iterations=3,
                                                        warmup_iterations=10,
                                                        refine_chem=False))
    paired = np.isin(np.round(sim.series.common_chem_angles, 6),
                     np.round(sim.series.haadf_angles, 6))
    np.testing.assert_allclose(res.chem_shifts[paired], res.haadf_shifts[partner][paired],
                               atol=1e-9)
    np.testing.assert_allclose(res.chem_shifts[~paired],
                               ja.split_shifts(start[partner])[1][~paired], atol=1e-9)
    assert all(h["chem_update_rms_px"] == 0.0 for h in res.history)


def test_bad_shifts_leave_the_solver_as_it_was():
    s = FusedSolver(8, 8, ["A"], [30.0], device="cpu")
    s.add_haadf([0.0, 30.0], np.ones((2, 8, 8)), shifts=[[0.5, 0.0], [0.0, -0.5]])
    s.add_chem([0.0], {"A": np.ones((1, 8, 8))})
    with pytest.raises(GeometryError, match=r"shifts: shape \(1, 2\) != \(2, 2\)"):
        s.add_haadf([60.0, 70.0], np.ones((2, 8, 8)), shifts=[[0.0, 0.0]])
    assert s.n_haadf == 2 and s.haadf_data().shape == (2, 8, 8)
    # one bad argument: neither is set
    with pytest.raises(GeometryError, match="finite"):
        s.set_shifts(haadf=np.zeros((2, 2)), chem=[[np.nan, 0.0]])
    np.testing.assert_array_equal(s.haadf_proj.shifts, [[0.5, 0.0], [0.0, -0.5]])
    with pytest.raises(ValueError, match="no chemical model"):
        s.model_chem()


def test_chem_partners_and_crop_errors():
    nearest, same = ja.chem_partners([-30.0, 0.0, 30.0], [0.0, 20.0])
    assert nearest.tolist() == [1, 2] and same.tolist() == [True, False]
    sim = simulate("nanocubes", 16, SCHEME, seed=1)
    z = np.zeros((sim.series.haadf_angles.size, 2))
    with pytest.raises(al.AlignmentError, match=r"crop_px must be >= 0.*got 8"):
        aligned_solver(sim.series, z, z[:sim.series.common_chem_angles.size], 0.0, crop_px=8)
