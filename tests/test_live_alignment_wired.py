"""The live controller aligns drifting tilts as they arrive (controller/live.py with
LiveAligner): the run completes, shifts are recorded and published, and the reconstruction
of a drifting series is closer to the truth with alignment than without."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from fusetomo.adapters.runfile import read_run, read_snapshot
from fusetomo.adapters.transport import StatusSubscriber
from fusetomo.controller.live import LiveParams, realign, rebuild_solver
from fusetomo.controller.live.aligner import LiveAlignParams
from fusetomo.simulators.forward import AcquisitionParams, bin_volume
from fusetomo.simulators.specimens import make_specimen
from fusetomo.solver.alignment import gauge_free
from fusetomo.solver.metrics import nrmse
from tests.live_fixtures import controller_thread, instrument_thread, recorded_tilts, wait_for

SERIES = {"size": 32, "tilt_range": (-60.0, 60.0), "haadf_step": 6.0, "chem_step": 30.0,
          "seed": 5, "drift_sigma_px": 2.0, "axis_offset_px": 1.5}
BASE = LiveParams(device="cpu", iterations_per_tilt=2, idle_iterations=False,
                  final_iterations=20, heartbeat_s=0.3)


def _run(tmp_path, name: str, params: LiveParams) -> tuple[dict, list]:
    run = tmp_path / name
    got = []
    with instrument_thread(**SERIES) as inst, \
            controller_thread(inst.endpoint, run, params) as (ctrl, result):
        wait_for(lambda: ctrl.publisher is not None, 10, "the status socket")
        sub = StatusSubscriber(ctrl.publish_endpoint, ("alignment",))
        deadline = time.monotonic() + 180
        try:
            while "code" not in result and "error" not in result:
                assert time.monotonic() < deadline, "the live run did not finish"
                m = sub.recv(100)
                if m is not None:
                    got.append(m[1].header)
        finally:
            sub.close()
    assert result.get("code") == 0, result
    return {"path": run, "record": read_run(run), "volumes": read_snapshot(run)[1]}, got


@pytest.mark.slow
def test_live_alignment_recovers_drift(tmp_path):
    plain, _ = _run(tmp_path, "plain.h5", BASE)
    aligned, published = _run(tmp_path, "aligned.h5",
                              dataclasses.replace(BASE, align=LiveAlignParams()))
    o = AcquisitionParams().oversample
    spec = make_specimen("nanocubes", 32 * o, seed=SERIES["seed"])
    truth = {e: bin_volume(spec.volumes[i], o) for i, e in enumerate(spec.elements)}

    def score(vols):
        # Alignment fixes shifts up to a common translation of the object: compare after
        # the best whole-voxel translation onto the truth (searched over +-3 voxels).
        best = np.inf
        for d in np.ndindex(7, 7, 7):
            sh = np.array(d) - 3
            err = np.mean([nrmse(np.roll(vols[e], tuple(sh), axis=(0, 1, 2)), truth[e])
                           for e in vols])
            best = min(best, err)
        return best

    e_plain, e_aligned = score(plain["volumes"]), score(aligned["volumes"])
    assert e_aligned < 0.75 * e_plain, (e_aligned, e_plain)  # 0.64 vs 1.14
    events = [ev for ev in aligned["record"].events if ev["kind"] == "alignment"]
    assert events and all(np.isfinite(ev["axis_offset_px"]) for ev in events)
    # The instrument's drift is in its headers: the recovered shifts follow it (up to the
    # common translation, removed by comparing differences between tilts).
    assert published and published[-1]["alignment"]["n_tilts"] >= 10
    # refined against the fused model, to convergence by the end of the final iterations
    last = published[-1]["alignment"]
    assert last["model_refinements"] >= 8  # 10 here: the tilts come too fast for idle ones
    assert events[-1]["update_px"] is not None and events[-1]["update_px"] < 0.05  # 0.018

    # --resume --align: the replayed solver takes the recorded tilts aligned again (arrival
    # alignment, not the live refinements), with their fractions in its projectors.
    record = aligned["record"]
    params = dataclasses.replace(BASE, align=LiveAlignParams())
    solver = rebuild_solver(record, params)
    again = realign(record, solver, LiveAlignParams())
    ang = solver.haadf_proj.angles
    np.testing.assert_allclose(solver.haadf_proj.shifts, again.model_shifts(ang), atol=1e-12)
    np.testing.assert_allclose(solver.chem_proj.shifts,
                               again.chem_model_shifts(solver.chem_proj.angles), atol=1e-12)
    np.testing.assert_array_equal(np.asarray(solver.haadf_data())[3],
                                  again.solver_haadf(float(ang[3]))[0])
    live_sh = {round(a, 6): np.array(sh) for a, sh in zip(last["angles"], last["shifts_px"],
                                                           strict=True)}
    est = np.stack([again.shifts[a] for a in ang])
    ref = np.stack([live_sh[round(float(a), 6)] for a in ang])
    d = gauge_free(ang, est) - gauge_free(ang, ref)
    assert float(np.sqrt(np.mean(np.sum(d**2, axis=1)))) < 0.5
    solver.run(2)
    assert all(np.all(np.isfinite(v)) for v in solver.volumes().values())


@pytest.mark.slow
def test_interrupted_aligned_run_resumes_aligned(tmp_path):
    """A controller stopped mid-series and started again with resume and alignment goes on
    aligning: the recorded tilts are aligned again, the run completes with each tilt once,
    and the refinements after the resume converge against the model."""
    run = tmp_path / "run.h5"
    params = dataclasses.replace(BASE, align=LiveAlignParams())
    with instrument_thread(**{**SERIES, "speed": 40.0}) as inst:
        with controller_thread(inst.endpoint, run, params, raise_error=False) as (_, first):
            wait_for(lambda: recorded_tilts(run) >= 10, 60, "10 recorded tilts")
        assert first.get("code") != 0 or "error" in first  # stopped before the series end
        n_before = recorded_tilts(run)
        with controller_thread(inst.endpoint, run, params, resume=True) as (_, second):
            wait_for(lambda: "code" in second or "error" in second, 120, "the resumed run")
    assert second.get("code") == 0, second
    rec = read_run(run)
    kinds = [ev["kind"] for ev in rec.events]
    assert "resumed" in kinds
    assert rec.series.haadf.shape[0] == 21 and rec.series.haadf.shape[0] + \
        rec.series.common_chem_angles.size > n_before
    assert len(set(np.round(rec.series.haadf_angles, 6))) == 21  # each tilt once
    after = [ev for ev in rec.events[kinds.index("resumed"):] if ev["kind"] == "alignment"]
    # A refinement for at least half of the tilts that came after the resume (tilts that
    # arrive while one runs are taken together): measured 8 of 11 on an idle 2-core machine
    # and 7 with two busy processes beside it, which the former bound of 8 failed in CI.
    assert len(after) >= (21 - n_before) // 2 and len(after[-1]["angles"]) == 21
    assert after[-1]["update_px"] is not None and after[-1]["update_px"] < 0.05
