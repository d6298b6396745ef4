"""`fusetomo view --series SERIES.h5`: the raw tilts of a series file, HAADF image and
element maps side by side, with a slider over the tilts (pyqtgraph on PySide6).

Each map shown is the one of the spectrum image nearest the HAADF image's tilt (its angle
in the caption; "no spectrum image" for a HAADF-only series). Images keep their values
(background-subtracted maps may be negative): the levels are each image's 0.5-99.5th
percentiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from fusetomo.adapters.series import TiltSeries

__all__ = ["SeriesWindow"]


def _levels(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


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
        for col, name in enumerate(["HAADF", *series.elements]):
            self.graphics.addLabel(name, row=0, col=col)
            view = self.graphics.addViewBox(row=1, col=col, lockAspect=True, invertY=True)
            item = pg.ImageItem()
            view.addItem(item)
            self.images.append(item)
            self.views.append(view)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(0, len(self.order) - 1)
        self.caption = QtWidgets.QLabel()
        layout.addWidget(self.slider)
        layout.addWidget(self.caption)
        self.slider.valueChanged.connect(self.show_tilt)
        self.show_tilt(len(self.order) // 2)
        self.slider.setValue(len(self.order) // 2)

    def show_tilt(self, k: int) -> None:
        s = self.series
        i = int(self.order[int(k)])
        img = s.haadf[i]
        self.images[0].setImage(img, levels=_levels(img))
        cang = s.common_chem_angles
        text = f"tilt {k + 1}/{len(self.order)}: HAADF {s.haadf_angles[i]:+.2f} deg"
        if cang.size:
            j = int(np.argmin(np.abs(cang - s.haadf_angles[i])))
            for item, e in zip(self.images[1:], s.elements, strict=True):
                m = s.chem[e][j]
                item.setImage(m, levels=_levels(m))
            text += f"; maps of the spectrum image at {cang[j]:+.2f} deg ({s.chem_kind})"
        else:
            text += "; no spectrum image (HAADF-only series)"
        self.caption.setText(text)
        for v in self.views:
            v.autoRange(padding=0.02)

    def save_screenshot(self, path: str | Path) -> tuple[int, int]:
        app = QtWidgets.QApplication.instance()
        if app is not None:
            app.processEvents()
        image = self.grab()
        if not image.save(str(path)):
            raise OSError(f"{path}: could not write the screenshot")
        return image.width(), image.height()
