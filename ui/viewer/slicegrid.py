"""The viewer's orthoslice grid (pyqtgraph): one row per element and the RGB overlay, one
column per plane, each column titled with its slice's position (nm, or px without a pixel
size), each element row with a colour bar in the volumes' unit (counts/voxel; the standard
error in the same unit), and a scale bar in every image."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtWidgets

from fusetomo.ui.slices import PLANES, OrthoSlices, SliceCalibration
from fusetomo.ui.viewer.model import ViewerState
from fusetomo.ui.viewer.render import element_colour, rgb_overlay
from fusetomo.ui.viewer.units import ScaleBar, colour_bar_label, pane_title, scale_bar

__all__ = ["ScaleBarItem", "SliceGrid"]

RGB_ROW = "RGB"
BAR_COLUMN = len(PLANES) + 1


def _as_displayed(a: np.ndarray) -> np.ndarray:
    """Arrays here are [row, column]; pyqtgraph's default axis order is column-major."""
    if pg.getConfigOption("imageAxisOrder") == "row-major":
        return a
    return np.swapaxes(a, 0, 1)


class ScaleBarItem:
    """A bar in an image's lower left corner, in image pixels, with its length above it."""

    def __init__(self, view: pg.ViewBox) -> None:
        self.line = pg.PlotCurveItem(pen=pg.mkPen("w", width=3))
        self.text = pg.TextItem("", color="w", anchor=(0.0, 1.0))
        self.bar: ScaleBar | None = None
        for item in (self.line, self.text):
            item.setZValue(10)
            view.addItem(item)

    def show(self, bar: ScaleBar | None, shape: tuple[int, int]) -> None:
        """`shape`: the image's [rows, columns] (y grows downwards: the view is inverted)."""
        self.bar = bar
        if bar is None:
            self.line.setData([], [])
            self.text.setText("")
            return
        h, w = shape
        x0, y = 0.06 * w, 0.92 * h
        self.line.setData([x0, x0 + bar.length_px], [y, y])
        self.text.setText(bar.label)
        self.text.setPos(x0, y - 0.02 * h)


class _SliceCell:
    """One image of the slice grid: a ViewBox holding an ImageItem and a scale bar."""

    def __init__(self, layout: pg.GraphicsLayout, row: int, col: int) -> None:
        self.view = layout.addViewBox(row=row, col=col, lockAspect=True, invertY=True,
                                      enableMouse=True)
        self.image = pg.ImageItem()
        self.view.addItem(self.image)
        self.scale = ScaleBarItem(self.view)
        self.shape: tuple[int, ...] | None = None

    def show(self, a: np.ndarray, levels: tuple[float, float] | None,
             cmap: pg.ColorMap | None, pixel_nm: float | None) -> None:
        if cmap is not None:
            self.image.setColorMap(cmap)
        self.image.setImage(_as_displayed(a), levels=levels, autoLevels=False)
        self.scale.show(scale_bar(pixel_nm, int(a.shape[1])), (int(a.shape[0]),
                                                                int(a.shape[1])))
        if self.shape != a.shape:  # re-frame only when the size changes (keeps user zoom)
            self.shape = a.shape
            self.view.autoRange(padding=0.02)

    def clear(self) -> None:
        self.image.clear()
        self.scale.show(None, (1, 1))
        self.shape = None


class SliceGrid(pg.GraphicsLayoutWidget):
    """Rows: one per element, then the RGB overlay; columns: the planes s, u, v, then each
    element's colour bar."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.elements: tuple[str, ...] = ()
        self.cells: dict[tuple[str, str], _SliceCell] = {}
        self.titles: dict[str, pg.LabelItem] = {}
        self.colour_bars: dict[str, pg.ColorBarItem] = {}
        self._cmaps = {False: pg.colormap.get("viridis"), True: pg.colormap.get("inferno")}
        self._build(())

    def _build(self, elements: tuple[str, ...]) -> None:
        self.clear()
        self.cells, self.titles, self.colour_bars = {}, {}, {}
        self.elements = elements
        layout = self.ci
        layout.addLabel("", row=0, col=0)
        for j, p in enumerate(PLANES):
            self.titles[p] = layout.addLabel(pane_title(p, None), row=0, col=j + 1)
        for i, row in enumerate((*elements, RGB_ROW)):
            colour = element_colour(i) if row != RGB_ROW else (230, 230, 230)
            layout.addLabel(row, row=i + 1, col=0, angle=-90, color=colour, size="11pt")
            for j, p in enumerate(PLANES):
                self.cells[(row, p)] = _SliceCell(layout, i + 1, j + 1)
            if row != RGB_ROW:
                bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=self._cmaps[False],
                                      interactive=False, width=12)
                layout.addItem(bar, row=i + 1, col=BAR_COLUMN)
                self.colour_bars[row] = bar

    def bar_label(self, element: str) -> str:
        return str(self.colour_bars[element].getAxis("left").labelText)

    def draw(self, state: ViewerState, elements: tuple[str, ...], std: bool) -> None:
        if elements != self.elements:
            self._build(elements)
        cal = state.calibration
        pixel_nm = cal.pixel_nm if cal is not None else None
        for p in PLANES:
            self.titles[p].setText(pane_title(p, cal))
        source = state.std_slices if std else state.slices
        for el in elements:
            self._draw_row(el, source.get(el), std, cal, pixel_nm)
        for p in PLANES:
            cell = self.cells[(RGB_ROW, p)]
            if not state.slices:
                cell.clear()
            else:  # the overlay is always of the reconstruction, not of its error
                cell.show(rgb_overlay(state.slices, elements, p), (0.0, 255.0), None, pixel_nm)

    def _draw_row(self, el: str, sl: OrthoSlices | None, std: bool,
                  cal: SliceCalibration | None, pixel_nm: float | None) -> None:
        levels = (0.0, max(sl.vmax, 1e-30)) if sl is not None else (0.0, 1.0)
        for p in PLANES:
            cell = self.cells[(el, p)]
            if sl is None:
                cell.clear()
            else:
                cell.show(sl.plane(p), levels, self._cmaps[std], pixel_nm)
        bar = self.colour_bars[el]
        bar.setColorMap(self._cmaps[std])
        bar.setLevels(levels)
        bar.getAxis("left").setLabel(colour_bar_label(el, cal, std))
