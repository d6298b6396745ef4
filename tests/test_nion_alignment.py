"""The Nion Swift panel's alignment line and data item (issue 7): the `alignment` status
message decoded by PanelState (bad fields refused by name, the state kept), and, in Swift's
own headless test machinery, the panel's line and a live [2, n] line-plot data item of the
shifts, sorted by angle, fed by a real StatusPublisher.

References: the published header's numbers (sorted by angle for the data item) and the
summary text built from them by hand.
"""

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
from fusetomo.ui.nion.state import PanelDataError, PanelState

ALIGNMENT = {
    "n_tilts": 5, "angles": [0.0, -20.0, 20.0, -40.0, 40.0],
    "shifts_px": [[0.0, 0.0], [0.412, -1.25], [-0.3, 1.1], [0.9, -2.4], [-0.7, 2.05]],
    "sources": ["centre", "previous", "previous", "reprojection", "refined"],
    "chem_own_px": {"0": [0.05, -0.02]}, "rotation_deg": 0.0, "axis_offset_px": 1.25,
    "refinements": 7, "model_refinements": 3, "last_update_px": 0.0123}
LINE = "alignment: axis offset +1.25 px · 3 model refinements · last update 0.0123 px"
SORTED_ANGLES = [-40.0, -20.0, 0.0, 20.0, 40.0]
SORTED_SHIFTS = np.array([[0.9, -2.4], [0.412, -1.25], [0.0, 0.0], [-0.3, 1.1],
                          [-0.7, 2.05]])


# -- the pure model ---------------------------------------------------------------------------
def test_state_shows_the_alignment_line() -> None:
    s = PanelState()
    assert s.alignment_text() == "alignment: —"
    changed = s.apply("alignment", {"series": "s1", "alignment": ALIGNMENT})
    assert changed == {"labels", "alignment"} and s.series == "s1"
    a = s.alignment
    assert a is not None and a.angles == (0.0, -20.0, 20.0, -40.0, 40.0)
    np.testing.assert_array_equal(a.shifts, ALIGNMENT["shifts_px"])
    assert (a.axis_offset_px, a.model_refinements, a.last_update_px) == (1.25, 3, 0.0123)
    assert s.alignment_text() == LINE


def test_state_refuses_a_bad_alignment_and_keeps_what_it_had() -> None:
    s = PanelState()
    s.apply("status", {"series": "s1", "state": "iterating", "iteration": 7})
    s.apply("alignment", {"series": "s1", "alignment": ALIGNMENT})
    kept = s.alignment
    for field, value, match in (
            ("axis_offset_px", "left", r"alignment: axis_offset_px .*got 'left'"),
            ("shifts_px", [[0.0, 0.0]] * 4 + [[1.0, "x"]], r"shifts_px\[4\] .*got \[1\.0, 'x'\]"),
            ("model_refinements", 1.5, r"model_refinements .*got 1\.5")):
        with pytest.raises(PanelDataError, match=match):
            s.apply("alignment", {"series": "s1", "alignment": dict(ALIGNMENT, **{field: value})})
        assert s.alignment is kept and s.alignment_text() == LINE
        assert (s.state, s.iteration) == ("iterating", 7)
    with pytest.raises(PanelDataError, match="alignment: expected an object, got list"):
        s.apply("alignment", {"series": "s1", "alignment": [1, 2]})
    # a new series starts without the old alignment
    s.apply("event", {"series": "s2", "event": "series_start"})
    assert s.alignment is None and s.alignment_text() == "alignment: —"


# -- in Nion Swift -----------------------------------------------------------------------------
try:
    from nion.swift.test import TestContext
except ImportError:  # the `nion` extra is not installed: the model tests above still run
    TestContext = None
needs_nion = pytest.mark.skipif(TestContext is None, reason="needs nionswift (extra `nion`)")


def _pump(dc, until: Callable[[], bool], publish: Callable[[], None],
          timeout_s: float = 10.0) -> None:
    """Run the document controller's task queue (as Swift's UI loop would) until `until`,
    publishing again meanwhile (a SUB misses what was published before it joined)."""
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the panel")
        publish()
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
            assert h.alignment_text_label.text == LINE
            model = dc.document_model
            item = h.alignment_item.item
            assert item in model.data_items and len(model.data_items) == 1
            assert item.title == ALIGNMENT_TITLE
            np.testing.assert_allclose(item.data, SORTED_SHIFTS.T)  # rows ds, dd
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
            np.testing.assert_allclose(item.data[:, :5], SORTED_SHIFTS.T)
            assert item.metadata["fusetomo"]["angles_deg"] == [*SORTED_ANGLES, 50.0]
            assert item.xdata.dimensional_calibrations[1].units in (None, "")
            assert "4 model refinements" in h.alignment_text_label.text
            assert [(la.data_row, la.label) for la in display.display_layers] == [
                (0, "ds"), (1, "dd")]
    finally:
        pub.close()
        zctx.term()
