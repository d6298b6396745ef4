"""ParallelProjector detector shifts: the measured image is the projection moved by (ds, dd)
pixels. Whole-pixel shifts are exact moves, fractions split linearly; the adjoint stays
exact; errors name the shape; CPU vs GPU."""

from __future__ import annotations

import numpy as np
import pytest

from fusetomo.solver.backend import gpu_available
from fusetomo.solver.projector import GeometryError, ParallelProjector, tilt_weights

requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
ANGLES = list(np.linspace(-60.0, 60.0, 7))


def _vol(lead: tuple[int, ...] = (), ns: int = 6, n: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((*lead, ns, n, n))


@pytest.mark.parametrize("lead", [(), (2,)])
@pytest.mark.parametrize("scale", [0.4, 3.0])
def test_adjoint_with_shifts(lead: tuple[int, ...], scale: float) -> None:
    proj = ParallelProjector(12, ANGLES, n_det=15)
    proj.set_shifts(np.random.default_rng(1).uniform(-scale, scale, (7, 2)))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((*lead, 6, 12, 12))
    y = rng.standard_normal((*lead, 7, 6, 15))
    lhs = np.vdot(proj.forward(x).astype(np.float64), y)
    rhs = np.vdot(x, proj.adjoint(y).astype(np.float64))
    assert abs(lhs - rhs) < 1e-5 * max(abs(lhs), abs(rhs))


@pytest.mark.parametrize("ds,dd", [(2.0, 0.0), (-3.0, 0.0), (0.0, 1.0), (1.0, -2.0)])
def test_whole_pixel_shifts_move_the_projection_exactly(ds: float, dd: float) -> None:
    v = _vol()
    plain = ParallelProjector(12, ANGLES).forward(v)
    moved = ParallelProjector(12, ANGLES)
    moved.set_shifts(np.tile([ds, dd], (7, 1)))
    out = moved.forward(v)
    expect = np.zeros_like(plain)
    k, j = int(ds), int(dd)
    ns, nd = plain.shape[-2:]
    expect[..., max(k, 0):ns + min(k, 0), max(j, 0):nd + min(j, 0)] = \
        plain[..., max(-k, 0):ns - max(k, 0), max(-j, 0):nd - max(j, 0)]
    if j == 0:
        np.testing.assert_allclose(out, expect, atol=1e-5)
    else:  # whole-pixel d shifts: interior bins are exact, edge bins lose what falls off
        np.testing.assert_allclose(out[..., 2:-2], expect[..., 2:-2], atol=1e-5)


def test_fractional_row_shift_is_the_linear_split() -> None:
    v = _vol()
    plain = ParallelProjector(12, ANGLES).forward(v)
    moved = ParallelProjector(12, ANGLES)
    moved.set_shifts(np.tile([0.3, 0.0], (7, 1)))
    out = moved.forward(v)
    # row s sees the projection at s - 0.3: 0.7 of row s and 0.3 of row s - 1
    np.testing.assert_allclose(out[:, 1:], 0.7 * plain[:, 1:] + 0.3 * plain[:, :-1], rtol=1e-5)
    np.testing.assert_allclose(out[:, 0], 0.7 * plain[:, 0], rtol=1e-5)


def test_fractional_detector_shift_moves_the_pixel_centre() -> None:
    w = tilt_weights(5, 0.0, 5, offset=0.25).toarray()
    # the centre pixel (2, 2) projects to d = 2.25: 0.75 in bin 2, 0.25 in bin 3
    col = w[:, 2 * 5 + 2]
    np.testing.assert_allclose(col, [0, 0, 0.75, 0.25, 0], atol=1e-6)


def test_extend_with_shifts_equals_set_shifts() -> None:
    sh = np.random.default_rng(3).uniform(-2, 2, (7, 2))
    a = ParallelProjector(12, ANGLES[:3], n_det=14)
    a.extend(ANGLES[3:])
    a.set_shifts(sh)
    b = ParallelProjector(12, n_det=14)
    b.extend(ANGLES[:4], sh[:4])
    b.extend(ANGLES[4:], sh[4:])
    np.testing.assert_array_equal(a.shifts, b.shifts)
    v = _vol()
    np.testing.assert_allclose(a.forward(v), b.forward(v), rtol=1e-6)
    # back to zero shifts gives the plain projector again
    a.set_shifts(np.zeros((7, 2)))
    np.testing.assert_allclose(a.forward(v), ParallelProjector(12, ANGLES, n_det=14).forward(v),
                               rtol=1e-6)


def test_shift_errors_name_the_problem() -> None:
    proj = ParallelProjector(8, ANGLES)
    with pytest.raises(GeometryError, match=r"shape \(6, 2\) != \(7, 2\)"):
        proj.set_shifts(np.zeros((6, 2)))
    with pytest.raises(GeometryError, match="finite"):
        proj.set_shifts(np.full((7, 2), np.nan))
    with pytest.raises(GeometryError, match=r"\(2, 2\)"):
        proj.extend([1.0, 2.0], np.zeros((3, 2)))
    assert proj.n_tilts == 7  # nothing was added


@pytest.mark.gpu
@requires_gpu
def test_shifted_gpu_matches_cpu() -> None:
    import cupy as cp

    sh = np.random.default_rng(4).uniform(-2.5, 2.5, (7, 2))
    cpu = ParallelProjector(16, ANGLES)
    gpu = ParallelProjector(16, ANGLES, device=0)
    cpu.set_shifts(sh)
    gpu.set_shifts(sh)
    x = _vol((2,), 5, 16).astype(np.float32)
    y = np.random.default_rng(5).random((2, 7, 5, 16)).astype(np.float32)
    with cp.cuda.Device(0):
        fx = cp.asnumpy(gpu.forward(cp.asarray(x)))
        ay = cp.asnumpy(gpu.adjoint(cp.asarray(y)))
    np.testing.assert_allclose(fx, cpu.forward(x), rtol=1e-4, atol=1e-4 * float(np.abs(fx).max()))
    np.testing.assert_allclose(ay, cpu.adjoint(y), rtol=1e-4, atol=1e-4 * float(np.abs(ay).max()))
