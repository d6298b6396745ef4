"""`fusetomo view --series SERIES.h5`: the raw tilts of a series file, HAADF image and
element maps side by side, with a slider over the tilts (pyqtgraph on PySide6).

Each map shown is the one of the spectrum image nearest the HAADF image's tilt (its angle
in the caption; "no spectrum image" for a HAADF-only series). Images keep their values
(background-subtracted maps may be negative): the levels are each image's 0.5-99.5th
percentiles, and each image's colour bar spans them, labelled with the image's unit (HAADF:
the series' `haadf_units` attribute, else "a.u."; maps: counts per pixel). Scale bars are
in nm from the series' pixel size (px without one); the caption gives the angles in degrees
and each image's dose in e⁻/Å² when the series states it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from fusetomo.adapters.series import TiltSeries
from fusetomo.ui.screenshot import save_png
from fusetomo.ui.viewer.slicegrid import ScaleBarItem
from fusetomo.ui.viewer.units import DOSE_UNIT, scale_bar

__all__ = ["SeriesWindow", "image_units"]


def _levels(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def image_units(series: TiltSeries) -> dict[str, str]:
    """The colour-bar label of each column: 'HAADF (a.u.)', 'Co (counts/pixel)'."""
    h = series.attrs.get("haadf_units")
    out = {"HAADF": f"HAADF ({h if isinstance(h, str) and h else 'a.u.'})"}
    kind = "" if series.chem_kind == "counts" else ", background-subtracted"
    out.update({e: f"{e} (counts/pixel{kind})" for e in series.elements})
    return out


def _dose(series: TiltSeries, key: str) -> str:
    v = series.attrs.get(key)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
    return f", {float(v):.3g} {DOSE_UNIT}" if ok else ""


class SeriesWindow(QtWidgets.QWidget):
    """The HAADF image and the maps at one tilt, a slider over tilts, a caption."""

    def __init__(self, series: TiltSeries, title: str = "fusetomo view") -> None:
        super().__init__()
        self.series = series
        self.order = np.argsort(series.haadf_angles)
        self.setWindowTitle(title)
        layout = QtWidgets.QVBoxLayout(self)
        self.graphics = pg.GraphicsLayoutWidget()
        layout.addWidget(self.graphics)
        self.images: list[pg.ImageItem] = []
        self.views: list[pg.ViewBox] = []
        self.scales: list[ScaleBarItem] = []
        self.colour_bars: list[pg.ColorBarItem] = []
        cmap = pg.colormap.get("viridis")
        for col, (name, label) in enumerate(image_units(series).items()):
            self.graphics.addLabel(name, row=0, col=2 * col)
            view = self.graphics.addViewBox(row=1, col=2 * col, lockAspect=True, invertY=True)
            item = pg.ImageItem()
            item.setColorMap(cmap)
            view.addItem(item)
            bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=cmap, interactive=False,
                                  width=12, label=label)
            self.graphics.addItem(bar, row=1, col=2 * col + 1)
            self.images.append(item)
            self.views.append(view)
            self.scales.append(ScaleBarItem(view))
            self.colour_bars.append(bar)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(0, len(self.order) - 1)
        self.caption = QtWidgets.QLabel()
        layout.addWidget(self.slider)
        layout.addWidget(self.caption)
        self.slider.valueChanged.connect(self.show_tilt)
        self.show_tilt(len(self.order) // 2)
        self.slider.setValue(len(self.order) // 2)

    def _show(self, col: int, img: np.ndarray) -> None:
        levels = _levels(img)
        self.images[col].setImage(img, levels=levels, autoLevels=False)
        self.colour_bars[col].setLevels(levels)
        rows, cols = (int(v) for v in img.shape[:2])
        if pg.getConfigOption("imageAxisOrder") != "row-major":
            rows, cols = cols, rows  # column-major: the first axis is x
        self.scales[col].show(scale_bar(self.series.pixel_size_nm, cols), (rows, cols))

    def show_tilt(self, k: int) -> None:
        s = self.series
        i = int(self.order[int(k)])
        self._show(0, s.haadf[i])
        cang = s.common_chem_angles
        text = (f"tilt {k + 1}/{len(self.order)}: HAADF {s.haadf_angles[i]:+.2f}°"
                f"{_dose(s, 'haadf_dose_e_per_A2')}")
        if cang.size:
            j = int(np.argmin(np.abs(cang - s.haadf_angles[i])))
            for col, e in enumerate(s.elements, start=1):
                self._show(col, s.chem[e][j])
            text += (f"; maps of the spectrum image at {cang[j]:+.2f}° ({s.chem_kind}"
                     f"{_dose(s, 'chem_dose_e_per_A2')})")
        else:
            text += "; no spectrum image (HAADF-only series)"
        self.caption.setText(text)
        for v in self.views:
            v.autoRange(padding=0.02)

    def save_screenshot(self, path: str | Path) -> tuple[int, int]:
        return save_png(self, path)
