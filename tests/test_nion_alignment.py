"""The Nion Swift panel's alignment line (issue 7): the `alignment` status message decoded
by PanelState (bad fields refused by name, the state kept). The panel itself, in Swift's
headless test machinery, is tested in test_nion_panel.py.

References: the published header's numbers (sorted by angle for the data item) and the
summary text built from them by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusetomo.ui.nion.state import PanelDataError, PanelState
from tests.alignment_status import ALIGNMENT, SUMMARY

LINE = f"alignment: {SUMMARY}"


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
