"""The stopping rule of the fused iterations (solver/stopping.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fusetomo.controller.reconstruct import reconstruct
from fusetomo.simulators.forward import simulate
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.stopping import StopRule


def test_converged_when_the_volumes_stop_changing() -> None:
    rule = StopRule(tol=1e-3, patience=3, min_iterations=5, max_iterations=100)
    change = [0.1, 0.05, 0.01, 0.002, 9e-4, 8e-4]
    falling = list(np.linspace(10, 5, 6))
    assert rule.check(change, falling, falling, 6) is None  # two below tol, not three
    assert rule.check([*change, 7e-4], [*falling, 4.9], [*falling, 4.9], 7) == "converged"


def test_stops_when_both_data_terms_rise() -> None:
    rule = StopRule(patience=3, min_iterations=5)
    change = [0.05] * 8
    h = [10, 8, 6, 5, 4.9, 5.0, 5.1, 5.2]
    c = [3, 2, 1.5, 1.4, 1.3, 1.31, 1.32, 1.33]
    assert rule.check(change, h, c, 8) == "data terms rising"
    # one term rising alone is not enough
    assert rule.check(change, h, [3, 2, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0], 8) is None
    # nor before min_iterations
    assert StopRule(patience=3, min_iterations=10).check(change, h, c, 8) is None


def test_max_iterations_and_bad_parameters() -> None:
    assert StopRule(max_iterations=4, min_iterations=2).check([1.0] * 4, [1] * 4, [1] * 4,
                                                                4) == "max_iterations"
    for kw in ({"tol": 0.0}, {"patience": 0}, {"min_iterations": 5, "max_iterations": 4}):
        with pytest.raises(ValueError):
            StopRule(**kw)


def test_history_records_the_relative_change_of_the_volumes() -> None:
    sim = simulate("nanocubes", 24, seed=0)
    s = sim.series
    solver = FusedSolver(24, 24, s.elements, [s.Z[e] for e in s.elements],
                         FusionParams(gamma=s.gamma), device="cpu",
                         background=[s.background[e] for e in s.elements])
    solver.add_haadf(s.haadf_angles, s.haadf)
    solver.add_chem(s.common_chem_angles, s.chem)
    solver.run(2)
    before = solver.x.copy()
    solver.step()
    expect = np.linalg.norm(solver.x - before) / np.linalg.norm(solver.x)
    assert solver.history.change[-1] == pytest.approx(expect, rel=1e-4)


def test_reconstruct_stops_by_the_rule_by_default() -> None:
    sim = simulate("nanocubes", 24, seed=0)
    res = reconstruct(sim.series, "fused", device="cpu", progress=False)
    rule = StopRule()
    n = res.params["iterations"]
    assert res.params["stop_reason"] in ("converged", "data terms rising", "max_iterations")
    assert rule.min_iterations <= n <= rule.max_iterations
    assert len(res.history.change) == n
    if res.params["stop_reason"] == "converged":
        assert max(res.history.change[-rule.patience:]) < rule.tol
    fixed = reconstruct(sim.series, "fused", iterations=7, device="cpu", progress=False)
    assert fixed.params["iterations"] == 7 and "stop_reason" not in fixed.params


def test_a_looser_tolerance_stops_at_the_first_iteration_the_rule_allows() -> None:
    """`stop` (the CLI's --stop-tol) replaces the default rule: the run stops where that
    rule first holds on the recorded history, no later than the default's."""
    sim = simulate("nanocubes", 24, seed=0)
    loose = StopRule(tol=5e-3)
    res = reconstruct(sim.series, "fused", device="cpu", progress=False, stop=loose)
    h = res.history
    n = res.params["iterations"]
    assert res.params["stop_tol"] == 5e-3
    first = next(k for k in range(1, n + 1)
                 if loose.check(h.change[:k], h.haadf[:k], h.chem[:k], k) is not None)
    assert first == n
    default = reconstruct(sim.series, "fused", device="cpu", progress=False)
    assert n <= default.params["iterations"]


def test_cli_refuses_a_tolerance_outside_0_1(tmp_path, capsys) -> None:
    from fusetomo.cli import main

    assert main(["reconstruct", str(tmp_path / "s.h5"), "--out", str(tmp_path / "r.h5"),
                 "--stop-tol", "1.5"]) == 2
    assert "tolerance must be in (0, 1), got 1.5" in capsys.readouterr().err
