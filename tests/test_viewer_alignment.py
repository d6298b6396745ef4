"""The live viewer's alignment panel (issue 7): the `alignment` status message decoded into
the ViewerState, bad fields refused by name with the state kept, a recorded run's
`alignment` events paired with its HAADF angles, and the window's plot of the shifts.

References: decoded values against the published header (and against the controller's own
`LiveAligner.status()`), a recorded run's alignment against the shifts written into its
events and the HAADF angles written as its tilts (in arrival order), the plotted curves
against the input sorted by angle.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before anything imports Qt

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fusetomo.adapters.protocol import (
    CHEM_TILT,
    EVENT,
    HAADF_TILT,
    SERIES_END,
    SERIES_START,
    STATUS,
    decode,
    encode,
    make,
)
from fusetomo.adapters.runfile import RunFile, read_run
from fusetomo.ui.viewer.model import ViewerModel
from fusetomo.ui.viewer.runsource import RecordedRun
from tests.alignment_status import ALIGNMENT, SORTED_ANGLES, SORTED_SHIFTS, SUMMARY

SERIES = "align-test"
ELEMENTS = ("Co", "O")


def roundtrip(topic: str, seq: int, **fields) -> tuple[str, dict]:
    """Build, encode and decode a published message, as the subscriber gets it."""
    return topic, decode(encode(make(STATUS, SERIES, seq, **fields))).header


# -- the model -----------------------------------------------------------------------------
def test_model_decodes_a_published_alignment() -> None:
    model = ViewerModel()
    assert model.apply(*roundtrip("alignment", 0, alignment=ALIGNMENT))
    s = model.view()
    a = s.alignment
    assert a is not None and s.series == SERIES and s.received == {"alignment": 1}
    assert a.angles == (0.0, -20.0, 20.0, -40.0, 40.0)
    np.testing.assert_array_equal(a.shifts, np.asarray(ALIGNMENT["shifts_px"]))
    assert a.shifts.shape == (5, 2) and not a.shifts.flags.writeable
    assert a.sources == ("centre", "previous", "previous", "reprojection", "refined")
    assert (a.axis_offset_px, a.model_refinements, a.last_update_px, a.rotation_deg) == (
        1.25, 3, 0.0123, 0.0)
    angles, shifts = a.by_angle()
    np.testing.assert_array_equal(angles, SORTED_ANGLES)
    np.testing.assert_array_equal(shifts, SORTED_SHIFTS)
    assert a.summary() == SUMMARY
    # Before the first model step the controller publishes nulls: shown as dashes.
    early = dict(ALIGNMENT, axis_offset_px=None, last_update_px=None, model_refinements=0)
    assert model.apply(*roundtrip("alignment", 1, alignment=early))
    assert model.view().alignment.summary() == \
        "axis offset — px · 0 model refinements · last update — px"


def test_model_decodes_the_live_aligners_own_status() -> None:
    """The controller's real status dict (a few tilts aligned at arrival) decodes as is."""
    from fusetomo.controller.live.aligner import LiveAligner

    aligner = LiveAligner()
    yy, xx = np.mgrid[0:16, 0:24]
    for angle, (ds, dd) in ((0.0, (0, 0)), (-15.0, (1, -2)), (15.0, (-1, 2))):
        blob = np.exp(-((yy - 8 - ds) ** 2 + (xx - 12 - dd) ** 2) / 8.0) + 0.01
        aligner.align_haadf(angle, blob.astype(np.float32), None)
    status = aligner.status()
    model = ViewerModel()
    assert model.apply(*roundtrip("alignment", 0, alignment=status)), model.view().errors
    a = model.view().alignment
    assert a is not None and a.angles == (0.0, -15.0, 15.0)
    np.testing.assert_array_equal(a.shifts, np.asarray(status["shifts_px"]))
    assert a.sources == tuple(status["sources"]) and a.sources[0] == "centre"
    assert a.model_refinements == status["model_refinements"] == 0


@pytest.mark.parametrize(("field", "value", "named", "got"), [
    ("angles", [0.0, "x", 20.0, -40.0, 40.0], "angles", "[0.0, 'x', 20.0"),
    ("shifts_px", [[0.0, 0.0], [0.3], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], "shifts_px[1]",
     "got [0.3]"),
    ("shifts_px", [[0.0, 0.0], [0.1, math.nan], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
     "shifts_px[1]", "got [0.1, nan]"),
    ("shifts_px", [[0.0, 0.0]], "shifts_px", "per angle (5), got [[0.0, 0.0]]"),
    ("shifts_px", None, "shifts_px", "got None"),
    ("axis_offset_px", "left", "axis_offset_px", "got 'left'"),
    ("last_update_px", math.inf, "last_update_px", "got inf"),
    ("rotation_deg", True, "rotation_deg", "got True"),
    ("model_refinements", -1, "model_refinements", "got -1"),
    ("model_refinements", 2.5, "model_refinements", "got 2.5"),
    ("n_tilts", 4, "n_tilts", "angles (5), got 4"),
    ("sources", ["centre"], "sources", "got ['centre']"),
])
def test_model_refuses_a_bad_field_by_name_and_keeps_its_state(field, value, named,
                                                              got) -> None:
    model = ViewerModel()
    model.apply(*roundtrip("status", 0, state="iterating", iteration=12,
                           costs={"haadf": 2.0, "chem": 1.0, "tv": 0.5},
                           haadf_angles=ALIGNMENT["angles"]))
    assert model.apply(*roundtrip("alignment", 1, alignment=ALIGNMENT))
    before = model.view()
    version = model.version
    bad = dict(ALIGNMENT, **{field: value})
    assert not model.apply("alignment", {"series": SERIES, "alignment": bad})
    s = model.view()
    assert model.version == version + 1
    assert s.errors[-1].startswith(f"alignment: {named} must be") and got in s.errors[-1]
    assert s.alignment is before.alignment  # the last good alignment is still shown
    assert s.alignment.summary() == SUMMARY
    assert (s.iteration, s.cost_iterations, s.costs["haadf"]) == (12, [12], [2.0])
    assert s.haadf_angles == ALIGNMENT["angles"]


def test_model_refuses_a_non_object_and_forgets_alignment_with_a_new_series() -> None:
    model = ViewerModel()
    assert model.apply(*roundtrip("alignment", 0, alignment=ALIGNMENT))
    assert not model.apply("alignment", {"alignment": "shifts"})
    assert model.view().errors[-1] == "alignment: expected an object, got str"
    assert not model.apply("alignment", {})
    assert model.view().errors[-1] == "alignment: expected an object, got NoneType"
    assert model.view().alignment is not None
    model.apply("event", decode(encode(make(EVENT, "another", 2, event="series_start")))
                .header)
    assert model.view().alignment is None and model.view().series == "another"


# -- a recorded run with alignment events --------------------------------------------------
NS, ND = 6, 8
# arrival order: (modality, angle), and the alignment event recorded after that tilt
PLAN = [("haadf", 0.0), ("chem", 0.0), ("haadf", -20.0), ("haadf", 20.0),
        ("haadf", -40.0), ("haadf", 40.0), ("chem", 40.0)]
EVENTS = {
    3: {"moved": 2, "iteration": 6, "axis_offset_px": None, "update_px": None,
        "shifts_px": [[0.0, 0.0], [0.5, -1.0]]},
    # after the fifth HAADF tilt the controller keeps the last 64 shifts: here the event
    # holds only the last four (as a cut would with more tilts), paired with -20..40
    6: {"moved": 4, "iteration": 15, "axis_offset_px": -0.75, "update_px": 0.031,
        "shifts_px": [[0.4, -1.2], [-0.2, 1.0], [0.8, -2.2], [-0.6, 2.1]]},
    # an event that does not decode: the viewer keeps showing the previous one
    7: {"moved": 1, "iteration": 18, "axis_offset_px": "?", "update_px": 0.02,
        "shifts_px": [[0.0, 0.0]]},
}


def write_run(path: Path) -> Path:
    rng = np.random.default_rng(7)
    start = make(SERIES_START, SERIES, 0, elements=list(ELEMENTS), Z={"Co": 27, "O": 8},
                 shape=[NS, ND], scheme={"haadf_angles": [0.0, -20.0, 20.0, -40.0, 40.0],
                                         "chem_angles": [0.0, 40.0], "order": "sequential"},
                 dose_budget_e_per_A2=500.0, pixel_size_nm=1.0)
    with RunFile.create(path, start, durable=False) as run:
        for seq, (mod, angle) in enumerate(PLAN, start=1):
            if mod == "haadf":
                msg = make(HAADF_TILT, SERIES, seq, [rng.random((NS, ND), np.float32)],
                           angle=angle, dose_e_per_A2=10.0)
            else:
                msg = make(CHEM_TILT, SERIES, seq,
                           [rng.random((NS, ND), np.float32) for _ in ELEMENTS],
                           angle=angle, dose_e_per_A2=40.0, elements=list(ELEMENTS))
            run.record_tilt(msg)
            time.sleep(0.002)  # event and tilt times apart even on a coarse clock
            if seq in EVENTS:  # as controller/live.py `_refine_alignment` records them
                run.record_event("alignment", **EVENTS[seq])
                time.sleep(0.002)
        run.mark_complete(make(SERIES_END, SERIES, len(PLAN) + 1, n_haadf=5, n_chem=2))
    return path


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("viewer-align") / "run.h5")


def test_recorded_run_pairs_alignment_events_with_haadf_angles(run_path: Path) -> None:
    rec = read_run(run_path)
    assert [e["kind"] for e in rec.events].count("alignment") == 3
    run = RecordedRun(run_path)
    assert run.n_tilts == 7
    # before the first event (recorded after tilt 3, the second HAADF image): nothing
    for k in (0, 1, 2):
        assert run.state_at(k).alignment is None
    for k in (3, 4, 5):  # the first event, until the next one
        a = run.state_at(k).alignment
        assert a is not None and a.angles == (0.0, -20.0)
        np.testing.assert_array_equal(a.shifts, [[0.0, 0.0], [0.5, -1.0]])
        assert a.summary() == "axis offset — px · — model refinements · last update — px"
    for k in (6, 7):  # the second; the third does not decode and is skipped
        a = run.state_at(k).alignment
        assert a is not None and a.angles == (-20.0, 20.0, -40.0, 40.0)
        np.testing.assert_array_equal(a.shifts, EVENTS[6]["shifts_px"])
        assert (a.axis_offset_px, a.last_update_px, a.sources) == (-0.75, 0.031, ())
    angles, shifts = run.state_at().alignment.by_angle()
    np.testing.assert_array_equal(angles, [-40.0, -20.0, 20.0, 40.0])
    np.testing.assert_array_equal(shifts, [[0.8, -2.2], [0.4, -1.2], [-0.2, 1.0],
                                           [-0.6, 2.1]])
    assert run.state_at().alignment.summary() == \
        "axis offset -0.75 px · — model refinements · last update 0.031 px"


def test_recorded_angles_are_taken_as_recorded(tmp_path: Path, monkeypatch) -> None:
    """Run files since issue 7 record the angles with the shifts: those are shown, not the
    pairing with the HAADF tilts received before (here deliberately different)."""
    events = dict(EVENTS)
    events[6] = {**EVENTS[6], "angles": [40.0, -40.0, 20.0, -20.0]}
    monkeypatch.setattr(sys.modules[__name__], "EVENTS", events)
    run = RecordedRun(write_run(tmp_path / "run.h5"))
    a = run.state_at().alignment
    assert a is not None and a.angles == (40.0, -40.0, 20.0, -20.0)
    np.testing.assert_array_equal(a.shifts, EVENTS[6]["shifts_px"])
    assert run.state_at(4).alignment.angles == (0.0, -20.0)  # the older event: paired


# -- the window ----------------------------------------------------------------------------
pg = pytest.importorskip("pyqtgraph")
pytest.importorskip("PySide6.QtWidgets")

from PySide6 import QtGui, QtWidgets  # noqa: E402 (after the skip: the `viewer` extra)


@pytest.fixture(scope="module")
def qapp() -> QtWidgets.QApplication:
    pg.setConfigOptions(imageAxisOrder="row-major")
    return pg.mkQApp("fusetomo-test")


def _png(path: Path) -> np.ndarray:
    img = QtGui.QImage(str(path))
    assert not img.isNull(), f"{path} is not a readable image"
    img = img.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    w, h = img.width(), img.height()
    raw = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h)
    # A copy: the view into the QImage's buffer dangles once the QImage is gone.
    return raw.reshape(h, img.bytesPerLine())[:, :w * 3].reshape(h, w, 3).copy()


def _has_colour(img: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(np.all(img == np.asarray(rgb, np.uint8), axis=-1).sum())


def test_window_plots_the_shifts_sorted_by_angle(qapp, tmp_path: Path) -> None:
    from fusetomo.ui.viewer.window import SHIFT_COLOURS, ViewerWindow

    model = ViewerModel()
    win = ViewerWindow(model, refresh_ms=50)
    try:
        win.resize(1000, 800)
        win.save_screenshot(tmp_path / "none.png")
        assert win.align_plot.isHidden()  # no alignment: the other plots keep the room
        assert win.align_plot.curves["ds"].getData()[0] is None
        before = _png(tmp_path / "none.png")

        model.apply(*roundtrip("alignment", 0, alignment=ALIGNMENT))
        assert win.save_screenshot(tmp_path / "align.png") == (1000, 800)
        assert not win.align_plot.isHidden()
        for j, name in enumerate(("ds", "dd")):
            x, y = win.align_plot.curves[name].getData()
            np.testing.assert_array_equal(x, SORTED_ANGLES)
            np.testing.assert_array_equal(y, np.asarray(SORTED_SHIFTS)[:, j])
        assert win.align_plot.label.text() == SUMMARY
        assert win.align_plot.plot.getPlotItem().titleLabel.text == "alignment"
        # The markers are drawn: their colours appear in the screenshot, not before.
        img = _png(tmp_path / "align.png")
        for colour in SHIFT_COLOURS.values():
            assert _has_colour(before, colour) == 0 and _has_colour(img, colour) > 0
    finally:
        win.shutdown()
        win.close()


def test_run_screenshot_with_alignment(qapp, run_path: Path, tmp_path: Path, capsys) -> None:
    from fusetomo.cli import main
    from fusetomo.ui.viewer.window import ViewerWindow

    win = ViewerWindow(ViewerModel(), run=RecordedRun(run_path), refresh_ms=50)
    try:
        win.show_tilt_now(4)
        x, y = win.align_plot.curves["dd"].getData()
        np.testing.assert_array_equal(x, [-20.0, 0.0])
        np.testing.assert_array_equal(y, [-1.0, 0.0])
        win.show_tilt_now(2)
        assert win.align_plot.isHidden() and win.model.view().alignment is None
    finally:
        win.shutdown()
        win.close()
    out = tmp_path / "run.png"
    code = main(["view", "--run", str(run_path), "--screenshot", str(out), "--size",
                 "900x700"])
    assert code == 0, capsys.readouterr().err
    img = _png(out)
    assert img.shape == (700, 900, 3) and float(img.std()) > 0
    assert "tilt 7/7" in capsys.readouterr().out
