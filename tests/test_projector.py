"""ParallelProjector: the geometry contract of science.md §5, exact adjoint, mass
conservation, growth by `extend`, shape errors, and CPU vs GPU."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sigpy as sp
import sigpy.config

import fusetomo.solver.projector as projector_module
from fusetomo.solver.backend import (
    DeviceUnavailableError,
    gpu_available,
    resolve_device,
    to_numpy,
)
from fusetomo.solver.projector import GeometryError, ParallelProjector, tilt_weights

requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")

ANGLE_SETS = {
    "0-90": [0.0, 90.0],
    "oblique": [-70.0, -33.3, 12.5, 45.0, 89.9],
    "range": list(np.linspace(-60.0, 60.0, 13)),
    "negative-and-wide": [-90.0, -45.0, 135.0, 180.0],
}


def _dot_test(proj: ParallelProjector, lead: tuple[int, ...], ns: int, seed: int) -> float:
    """Relative mismatch of <A x, y> and <x, A^T y>, accumulated in float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, ns, proj.n, proj.n))
    y = rng.standard_normal((*lead, proj.n_tilts, ns, proj.n_det))
    lhs = np.vdot(proj.forward(x).astype(np.float64), y)
    rhs = np.vdot(x, proj.adjoint(y).astype(np.float64))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs))


def _centred_blob(ns: int, n: int, radius: float) -> np.ndarray:
    c = (n - 1) / 2.0
    u = np.arange(n) - c
    r2 = (u[:, None] ** 2 + u[None, :] ** 2) / radius**2
    profile = np.exp(-r2) * (r2 < 1.0)
    s = np.linspace(0.5, 1.5, ns)
    return (s[:, None, None] * profile[None]).astype(np.float64)


# -- geometry contract ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [7, 16])
def test_zero_and_ninety_degrees_are_axis_sums(n: int) -> None:
    rng = np.random.default_rng(1)
    vol = rng.random((5, n, n))
    out = ParallelProjector(n, [0.0, 90.0]).forward(vol)
    assert out.shape == (2, 5, n)
    np.testing.assert_allclose(out[0], vol.sum(axis=2), rtol=1e-6, atol=1e-10)  # sum over v
    np.testing.assert_allclose(out[1], vol.sum(axis=1), rtol=1e-6, atol=1e-10)  # sum over u


def test_zero_degrees_with_a_wider_detector_is_centred() -> None:
    n, nd = 10, 14  # detector centre (nd-1)/2 = 6.5 sits 2 bins right of the slice centre 4.5
    vol = np.random.default_rng(2).random((3, n, n))
    out = ParallelProjector(n, [0.0], n_det=nd).forward(vol)[0]
    np.testing.assert_allclose(out[:, 2:-2], vol.sum(axis=2), rtol=1e-6)
    assert np.all(out[:, :2] == 0) and np.all(out[:, -2:] == 0)


@pytest.mark.parametrize("angle", [17.0, 30.0, -52.5, 121.0])
@pytest.mark.parametrize(("u", "v"), [(3, 11), (12, 5), (8, 8)])
def test_single_voxel_lands_at_u_cos_plus_v_sin(angle: float, u: int, v: int) -> None:
    """Linear interpolation keeps the first moment: the projected centroid of one voxel is
    d = (u - c) cos t + (v - c) sin t + c_det exactly (this pins the sign convention)."""
    n, nd = 16, 21
    vol = np.zeros((1, n, n))
    vol[0, u, v] = 1.0
    p = ParallelProjector(n, [angle], n_det=nd).forward(vol)[0, 0]
    t = np.deg2rad(angle)
    expected = (u - (n - 1) / 2) * np.cos(t) + (v - (n - 1) / 2) * np.sin(t) + (nd - 1) / 2
    assert p.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.sum(np.arange(nd) * p) == pytest.approx(expected, abs=1e-5)


# -- adjoint ---------------------------------------------------------------------------------
@pytest.mark.parametrize("angles", list(ANGLE_SETS.values()), ids=list(ANGLE_SETS))
@pytest.mark.parametrize("n_det", [None, 23, 11])
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["plain", "batch3", "batch2x3"])
def test_adjoint_dot_product(angles: list[float], n_det: int | None, lead: tuple) -> None:
    proj = ParallelProjector(16, angles, n_det=n_det)
    assert _dot_test(proj, lead, ns=5, seed=len(lead) + (n_det or 0)) <= 1e-5


def test_adjoint_is_the_matrix_transpose() -> None:
    proj = ParallelProjector(9, [-40.0, 10.0, 77.0], n_det=12)
    dense = proj.matrix.toarray().astype(np.float64)
    rng = np.random.default_rng(3)
    y = rng.standard_normal((proj.n_tilts, 1, proj.n_det))
    back = proj.adjoint(y)[0].ravel()
    np.testing.assert_allclose(back, dense.T @ y[:, 0, :].ravel(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("lead", [(3,), (2, 3)])
def test_batched_leading_axes_equal_item_by_item(lead: tuple[int, ...]) -> None:
    proj = ParallelProjector(12, [-30.0, 0.0, 25.0, 60.0], n_det=15)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((*lead, 4, 12, 12)).astype(np.float32)
    y = rng.standard_normal((*lead, 4, 4, 15)).astype(np.float32)
    fx, ay = proj.forward(x), proj.adjoint(y)
    assert fx.shape == (*lead, 4, 4, 15) and ay.shape == (*lead, 4, 12, 12)
    for idx in np.ndindex(*lead):
        np.testing.assert_allclose(fx[idx], proj.forward(x[idx]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ay[idx], proj.adjoint(y[idx]), rtol=1e-6, atol=1e-6)


# -- mass conservation and SIRT sums ----------------------------------------------------------
@pytest.mark.parametrize("angle", [13.0, 37.0, 45.0, -61.7, 89.0, 150.0])
def test_mass_conservation_for_a_centred_blob(angle: float) -> None:
    n, ns = 24, 4
    vol = _centred_blob(ns, n, radius=0.4 * n)
    p = ParallelProjector(n, [angle]).forward(vol)[0]
    np.testing.assert_allclose(p.sum(axis=-1), vol.sum(axis=(1, 2)), rtol=1e-5)


def test_row_and_column_sums() -> None:
    n, angles = 16, [-50.0, 0.0, 33.0, 90.0]
    proj = ParallelProjector(n, angles)
    rows = to_numpy(proj.row_sums())
    cols = to_numpy(proj.col_sums())
    assert rows.shape == (4, 1, n) and cols.shape == (n, n)
    np.testing.assert_allclose(rows, proj.forward(np.ones((1, n, n))), rtol=1e-6)
    np.testing.assert_allclose(cols, proj.adjoint(np.ones((4, 1, n)))[0], rtol=1e-6)
    np.testing.assert_allclose(rows[1, 0], n)  # 0 degrees: each bin sums one row of n pixels
    # Every pixel of the inscribed disc gives weight 1 to each tilt.
    u = np.arange(n) - (n - 1) / 2
    inside = np.hypot(u[:, None], u[None, :]) < n / 2 - 1
    np.testing.assert_allclose(cols[inside], len(angles), rtol=1e-6)


# -- extend ----------------------------------------------------------------------------------
def test_extend_matches_building_all_angles_at_once() -> None:
    n, nd = 14, 17
    first, more, last = [-60.0, -20.0], [5.0, 40.0], [71.5]
    grown = ParallelProjector(n, first, n_det=nd)
    grown.extend(more)
    grown.extend(last[0])  # a scalar angle is accepted too
    grown.extend([])  # no-op
    whole = ParallelProjector(n, first + more + last, n_det=nd)
    np.testing.assert_array_equal(grown.angles, whole.angles)
    assert grown.n_tilts == 5
    diff = grown.matrix - whole.matrix
    assert diff.nnz == 0 or np.abs(diff.data).max() == 0
    np.testing.assert_allclose(to_numpy(grown.col_sums()), to_numpy(whole.col_sums()),
                               rtol=1e-6)


def test_extend_computes_weights_for_new_angles_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    original = projector_module.tilt_weights

    def counting(n: int, angle_deg: float, n_det: int | None = None,  # type: ignore[no-untyped-def]
                 offset: float = 0.0):
        calls.append(float(angle_deg))
        return original(n, angle_deg, n_det, offset)

    monkeypatch.setattr(projector_module, "tilt_weights", counting)
    proj = ParallelProjector(10, [-45.0, 0.0])
    assert calls == [-45.0, 0.0]
    calls.clear()
    proj.extend([30.0, 60.0])
    assert calls == [30.0, 60.0]
    calls.clear()
    proj.forward(np.ones((2, 10, 10)))
    proj.adjoint(np.ones((4, 2, 10)))
    proj.row_sums()
    proj.col_sums()
    assert calls == []


def test_tilt_weights_shape_and_rows() -> None:
    w = tilt_weights(8, 30.0, 11)
    assert w.shape == (11, 64)
    # each pixel's weights sum to 1 (all pixels of an 8x8 slice land on an 11-bin detector)
    np.testing.assert_allclose(np.asarray(w.sum(axis=0)).ravel(), 1.0, rtol=1e-6)


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 10, 11), (10, 10), (2, 3, 9, 9)])
def test_forward_shape_error_names_the_shape(shape: tuple[int, ...]) -> None:
    proj = ParallelProjector(10, [0.0, 30.0])
    with pytest.raises(GeometryError, match=re.escape(str(shape))):
        proj.forward(np.zeros(shape))


@pytest.mark.parametrize("shape", [(3, 4, 10), (2, 4, 11), (4, 10), (2, 3, 4, 9)])
def test_adjoint_shape_error_names_the_shape(shape: tuple[int, ...]) -> None:
    proj = ParallelProjector(10, [0.0, 30.0])
    with pytest.raises(GeometryError, match=re.escape(str(shape))):
        proj.adjoint(np.zeros(shape))


def test_geometry_errors() -> None:
    with pytest.raises(GeometryError, match="at least 2"):
        ParallelProjector(1, [0.0])
    empty = ParallelProjector(8)
    assert empty.n_tilts == 0
    with pytest.raises(GeometryError, match="no tilt angles"):
        empty.forward(np.zeros((1, 8, 8)))
    with pytest.raises(GeometryError, match="finite"):
        empty.extend([0.0, float("nan")])
    assert empty.n_tilts == 0  # nothing was appended
    assert issubclass(GeometryError, ValueError)


# -- devices --------------------------------------------------------------------------------
def test_resolve_device() -> None:
    assert resolve_device("cpu") == sp.cpu_device
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")
    if gpu_available():
        assert resolve_device("gpu") == sp.Device(0)
        assert resolve_device("auto") == sp.Device(0)
    else:
        with pytest.raises(DeviceUnavailableError, match="--device cpu"):
            resolve_device("gpu")
        assert resolve_device("auto") == sp.cpu_device


def test_no_gpu_without_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sigpy.config, "cupy_enabled", False)
    assert gpu_available() is False
    assert resolve_device("auto") == sp.cpu_device
    with pytest.raises(DeviceUnavailableError):
        resolve_device("gpu")


# -- CPU vs GPU ------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("n_det", [None, 37])
@pytest.mark.parametrize("lead", [(), (3,)])
def test_gpu_matches_cpu(n_det: int | None, lead: tuple[int, ...]) -> None:
    """Forward and adjoint on the GPU agree with the CPU to rtol 1e-4 (float32 sums in a
    different order), relative to each result's largest value."""
    pytest.importorskip("cupy")
    import cupy as cp

    angles = list(np.linspace(-70.0, 70.0, 15))
    cpu = ParallelProjector(32, angles, n_det=n_det)
    gpu_proj = ParallelProjector(32, angles, n_det=n_det, device=0)
    rng = np.random.default_rng(5)
    x = rng.random((*lead, 6, 32, 32)).astype(np.float32)
    y = rng.random((*lead, 15, 6, cpu.n_det)).astype(np.float32)
    with cp.cuda.Device(0):
        fx = cp.asnumpy(gpu_proj.forward(cp.asarray(x)))
        ay = cp.asnumpy(gpu_proj.adjoint(cp.asarray(y)))
    ref_f, ref_a = cpu.forward(x), cpu.adjoint(y)
    np.testing.assert_allclose(fx, ref_f, rtol=1e-4, atol=1e-4 * float(np.abs(ref_f).max()))
    np.testing.assert_allclose(ay, ref_a, rtol=1e-4, atol=1e-4 * float(np.abs(ref_a).max()))
    np.testing.assert_allclose(to_numpy(gpu_proj.col_sums()), to_numpy(cpu.col_sums()),
                               rtol=1e-4)
