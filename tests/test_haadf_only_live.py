"""A HAADF-only series live: announced with no element, replayed from a file or simulated
by the demo, recorded, reconstructed as the HAADF volume and read back by every reader."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from bad_series import small_simulation

from fusetomo.adapters.protocol import CHEM_TILT, SERIES_START, ProtocolError, make, typed
from fusetomo.adapters.runfile import (
    RecordRefusedError,
    RunFile,
    describe_run,
    read_run,
    read_snapshot,
)
from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import write_series
from fusetomo.cli import main
from fusetomo.cli.children import fusetomo_argv
from fusetomo.controller.reconstruct import reconstruct
from fusetomo.simulators.forward import haadf_signal
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.metrics import nrmse

OFFSET = -31880.0  # a signed-integer file's vacuum level


def _has_qt() -> bool:
    try:
        import pyqtgraph  # noqa: F401
        from PySide6 import QtWidgets  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def sim():
    return small_simulation()


def _start(elements: list[str]) -> dict:
    return {"elements": elements, "Z": {e: 29 for e in elements}, "shape": [16, 16],
            "scheme": {"name": "test"}, "dose_budget_e_per_A2": None, "pixel_size_nm": 0.5}


def test_series_start_may_announce_no_element_and_a_map_stays_refused() -> None:
    start = typed(make(SERIES_START, "s", 0, **_start([])))
    assert start.elements == ()
    with pytest.raises(ProtocolError, match="elements must be a non-empty list"):
        typed(make(CHEM_TILT, "s", 1, [], elements=[], angle=0.0, dose_e_per_A2=1.0))


def test_a_haadf_only_run_refuses_a_spectrum_image_and_keeps_what_it_recorded(tmp_path):
    start = typed(make(SERIES_START, "s", 0, **_start([])))
    run = RunFile.create(tmp_path / "r.h5", start, cost_terms=("haadf",))
    img = np.ones((16, 16), np.float32)
    run.record_tilt(typed(make("haadf_tilt", "s", 1, [img], angle=0.0, dose_e_per_A2=1.0)))
    chem = typed(make(CHEM_TILT, "s", 2, [img], elements=["Cu"], angle=0.0,
                      dose_e_per_A2=1.0))
    with pytest.raises(RecordRefusedError, match=r"not in the series \[\]"):
        run.record_tilt(chem)
    run.record_snapshot(3, {"HAADF": np.full((16, 16, 16), 2.0, np.float32)}, final=True)
    run.close()
    rec = read_run(tmp_path / "r.h5")
    assert rec.series.haadf_only and rec.series.haadf.shape == (1, 16, 16)
    it, vols = read_snapshot(tmp_path / "r.h5")
    assert it == 3 and set(vols) == {"HAADF"} and float(vols["HAADF"].mean()) == 2.0
    assert describe_run(tmp_path / "r.h5")["elements"] == []


def test_a_solver_without_elements_is_the_haadf_phase_only() -> None:
    with pytest.raises(ValueError, match="at least one element"):
        FusedSolver(16, 16, [], [], FusionParams())
    s = FusedSolver(16, 16, [], [], FusionParams(haadf_phase=True), device="cpu")
    with pytest.raises(ValueError, match="takes no spectrum image"):
        s.add_chem([0.0], {})


@pytest.mark.slow
def test_replay_of_a_raw_haadf_only_file_reconstructs_like_offline_sirt(sim, tmp_path,
                                                                        capsys):
    """The live HAADF volume (offsets subtracted, tilts added one by one, idle iterations)
    scores within 0.05 of the offline HAADF SIRT of the same recorded images against the
    specimen's HAADF signal (measured: 0.134 live, 0.184 offline: live runs more iterations)."""
    s = sim.series
    src = write_series(tmp_path / "h.h5", TiltSeries(s.haadf + OFFSET, s.haadf_angles, {},
                                                     {}, pixel_size_nm=0.5))
    run = tmp_path / "run.h5"
    code = main(["replay", str(src), "--speed", "1e4", "--record", str(run), "--device",
                 "cpu", "--final-iterations", "10", "--timeout", "30", "--log-level",
                 "WARNING"])
    assert code == 0, capsys.readouterr()
    rec = read_run(run)
    assert rec.complete and rec.series.haadf_only and rec.series.haadf.shape[0] == 29
    _, vols = read_snapshot(run)
    truth = haadf_signal(np.stack([sim.truth[e] for e in s.elements]),
                         np.array([s.Z[e] for e in s.elements], float), 1.7)
    live = nrmse(truth, vols["HAADF"])
    offline = nrmse(truth, reconstruct(rec.series, "haadf", device="cpu",
                                       progress=False).volumes["HAADF"])
    assert live < offline + 0.05 and live < 0.5, (live, offline)
    assert main(["inspect", str(run), "--verify"]) == 0
    # every reader of a run takes the HAADF-only one
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert main(["reconstruct", str(run), "--out", str(tmp_path / "r.h5"), "--method",
                 "sirt", "--quiet"]) == 0
    assert main(["stoichiometry", str(run)]) == 2  # one volume: refused, with a reason
    assert "stoichiometry" in capsys.readouterr().err
    if _has_qt():
        png = tmp_path / "v.png"
        assert main(["view", "--run", str(run), "--screenshot", str(png), "--size",
                     "400x300"]) == 0
        assert png.stat().st_size > 1000


@pytest.mark.slow
def test_demo_haadf_only(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        fusetomo_argv("demo", "--haadf-only", "--out", str(out), "--specimen", "core-shell",
                      "--size", "16", "--speed", "1e4", "--tilt-range", "-60", "60",
                      "--haadf-step", "6", "--chem-step", "60", "--final-iterations", "5",
                      "--device", "cpu",
                      "--json", "--quiet"),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert set(summary["nrmse"]) == {"HAADF"} and 0 < summary["nrmse_mean"] < 0.6
    assert (summary["haadf_tilts"], summary["chem_tilts"]) == (21, 0)
    assert describe_run(out / "run.h5")["elements"] == []
    assert any("view --run" in c for c in summary["next"])
    assert not any("stoichiometry" in c for c in summary["next"])  # one volume: no fractions
    bad = subprocess.run(fusetomo_argv("demo", "--haadf-only", "--policy", "adaptive",
                                       "--out", str(tmp_path / "x")),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no --policy" in bad.stderr


def test_the_simulated_instrument_refuses_haadf_only_with_advice_or_a_source(tmp_path):
    from fusetomo.simulators.instrument import InstrumentError, InstrumentParams

    for kwargs in ({"hold_for_advice": True}, {"source": tmp_path / "s.h5"}):
        with pytest.raises(InstrumentError, match="haadf_only simulates a series without "
                                                  "spectrum images"):
            InstrumentParams(haadf_only=True, **kwargs)
