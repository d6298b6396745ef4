"""The viewer window's panels (pyqtgraph on PySide6): the dose bar, the polar plot of tilt
angles, the alignment panel, the advice box, and the texts of the advice and the status
line. The slice grid is in `slicegrid`, the cost plots in `costplot`."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from fusetomo.ui.viewer.model import Advice, ViewerState
from fusetomo.ui.viewer.render import polar_rays
from fusetomo.ui.viewer.units import DOSE_UNIT

HAADF_COLOUR, CHEM_COLOUR = (110, 170, 255), (255, 90, 60)
SHIFT_COLOURS = {"ds": (250, 190, 40), "dd": (0, 210, 210)}  # the columns of shifts_px


class DoseBar(pg.PlotWidget):
    """Dose used (HAADF, then chemical, stacked) against the budget line."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMaximumHeight(120)
        self.hideAxis("left")
        self.setLabel("bottom", f"dose ({DOSE_UNIT})")
        self.setMouseEnabled(x=False, y=False)
        self.bars = {m: pg.BarGraphItem(x0=[0.0], width=[0.0], y=[0.0], height=0.6,
                                        brush=pg.mkBrush(c), pen=pg.mkPen(None))
                     for m, c in (("haadf", HAADF_COLOUR), ("chem", CHEM_COLOUR))}
        for b in self.bars.values():
            self.addItem(b)
        self.budget = pg.InfiniteLine(angle=90, pen=pg.mkPen("w", width=2,
                                                             style=QtCore.Qt.PenStyle.DashLine))
        self.addItem(self.budget)
        self.setYRange(-0.5, 0.5, padding=0)

    def draw(self, state: ViewerState) -> None:
        h = float(state.dose.get("haadf", 0.0))
        c = float(state.dose.get("chem", 0.0))
        total = float(state.dose.get("total", h + c))
        self.bars["haadf"].setOpts(x0=[0.0], width=[h])
        self.bars["chem"].setOpts(x0=[h], width=[c])
        budget = state.dose_budget
        self.budget.setVisible(budget is not None)
        if budget is not None:
            self.budget.setValue(budget)
        top = max(total, budget or 0.0, 1e-9)
        self.setXRange(0, top * 1.05, padding=0)
        frac = f" ({100 * total / budget:.0f} %)" if budget else ""
        self.setTitle(f"dose {total:.3g} / {'?' if budget is None else f'{budget:.3g}'} {DOSE_UNIT}"
                      f"{frac} — HAADF {h:.3g}, chemical {c:.3g}", size="9pt")


class PolarAngles(pg.PlotWidget):
    """Tilt angles taken per modality as rays (0 deg up), the stage's current angle and the
    advisor's candidates."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAspectLocked(True)
        self.hideAxis("left")
        self.hideAxis("bottom")
        self.setMouseEnabled(x=False, y=False)
        self.setTitle("tilt angles taken", size="9pt")
        self.addLegend(offset=(5, 5), labelTextSize="8pt")
        a = np.deg2rad(np.linspace(-90, 90, 181))
        for r in (0.5, 1.0):
            self.plot(r * np.sin(a), r * np.cos(a), pen=pg.mkPen((90, 90, 90)))
        for deg in (-90, -60, -30, 0, 30, 60, 90):
            t = pg.TextItem(f"{deg:+d}°" if deg else "0°", color=(150, 150, 150),
                            anchor=(0.5, 0.5))
            t.setPos(1.2 * math.sin(math.radians(deg)), 1.2 * math.cos(math.radians(deg)))
            self.addItem(t)
        self.haadf = self.plot(pen=pg.mkPen(HAADF_COLOUR, width=1), connect="finite",
                               name="HAADF")
        self.chem = self.plot(pen=pg.mkPen(CHEM_COLOUR, width=4), connect="finite",
                              name="spectrum image")
        self.stage = self.plot(pen=pg.mkPen("w", width=2, style=QtCore.Qt.PenStyle.DashLine),
                               connect="finite", name="stage now")
        self.candidates = pg.ScatterPlotItem(pen=None, brush=pg.mkBrush(255, 220, 0, 180))
        self.addItem(self.candidates)
        self.best = pg.ScatterPlotItem(symbol="star", size=16, pen=None,
                                       brush=pg.mkBrush(255, 220, 0))
        self.addItem(self.best)
        self.setXRange(-1.3, 1.3, padding=0)
        self.setYRange(-0.15, 1.3, padding=0)

    def draw(self, state: ViewerState) -> None:
        self.haadf.setData(*polar_rays(state.haadf_angles, 1.0))
        self.chem.setData(*polar_rays(state.chem_angles, 0.75))
        adv = state.advice
        if adv is not None and adv.angle is not None:
            self.stage.setData(*polar_rays([adv.angle], 1.1))
        else:
            self.stage.setData([], [])
        cands = adv.candidates if adv is not None else ()
        if cands:
            ang = np.deg2rad([c[0] for c in cands])
            gain = np.asarray([c[1] for c in cands], dtype=np.float64)
            size = 4 + 12 * gain / gain.max() if gain.max() > 0 else np.full(gain.size, 6.0)
            self.candidates.setData(1.05 * np.sin(ang), 1.05 * np.cos(ang), size=size)
        else:
            self.candidates.setData([], [])
        if adv is not None and adv.best_angle is not None:
            b = math.radians(adv.best_angle)
            self.best.setData([1.05 * math.sin(b)], [1.05 * math.cos(b)])
        else:
            self.best.setData([], [])


class AlignmentPanel(QtWidgets.QWidget):
    """The live aligner's shift of each HAADF tilt, ds and dd (px, measured image frame)
    against tilt angle, above a line with the tilt-axis offset, the model refinements and
    the last update (a label: as the plot's title it would widen the plot past the
    window). Hidden until an alignment arrives (`fusetomo control --align`), so that
    without one the other plots keep the room."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.plot = pg.PlotWidget()
        self.plot.setTitle("alignment", size="9pt")
        self.plot.setLabel("bottom", "tilt angle (°)")
        self.plot.setLabel("left", "shift (px)")
        for side in ("left", "bottom"):  # px and degrees read as they are
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.addLegend(offset=(5, 5), labelTextSize="8pt", colCount=2)
        self.curves = {k: self.plot.plot(pen=pg.mkPen(c, width=2), symbol="o", symbolSize=6,
                                         symbolBrush=c, symbolPen=None, name=k)
                       for k, c in SHIFT_COLOURS.items()}
        # One line that never widens the column (it is clipped there, in full as its tool
        # tip). Not word-wrapped: a height-for-width label in this box made Qt squeeze the
        # plots above to their minimum height when the panel appeared.
        self.label = QtWidgets.QLabel("")
        font = self.label.font()
        font.setPointSizeF(8.0)
        self.label.setFont(font)
        self.label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                 QtWidgets.QSizePolicy.Policy.Preferred)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.label)
        self.setVisible(False)

    def draw(self, state: ViewerState) -> None:
        a = state.alignment
        self.setVisible(a is not None)
        if a is None:
            for curve in self.curves.values():
                curve.setData([], [])
            self.label.setText("")
            return
        # Sorted by angle: arrival order zigzags in dose-symmetric schemes.
        angles, shifts = a.by_angle()
        for j, curve in enumerate(self.curves.values()):
            curve.setData(angles, shifts[:, j])
        self.label.setText(a.summary())
        self.label.setToolTip(a.summary())


def advice_html(adv: Advice | None, state: ViewerState) -> str:
    if adv is None:
        mode = f" (advice mode: {state.advice_mode})" if state.advice_mode else ""
        return f"<i>no advice yet{html.escape(mode)}</i>"
    where = f" at {adv.angle:+.1f}°" if adv.angle is not None else ""
    after = f", after tilt {adv.tilt_seq}" if adv.tilt_seq is not None else ""
    lines = [f"<b>{html.escape(adv.action)}</b>{where} &nbsp; (advice #{adv.id}{after})"]
    if adv.reason:
        lines.append(html.escape(adv.reason))
    facts = []
    if adv.gain_per_dose is not None:
        facts.append(f"gain {adv.gain_per_dose:.3g} nats per {DOSE_UNIT}")
    if adv.best_angle is not None:
        facts.append(f"best remaining {adv.best_angle:+.1f}°")
    if adv.chem_maps_used is not None:
        budget = "?" if adv.chem_maps_budget is None else str(adv.chem_maps_budget)
        facts.append(f"spectrum images {adv.chem_maps_used}/{budget}")
    if adv.chem_dose_used is not None:
        budget = "?" if adv.chem_dose_budget is None else f"{adv.chem_dose_budget:.4g}"
        facts.append(f"chemical dose {adv.chem_dose_used:.4g}/{budget} {DOSE_UNIT}")
    if adv.mode:
        facts.append(f"mode {html.escape(adv.mode)}")
    if facts:
        lines.append(" · ".join(facts))
    if not adv.open:
        lines.append(f"answer: {adv.answer or '—'}, decision: {adv.decision or '—'}")
    return "<br>".join(lines)


def timing_text(processing_s: float | None, lag_s: float | None,
                lag_tilts: int | None) -> list[str]:
    """The two latency figures (controller/live/timing.py): the solver's time per tilt,
    and how far the reconstruction shown is behind the newest tilt."""
    out = []
    if processing_s is not None:
        out.append(f"processing {processing_s:.2f} s/tilt")
    if lag_tilts is not None:
        out.append("up to date" if lag_tilts == 0 else
                   f"lag {lag_tilts} tilt{'s' if lag_tilts != 1 else ''}"
                   + ("" if lag_s is None else f" ({lag_s:.1f} s)"))
    return out


def status_text(state: ViewerState) -> str:
    def of(n: int, planned: int | None) -> str:
        return f"{n}/{planned}" if planned is not None else str(n)

    parts = [state.series or "no series yet", state.state or "waiting",
             f"iteration {state.iteration}",
             f"HAADF {of(state.haadf_tilts, state.planned_haadf)}",
             f"chemical {of(state.chem_tilts, state.planned_chem)}"]
    parts.extend(timing_text(state.processing_s, state.lag_s, state.lag_tilts))
    if state.slices_iteration is not None:
        parts.append(f"slices of iteration {state.slices_iteration}")
    if state.errors:
        parts.append(f"{len(state.errors)} message(s) not shown: {state.errors[-1]}")
    return " · ".join(parts)


class AdviceBox(QtWidgets.QGroupBox):
    """The advisor's advice, Accept / Skip / Force (disabled until an advice waits), and the
    controller's reply to the last answer."""

    def __init__(self, text: str, on_accept: Any, on_skip: Any, on_force: Any) -> None:
        super().__init__("advisor")
        lay = QtWidgets.QVBoxLayout(self)
        self.advice_label = QtWidgets.QLabel(text)
        self.advice_label.setWordWrap(True)
        self.advice_label.setTextFormat(QtCore.Qt.TextFormat.RichText)
        lay.addWidget(self.advice_label)
        buttons = QtWidgets.QHBoxLayout()
        self.accept_button = QtWidgets.QPushButton("Accept")
        self.skip_button = QtWidgets.QPushButton("Skip")
        self.force_button = QtWidgets.QPushButton("Force")
        self.accept_button.setToolTip("do what the advice says")
        self.skip_button.setToolTip("do not take a spectrum image at this tilt")
        self.force_button.setToolTip("take a spectrum image now, whatever the advice")
        # Bound methods without arguments, not lambdas: PySide >= 6.7 passes `checked` to a
        # lambda's first default argument.
        self.accept_button.clicked.connect(on_accept)
        self.skip_button.clicked.connect(on_skip)
        self.force_button.clicked.connect(on_force)
        for b in (self.accept_button, self.skip_button, self.force_button):
            b.setEnabled(False)
            buttons.addWidget(b)
        lay.addLayout(buttons)
        self.reply_label = QtWidgets.QLabel("")
        self.reply_label.setWordWrap(True)
        lay.addWidget(self.reply_label)
