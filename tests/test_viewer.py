"""The live viewer (`fusetomo view`): the state model fed by protocol messages, a recorded
run seen tilt by tilt, offscreen screenshots of a run and of a live controller's status,
and the advisor buttons sending `operator` commands.

References: slice values are checked against q * vmax / 255 of the quantised lists that
were published (exact in float32 to 1e-6 relative), recorded-run views against the
volumes, angles and doses written into the run file, and sent operator commands against
the decoded message a fake controller received.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before anything imports Qt

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyqtgraph")
pytest.importorskip("PySide6.QtWidgets")

import pyqtgraph as pg
import zmq
from PySide6 import QtGui, QtWidgets
from threads import CheckedThread

from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    EVENT,
    HAADF_TILT,
    SERIES_END,
    SERIES_START,
    STATUS,
    ProtocolError,
    decode,
    encode,
    make,
)
from fusetomo.adapters.runfile import RunFile
from fusetomo.adapters.transport import StatusPublisher
from fusetomo.cli import main
from fusetomo.ui.viewer.model import ViewerModel, ViewerState
from fusetomo.ui.viewer.panels import status_text
from fusetomo.ui.viewer.render import ELEMENT_COLOURS, rgb_overlay
from fusetomo.ui.viewer.runsource import RecordedRun
from fusetomo.ui.viewer.subscriber import SubscriberThread
from fusetomo.ui.viewer.window import ViewerWindow

SERIES = "viewer-test"
ELEMENTS = ("Co", "O")
RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def qapp() -> QtWidgets.QApplication:
    pg.setConfigOptions(imageAxisOrder="row-major")
    return pg.mkQApp("fusetomo-test")


def roundtrip(topic: str, mtype: str, seq: int, **fields) -> tuple[str, dict]:
    """Build, encode and decode a published message, as the subscriber gets it."""
    return topic, decode(encode(make(mtype, SERIES, seq, **fields))).header


def quantised(shape: tuple[int, int]) -> list[list[int]]:
    return RNG.integers(0, 256, size=shape).tolist()


def slices_doc(vmax: dict[str, float], n: int = 8, ns: int = 6) -> dict:
    return {e: {"vmax": v, "s": quantised((n, n)), "u": quantised((ns, n)),
                "v": quantised((ns, n))} for e, v in vmax.items()}


def status_fields(iteration: int, costs: dict, **extra) -> dict:
    return {"state": "iterating", "iteration": iteration, "costs": costs, "haadf_tilts": 5,
            "chem_tilts": 2, "planned_haadf": 41, "planned_chem": 9,
            "dose_e_per_A2": {"haadf": 50.0, "chem": 120.0, "total": 170.0},
            "last_seq": 7, "owed_iterations": 0, "latency_s": 0.42, "processing_s": 0.31,
            "lag_s": 4.04, "lag_tilts": 2, **extra}


def advice_doc(aid: int, **extra) -> dict:
    return {"id": aid, "tilt_seq": 6, "angle": 15.0, "action": "acquire_now",
            "reason": "gain 0.8 nats per e/A2 above threshold 0.3", "gain_per_dose": 0.8,
            "best_angle": 30.0, "candidates": [{"angle": 15.0, "gain_per_dose": 0.8},
                                               {"angle": 30.0, "gain_per_dose": 1.1}],
            "chem_maps_used": 2, "chem_maps_budget": 9, "chem_dose_used": 120.0,
            "chem_dose_budget": 600.0, "mode": "manual", "answer": None, "decision": None,
            **extra}


# -- (a) the model -------------------------------------------------------------------------
def test_model_folds_status_slices_and_advice() -> None:
    model = ViewerModel()
    seq = iter(range(100))
    for it, c in ((1, {"haadf": 9.0, "chem": 5.0, "tv": 1.0}),
                  (2, {"haadf": 7.0, "chem": 4.0, "tv": 1.5}),
                  (2, {"haadf": 6.5, "chem": 3.9, "tv": 1.6}),  # same iteration: replaced
                  (3, {"haadf": 6.0, "chem": 3.5})):  # a term missing: NaN
        assert model.apply(*roundtrip("status", STATUS, next(seq), **status_fields(
            it, c, haadf_angles=[-60.0, -30.0, 0.0, 30.0, 60.0], chem_angles=[0.0, 30.0],
            dose_budget_e_per_A2=1000.0, chem_maps_budget=9, advice_mode="manual",
            operator_endpoint="tcp://127.0.0.1:5999")))
    doc = slices_doc({"Co": 2.5, "O": 0.75})
    std = slices_doc({"Co": 0.1, "O": 0.05})
    assert model.apply(*roundtrip("slices", STATUS, next(seq), iteration=3, slices=doc,
                                  std_slices=std, std_iteration=2))
    s = model.view()
    assert (s.series, s.state, s.iteration) == (SERIES, "iterating", 3)
    assert s.cost_iterations == [1, 2, 3]
    assert s.costs["haadf"] == [9.0, 6.5, 6.0] and s.costs["chem"] == [5.0, 3.9, 3.5]
    assert s.costs["tv"][:2] == [1.0, 1.6] and np.isnan(s.costs["tv"][2])
    assert (s.haadf_tilts, s.chem_tilts, s.planned_haadf, s.planned_chem) == (5, 2, 41, 9)
    assert s.dose == {"haadf": 50.0, "chem": 120.0, "total": 170.0}
    assert (s.dose_budget, s.chem_maps_budget, s.latency_s) == (1000.0, 9, 0.42)
    assert (s.processing_s, s.lag_s, s.lag_tilts) == (0.31, 4.04, 2)
    text = status_text(s)
    assert "processing 0.31 s/tilt" in text and "lag 2 tilts (4.0 s)" in text
    assert s.haadf_angles == [-60.0, -30.0, 0.0, 30.0, 60.0] and s.chem_angles == [0.0, 30.0]
    assert (s.advice_mode, s.operator_endpoint) == ("manual", "tcp://127.0.0.1:5999")
    assert s.elements == ELEMENTS and (s.slices_iteration, s.std_iteration) == (3, 2)
    for src, got in ((doc, s.slices), (std, s.std_slices)):
        for e in ELEMENTS:
            assert got[e].vmax == src[e]["vmax"]
            for p in ("s", "u", "v"):
                want = np.asarray(src[e][p], np.float64) * src[e]["vmax"] / 255
                np.testing.assert_allclose(got[e].plane(p), want, rtol=1e-6)
    assert s.slices["Co"].u.shape == (6, 8) and s.slices["Co"].s.shape == (8, 8)

    # Advice: the newest id wins, an answered one is no longer open.
    assert model.apply(*roundtrip("advice", STATUS, next(seq), advice=advice_doc(4)))
    adv = model.view().advice
    assert adv is not None and adv.open and (adv.id, adv.action, adv.angle) == (4, "acquire_now",
                                                                               15.0)
    assert adv.candidates == ((15.0, 0.8), (30.0, 1.1)) and adv.chem_dose_budget == 600.0
    assert model.apply(*roundtrip("advice", STATUS, next(seq), advice=advice_doc(
        4, answer="accept", decision="acquire")))
    assert model.apply(*roundtrip("advice", STATUS, next(seq), advice=advice_doc(3)))
    adv = model.view().advice
    assert adv is not None and (adv.id, adv.answer, adv.decision, adv.open) == (
        4, "accept", "acquire", False)

    # A controller resumed from iteration 2: the history after it is dropped.
    model.apply(*roundtrip("status", STATUS, next(seq), **status_fields(
        2, {"haadf": 8.0, "chem": 4.5, "tv": 1.2})))
    s = model.view()
    assert s.cost_iterations == [1, 2] and s.costs["haadf"] == [9.0, 8.0]
    assert s.received == {"status": 5, "slices": 1, "advice": 3}


def test_model_refuses_bad_slices_and_keeps_its_state() -> None:
    model = ViewerModel()
    good = slices_doc({"Co": 1.0})
    model.apply(*roundtrip("slices", STATUS, 0, iteration=5, slices=good))
    bad = slices_doc({"Co": 1.0})
    bad["Co"]["u"][0][0] = 300  # not a quantised value
    version = model.version
    assert not model.apply(*roundtrip("slices", STATUS, 1, iteration=6, slices=bad))
    s = model.view()
    assert model.version == version + 1 and s.slices_iteration == 5
    assert "slices.Co.u" in s.errors[-1] and s.errors[-1].endswith("got 300.0")
    np.testing.assert_allclose(s.slices["Co"].u, np.asarray(good["Co"]["u"]) / 255, rtol=1e-6)
    assert not model.apply(*roundtrip("status", STATUS, 2, iteration=1, costs={},
                                      haadf_angles=[0.0, "x"]))
    assert "haadf_angles" in model.view().errors[-1]
    # A new series on the event topic forgets the old one's slices and costs.
    model.apply(*roundtrip("status", STATUS, 3, iteration=4, costs={"haadf": 1.0}))
    model.apply("event", decode(encode(make(EVENT, "another", 4, event="series_start")))
                .header)
    s = model.view()
    assert (s.series, s.slices, s.cost_iterations, s.last_event) == (
        "another", {}, [], "series_start")


def test_rgb_overlay_adds_element_colours() -> None:
    model = ViewerModel()
    doc = {"Co": {"vmax": 2.0, "s": [[255, 0], [0, 0]], "u": [[0]], "v": [[0]]},
           "O": {"vmax": 4.0, "s": [[255, 255], [0, 0]], "u": [[0]], "v": [[0]]}}
    model.apply(*roundtrip("slices", STATUS, 0, iteration=1, slices=doc))
    rgb = rgb_overlay(model.view().slices, ELEMENTS, "s")
    red, green = np.asarray(ELEMENT_COLOURS[0]), np.asarray(ELEMENT_COLOURS[1])
    np.testing.assert_array_equal(rgb[0, 0], np.clip(red + green, 0, 255))
    np.testing.assert_array_equal(rgb[0, 1], green)
    np.testing.assert_array_equal(rgb[1], 0)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)


# -- a small recorded run (written directly, no solver) ------------------------------------
NS, ND = 6, 8
HAADF_DOSE, CHEM_DOSE = 10.0, 40.0
# arrival order: (modality, angle); a chemical tilt follows its simultaneous HAADF image
PLAN = [("haadf", -60.0), ("haadf", 0.0), ("chem", 0.0), ("haadf", 60.0), ("chem", 60.0)]


def _volumes(value: float) -> dict[str, np.ndarray]:
    ramp = np.arange(NS * ND * ND, dtype=np.float32).reshape(NS, ND, ND) / (NS * ND * ND)
    return {e: (value + i) * (1 + ramp) for i, e in enumerate(ELEMENTS)}


def write_run(path: Path) -> Path:
    start = make(SERIES_START, SERIES, 0, elements=list(ELEMENTS), Z={"Co": 27, "O": 8},
                 shape=[NS, ND], scheme={"haadf_angles": [-60.0, 0.0, 60.0],
                                         "chem_angles": [0.0, 60.0], "order": "sequential"},
                 dose_budget_e_per_A2=500.0, pixel_size_nm=1.0)
    it = 0
    with RunFile.create(path, start, durable=False) as run:
        for seq, (mod, angle) in enumerate(PLAN, start=1):
            if mod == "haadf":
                msg = make(HAADF_TILT, SERIES, seq, [RNG.random((NS, ND), np.float32)],
                           angle=angle, dose_e_per_A2=HAADF_DOSE)
            else:
                msg = make(CHEM_TILT, SERIES, seq,
                           [RNG.random((NS, ND), np.float32) for _ in ELEMENTS],
                           angle=angle, dose_e_per_A2=CHEM_DOSE, elements=list(ELEMENTS))
            run.record_tilt(msg)
            for _ in range(2):
                it += 1
                run.record_costs(it, {"haadf": 10.0 / it, "chem": 5.0 / it, "tv": 1.0 + it,
                                      "n_haadf": run.haadf_count, "n_chem": run.chem_count})
            if mod == "chem":
                run.record_snapshot(it, _volumes(float(seq)))
            if seq == 2:  # as controller/live.py records them: fields at the top level
                adv = advice_doc(1, tilt_seq=2, angle=0.0)
                del adv["candidates"]
                run.record_event("advice", **adv)
                run.record_event("advice_decision", advice_id=1, answer="accept",
                                 decision="acquire", angle=0.0)
        run.record_std_error(it, {e: v / 10 for e, v in _volumes(1.0).items()})
        run.mark_complete(make(SERIES_END, SERIES, len(PLAN) + 1, n_haadf=3, n_chem=2))
        run.record_snapshot(it + 1, _volumes(9.0), final=True)
    return path


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("viewer") / "run.h5")


def test_recorded_run_state_at_each_tilt(run_path: Path) -> None:
    run = RecordedRun(run_path)
    assert run.n_tilts == 5 and run.elements == ELEMENTS and run.dose_budget == 500.0
    s0 = run.state_at(0)
    assert (s0.haadf_angles, s0.chem_angles, s0.slices, s0.cost_iterations) == ([], [], {}, [])
    s2 = run.state_at(2)  # two HAADF images, no chemical tilt, no snapshot yet
    assert s2.haadf_angles == [-60.0, 0.0] and s2.chem_angles == [] and s2.slices == {}
    assert s2.dose == {"haadf": 20.0, "chem": 0.0, "total": 20.0}
    assert s2.cost_iterations == [1, 2, 3, 4]
    np.testing.assert_allclose(s2.costs["haadf"], [10.0 / i for i in (1, 2, 3, 4)])
    s3 = run.state_at(3)  # the first chemical tilt and its snapshot (made at seq 3)
    assert s3.chem_angles == [0.0] and s3.slices_iteration == 6
    assert (s3.planned_haadf, s3.planned_chem) == (3, 2)
    want = _volumes(3.0)
    for e in ELEMENTS:
        # a preview snapshot: rounded to half a step of max / 2^12 (adapters/runfile/storage.py)
        tol = {"rtol": 0, "atol": float(np.abs(want[e]).max()) / 2**13}
        np.testing.assert_allclose(s3.slices[e].s, want[e][NS // 2], **tol)
        np.testing.assert_allclose(s3.slices[e].u, want[e][:, ND // 2, :], **tol)
        np.testing.assert_allclose(s3.slices[e].v, want[e][:, :, ND // 2], **tol)
        assert s3.slices[e].vmax == pytest.approx(float(max(
            want[e][NS // 2].max(), want[e][:, ND // 2].max(), want[e][:, :, ND // 2].max())),
            abs=tol["atol"])
    assert s3.std_slices == {}  # the error map was made after the last tilt
    assert s3.advice is not None and (s3.advice.id, s3.advice.angle) == (1, 0.0)
    assert (s3.advice.answer, s3.advice.decision, s3.advice.open) == ("accept", "acquire",
                                                                      False)
    assert run.state_at(1).advice is None  # made after tilt seq 2
    s5 = run.state_at()
    assert s5.dose == {"haadf": 30.0, "chem": 80.0, "total": 110.0}
    assert s5.state == "complete" and s5.slices_iteration == 11  # the final snapshot
    np.testing.assert_allclose(s5.slices["O"].s, _volumes(9.0)["O"][NS // 2])
    se = _volumes(1.0)["Co"] / 10  # a preview: 10 bits (adapters/runfile/storage.py)
    np.testing.assert_allclose(s5.std_slices["Co"].s, se[NS // 2], rtol=0,
                               atol=float(se.max()) / 2**11)
    assert "tilt 5/5" in (s5.caption or "")
    with pytest.raises(ValueError, match=r"tilt 6 outside 0\.\.5"):
        run.state_at(6)


# -- (b) screenshot of a recorded run ------------------------------------------------------
def _png(path: Path) -> np.ndarray:
    img = QtGui.QImage(str(path))
    assert not img.isNull(), f"{path} is not a readable image"
    img = img.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    w, h = img.width(), img.height()
    raw = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h)
    return raw.reshape(h, img.bytesPerLine())[:, :w * 3].reshape(h, w, 3)


def test_view_run_screenshot(qapp, run_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run.png"
    code = main(["view", "--run", str(run_path), "--screenshot", str(out), "--size",
                 "900x640", "--tilt", "3"])
    assert code == 0, capsys.readouterr().err
    img = _png(out)
    assert img.shape == (640, 900, 3) and float(img.std()) > 0
    assert "tilt 3/5" in capsys.readouterr().out
    # Unknown elements and tilts beyond the run are refused, naming the value.
    assert main(["view", "--run", str(run_path), "--screenshot", str(out),
                 "--element", "Au"]) == 2
    assert "no element 'Au'" in capsys.readouterr().err
    assert main(["view", "--run", str(run_path), "--screenshot", str(out), "--tilt", "9"]) == 2
    assert "holds 5 tilts" in capsys.readouterr().err


def test_run_slider_loads_tilts_off_the_ui_thread(qapp, run_path: Path) -> None:
    model = ViewerModel()
    run = RecordedRun(run_path)
    win = ViewerWindow(model, run=run, refresh_ms=20)
    try:
        assert win.slider is not None and win.slider.maximum() == 5
        for k in (1, 4, 2):  # only the last request needs to be served
            win.slider.setValue(k)
        deadline = time.monotonic() + 10
        while model.view().haadf_tilts != 2 and time.monotonic() < deadline:
            qapp.processEvents()
            time.sleep(0.01)
        qapp.processEvents()
        win.refresh()
        s = model.view()
        assert (s.haadf_tilts, s.chem_tilts, s.haadf_angles) == (2, 0, [-60.0, 0.0])
        assert "tilt 2/5" in win.slider_label.text()
        assert not win.accept_button.isEnabled() and not win.force_button.isEnabled()
    finally:
        win.shutdown()
        win.close()


# -- (c) live: a real StatusPublisher -> the viewer ----------------------------------------
class Publisher:
    """Publishes a status, slices and advice message every 50 ms until stopped (a SUB that
    connects late misses what was sent before: PUB/SUB's slow joiner)."""

    def __init__(self, iteration: int, slices: dict) -> None:
        self.pub = StatusPublisher()
        self.endpoint = self.pub.endpoint
        self.iteration, self.slices = iteration, slices
        self.stop = threading.Event()
        self.thread = CheckedThread(self._loop, name="publisher")

    def _loop(self) -> None:
        seq = 0
        while not self.stop.is_set():
            for topic, fields in (
                    ("status", status_fields(self.iteration, {"haadf": 3.0, "chem": 2.0,
                                                              "tv": 0.5},
                                             haadf_angles=[-30.0, 0.0], chem_angles=[0.0],
                                             dose_budget_e_per_A2=400.0)),
                    ("slices", {"iteration": self.iteration, "slices": self.slices}),
                    ("advice", {"advice": advice_doc(2)})):
                self.pub.publish(topic, make(STATUS, SERIES, seq, **fields))
                seq += 1
            time.sleep(0.05)

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        try:
            self.thread.finish(5)
        finally:
            self.pub.close()


def test_live_viewer_receives_and_renders(qapp, tmp_path: Path) -> None:
    doc = slices_doc({"Co": 3.0, "O": 1.5}, n=16, ns=12)
    with Publisher(42, doc) as pub:
        model = ViewerModel()
        win = ViewerWindow(model, refresh_ms=50)
        win.resize(1000, 700)
        win.show()
        sub = SubscriberThread(pub.endpoint, model, poll_ms=20)
        got: list[str] = []
        sub.received.connect(lambda topic, _version: got.append(topic))
        sub.start()
        try:
            deadline = time.monotonic() + 15
            while not (model.view().slices and model.view().advice) \
                    and time.monotonic() < deadline:
                qapp.processEvents()
                time.sleep(0.01)
            size = win.save_screenshot(tmp_path / "live.png")
        finally:
            sub.stop()
            win.shutdown()
            win.close()
    s = model.view()
    assert s.iteration == 42 and s.slices_iteration == 42 and s.series == SERIES
    assert s.cost_iterations == [42] and s.costs["haadf"] == [3.0]
    np.testing.assert_allclose(s.slices["O"].s, np.asarray(doc["O"]["s"]) * 1.5 / 255,
                               rtol=1e-6)
    assert s.advice is not None and s.advice.id == 2 and s.dose_budget == 400.0
    qapp.processEvents()
    assert {"status", "slices"} <= set(got)  # signals reached the UI thread
    img = _png(tmp_path / "live.png")
    assert size == (1000, 700) and img.shape == (700, 1000, 3) and float(img.std()) > 0


def test_cli_live_screenshot(qapp, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-live.png"
    with Publisher(17, slices_doc({"Co": 2.0, "O": 1.0})) as pub:
        code = main(["view", "--connect", pub.endpoint, "--screenshot", str(out), "--wait",
                     "15", "--size", "800x600", "--element", "O"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "iteration 17" in captured.out
    img = _png(out)
    assert img.shape == (600, 800, 3) and float(img.std()) > 0


# -- (d) the advisor buttons -----------------------------------------------------------------
class FakeRouter:
    """A controller's operator socket: records each decoded `operator` message and replies
    `ack` done (or rejected for action `skip`)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: list[dict] = []
        self.stop = threading.Event()
        self.thread = CheckedThread(self._loop, name="operator-router", start=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            peer, *frames = self.sock.recv_multipart()
            try:
                h = decode(frames).header
            except ProtocolError as e:  # a protocol module that does not know `operator` yet
                if e.code != "unknown_type":
                    raise
                h = json.loads(frames[0])
            self.received.append(h)
            status = "rejected" if h["action"] == "skip" else "done"
            reply = make(ACK, "*", h["seq"], ack_seq=h["id"], status=status,
                         reason="advice already answered" if status == "rejected" else "")
            self.sock.send_multipart([peer, *encode(reply)])

    def close(self) -> None:
        self.stop.set()
        try:
            self.thread.finish(5)
        finally:
            self.sock.close(0)
            self.ctx.term()


def _wait_reply(qapp, win: ViewerWindow, n: int, router: FakeRouter) -> None:
    deadline = time.monotonic() + 10
    while (len(router.received) < n or win._sending) and time.monotonic() < deadline:
        qapp.processEvents()
        time.sleep(0.01)


def test_advice_buttons_send_operator_commands(qapp) -> None:
    router = FakeRouter()
    model = ViewerModel()
    model.apply(*roundtrip("status", STATUS, 0, **status_fields(
        3, {}, operator_endpoint=router.endpoint)))
    model.apply(*roundtrip("advice", STATUS, 1, advice=advice_doc(7)))
    win = ViewerWindow(model, refresh_ms=20)
    try:
        win.refresh(force=True)
        assert win.accept_button.isEnabled() and win.skip_button.isEnabled()
        win.accept_button.click()
        assert not win.accept_button.isEnabled()  # one command at a time
        _wait_reply(qapp, win, 1, router)
        h = router.received[0]
        assert (h["type"], h["action"], h["advice_id"]) == ("operator", "accept", 7)
        assert win.last_reply is not None and win.last_reply[1]["ack_seq"] == h["id"]
        assert "accept: done" in win.reply_label.text()
        win.skip_button.click()
        _wait_reply(qapp, win, 2, router)
        assert (router.received[1]["action"], router.received[1]["advice_id"]) == ("skip", 7)
        assert "rejected" in win.reply_label.text() and "already answered" in \
            win.reply_label.text()
        win.force_button.click()
        _wait_reply(qapp, win, 3, router)
        assert router.received[2]["action"] == "force"
        assert "advice_id" not in router.received[2]
        # Once answered, Accept and Skip are off; Force stays available.
        model.apply(*roundtrip("advice", STATUS, 2, advice=advice_doc(7, answer="accept")))
        win.refresh()
        assert not win.accept_button.isEnabled() and win.force_button.isEnabled()
    finally:
        win.shutdown()
        win.close()
        router.close()


def test_view_state_defaults_draw_without_data(qapp, tmp_path: Path) -> None:
    """A window with nothing received yet draws (and grabs) without errors."""
    win = ViewerWindow(ViewerModel(ViewerState()), refresh_ms=50)
    try:
        win.resize(640, 480)
        assert win.save_screenshot(tmp_path / "empty.png") == (640, 480)
        assert "no series yet" in win.status_label.text()
    finally:
        win.shutdown()
        win.close()


def test_view_names_the_missing_extra_and_display(run_path: Path, monkeypatch,
                                                  capsys) -> None:
    import fusetomo.cli.view as cli_view

    real = cli_view.importlib.import_module

    def no_pyqtgraph(name: str, *a, **k):
        if name == "pyqtgraph":
            raise ImportError("No module named 'pyqtgraph'")
        return real(name, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(cli_view.importlib, "import_module", no_pyqtgraph)
        assert main(["view", "--run", str(run_path), "--screenshot", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "'viewer' extra" in err and "pip install 'fusetomo[viewer]'" in err
    assert "No module named 'pyqtgraph'" in err
    for var in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_view.sys, "platform", "linux")
    assert main(["view", "--run", str(run_path)]) == 2
    assert "no display" in capsys.readouterr().err
    assert main(["view", "--connect", "localhost:5555"]) == 2  # argparse: not an address
    assert "not a ZeroMQ address" in capsys.readouterr().err


def test_refcount_guard_keeps_singletons_alive(qapp) -> None:
    """PySide6 6.12.0 on CPython 3.11 drops a reference to True per Python-side emit and
    to None per Python slot call; the window's guard must keep both above where they
    started (a no-op where the bug is absent)."""
    from PySide6 import QtCore

    from fusetomo.ui.viewer.qtcompat import RefcountGuard

    guard = RefcountGuard.install()

    class Emitter(QtCore.QObject):
        sig = QtCore.Signal(int)

    calls: list[int] = []
    e = Emitter()
    e.sig.connect(calls.append)
    start = {k: sys.getrefcount(k) for k in (None, True)}
    for i in range(5000):  # more than True's whole count (~600) when the bug is there
        e.sig.emit(i)
        if i % 100 == 0:
            guard.top_up()
    guard.top_up()
    assert len(calls) == 5000
    for k, n in start.items():
        assert sys.getrefcount(k) >= n - 5, (k, n, sys.getrefcount(k), guard.active)
