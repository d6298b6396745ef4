"""Isotropic 3D TV: gradient/divergence adjointness, known TV values, and the FGP proximal
step (both finite-difference back ends, per-element weights, denoising, CPU vs GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from fusetomo.solver.backend import gpu_available
from fusetomo.solver.tv import divergence, gradient, prox_tv, tv_value

requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")

BACKENDS = ["slices", "sigpy"]


def _cube(n: int = 24) -> np.ndarray:
    """Piecewise-constant phantom with a zero border of 4 voxels."""
    clean = np.zeros((n, n, n), np.float32)
    clean[7:17, 7:17, 7:17] = 1.0
    clean[9:14, 10:15, 9:13] = 2.0
    return clean


def _noisy_cube(n: int = 24, sigma: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean = _cube(n)
    rng = np.random.default_rng(seed)
    noisy = (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)
    return clean, noisy


def _objective(x: np.ndarray, b: np.ndarray, w: float) -> float:
    d = (x - b).astype(np.float64)
    return 0.5 * float(np.sum(d * d)) + w * float(tv_value(x.astype(np.float64)))


def _flip3(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[..., ::-1, ::-1, ::-1])


# -- gradient, divergence, value --------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 7, 8), (2, 6, 7, 8), (2, 3, 4, 5, 3), (1, 6, 7),
                                   (2, 1, 5, 6), (6, 1, 1)])
def test_divergence_is_minus_adjoint_of_gradient(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    p = rng.standard_normal((3, *shape))
    g = gradient(x)
    assert g.shape == (3, *shape)
    lhs = np.vdot(g, p)
    rhs = -np.vdot(x, divergence(p))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)


def test_gradient_is_forward_difference_with_zero_far_boundary() -> None:
    x = np.random.default_rng(1).standard_normal((4, 5, 6))
    g = gradient(x)
    np.testing.assert_allclose(g[0, :-1], np.diff(x, axis=0))
    np.testing.assert_allclose(g[1, :, :-1], np.diff(x, axis=1))
    np.testing.assert_allclose(g[2, :, :, :-1], np.diff(x, axis=2))
    assert np.all(g[0, -1] == 0) and np.all(g[1, :, -1] == 0) and np.all(g[2, :, :, -1] == 0)
    assert np.all(gradient(np.full((3, 4, 5), 2.5)) == 0)


def test_tv_value_known_answers() -> None:
    step = np.zeros((2, 8, 5, 6))
    step[0, 4:] = 1.0  # one unit jump along s in each of the 5 x 6 columns
    step[1, :, 2:] = 3.0  # one jump of 3 along u in each of the 8 x 6 columns
    tv = tv_value(step)
    assert tv.shape == (2,)
    np.testing.assert_allclose(tv, [5 * 6, 3 * 8 * 6])
    assert float(tv_value(np.ones((4, 4, 4)))) == 0.0


# -- prox: basic properties ------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_prox_reduces_tv_and_stays_close(backend: str) -> None:
    rng = np.random.default_rng(2)
    b = rng.random((12, 13, 14)).astype(np.float32)  # >= 0, so b is feasible
    w = 0.05
    x = prox_tv(b, w, iterations=10, backend=backend)
    assert x.shape == b.shape and x.dtype == b.dtype
    assert np.all(x >= 0)
    assert float(tv_value(x)) < 0.7 * float(tv_value(b))  # measured 0.58
    # x = max(b + w div p, 0) with |p| <= 1 at every voxel; div p at a voxel is
    # sum_a p_a(here) - sum_a p_a(neighbour a), at most sqrt(3) + 3 in size.
    assert np.abs(x - b).max() <= (np.sqrt(3) + 3) * w + 1e-5
    assert _objective(x, b, w) < _objective(b, b, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_fgp_iterations_lower_the_objective(backend: str) -> None:
    _, b = _noisy_cube(16, seed=3)
    b = np.maximum(b, 0)
    w = 0.1
    f5 = _objective(prox_tv(b, w, iterations=5, backend=backend), b, w)
    f50 = _objective(prox_tv(b, w, iterations=50, backend=backend), b, w)
    assert f50 <= f5 * (1 + 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_returns_clipped_input(backend: str) -> None:
    b = np.random.default_rng(4).standard_normal((5, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(prox_tv(b, 0.0, backend=backend), np.maximum(b, 0))
    np.testing.assert_array_equal(prox_tv(b, 0.1, iterations=0, backend=backend),
                                  np.maximum(b, 0))
    out = prox_tv(b, 0.0, nonnegative=False, backend=backend)
    np.testing.assert_array_equal(out, b)
    assert out is not b  # a copy, so callers may update it in place


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonnegative_false_allows_negative_values(backend: str) -> None:
    b = np.random.default_rng(5).standard_normal((6, 6, 6)).astype(np.float32) - 1.0
    assert prox_tv(b, 0.05, nonnegative=False, backend=backend).min() < 0
    assert prox_tv(b, 0.05, nonnegative=True, backend=backend).min() >= 0


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="'fft'"):
        prox_tv(np.ones((3, 3, 3), np.float32), 0.1, backend="fft")  # type: ignore[arg-type]


# -- prox: per-element weights -----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_per_element_weights_broadcast(backend: str) -> None:
    rng = np.random.default_rng(6)
    b = rng.random((3, 10, 11, 12)).astype(np.float32)
    weights = np.array([0.0, 0.03, 0.2], dtype=np.float32)
    out = prox_tv(b, weights, iterations=8, backend=backend)
    assert out.shape == b.shape
    np.testing.assert_array_equal(out[0], np.maximum(b[0], 0))  # weight 0: untouched
    for i in (1, 2):
        single = prox_tv(b[i], float(weights[i]), iterations=8, backend=backend)
        np.testing.assert_allclose(out[i], single, rtol=1e-5, atol=1e-6)
    # Same weight for all elements given as a scalar or as a vector: same result.
    np.testing.assert_allclose(prox_tv(b, 0.05, backend=backend),
                               prox_tv(b, np.full(3, 0.05), backend=backend), rtol=1e-6)


# -- prox: the two back ends --------------------------------------------------------------------
def test_backends_are_mirror_images_on_a_zero_border_volume() -> None:
    """'slices' uses forward differences (Neumann), 'sigpy' backward differences (circular).
    With a zero border wide enough that FGP's 5 iterations do not reach it, the boundary
    rule does not matter and sigpy's prox is the slices prox of the volume mirrored on all
    three axes (forward differences of the mirror are backward differences)."""
    _, b = _noisy_cube(24, sigma=0.2, seed=7)
    mask = np.zeros_like(b)
    mask[4:-4, 4:-4, 4:-4] = 1.0
    b = np.maximum(b * mask, 0)
    sig = prox_tv(b, 0.1, iterations=5, backend="sigpy")
    mirrored = _flip3(prox_tv(_flip3(b), 0.1, iterations=5, backend="slices"))
    np.testing.assert_allclose(sig, mirrored, rtol=0, atol=1e-4)


def test_backends_agree_to_stated_tolerance_on_a_zero_border_volume() -> None:
    """Unmirrored, the two discretisations of isotropic TV differ in the interior too (they
    couple the three differences at neighbouring voxels), by a few percent on a noisy cube:
    relative L2 difference <= 8 %, TV values within 5 %, and the same denoising quality."""
    clean, noisy = _noisy_cube(24, sigma=0.3, seed=8)
    mask = np.zeros_like(noisy)
    mask[4:-4, 4:-4, 4:-4] = 1.0
    b = np.maximum(noisy * mask, 0)
    a = prox_tv(b, 0.1, iterations=5, backend="slices")
    s = prox_tv(b, 0.1, iterations=5, backend="sigpy")
    assert np.linalg.norm(a - s) / np.linalg.norm(a) <= 0.08
    assert float(tv_value(s)) == pytest.approx(float(tv_value(a)), rel=0.05)
    err_a = np.linalg.norm(a - clean) / np.linalg.norm(clean)
    err_s = np.linalg.norm(s - clean) / np.linalg.norm(clean)
    assert err_s == pytest.approx(err_a, rel=0.1)


# -- prox: denoising known answer ---------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_prox_denoises_a_piecewise_constant_cube(backend: str) -> None:
    clean, noisy = _noisy_cube(24, sigma=0.3, seed=9)
    out = prox_tv(noisy, 0.1, iterations=20, backend=backend)
    err_noisy = np.linalg.norm(noisy - clean) / np.linalg.norm(clean)
    err_out = np.linalg.norm(out - clean) / np.linalg.norm(clean)
    assert err_noisy > 0.7
    assert err_out < 0.4 * err_noisy


# -- CPU vs GPU ----------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_matches_cpu(backend: str) -> None:
    """FGP on CuPy arrays agrees with NumPy to rtol 1e-4 of the result's peak."""
    import cupy as cp

    _, noisy = _noisy_cube(24, seed=10)
    b = np.stack([noisy, np.maximum(noisy, 0) * 0.5])
    weights = np.array([0.1, 0.02], np.float32)
    ref = prox_tv(b, weights, iterations=5, backend=backend)
    with cp.cuda.Device(0):
        got = cp.asnumpy(prox_tv(cp.asarray(b), cp.asarray(weights), iterations=5,
                                 backend=backend))
        g = cp.asnumpy(gradient(cp.asarray(noisy)))
        tv_gpu = float(tv_value(cp.asarray(noisy)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    np.testing.assert_allclose(g, gradient(noisy), rtol=1e-5, atol=1e-6)
    assert tv_gpu == pytest.approx(float(tv_value(noisy)), rel=1e-4)
