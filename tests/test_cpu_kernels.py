"""The multithreaded CPU kernels (solver/cpu_kernels.py) against the NumPy/scipy path they
replace, and the thread-count setting (solver/backend.py).

Tolerance: each kernel does the float32 arithmetic of the path it replaces in the same order
per output value, so projector and prox results are bit-identical here (measured); the tests
allow float32 rounding (rtol 1e-6 of the peak) so that a compiler contracting a multiply-add
into an FMA would not fail them. The TV value sums in float64 instead of NumPy's pairwise
float32 sum: rtol 1e-5. The fused solver after 3 iterations: 1e-4 of each element's peak.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import pytest

from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.solver import backend, cpu_kernels
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.projector import ParallelProjector
from fusetomo.solver.slabs import ThreadComm, prox_tv_slab, slab_bounds
from fusetomo.solver.tv import prox_tv, tv_value

pytestmark = pytest.mark.skipif(not cpu_kernels.enabled(),
                                reason=f"numba kernels unavailable: "
                                       f"{cpu_kernels.disabled_reason()}")


@pytest.fixture(autouse=True)
def _restore_threads():
    before = backend.threads()
    yield
    backend.set_threads(before)


def both_paths(monkeypatch: pytest.MonkeyPatch, fn: Any) -> tuple[Any, Any]:
    """fn() on the NumPy/scipy path, then on the kernels."""
    monkeypatch.setenv("FUSETOMO_CPU_KERNELS", "numpy")
    assert not cpu_kernels.enabled()
    ref = fn()
    monkeypatch.setenv("FUSETOMO_CPU_KERNELS", "numba")
    assert cpu_kernels.enabled()
    return ref, fn()


def assert_close(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-6) -> None:
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * float(np.abs(ref).max()))


# -- projector -----------------------------------------------------------------------------
@pytest.mark.parametrize("n_det", [None, 23, 11])
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["plain", "batch3", "batch2x3"])
@pytest.mark.parametrize("threads", [1, 2])
def test_projector_kernels_equal_scipy(monkeypatch, n_det, lead, threads) -> None:
    backend.set_threads(threads)
    proj = ParallelProjector(16, [-70.0, -33.3, 0.0, 12.5, 45.0, 90.0], n_det=n_det)
    rng = np.random.default_rng(len(lead) + threads)
    x = rng.standard_normal((*lead, 5, 16, 16)).astype(np.float32)
    y = rng.standard_normal((*lead, 6, 5, proj.n_det)).astype(np.float32)
    ref, got = both_paths(monkeypatch, lambda: (proj.forward(x), proj.adjoint(y)))
    assert_close(got[0], ref[0])
    assert_close(got[1], ref[1])


def test_projector_kernels_with_shifts_and_float64(monkeypatch) -> None:
    """Detector shifts (ds moves rows after the kernel, dd is in the weights) and a float64
    input (the product is float64, as scipy's) take the kernels too."""
    proj = ParallelProjector(12, [-40.0, 10.0, 77.0], n_det=15)
    proj.set_shifts([[0.4, -1.3], [-2.2, 0.7], [1.0, 0.0]])
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 7, 12, 12))
    y = rng.standard_normal((2, 3, 7, 15)).astype(np.float32)
    ref, got = both_paths(monkeypatch, lambda: (proj.forward(x), proj.adjoint(y)))
    assert got[0].dtype == np.float64
    assert_close(got[0], ref[0])
    assert_close(got[1], ref[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_adjoint_dot_product_with_kernels(threads: int) -> None:
    backend.set_threads(threads)
    proj = ParallelProjector(20, list(np.linspace(-60.0, 60.0, 9)), n_det=25)
    rng = np.random.default_rng(threads)
    x = rng.standard_normal((3, 6, 20, 20)).astype(np.float32)
    y = rng.standard_normal((3, 9, 6, 25)).astype(np.float32)
    lhs = np.vdot(proj.forward(x).astype(np.float64), y)
    rhs = np.vdot(x, proj.adjoint(y).astype(np.float64))
    assert abs(lhs - rhs) / max(abs(lhs), abs(rhs)) <= 1e-5


def test_transpose_is_rebuilt_when_tilts_change() -> None:
    proj = ParallelProjector(10, [0.0, 30.0])
    y = np.ones((2, 3, 10), np.float32)
    proj.adjoint(y)
    first = proj._transpose()
    proj.extend([60.0])
    assert proj._transpose() is not first
    back = proj.adjoint(np.ones((3, 3, 10), np.float32))
    np.testing.assert_allclose(back[0], proj.col_sums(), rtol=1e-6)


def test_numpy_path_does_not_call_the_kernels(monkeypatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("kernel called")

    monkeypatch.setenv("FUSETOMO_CPU_KERNELS", "numpy")
    for name in ("forward", "adjoint", "fgp", "tv_value"):
        monkeypatch.setattr(cpu_kernels, name, boom)
    proj = ParallelProjector(8, [0.0, 45.0])
    proj.adjoint(proj.forward(np.ones((2, 8, 8), np.float32)))
    prox_tv(np.ones((2, 8, 8), np.float32), 0.1)
    tv_value(np.ones((2, 8, 8), np.float32))


# -- TV ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nonnegative", [True, False])
def test_prox_kernel_equals_numpy(monkeypatch, dtype, nonnegative) -> None:
    rng = np.random.default_rng(3)
    b = (rng.standard_normal((3, 10, 11, 12)) + 0.3).astype(dtype)
    w = np.array([0.0, 0.05, 0.2], np.float32)
    ref, got = both_paths(monkeypatch, lambda: prox_tv(b, w, iterations=7,
                                                        nonnegative=nonnegative))
    assert_close(got, ref)
    ref, got = both_paths(monkeypatch, lambda: prox_tv(b[1], 0.1, iterations=3,
                                                        nonnegative=nonnegative))
    assert_close(got, ref)


@pytest.mark.parametrize("shape", [(2, 3, 1, 6, 7), (1, 6, 7), (6, 1, 1), (4, 5, 6)])
def test_prox_and_tv_value_on_thin_and_batched_shapes(monkeypatch, shape) -> None:
    b = np.random.default_rng(4).random(shape).astype(np.float32)
    ref, got = both_paths(monkeypatch, lambda: prox_tv(b, 0.1, iterations=4))
    assert_close(got, ref)
    ref, got = both_paths(monkeypatch, lambda: tv_value(b))
    assert_close(np.asarray(got), np.asarray(ref), rtol=1e-5)


@pytest.mark.parametrize("size", [2, 3])
def test_slab_prox_with_halo_hooks_equals_numpy(monkeypatch, size) -> None:
    """The Halo hooks of tv.fgp (solver/slabs.py) run between the kernels' passes: thread
    ranks calling the kernels at once give the NumPy path's global prox."""
    rng = np.random.default_rng(size)
    b = rng.random((2, 11, 9, 10)).astype(np.float32)
    w = np.array([0.3, 0.05], np.float32)
    bounds = slab_bounds(11, size)

    def slabs() -> np.ndarray:
        comms = ThreadComm.group(size)
        out: list[Any] = [None] * size

        def work(c: ThreadComm) -> None:
            a, z = bounds[c.rank]
            out[c.rank] = prox_tv_slab(b[:, a:z], w, c, iterations=5)

        ts = [threading.Thread(target=work, args=(c,)) for c in comms]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return np.concatenate(out, axis=1)

    ref, got = both_paths(monkeypatch, lambda: prox_tv(b, w, iterations=5))
    assert_close(got, ref)
    assert_close(slabs(), ref)


# -- the fused solver ----------------------------------------------------------------------
def test_fused_solver_equal_on_both_paths(monkeypatch) -> None:
    sim = simulate("nanocubes", 20, TiltScheme(haadf_step=6.0, chem_step=20.0), seed=1)
    s = sim.series

    def run() -> dict[str, np.ndarray]:
        solver = FusedSolver(20, 20, s.elements, [s.Z[e] for e in s.elements],
                             FusionParams(gamma=s.gamma), device="cpu",
                             background=[s.background[e] for e in s.elements])
        solver.add_haadf(s.haadf_angles, s.haadf)
        solver.add_chem(s.common_chem_angles, s.chem)
        solver.run(3)
        return solver.volumes()

    ref, got = both_paths(monkeypatch, run)
    for e, v in ref.items():
        np.testing.assert_allclose(got[e], v, rtol=1e-4, atol=1e-4 * float(v.max()))


# -- threads -------------------------------------------------------------------------------
def test_set_threads_and_environment(monkeypatch) -> None:
    assert backend.set_threads(1) == 1 and backend.threads() == 1
    assert backend.set_threads(3) == 3
    monkeypatch.setenv(backend.THREADS_ENV, "2")
    assert backend.set_threads(None) == 2
    assert backend.set_threads(0) == 2  # 0: the environment, then all cores
    monkeypatch.delenv(backend.THREADS_ENV)
    assert backend.set_threads(0) == backend.available_cores()
    monkeypatch.setenv(backend.THREADS_ENV, "two")
    with pytest.raises(ValueError, match=r"FUSETOMO_THREADS.*'two'"):
        backend.set_threads(None)
    with pytest.raises(ValueError, match=">= 0"):
        backend.set_threads(-1)
    assert backend.available_cores() == len(os.sched_getaffinity(0))


# -- --threads on the command line ---------------------------------------------------------
COMPUTING_COMMANDS = [
    ["simulate", "--size", "8", "--out", "x.h5"],
    ["reconstruct", "s.h5", "--out", "r.h5"],
    ["offline-demo"],
    ["demo"],
    ["control", "--instrument", "tcp://127.0.0.1:1", "--record", "r.h5"],
    ["replay", "s.h5"],
    ["instrument-sim"],
    ["reconstruct-slabs", "s.h5", "--out", "r.h5"],
    ["align", "s.h5", "--out", "a.h5"],
]


@pytest.mark.parametrize("argv", COMPUTING_COMMANDS, ids=lambda a: a[0])
def test_threads_option_on_every_computing_command(argv: list[str]) -> None:
    from fusetomo.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(argv).threads is None
    assert parser.parse_args([*argv, "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--threads", "-1"])


def test_main_applies_threads_and_names_a_bad_environment(monkeypatch, tmp_path, capsys):
    from fusetomo.cli import main

    out = tmp_path / "s.h5"
    assert main(["simulate", "--size", "8", "--out", str(out), "--threads", "1"]) == 0
    assert backend.threads() == 1
    monkeypatch.setenv(backend.THREADS_ENV, "many")
    assert main(["inspect", str(out)]) == 2
    assert "FUSETOMO_THREADS: not a whole number: 'many'" in capsys.readouterr().err
    monkeypatch.setenv(backend.THREADS_ENV, "2")
    assert main(["inspect", str(out)]) == 0
    assert backend.threads() == 2


def test_other_dtypes_take_the_numpy_path_or_are_cast_as_scipy_does(monkeypatch) -> None:
    proj = ParallelProjector(8, [0.0, 30.0])
    ints = np.arange(2 * 64).reshape(2, 8, 8)
    ref, got = both_paths(monkeypatch, lambda: proj.forward(ints))
    assert_close(got, ref)  # float64, as scipy's float32 matrix @ int64 gives
    half = np.random.default_rng(1).random((2, 6, 7)).astype(np.float16)
    ref, got = both_paths(monkeypatch, lambda: prox_tv(half, 0.1, iterations=3))
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, ref)  # float16: the NumPy path itself
