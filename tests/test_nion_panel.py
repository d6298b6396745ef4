"""The Nion Swift panel (ui/nion), headless with Nion Swift's own test machinery: a real
StatusPublisher feeds the panel, the labels and live data items must show what was
published (orthoslices against the volume they were cut from), Accept / Skip / Force reach a
ROUTER standing in for the controller's operator socket, and closing the document controller
leaves nothing behind (Nion's leak counters, our panel and thread)."""

from __future__ import annotations

import gc
import threading
import time
import unittest
from collections.abc import Callable

import numpy as np
import pytest
import zmq

from fusetomo.adapters import protocol as proto
from fusetomo.adapters.transport import StatusPublisher
from fusetomo.controller.live import orthoslices
from fusetomo.controller.live.publish import slice_calibration
from fusetomo.ui.nion.state import PanelDataError, PanelState, montage
from fusetomo.ui.slices import decode_slices
from tests.alignment_status import ALIGNMENT, SORTED_ANGLES, SORTED_SHIFTS, SUMMARY

ELEMENTS = ["Fe", "O"]


def _volume(seed: int, ns: int = 6, n: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 2.0, (len(ELEMENTS), ns, n, n))


def _central(x: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ns, n = x.shape[1], x.shape[2]
    return x[i, ns // 2], x[i, :, n // 2, :], x[i, :, :, n // 2]


def _status(seq: int, operator_endpoint: str | None, **extra) -> proto.Message:
    return proto.make(
        proto.STATUS, "s1", seq, state="iterating", iteration=7,
        costs={"haadf": 0.0123, "chem": 4.56, "tv": 0.789}, haadf_tilts=5, chem_tilts=1,
        planned_haadf=41, planned_chem=9,
        dose_e_per_A2={"haadf": 100.0, "chem": 23.5, "total": 123.5},
        haadf_angles=[-70.0, -67.0, -64.0, -61.0, -58.0], chem_maps_budget=3,
        dose_budget_e_per_A2=500.0, advice_mode="manual", processing_s=0.31, lag_s=4.04,
        lag_tilts=2, operator_endpoint=operator_endpoint, **extra)


def _advice(seq: int, advice_id: int, answer: str | None = None,
            decision: str | None = None) -> proto.Message:
    return proto.make(proto.STATUS, "s1", seq, advice={
        "id": advice_id, "tilt_seq": 5, "angle": -58.0, "action": "acquire_now",
        "reason": "gain 0.012 > threshold 0.005", "gain_per_dose": 0.012, "best_angle": 40.0,
        "candidates": [{"angle": -58.0, "gain_per_dose": 0.012}], "chem_maps_used": 1,
        "chem_maps_budget": 3, "chem_dose_used": 23.5, "chem_dose_budget": 70.0,
        "mode": "manual", "answer": answer, "decision": decision})


# -- the pure model ---------------------------------------------------------------------------
def test_state_decodes_slices_within_quantisation_of_the_volume() -> None:
    x = _volume(1)
    s = PanelState()
    changed = s.apply("slices", {"series": "s1", "iteration": 4,
                                 "slices": orthoslices(x, ELEMENTS, 32)})
    assert changed == {"slices"} and s.slices_iteration == 4
    for i, e in enumerate(ELEMENTS):
        o = s.slices[e]
        for got, want in zip(o.planes(), _central(x, i), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=o.vmax / 510 + 1e-6)
        image, panes = montage(o)
        for pane, plane in zip(panes, o.planes(), strict=True):
            r, c, (h, w) = pane["row"], pane["col"], pane["shape"]
            np.testing.assert_array_equal(image[r:r + h, c:c + w], plane)
        assert image.shape == (8, 8 + 1 + 8 + 1 + 8)


def test_state_refuses_bad_content_and_keeps_what_it_had() -> None:
    s = PanelState()
    s.apply("status", _status(0, "tcp://127.0.0.1:1").header)
    assert (s.iteration, s.dose_budget, s.current_tilt_deg) == (7, 500.0, -58.0)
    bad = orthoslices(_volume(2), ELEMENTS, 32)
    bad["O"]["u"][0][0] = 300
    with pytest.raises(PanelDataError, match=r"slices\.O\.u.*300"):
        s.apply("slices", {"series": "s1", "slices": bad})
    with pytest.raises(PanelDataError, match="iteration"):
        s.apply("status", {"series": "s1", "iteration": "eight", "state": "complete"})
    assert s.state == "iterating" and s.iteration == 7 and not s.slices
    with pytest.raises(PanelDataError, match="vmax"):
        decode_slices({"Fe": {"vmax": float("nan"), "s": [[1]], "u": [[1]], "v": [[1]]}}, "x",
                      error=PanelDataError)
    # a new series starts from nothing but keeps where operator commands go
    s.apply("event", {"series": "s2", "event": "series_start"})
    assert s.series == "s2" and s.iteration is None
    assert s.operator_endpoint == "tcp://127.0.0.1:1"


def test_state_advice_opens_and_closes_the_answer_buttons() -> None:
    s = PanelState()
    s.apply("status", _status(0, "tcp://127.0.0.1:1").header)
    assert not s.can_answer() and s.can_command()
    s.apply("advice", _advice(1, 3).header)
    assert s.can_answer() and s.advice is not None and s.advice.id == 3
    assert "#3" in s.advice_text() and "+40.0°" in s.advice_text()
    s.apply("advice", _advice(2, 3, answer="accept", decision="acquire").header)
    assert not s.can_answer()


# -- in Nion Swift -----------------------------------------------------------------------------
try:
    from nion.swift.test import TestContext
except ImportError:  # the `nion` extra is not installed: the model tests above still run
    TestContext = None
needs_nion = pytest.mark.skipif(TestContext is None, reason="needs nionswift (extra `nion`)")


class _FakeOperatorRouter:
    """The controller's operator socket, answered by the test's own thread: records each
    operator message (decoded by the protocol codec) and replies `ack` done, or rejected
    for the actions in `reject`."""

    def __init__(self, ctx: zmq.Context, reject: dict[str, str]) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: list[dict] = []
        self.reject = reject

    def serve(self) -> None:
        while self.sock.poll(0):
            peer, *frames = self.sock.recv_multipart()
            h = proto.decode(frames).header
            self.received.append(h)
            status = "rejected" if h["action"] in self.reject else "done"
            reply = proto.make(proto.ACK, "s1", h["seq"], ack_seq=h["id"], status=status,
                               reason=self.reject.get(h["action"], ""))
            self.sock.send_multipart([peer, *proto.encode(reply)])


def _pump(dc, until: Callable[[], bool], *, publish: Callable[[], None] | None = None,
          router: _FakeOperatorRouter | None = None, timeout_s: float = 10.0) -> None:
    """Run the document controller's task queue (as Swift's UI loop would) until `until`."""
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the panel")
        if publish is not None:
            publish()  # a SUB misses what was published before it joined: say it again
        if router is not None:
            router.serve()
        time.sleep(0.02)
        dc.periodic()


@pytest.fixture
def swift():
    from nion.swift import Panel

    from fusetomo.ui.nion import panel as panel_module
    TestContext.begin_leaks()
    setup = TestContext.TestSetup()
    panels_before = Panel.Panel.count
    panel_module.run()
    try:
        yield panel_module
    finally:
        panel_module.stop()
        del setup
        gc.collect()
        TestContext.end_leaks(unittest.TestCase())  # it only uses assertEqual
        assert Panel.Panel.count == panels_before
        assert not [t for t in threading.enumerate() if t.name == "fusetomo-nion-link"]


@needs_nion
def test_panel_shows_status_and_slices_and_sends_operator_commands(swift) -> None:
    zctx = zmq.Context()
    pub = StatusPublisher(ctx=zctx)
    router = _FakeOperatorRouter(zctx, reject={"skip": "advice #3 is already answered"})
    x, err = _volume(3), 0.1 * _volume(4)
    try:
        with TestContext.create_memory_context() as test_context:
            dc = test_context.create_document_controller()
            panel = dc.find_dock_panel(swift.PANEL_ID)
            assert isinstance(panel, swift.FusetomoPanel)
            h = panel.handler
            assert h.connection_text_label.text == "not connected"
            assert not h.accept_button.enabled and not h.force_button.enabled

            h.endpoint_edit.text = pub.endpoint  # typed into the line edit
            assert h.endpoint == pub.endpoint
            h.connect_button.on_clicked()
            assert h.link is not None and h.connect_button.text == "Disconnect"

            _pump(dc, lambda: h.state.iteration == 7,
                  publish=lambda: pub.publish("status", _status(0, router.endpoint)))
            assert h.series_text_label.text == "s1: iterating, iteration 7"
            assert h.tilts_text_label.text == "tilts: HAADF 5 of 41, spectrum images 1 of 3"
            assert h.tilt_text_label.text == "current tilt -58.0°"
            assert h.dose_text_label.text == \
                "dose 123.5 e⁻/Å² (budget 500): haadf 100, chem 23.5"
            assert (h.haadf_progress_bar.value, h.dose_progress_bar.value) == (12, 25)
            assert h.behind_text_label.text.startswith("panel: ") and h.behind_s is not None
            assert h.costs_text_label.text == "costs: haadf 0.0123, chem 4.56, tv 0.789"
            assert h.timing_text_label.text == \
                "processing per tilt: 0.31 s; reconstruction: 2 tilts behind (4.0 s)"
            assert h.force_button.enabled and not h.accept_button.enabled

            calibration = slice_calibration(x.shape, len(ELEMENTS), 32, 0.5)
            slices = proto.make(proto.STATUS, "s1", 1, iteration=9,
                                slices=orthoslices(x, ELEMENTS, 32),
                                std_slices=orthoslices(err, ELEMENTS, 32), std_iteration=8,
                                calibration=calibration)
            _pump(dc, lambda: len(h.data_items.keys) == 4,
                  publish=lambda: pub.publish("slices", slices))
            model = dc.document_model
            for kind, vol in (("value", x), ("std", err)):
                for i, e in enumerate(ELEMENTS):
                    item = h.data_items.get(e, kind)
                    assert item in model.data_items
                    meta = item.metadata["fusetomo"]
                    assert (meta["element"], meta["kind"]) == (e, kind)
                    image = item.data
                    assert image.shape == (8, 26)
                    # calibrated: 0.5 nm pixels (no averaging at 8 px), counts per voxel
                    for cal in item.xdata.dimensional_calibrations:
                        assert (cal.offset, cal.scale, cal.units) == (0.0, 0.5, "nm")
                    assert item.xdata.intensity_calibration.units == "counts/voxel"
                    # central slices s = 3 of 6, u = v = 4 of 8: +0.25 nm from the centre
                    assert item.title.endswith(
                        "(s = +0.25 nm | u = +0.25 nm | v = +0.25 nm)"), item.title
                    assert [p["position_nm"] for p in meta["panes"]] == [0.25, 0.25, 0.25]
                    for pane, want in zip(meta["panes"], _central(vol, i), strict=True):
                        (r, c), (hh, ww) = (pane["row"], pane["col"]), pane["shape"]
                        np.testing.assert_allclose(image[r:r + hh, c:c + ww], want,
                                                   atol=meta["vmax"] / 510 + 1e-6)
            # the next preview updates the same data items in place
            first = h.data_items.get("Fe")
            x2 = 2.0 * x
            slices2 = proto.make(proto.STATUS, "s1", 2, iteration=14,
                                 slices=orthoslices(x2, ELEMENTS, 32))
            _pump(dc, lambda: h.state.slices_iteration == 14,
                  publish=lambda: pub.publish("slices", slices2))
            assert h.data_items.get("Fe") is first and len(model.data_items) == 4
            np.testing.assert_allclose(first.data[:, :8], x2[0, 3],
                                       atol=first.metadata["fusetomo"]["vmax"] / 510 + 1e-6)

            _pump(dc, lambda: h.accept_button.enabled,
                  publish=lambda: pub.publish("advice", _advice(3, 3)))
            assert h.advice_text_label.text.startswith("advice #3 (manual): acquire_now at "
                                                       "-58.0°, gain 0.012")
            h.accept_button.on_clicked()
            _pump(dc, lambda: "done" in h.result_text_label.text, router=router)
            assert h.result_text_label.text == "accept advice #3: done"
            h.skip_button.on_clicked()
            _pump(dc, lambda: "failed" in h.result_text_label.text, router=router)
            assert "advice #3 is already answered" in h.result_text_label.text
            h.force_button.on_clicked()
            _pump(dc, lambda: h.result_text_label.text == "force: done", router=router)
            assert [(m["type"], m["action"], m.get("advice_id")) for m in router.received] == \
                [("operator", "accept", 3), ("operator", "skip", 3), ("operator", "force", None)]

            _pump(dc, lambda: not h.accept_button.enabled,
                  publish=lambda: pub.publish("advice", _advice(4, 3, "accept", "acquire")))
            assert "answered accept, decided acquire" in h.advice_text_label.text
            link_thread = h.link._thread
        assert not link_thread.is_alive()
    finally:
        pub.close()
        router.sock.close(0)
        zctx.term()


@needs_nion
def test_panel_reports_a_missing_operator_endpoint_and_reconnects(swift) -> None:
    zctx = zmq.Context()
    pub = StatusPublisher(ctx=zctx)
    try:
        with TestContext.create_memory_context() as test_context:
            dc = test_context.create_document_controller()
            h = dc.find_dock_panel(swift.PANEL_ID).handler
            h.connect(pub.endpoint)
            _pump(dc, lambda: h.state.state == "iterating",
                  publish=lambda: pub.publish("status", _status(0, None)))
            assert not h.force_button.enabled
            h.link.send("force")  # a viewer without an operator endpoint: told why
            _pump(dc, lambda: "failed" in h.result_text_label.text)
            assert "operator_endpoint" in h.result_text_label.text
            h.connect_button.on_clicked()  # disconnect
            assert h.link is None and h.connection_text_label.text == "not connected"
            h.connect_button.on_clicked()  # and again, to the remembered endpoint
            assert h.link is not None and h.link.status_endpoint == pub.endpoint
    finally:
        pub.close()
        zctx.term()


@needs_nion
def test_panel_answers_a_live_controller_in_manual_mode(swift, tmp_path) -> None:
    """End to end: the simulated instrument holds at each tilt, the controller's advisor
    waits for the operator, and the panel's Resume and Accept buttons run the series to its
    end; the run file records each of the panel's answers."""
    from fusetomo.adapters.runfile import read_run
    from fusetomo.controller.advisor import AdvisorParams
    from fusetomo.controller.live import LiveParams
    from fusetomo.controller.live.advice import AdviceParams
    from tests.live_fixtures import controller_thread, instrument_thread, wait_for

    params = LiveParams(device="cpu", iterations_per_tilt=1, idle_iterations=False,
                        final_iterations=2, heartbeat_s=0.3,
                        advice=AdviceParams(mode="manual", policy="uniform",
                                            advisor=AdvisorParams(chem_maps=2)))
    series = {"size": 16, "tilt_range": (-60.0, 60.0), "haadf_step": 12.0, "chem_step": 60.0,
              "seed": 3}
    run = tmp_path / "run.h5"
    accepted: list[int] = []
    with TestContext.create_memory_context() as test_context:
        dc = test_context.create_document_controller()
        h = dc.find_dock_panel(swift.PANEL_ID).handler
        with instrument_thread(**series, hold_for_advice=True, auto=False) as inst, \
                controller_thread(inst.endpoint, run, params) as (ctrl, result):
            wait_for(lambda: ctrl.run_file is not None, 10, "the series start")
            # the controller printed both endpoints; nothing is published while it waits
            h.connect(ctrl.publish_endpoint, operator_endpoint=ctrl.operator_endpoint)
            time.sleep(0.5)  # the subscription reaches the publisher
            h.resume_button.on_clicked()  # the instrument waited, paused, until now

            def answer() -> bool:
                a = h.state.advice
                if a is not None and a.open and h.accept_button.enabled \
                        and a.id not in accepted:
                    h.accept_button.on_clicked()
                    accepted.append(a.id)
                return "code" in result or "error" in result

            _pump(dc, answer, timeout_s=60)
            assert result.get("code") == 0, result
            _pump(dc, lambda: h.state.state == "complete", timeout_s=10)
        rec = read_run(run)
        decisions = [ev for ev in rec.events if ev["kind"] == "advice_decision"]
        assert [(d["advice_id"], d["answer"]) for d in decisions] == \
            [(i, "accept") for i in accepted]
        assert rec.series.common_chem_angles.size == sum(
            d["decision"] == "acquire" for d in decisions) >= 1
        for e in rec.series.elements:  # live previews of every volume and its std error
            value, std = h.data_items.get(e, "value"), h.data_items.get(e, "std")
            assert value in dc.document_model.data_items and std in dc.document_model.data_items
            assert value.data.shape == std.data.shape == (16, 16 * 3 + 2)
        assert h.series_text_label.text.startswith(f"{rec.attrs['series_id']}: complete")


@needs_nion
def test_panel_shows_alignment_line_and_data_item(swift) -> None:
    from fusetomo.ui.nion.dataitems import ALIGNMENT_TITLE

    zctx = zmq.Context()
    pub = StatusPublisher(ctx=zctx)
    try:
        with TestContext.create_memory_context() as test_context:
            dc = test_context.create_document_controller()
            h = dc.find_dock_panel(swift.PANEL_ID).handler
            assert h.alignment_text_label.text == "alignment: —"
            h.connect(pub.endpoint)
            msg = proto.make(proto.STATUS, "s1", 0, alignment=ALIGNMENT)
            _pump(dc, lambda: h.state.alignment is not None,
                  publish=lambda: pub.publish("alignment", msg))
            assert h.alignment_text_label.text == f"alignment: {SUMMARY}"
            model = dc.document_model
            item = h.alignment_item.item
            assert item in model.data_items and len(model.data_items) == 1
            assert item.title == ALIGNMENT_TITLE
            np.testing.assert_allclose(item.data, np.array(SORTED_SHIFTS).T)  # rows ds, dd
            meta = item.metadata["fusetomo"]
            assert meta["angles_deg"] == SORTED_ANGLES and meta["rows"] == ["ds", "dd"]
            assert (meta["series"], meta["axis_offset_px"], meta["model_refinements"]) == (
                "s1", 1.25, 3)
            # evenly spaced angles: the line plot's axis is the tilt angle in degrees
            cal = item.xdata.dimensional_calibrations[1]
            assert (cal.offset, cal.scale, cal.units) == (-40.0, 20.0, "°")
            assert item.xdata.intensity_calibration.units == "px"
            display = model.get_display_item_for_data_item(item)
            assert display.used_display_type == "line_plot"
            assert [(la.data_row, la.label) for la in display.display_layers] == [
                (0, "ds"), (1, "dd")]

            # the next alignment (a sixth tilt, uneven spacing) updates the same item
            more = dict(ALIGNMENT, n_tilts=6, angles=[*ALIGNMENT["angles"], 50.0],
                        shifts_px=[*ALIGNMENT["shifts_px"], [0.25, 2.5]],
                        sources=[*ALIGNMENT["sources"], "previous"], model_refinements=4)
            msg2 = proto.make(proto.STATUS, "s1", 1, alignment=more)
            _pump(dc, lambda: h.state.alignment.model_refinements == 4,
                  publish=lambda: pub.publish("alignment", msg2))
            assert h.alignment_item.item is item and len(model.data_items) == 1
            np.testing.assert_allclose(item.data[:, -1], [0.25, 2.5])
            np.testing.assert_allclose(item.data[:, :5], np.array(SORTED_SHIFTS).T)
            assert item.metadata["fusetomo"]["angles_deg"] == [*SORTED_ANGLES, 50.0]
            assert item.xdata.dimensional_calibrations[1].units in (None, "")
            assert "4 model refinements" in h.alignment_text_label.text
            assert [(la.data_row, la.label) for la in display.display_layers] == [
                (0, "ds"), (1, "dd")]
    finally:
        pub.close()
        zctx.term()


@needs_nion
def test_panel_with_keys_sees_an_authenticated_controller(swift, tmp_path, monkeypatch) -> None:
    """`fusetomo keys DIR` and FUSETOMO_KEYS=DIR: the panel authenticates as the viewer to a
    status socket that accepts only the viewers' key; a folder without the keys is named."""
    from fusetomo.adapters.keys import keys_for, make_keys

    keys = tmp_path / "keys"
    make_keys(keys)
    monkeypatch.setenv("FUSETOMO_KEYS", str(keys))
    zctx = zmq.Context()
    pub = StatusPublisher(ctx=zctx, curve=keys_for(keys, "controller-server"))
    try:
        with TestContext.create_memory_context() as test_context:
            dc = test_context.create_document_controller()
            h = dc.find_dock_panel(swift.PANEL_ID).handler
            h.connect(pub.endpoint)
            _pump(dc, lambda: h.state.iteration == 7,
                  publish=lambda: pub.publish("status", _status(0, None)))
            assert h.series_text_label.text == "s1: iterating, iteration 7"
            h.disconnect()
            other = swift.FusetomoPanelHandler(dc, keys=str(tmp_path / "nokeys"))
            try:
                other.connect(pub.endpoint)
                assert other.link is None
                assert other.result_text == \
                    f"{tmp_path / 'nokeys' / 'viewer.key_secret'}: missing (make the " \
                    f"folder with `fusetomo keys {tmp_path / 'nokeys'}`)"
            finally:
                other.close()
    finally:
        pub.close()
        zctx.term()


# -- keeping up and calibration (issue 19) -----------------------------------------------------
def test_mailbox_keeps_the_newest_message_per_kind_and_posts_one_drain() -> None:
    from fusetomo.ui.nion.link import Mailbox

    box = Mailbox()
    posts = [box.put("status", {"seq": 0}), box.put("slices", {"seq": 1}),
             box.put("status", {"seq": 2}), box.put("event", {"event": "tilt_received",
                                                              "seq": 3}),
             box.put("event", {"event": "tilt_received", "seq": 4})]
    assert posts == [True, False, False, False, False]  # one drain task while one is pending
    taken = box.take()
    # ordered by the newest arrival; the status of seq 0 superseded by seq 2; events all kept
    assert [(t, h["seq"]) for t, h in taken] == [("slices", 1), ("status", 2), ("event", 3),
                                                 ("event", 4)]
    assert box.superseded == 1 and box.take() == []
    assert box.put("status", {"seq": 5})  # emptied: the next message posts a drain again


def test_slice_calibration_positions_and_bad_values_named() -> None:
    from fusetomo.controller.live.publish import slice_calibration
    from fusetomo.ui.slices import decode_calibration

    # 64^3 at 0.5 nm, 2 elements, 32 px previews: 2x2 blocks, 1 nm per published pixel
    doc = slice_calibration((2, 64, 64, 64), 2, 32, 0.5)
    assert (doc["block"], doc["voxel_nm"], doc["pixel_nm"]) == (2, 0.5, 1.0)
    cal = decode_calibration(doc)
    assert cal.pixel_nm == 1.0 and cal.units == "counts/voxel"
    assert cal.position_nm("s") == pytest.approx(0.25)  # slice 32 of 64: (32.5 - 32) * 0.5
    assert cal.title("u") == "u = +0.25 nm"
    none = decode_calibration(slice_calibration((1, 8, 8, 8), 1, 32, None))
    assert none.pixel_nm is None and none.title("s") == "s"
    assert decode_calibration(None).pixel_nm is None  # an older controller
    with pytest.raises(PanelDataError, match=r"calibration\.pixel_nm.*-1"):
        decode_calibration({**doc, "pixel_nm": -1}, "calibration", PanelDataError)
    with pytest.raises(PanelDataError, match=r"calibration\.block.*0"):
        decode_calibration({**doc, "block": 0}, "calibration", PanelDataError)
    s = PanelState()
    with pytest.raises(PanelDataError, match=r"volume_shape.*\[8, 8\]"):
        s.apply("slices", {"calibration": {**doc, "volume_shape": [8, 8]}})
    assert s.calibration.pixel_nm is None  # nothing applied


def test_state_keeps_the_timing_per_tilt_from_reconstruction_updates() -> None:
    s = PanelState()
    changed = s.apply("event", {"event": "reconstruction_updated", "processing_s": [0.5, 0.25],
                                "lag_s": 1.5, "lag_tilts": 1})
    assert "timing" in changed
    assert s.timing_rows == [(0.5, 1.5), (0.25, 1.5)] and s.processing_s == 0.25
    assert s.timing_text() == "processing per tilt: 0.25 s; reconstruction: 1 tilt behind (1.5 s)"
    with pytest.raises(PanelDataError, match="processing_s"):
        s.apply("event", {"event": "reconstruction_updated", "processing_s": "fast"})
