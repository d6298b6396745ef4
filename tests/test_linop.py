"""The projector as a sigpy Linop, power-method Lipschitz constants, and the classic
iterative updates (SIRT, ML-EM) built on the same projector."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy as sp

from fusetomo.solver.backend import gpu_available
from fusetomo.solver.iterative import mlem_step, sirt_step, sirt_weights
from fusetomo.solver.linop import ProjectorLinop, max_eigenvalue, sirt_lipschitz
from fusetomo.solver.projector import ParallelProjector

requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")


def check_linop_adjoint(A: sp.linop.Linop, dtype: type = np.float32,
                        device: sp.Device | int = -1) -> None:
    """sigpy's adjoint check (sigpy/tests/test_linop.py): <A x, y> == <x, A^H y>."""
    device = sp.Device(device)
    x = sp.randn(A.ishape, dtype=dtype, device=device)
    y = sp.randn(A.oshape, dtype=dtype, device=device)
    xp = device.xp
    with device:
        lhs = xp.vdot(A * x, y)
        rhs = xp.vdot(x, A.H * y)
        xp.testing.assert_allclose(lhs, rhs, atol=1e-5, rtol=1e-5)


def check_linop_linear(A: sp.linop.Linop, dtype: type = np.float32,
                       device: sp.Device | int = -1) -> None:
    """sigpy's linearity check: A(a x + y) == a A x + A y."""
    device = sp.Device(device)
    a = float(np.random.default_rng(0).standard_normal())
    x = sp.randn(A.ishape, dtype=dtype, device=device)
    y = sp.randn(A.ishape, dtype=dtype, device=device)
    xp = device.xp
    with device:
        xp.testing.assert_allclose(A * (a * x + y), a * (A * x) + A * y, atol=1e-4, rtol=1e-4)


ANGLE_SETS = {
    "47-tilts": np.arange(-69.0, 70.0, 3.0),
    "10-tilts": np.linspace(-67.5, 67.5, 10),
    "one": [0.0],
    "two": [0.0, 90.0],
    "irregular": [-45.0, 10.0, 33.3],
    "full-half-circle": list(np.linspace(-90.0, 90.0, 7)),
}


# -- ProjectorLinop --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "n_det", "n_slices"), [(16, None, 1), (20, 25, 4), (12, 9, 3)])
def test_projector_linop_adjoint_and_linearity(dtype: type, n: int, n_det: int | None,
                                               n_slices: int) -> None:
    A = ProjectorLinop(ParallelProjector(n, [-50.0, -10.0, 35.0, 80.0], n_det=n_det),
                       n_slices)
    nd = n if n_det is None else n_det
    assert tuple(A.ishape) == (n_slices, n, n)
    assert tuple(A.oshape) == (4, n_slices, nd)
    assert A.H.H is A
    check_linop_adjoint(A, dtype=dtype)
    check_linop_adjoint(A.H, dtype=dtype)
    check_linop_linear(A, dtype=dtype)


def test_normal_operator_eigenvalue_matches_dense_norm() -> None:
    proj = ParallelProjector(20, [-30.0, 0.0, 40.0], n_det=25)
    A = ProjectorLinop(proj, 1)
    dense = proj.matrix.toarray().astype(np.float64)
    expected = np.linalg.norm(dense, 2) ** 2
    assert max_eigenvalue(A.H * A, iterations=60) == pytest.approx(expected, rel=1e-4)


# -- SIRT Lipschitz constant -----------------------------------------------------------------
@pytest.mark.parametrize("angles", list(ANGLE_SETS.values()), ids=list(ANGLE_SETS))
@pytest.mark.parametrize("n_det", [None, 37])
def test_sirt_lipschitz_is_about_one(angles: list[float], n_det: int | None) -> None:
    L = sirt_lipschitz(ParallelProjector(32, angles, n_det=n_det))
    assert 0.9 < L <= 1.05


def test_sirt_lipschitz_matches_dense_computation() -> None:
    proj = ParallelProjector(14, [-60.0, -5.0, 20.0, 75.0])
    M = proj.matrix.toarray().astype(np.float64)
    r, c = M.sum(axis=1), M.sum(axis=0)
    r_inv = np.where(r > 0, 1 / np.where(r > 0, r, 1), 0)
    c_isq = np.where(c > 0, 1 / np.sqrt(np.where(c > 0, c, 1)), 0)
    dense = np.linalg.norm(np.sqrt(r_inv)[:, None] * M * c_isq[None, :], 2) ** 2
    assert dense == pytest.approx(1.0, abs=1e-6)  # the SIRT scaling bound is tight
    assert sirt_lipschitz(proj, iterations=60) == pytest.approx(dense, abs=1e-3)


# -- SIRT and ML-EM updates ------------------------------------------------------------------
def _phantom(n: int, ns: int) -> np.ndarray:
    c = (n - 1) / 2
    u = np.arange(n) - c
    r = np.hypot(u[:, None], u[None, :])
    slice_ = (r < 0.35 * n) * 1.0 + (np.hypot(u[:, None] - 3, u[None, :]) < 0.12 * n) * 2.0
    return np.stack([slice_ * (1 + 0.1 * k) for k in range(ns)]).astype(np.float32)


def test_sirt_steps_reduce_the_weighted_residual() -> None:
    n = 24
    proj = ParallelProjector(n, np.linspace(-60.0, 60.0, 21))
    truth = _phantom(n, 3)
    b = proj.forward(truth)
    w = sirt_weights(proj)
    r_inv = w[0]
    x = np.zeros_like(truth)
    costs = []
    for _ in range(15):
        res = b - proj.forward(x)
        costs.append(float(np.sum(res * res * r_inv)))
        x = sirt_step(proj, x, b, w)
    assert np.all(np.diff(costs) < 0)
    assert costs[-1] < 0.05 * costs[0]
    assert np.all(x >= 0)


def test_mlem_step_conserves_counts_and_lowers_the_poisson_nll() -> None:
    """Unrelaxed ML-EM gives sum(A x_new) = sum(b) exactly (no background); relaxed steps
    decrease the Poisson negative log-likelihood."""
    n = 24
    proj = ParallelProjector(n, np.linspace(-60.0, 60.0, 9))
    truth = _phantom(n, 2) * 20
    rng = np.random.default_rng(0)
    b = rng.poisson(proj.forward(truth)).astype(np.float32)
    _, c_inv = sirt_weights(proj)
    x0 = np.ones_like(truth)
    x1 = mlem_step(proj, x0, b, c_inv, eps=0.0)
    assert float(proj.forward(x1.astype(np.float64)).sum()) == pytest.approx(float(b.sum()),
                                                                             rel=1e-4)

    bg = 0.5

    def nll(x: np.ndarray) -> float:
        ax = proj.forward(x).astype(np.float64) + bg
        return float(np.sum(ax - b * np.log(ax)))

    x = x0
    costs = [nll(x)]
    for _ in range(10):
        x = mlem_step(proj, x, b, c_inv, background=bg, relaxation=0.5)
        costs.append(nll(x))
        assert np.all(x >= 0)
    assert np.all(np.diff(costs) < 0)


# -- CPU vs GPU --------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_gpu
def test_gpu_linop_adjoint_and_lipschitz() -> None:
    angles = np.linspace(-70.0, 70.0, 15)
    gpu_proj = ParallelProjector(32, angles, device=0)
    check_linop_adjoint(ProjectorLinop(gpu_proj, 3), device=0)
    assert sirt_lipschitz(gpu_proj) == pytest.approx(
        sirt_lipschitz(ParallelProjector(32, angles)), rel=1e-3)
