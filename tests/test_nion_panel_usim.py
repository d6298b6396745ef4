"""The Nion Swift panel against a live series on nionswift-usim (issue 19, item 4): usim ->
Nion adapter holding at each tilt -> live controller publishing at every iteration (status)
and orthoslices every iteration -> the panel in a headless Swift document controller, with
Auto-accept checked, so that the panel itself answers every advice and runs the series.

The requirement under test: the panel is at most 2 s behind the controller. Measured as the
panel reports it (`handler.behind`): for each message it showed, the time its data items and
labels were updated minus the controller's `t_sent`, both on this machine's clock. The
pump loop below stands in for Swift's UI timer (Swift calls `periodic` every ~20 ms); the
controller, instrument and usim all run in this process, so the figure includes their
competition for the interpreter on a loaded machine. An earlier panel, which queued one UI
task per message and processed them one by one, fell ~65 s behind on the demo.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("nion.usim_device")
pytest.importorskip("nion.instrumentation")
pytest.importorskip("nion.swift.test.TestContext")

from instrument_fixtures import serving
from live_fixtures import controller_thread, wait_for
from nion.swift.test import TestContext

from fusetomo.adapters.nion import NionMicroscope, NionTomoAdapter, NionTomoConfig
from fusetomo.adapters.runfile import read_run
from fusetomo.controller.advisor import AdvisorParams
from fusetomo.controller.live import LiveParams
from fusetomo.controller.live.advice import AdviceParams
from fusetomo.simulators.usim_tomo import UsimTomo, UsimTomoParams

SIZE = 16
PIXEL_NM = 0.5
MAX_BEHIND_S = 2.0  # the requirement


@pytest.fixture
def panel_module():
    from fusetomo.ui.nion import panel
    setup = TestContext.TestSetup()  # Swift's panels and workspace, as the app registers them
    panel.run()
    try:
        yield panel
    finally:
        panel.stop()
        del setup


@pytest.mark.slow
def test_panel_keeps_within_two_seconds_and_auto_accepts_a_usim_series(panel_module,
                                                                         tmp_path) -> None:
    params = LiveParams(device="cpu", iterations_per_tilt=2, idle_iterations=True,
                        max_idle_iterations=30, final_iterations=10, publish_every=1,
                        slices_every=1, heartbeat_s=0.3,
                        advice=AdviceParams(mode="manual", policy="uniform",
                                            advisor=AdvisorParams(chem_maps=2)))
    run = tmp_path / "run.h5"
    with UsimTomo(UsimTomoParams(size=SIZE, seed=2, pixel_size_nm=PIXEL_NM)) as sim, \
            TestContext.create_memory_context() as test_context:
        config = NionTomoConfig(
            elements=tuple(sim.elements), Z=sim.Z, size=SIZE, haadf_dwell_us=2.0,
            exposure_ms=1.0, fov_nm=sim.params.fov_nm,
            haadf_angles=(-60.0, -40.0, -20.0, 0.0, 20.0, 40.0, 60.0), chem_angles=None,
            hold_for_advice=True, auto=False)
        adapter = NionTomoAdapter(config, NionMicroscope(config))
        dc = test_context.create_document_controller()
        h = dc.find_dock_panel(panel_module.PANEL_ID).handler
        with serving(adapter) as out, controller_thread(adapter.endpoint, run, params) as (
                ctrl, result):
            wait_for(lambda: ctrl.run_file is not None, 30, "the series start")
            h.connect(ctrl.publish_endpoint, operator_endpoint=ctrl.operator_endpoint)
            h.auto_accept_box.checked = True  # the operator ticks Auto-accept
            assert h.auto_accept
            time.sleep(0.5)  # the subscription reaches the publisher
            h.resume_button.on_clicked()  # the instrument waited, paused, until now
            deadline = time.monotonic() + 240
            while "code" not in result and "error" not in result:
                assert time.monotonic() < deadline, "the series did not finish in 240 s"
                time.sleep(0.02)
                dc.periodic()  # Swift's UI timer
            assert result.get("code") == 0, result
            deadline = time.monotonic() + 30  # generous: the last messages to arrive
            while h.state.state != "complete":
                assert time.monotonic() < deadline, "the panel never showed 'complete'"
                time.sleep(0.02)
                dc.periodic()
        assert out["stats"].reason == "completed"

        behind = np.array([b for _, b in h.behind])
        slices_behind = np.array([b for t, b in h.behind if t == "slices"])
        print(f"panel behind the controller: {len(behind)} messages shown of "
              f"{h.n_messages} taken, {h.link and h.link.mailbox.superseded} superseded; "
              f"median {np.median(behind):.3f} s, max {behind.max():.3f} s; slices: "
              f"{slices_behind.size}, max {slices_behind.max():.3f} s")
        assert slices_behind.size >= 5
        assert behind.max() <= MAX_BEHIND_S, behind.max()
        assert h.behind_text_label.text == f"panel: {h.behind_s:.2f} s behind the controller"

        # every advice was answered by the panel, as accept
        rec = read_run(run)
        decisions = [ev for ev in rec.events if ev["kind"] == "advice_decision"]
        assert len(decisions) == len(config.haadf_angles)
        assert {d["answer"] for d in decisions} == {"accept"}
        assert rec.series.common_chem_angles.size == sum(
            d["decision"] == "acquire" for d in decisions) == 2

        # calibrated live data items: nm from the series' pixel size, counts per voxel
        model = dc.document_model
        for e in rec.series.elements:
            for kind in ("value", "std"):
                item = h.data_items.get(e, kind)
                assert item in model.data_items
                cal = item.xdata.dimensional_calibrations
                assert [(c.scale, c.units) for c in cal] == [(PIXEL_NM, "nm")] * 2
                assert item.xdata.intensity_calibration.units == "counts/voxel"
        timing = h.timing_item.item
        assert timing in model.data_items and timing.data.shape[0] == 2
        assert timing.data.shape[1] >= len(config.haadf_angles)
        assert h.timing_text_label.text.startswith("processing per tilt: ")
        # Swift's display panel (one in the test workspace) took the first item made: the
        # HAADF-phase slices, shown before the first spectrum image
        (panel,) = dc.workspace_controller.display_panels
        assert panel.display_item is model.get_display_item_for_data_item(
            h.data_items.get("HAADF"))
