"""The viewer's cost plots (pyqtgraph): the total cost and each weighted term (HAADF data
term, chemical data term, TV) against iteration, one plot each (their scales differ), with
a vertical line where each new tilt joined (just before the first iteration whose costs
include it: a rise after it is the new data, not the solver going wrong) and where the
controller's stopping rule ended the idle iterations (`idle_stopped`)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from fusetomo.ui.viewer.model import IdleStop, TiltMark, ViewerState
from fusetomo.ui.viewer.units import TERM_NAMES, TOTAL_NAME, weighted_costs

__all__ = ["CostPlots"]

ROWS = ("total", *TERM_NAMES)
ROW_NAMES = {"total": TOTAL_NAME, **TERM_NAMES}
COST_COLOURS = {"total": (235, 235, 235), "haadf": (90, 170, 255), "chem": (255, 120, 60),
                "tv": (120, 220, 120)}
MARK_PENS = {
    "haadf": pg.mkPen((110, 170, 255, 150), width=1, style=QtCore.Qt.PenStyle.DashLine),
    "chem": pg.mkPen((255, 90, 60, 200), width=2),
    "idle": pg.mkPen((200, 200, 200, 200), width=1, style=QtCore.Qt.PenStyle.DotLine)}
MARK_NAMES = {"haadf": "HAADF tilt joined", "chem": "spectrum image joined",
              "idle": "idle iterations stopped"}
MARK_KEY = ("<span style='color:#6eaaff'>┆ HAADF tilt joined</span> &nbsp; "
            "<span style='color:#ff5a3c'>│ spectrum image joined</span> &nbsp; "
            "<span style='color:#c8c8c8'>⋮ idle iterations stopped</span>")


def marker_positions(marks: list[TiltMark], stops: list[IdleStop]) -> dict[str, list[float]]:
    """Where the plot draws its vertical lines: a tilt half an iteration before the first
    iteration that includes it, an idle stop at its iteration."""
    out: dict[str, list[float]] = {k: [] for k in MARK_NAMES}
    for m in marks:
        out[m.modality].append(m.iteration - 0.5)
    out["idle"] = [float(s.iteration) for s in stops]
    return out


def weights_text(weights: dict[str, float] | None) -> str:
    if weights is None:
        return "cost terms (unweighted: the controller published no λ)"
    parts = [f"λ {ROW_NAMES[t].split()[0]} {weights[t]:g}" for t in TERM_NAMES if t in weights]
    return "total cost and weighted terms (" + ", ".join(parts) + ")"


class CostPlots(pg.GraphicsLayoutWidget):
    """Total cost, then each weighted term, against iteration (x axes linked)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plots: dict[str, pg.PlotItem] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.lines: dict[str, list[pg.InfiniteLine]] = {r: [] for r in ROWS}
        self.drawn_marks: dict[str, list[float]] = {k: [] for k in MARK_NAMES}
        self.header = self.addLabel(weights_text(None), row=0, col=0, size="9pt")
        self.names: dict[str, pg.LabelItem] = {}
        first = None
        for i, t in enumerate(ROWS):
            p = self.addPlot(row=i + 1, col=0)
            # The name inside the plot's upper left corner: as an axis label it is longer
            # than the plot is high, as a title it takes a row of the plot's height.
            name = pg.LabelItem(ROW_NAMES[t], size="8pt", color=COST_COLOURS[t],
                                parent=p.vb)
            name.anchor(itemPos=(0, 0), parentPos=(0, 0), offset=(4, 0))
            self.names[t] = name
            for side in ("left", "bottom"):  # "x1e+06" beside log ticks misleads
                p.getAxis(side).enableAutoSIPrefix(False)
            if i < len(ROWS) - 1:  # iteration numbers once, under the last plot
                p.getAxis("bottom").setStyle(showValues=False)
                p.getAxis("bottom").setHeight(4)
            p.showGrid(x=True, y=True, alpha=0.3)
            if first is None:
                first = p
            else:
                p.setXLink(first)
            if i == len(ROWS) - 1:
                p.setLabel("bottom", "iteration")
            self.plots[t] = p
            self.curves[t] = p.plot(pen=pg.mkPen(COST_COLOURS[t], width=2), connect="finite")
        self.key = self.addLabel(MARK_KEY, row=len(ROWS) + 1, col=0, size="8pt")

    def draw(self, state: ViewerState) -> None:
        self.header.setText(weights_text(state.cost_weights), size="9pt")
        x = np.asarray(state.cost_iterations, dtype=np.float64)
        rows = weighted_costs(state.costs, state.cost_weights)
        for t in ROWS:
            y = np.asarray(rows.get(t, []), dtype=np.float64)
            if y.size != x.size or x.size == 0:
                self.curves[t].setData([], [])
                continue
            finite = y[np.isfinite(y)]
            # Log scale when the term is positive and spans a decade or more (it falls by
            # decades at the start); over less, log ticks only crowd the axis.
            log = (bool(finite.size) and bool(np.all(finite > 0))
                   and float(finite.max()) >= 10 * float(finite.min()))
            self.plots[t].setLogMode(x=False, y=log)
            # Markers while the history is short (a single point draws no line).
            sym = "o" if x.size <= 50 else None
            self.curves[t].setData(x, y, symbol=sym, symbolSize=5,
                                   symbolBrush=COST_COLOURS[t], symbolPen=None)
        self._draw_marks(marker_positions(state.tilt_marks, state.idle_stops), state.idle_stops)

    def _draw_marks(self, marks: dict[str, list[float]], stops: list[IdleStop]) -> None:
        if marks == self.drawn_marks:
            return
        self.drawn_marks = marks
        for t, p in self.plots.items():
            for line in self.lines[t]:
                p.removeItem(line)
            self.lines[t] = []
            for kind, xs in marks.items():
                for j, xv in enumerate(xs):
                    line = pg.InfiniteLine(pos=xv, angle=90, pen=MARK_PENS[kind])
                    if kind == "idle" and j < len(stops):  # why, on hovering the line
                        line.setToolTip(f"idle iterations stopped at iteration "
                                        f"{stops[j].iteration}: {stops[j].reason}")
                    else:
                        line.setToolTip(f"{MARK_NAMES[kind]} before iteration {xv + 0.5:g}")
                    p.addItem(line, ignoreBounds=True)
                    self.lines[t].append(line)
