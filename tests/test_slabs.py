"""The slab-decomposed fused solver (solver/slabs.py) against the single-device solver.

Tolerance: the prox with halos does the same float32 arithmetic per voxel as tv.prox_tv,
so it must be bit-identical. The whole solver differs only in the summation order of its
global reductions (float64 sums of per-slab float32 partial sums instead of one float32
sum): about 1e-7 relative per reduction, measured to grow to ~1e-5 after 10 nonlinear
iterations; 1e-4 relative (of each element's maximum) leaves a 10x margin, while a missing
halo or a local instead of global reduction changes voxels by percents.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fusetomo.adapters.reconfile import read_recon
from fusetomo.adapters.seriesfile import write_series
from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.slabs import (
    SlabError,
    SlabFusedSolver,
    ThreadComm,
    global_percentile,
    prox_tv_slab,
    slab_bounds,
    tv_value_slab,
)
from fusetomo.solver.tv import prox_tv, tv_value

RTOL = 1e-4
ITERATIONS = 10


def run_ranks(size: int, fn: Callable[[ThreadComm], Any]) -> list[Any]:
    """Run fn on `size` thread ranks; re-raise the first error."""
    comms = ThreadComm.group(size)
    out: list[Any] = [None] * size
    errors: list[BaseException] = []

    def work(c: ThreadComm) -> None:
        try:
            out[c.rank] = fn(c)
        except BaseException as e:
            errors.append(e)
            c._hub.barrier.abort()  # release the other ranks

    threads = [threading.Thread(target=work, args=(c,)) for c in comms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


@pytest.fixture(scope="module")
def sim():
    scheme = TiltScheme(haadf_step=6.0, chem_step=20.0)
    return simulate("nanocubes", 16, scheme, seed=3)


@pytest.fixture(scope="module")
def reference(sim):
    s = sim.series
    els = s.elements
    solver = FusedSolver(16, 16, els, [s.Z[e] for e in els], FusionParams(gamma=s.gamma),
                         device="cpu", background=[s.background[e] for e in els])
    solver.add_haadf(s.haadf_angles, s.haadf)
    solver.add_chem(s.common_chem_angles, s.chem)
    solver.run(ITERATIONS)
    return solver


def test_slab_bounds_cover_every_slice_once():
    b = slab_bounds(11, 3)
    assert b == [(0, 4), (4, 8), (8, 11)]
    with pytest.raises(SlabError, match="3 slices among 4 ranks"):
        slab_bounds(3, 4)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_prox_with_halos_is_bit_identical(size):
    rng = np.random.default_rng(size)
    b = rng.random((2, 11, 9, 10)).astype(np.float32)
    w = np.array([0.3, 0.05], np.float32)
    ref = prox_tv(b, w, iterations=5)
    bounds = slab_bounds(11, size)
    parts = run_ranks(size, lambda c: prox_tv_slab(
        b[:, bounds[c.rank][0]:bounds[c.rank][1]], w, c, iterations=5))
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), ref)
    # The TV value: per-slab shares add up to the global value.
    tvs = run_ranks(size, lambda c: tv_value_slab(b[:, bounds[c.rank][0]:bounds[c.rank][1]],
                                                  c))
    np.testing.assert_allclose(np.sum(tvs, axis=0), tv_value(b), rtol=1e-5)


@pytest.mark.parametrize("q", [0.0, 50.0, 99.9, 100.0])
def test_distributed_percentile_matches_numpy(q):
    rng = np.random.default_rng(7)
    v = np.round(rng.gamma(2.0, size=2001), 2).astype(np.float32)  # with ties
    parts = run_ranks(3, lambda c: global_percentile(c, v[c.rank::3][: 500 + 100 * c.rank], q))
    sel = np.concatenate([v[r::3][: 500 + 100 * r] for r in range(3)])
    assert parts[0] == parts[1] == parts[2]
    assert parts[0] == pytest.approx(float(np.percentile(sel, q)), rel=1e-6)


def _slab_job(sim, comm):
    s = sim.series
    els = s.elements
    solver = SlabFusedSolver(16, 16, els, [s.Z[e] for e in els], FusionParams(gamma=s.gamma),
                             comm=comm, device="cpu",
                             background=[s.background[e] for e in els])
    solver.add_haadf(s.haadf_angles, s.haadf)
    solver.add_chem(s.common_chem_angles, s.chem)
    solver.run(ITERATIONS)
    return solver.gather_volumes(root=0), solver.history, solver.volumes()


def test_two_thread_ranks_match_single_device(sim, reference):
    out = run_ranks(2, lambda c: _slab_job(sim, c))
    vols, hist, _ = out[0]
    assert out[1][0] is None  # only the root gathers
    ref = reference.volumes()
    for e in ref:
        err = np.abs(vols[e] - ref[e]).max() / np.abs(ref[e]).max()
        assert err < RTOL, (e, err)
    # The slabs are the root's volumes cut at the decomposition.
    np.testing.assert_array_equal(out[1][2]["Co"], vols["Co"][8:])
    for name in ("haadf", "chem", "tv", "haadf_scale"):
        np.testing.assert_allclose(getattr(hist, name), getattr(reference.history, name),
                                   rtol=1e-5, err_msg=name)


def test_bad_input_names_the_problem(sim):
    s = sim.series
    with pytest.raises(SlabError, match="'sigpy'"):
        SlabFusedSolver(16, 16, ["Co"], [27], FusionParams(tv_backend="sigpy"),
                        comm=ThreadComm.group(1)[0], device="cpu")
    solver = SlabFusedSolver(16, 16, s.elements, [s.Z[e] for e in s.elements],
                             comm=ThreadComm.group(1)[0], device="cpu")
    with pytest.raises(SlabError, match="16 slices"):
        solver.add_haadf(s.haadf_angles, s.haadf[:, :8])


def _mpi_ready() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


@pytest.mark.skipif(not _mpi_ready(), reason="needs mpi4py and mpiexec")
def test_mpi_two_ranks_match_single_device(sim, reference, tmp_path):
    """`mpiexec -n 2 fusetomo reconstruct-slabs` (real MPI ranks, the shipped command)
    against the single-device solver on the same series."""
    series = write_series(tmp_path / "s.h5", sim.series, sim.truth)
    out = tmp_path / "r.h5"
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "fusetomo.cli",
           "reconstruct-slabs", str(series), "--out", str(out), "--iterations",
           str(ITERATIONS), "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "<NRMSE>" in res.stdout
    rec = read_recon(out)
    assert rec.attrs["ranks"] == 2
    ref = reference.volumes()
    for e in ref:
        err = np.abs(rec.volumes[e] - ref[e]).max() / np.abs(ref[e]).max()
        assert err < RTOL, (e, err)
