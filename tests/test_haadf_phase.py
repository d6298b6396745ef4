"""A series that starts HAADF-only: the solver's HAADF phase (SIRT of the HAADF images
alone) and the switch to the fused model at the first spectrum image, seeded with the HAADF
volume; and the live reconstruction that iterates from the first HAADF tilt."""

from __future__ import annotations

import numpy as np
import pytest

from fusetomo.adapters.protocol import SeriesStart, typed
from fusetomo.controller.live.params import PHASE_TILT, LiveParams
from fusetomo.controller.live.reconstruction import LiveReconstruction, TiltIn, solver_for
from fusetomo.simulators.forward import simulate
from fusetomo.solver import nuisance as nz
from fusetomo.solver.baselines import haadf_sirt
from fusetomo.solver.fusion import FusedSolver, FusionParams, SolverNotReadyError
from fusetomo.solver.metrics import nrmse

N = 32


@pytest.fixture(scope="module")
def sim():
    return simulate("nanocubes", N, seed=0)


def _solver(sim, haadf_phase: bool) -> FusedSolver:
    s = sim.series
    return FusedSolver(N, N, s.elements, [s.Z[e] for e in s.elements],
                       FusionParams(gamma=1.7, haadf_phase=haadf_phase), device="cpu",
                       background=[s.background[e] for e in s.elements])


def _score(sim, solver: FusedSolver) -> float:
    v = solver.volumes()
    return float(np.mean([nrmse(sim.truth[e], v[e]) for e in sim.truth]))


def test_haadf_phase_is_the_haadf_sirt_of_the_images_less_their_offsets(sim) -> None:
    s = sim.series
    solver = _solver(sim, True)
    solver.add_haadf(s.haadf_angles, s.haadf)
    assert solver.ready and solver.in_haadf_phase
    solver.run(20)
    ref = haadf_sirt(s.haadf_angles, s.haadf - nz.haadf_offsets(s.haadf)[:, None, None],
                     iterations=20, device="cpu")
    np.testing.assert_allclose(solver.haadf_volume(), ref, atol=1e-5 * float(ref.max()))
    h = solver.history
    assert h.n_chem_tilts == [0] * 20 and np.all(np.diff(h.haadf) < 0)
    with pytest.raises(SolverNotReadyError):
        solver.volumes()  # no element volumes before a spectrum image
    # the model of the HAADF images (what alignment compares with) is the phase's volume's
    model = solver.model_haadf()
    np.testing.assert_allclose(model - solver.haadf_offsets[:, None, None],
                               solver.haadf_proj.forward(ref), rtol=1e-4,
                               atol=1e-4 * float(model.max()))


def test_without_the_phase_haadf_alone_is_not_enough(sim) -> None:
    solver = _solver(sim, False)
    solver.add_haadf(sim.series.haadf_angles, sim.series.haadf)
    assert not solver.ready
    with pytest.raises(SolverNotReadyError, match="need chemical tilts"):
        solver.step()


def test_the_fused_model_seeded_by_the_haadf_volume_starts_ahead(sim) -> None:
    """Measured at 32^3 (nanocubes, seed 0): after 1/5/10/20 fused iterations <NRMSE>
    0.414/0.341/0.280/0.259 seeded by 30 HAADF-phase iterations, 0.422/0.352/0.302/0.272
    from the uniform start."""
    s = sim.series
    seeded, uniform = _solver(sim, True), _solver(sim, False)
    seeded.add_haadf(s.haadf_angles, s.haadf)
    seeded.run(30)
    seeded.add_chem(s.common_chem_angles, s.chem)
    assert not seeded.in_haadf_phase
    uniform.add_haadf(s.haadf_angles, s.haadf)
    uniform.add_chem(s.common_chem_angles, s.chem)
    seeded.run(10)
    uniform.run(10)
    assert _score(sim, seeded) < _score(sim, uniform) - 0.01, (
        _score(sim, seeded), _score(sim, uniform))
    assert seeded.history.n_chem_tilts[:30] == [0] * 30
    assert seeded.history.n_chem_tilts[30:] == [s.common_chem_angles.size] * 10


def test_live_reconstruction_iterates_from_the_first_haadf_tilt(sim) -> None:
    s = sim.series
    start = typed_start(s)
    params = LiveParams(iterations_per_tilt=2, idle_iterations=False)
    recon = LiveReconstruction(solver_for(start, params), params)
    for i in range(3):
        recon.add(TiltIn(i + 1, "haadf", float(s.haadf_angles[i]), image=s.haadf[i]), 0.0)
    assert recon.ready and recon.due() == PHASE_TILT
    while recon.update() is not None:
        pass
    assert recon.iteration == 6 and recon.solver.in_haadf_phase
    j = 0
    maps = {e: s.chem[e][j] for e in s.elements}
    recon.add(TiltIn(10, "chem", float(s.common_chem_angles[j]), maps=maps), 0.0)
    step = recon.update()
    assert step is not None and step.costs["n_chem"] == 1 and recon.solver.x is not None


def typed_start(s) -> SeriesStart:
    from fusetomo.adapters.protocol import SERIES_START, make

    start = typed(make(SERIES_START, "t", 0, elements=list(s.elements),
                       Z={e: int(s.Z[e]) for e in s.elements}, shape=list(s.shape),
                       gamma=1.7, scheme={"name": "test"}, dose_budget_e_per_A2=None,
                       pixel_size_nm=0.5))
    assert isinstance(start, SeriesStart)
    return start


def _idle_run(sim, idle_stop) -> LiveReconstruction:
    """All tilts of the series, then idle iterations until none is due."""
    s = sim.series
    params = LiveParams(iterations_per_tilt=1, max_idle_iterations=60, idle_stop=idle_stop,
                        fusion=FusionParams(gamma=1.7))
    recon = LiveReconstruction(solver_for(typed_start(s), params), params)
    for i, a in enumerate(s.haadf_angles):
        recon.add(TiltIn(i + 1, "haadf", float(a), image=s.haadf[i]), 0.0)
    for j, a in enumerate(s.common_chem_angles):
        recon.add(TiltIn(100 + j, "chem", float(a),
                         maps={e: s.chem[e][j] for e in s.elements}), 0.0)
    while recon.update() is not None:
        pass
    return recon


def test_idle_iterations_stop_by_the_stopping_rule(sim) -> None:
    """Idle iterations end when the offline stopping rule fires on the iterations since the
    last tilt, and the reason is what the recorded history shows; without the rule they run
    to max_idle_iterations."""
    from fusetomo.solver.stopping import StopRule

    rule = StopRule(tol=2e-3, min_iterations=4, max_iterations=10**9)
    recon = _idle_run(sim, rule)
    h = recon.solver.history
    assert recon.idle_stopped in ("converged", "data terms rising")
    assert 4 <= recon.idle_done < 60
    tail = slice(-rule.patience, None)
    if recon.idle_stopped == "converged":
        assert max(h.change[tail]) < rule.tol
    else:
        assert np.all(np.diff(h.haadf[-rule.patience - 1:]) > 0)
        assert np.all(np.diff(h.chem[-rule.patience - 1:]) > 0)
    # it stopped at the first idle iteration where the rule holds
    n = recon.idle_done
    first = next(k for k in range(4, n + 1)
                 if rule.check(h.change[:len(h.change) - n + k], h.haadf[:len(h.haadf) - n + k],
                               h.chem[:len(h.chem) - n + k], k) is not None)
    assert first == n
    free = _idle_run(sim, None)
    assert free.idle_done == 60 and free.idle_stopped is None
    # a new tilt restarts the idle iterations
    s = sim.series
    recon.add(TiltIn(999, "haadf", 1.0, image=s.haadf[len(s.haadf) // 2]), 0.0)
    assert recon.idle_stopped is None and recon.due() == PHASE_TILT
