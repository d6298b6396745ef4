"""Standard errors and bias by re-solving perturbed data (solver/resample.py): the twin
solver is faithful (the same data give the same volumes, nuisances estimated alike), and
the standard errors agree with a Monte Carlo over noise realisations of the same
specimen with its nuisances unstated (the estimator's own scatter)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from fusetomo.controller.series_model import solver_for_series
from fusetomo.simulators.forward import AcquisitionParams, TiltScheme, simulate
from fusetomo.simulators.specimens import make_specimen
from fusetomo.solver.backend import to_numpy
from fusetomo.solver.fusion import SolverNotReadyError
from fusetomo.solver.resample import ResampleParams, resample_errors, twin_solver

N, ITER = 16, 15
SCHEME = TiltScheme(tilt_range=(-60.0, 60.0), haadf_step=6.0, chem_step=30.0)


def _unstated(sim):
    """The simulated series as a microscope writes it: background and gamma not stated."""
    s = sim.series
    s.background, s.gamma = {}, None
    return s


def _solver(spec, seed: int):
    s = _unstated(simulate(spec, N, SCHEME, AcquisitionParams(chem_snr=2.5), seed=seed))
    solver = solver_for_series(s, device="cpu")
    solver.add_haadf(s.haadf_angles, s.haadf)
    solver.add_chem(s.common_chem_angles, s.chem)
    solver.initialize()
    solver.run(ITER)
    return solver


@pytest.fixture(scope="module")
def spec():
    return make_specimen("core-shell", 2 * N, seed=0)


def test_twin_reproduces_the_reconstruction_from_the_same_data(spec):
    solver = _solver(spec, 0)
    shift = solver.subtracted_level[:, None, None, None]
    twin = twin_solver(solver, to_numpy(solver.haadf_data()),
                       to_numpy(solver.chem_data()) - shift)
    twin.initialize()
    twin.run(ITER)
    np.testing.assert_array_equal(to_numpy(twin.x), to_numpy(solver.x))
    assert twin.gamma == solver.gamma and twin.gamma_estimated
    np.testing.assert_array_equal(twin.background, solver.background)


@pytest.mark.slow
def test_standard_errors_agree_with_monte_carlo(spec):
    """12 noise realisations against 12 replicas of realisation 0: inside the specimen the
    predicted std ranks voxels like the empirical one and matches its level."""
    xs = np.array([to_numpy(_solver(spec, seed).x) for seed in range(12)])
    emp = xs.std(axis=0, ddof=1)
    solver = _solver(spec, 0)
    res = resample_errors(solver, ResampleParams(replicas=12))
    assert res.iterations == ITER and len(res.gammas) == 12 and res.bias is not None
    truth = simulate(spec, N, SCHEME, seed=0).truth
    ratios, rhos = [], []
    for i, e in enumerate(solver.elements):
        m = truth[e] > 0
        pred = res.std[e]
        assert pred.shape == emp[i].shape and np.all(np.isfinite(pred))
        assert np.all(np.isfinite(res.bias[e]))
        ratios.append(float(np.median(pred[m] / emp[i][m])))
        rhos.append(float(spearmanr(pred[m], emp[i][m]).statistic))
    # 12 + 12 draws: each std is known to ~20 %; the ratio and ranks within that noise.
    # Measured mean rho 0.45 here (S 0.24: the shell's thin light element ranks worst),
    # 0.51 with 24 + 24 draws, 0.50 before the momentum restart; the calibration itself is
    # bench/uncertainty.py's (docs/benchmarks.md), not this small check's.
    assert all(0.6 <= r <= 1.6 for r in ratios), ratios
    assert np.mean(rhos) > 0.4, rhos
    assert min(rhos) > 0.15, rhos


def test_parameters_and_readiness_are_checked():
    from fusetomo.solver.fusion import FusedSolver

    with pytest.raises(ValueError, match="replicas"):
        ResampleParams(replicas=1)
    with pytest.raises(ValueError, match="noise_scale"):
        ResampleParams(noise_scale=0.0)
    with pytest.raises(ValueError, match="iterations"):
        ResampleParams(iterations=0)
    with pytest.raises(SolverNotReadyError):
        resample_errors(FusedSolver(8, 4, ["Co"], [27], device="cpu"))
