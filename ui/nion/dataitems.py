"""Live data items in the Nion Swift library: one 2D data item per element showing its three
orthoslices side by side (s | u | v, see `state.montage`), and one per element for its
standard error once the controller publishes it; one line plot of the solver's processing
time and lag per tilt; with live alignment, one line plot of the shifts against tilt angle.
Created on the first preview and updated in place afterwards (`set_xdata`), so a display
showing one follows the reconstruction; a new item is put in an empty display panel of the
workspace, if there is one (`place`).

Calibrated: the slices' spatial calibration is the published pixel in nm (the series' pixel
size times the averaging block, `SliceCalibration`), so Swift draws nm scale bars and
reports positions in nm; the intensity calibration carries the volumes' unit
(counts/voxel; standard errors in the same unit).

UI thread only (the panel calls `update` from a task queued by the link's worker).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from nion.data import Calibration, DataAndMetadata
from nion.swift.model import DataItem, DocumentModel

from fusetomo.ui.alignment import Alignment
from fusetomo.ui.nion.state import montage
from fusetomo.ui.slices import PLANES, OrthoSlices, SliceCalibration

KINDS = {"value": "orthoslices", "std": "std error orthoslices"}


def title_for(element: str, kind: str, calibration: SliceCalibration | None = None) -> str:
    """'fusetomo Fe orthoslices (s = +0.25 nm | u = +0.25 nm | v = +0.25 nm)'; the planes'
    names alone without a pixel size."""
    c = calibration or SliceCalibration()
    return f"fusetomo {element} {KINDS[kind]} ({' | '.join(c.title(p) for p in PLANES)})"


def slice_xdata(image: np.ndarray, calibration: SliceCalibration,
                metadata: dict[str, Any]) -> DataAndMetadata.DataAndMetadata:
    """A montage of slices with the spatial calibration (nm per published pixel, none
    without a pixel size) and the intensity calibration (the volumes' unit)."""
    px = calibration.pixel_nm
    spatial = (Calibration.Calibration(0.0, px, "nm") if px is not None
               else Calibration.Calibration())
    return DataAndMetadata.new_data_and_metadata(
        image, intensity_calibration=Calibration.Calibration(0.0, 1.0, calibration.units),
        dimensional_calibrations=[spatial, spatial], metadata=metadata)


Place = Callable[[DataItem.DataItem], None]


def place_in_empty_display_panel(document_controller: Any, item: DataItem.DataItem) -> None:
    """Show `item` in the first empty display panel of the workspace (none empty: it stays
    in the data panel, where the user can drag it)."""
    workspace = document_controller.workspace_controller
    display_item = document_controller.document_model.get_display_item_for_data_item(item)
    if workspace is None or display_item is None:
        return
    for panel in workspace.display_panels:
        if panel.display_item is None:
            panel.set_display_panel_display_item(display_item)
            return


def _append(document_model: DocumentModel.DocumentModel, xdata: DataAndMetadata.DataAndMetadata,
            title: str, place: Place | None) -> DataItem.DataItem:
    item = DataItem.new_data_item(xdata)
    item.title = title
    document_model.append_data_item(item)
    if place is not None:
        place(item)
    return item


class SliceDataItems:
    """The data items this panel keeps live, by (element, kind)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], DataItem.DataItem] = {}

    def get(self, element: str, kind: str = "value") -> DataItem.DataItem | None:
        return self._items.get((element, kind))

    @property
    def keys(self) -> list[tuple[str, str]]:
        return list(self._items)

    def update(self, document_model: DocumentModel.DocumentModel, kind: str,
               slices: Mapping[str, OrthoSlices], *, series: str | None,
               iteration: int | None, calibration: SliceCalibration | None = None,
               place: Place | None = None) -> list[DataItem.DataItem]:
        """Show `slices` (element -> OrthoSlices) in this kind's data items, calibrated by
        `calibration`, creating any that is missing (never made, or deleted by the user) and
        handing it to `place`; returns them."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        present = set(document_model.data_items)
        out = []
        for element, o in slices.items():
            cal = calibration or SliceCalibration()
            image, panes = montage(o)
            for pane in panes:
                pane["position_nm"] = cal.position_nm(pane["plane"])
            meta: dict[str, Any] = {"fusetomo": {
                "series": series, "element": element, "kind": kind, "iteration": iteration,
                "vmax": o.vmax, "panes": panes, "quantity": cal.quantity,
                "pixel_nm": cal.pixel_nm}}
            xdata = slice_xdata(image, cal, meta)
            title = title_for(element, kind, cal)
            item = self._items.get((element, kind))
            if item is None or item not in present:
                item = _append(document_model, xdata, title, place)
                self._items[(element, kind)] = item
            else:
                item.set_xdata(xdata)
                if item.title != title:
                    item.title = title
            out.append(item)
        return out

    def forget(self) -> None:
        """Drop the references (the document model owns and closes the items)."""
        self._items.clear()


TIMING_TITLE = "fusetomo timing per tilt: processing, lag (s)"


class TimingDataItem:
    """The solver's processing time and the reconstruction's lag behind the newest tilt,
    per settled tilt (controller/live/timing.py): [2, n] rows shown as a line plot, seconds
    against the settled tilt's number."""

    def __init__(self) -> None:
        self.item: DataItem.DataItem | None = None

    def update(self, document_model: DocumentModel.DocumentModel,
               rows: list[tuple[float, float]], *, series: str | None,
               place: Place | None = None) -> DataItem.DataItem | None:
        if not rows:
            return None
        data = np.ascontiguousarray(np.asarray(rows, dtype=np.float32).T)
        xdata = DataAndMetadata.new_data_and_metadata(
            data, intensity_calibration=Calibration.Calibration(0.0, 1.0, "s"),
            dimensional_calibrations=[Calibration.Calibration(),
                                      Calibration.Calibration(1.0, 1.0, "tilt")],
            metadata={"fusetomo": {"series": series, "kind": "timing",
                                   "rows": ["processing_s", "lag_s"]}})
        if self.item is None or self.item not in document_model.data_items:
            self.item = _append(document_model, xdata, TIMING_TITLE, None)
            display = document_model.get_display_item_for_data_item(self.item)
            if display is not None:
                display.display_type = "line_plot"
                for layer, name in zip(display.display_layers, ("processing", "lag"),
                                       strict=False):
                    layer.label = name
            if place is not None:
                place(self.item)
        else:
            self.item.set_xdata(xdata)
        return self.item

    def forget(self) -> None:
        self.item = None


ALIGNMENT_TITLE = "fusetomo alignment shifts ds, dd (px)"


class AlignmentDataItem:
    """The live aligner's shifts as one data item: [2, n] rows ds and dd (px) of the HAADF
    tilts sorted by angle, shown as a line plot with one layer per row (Swift makes a layer
    per row of 2D data when the display type is set to line plot). The angles are in its
    metadata, and in its calibration when evenly spaced (a calibration has one step)."""

    def __init__(self) -> None:
        self.item: DataItem.DataItem | None = None

    def update(self, document_model: DocumentModel.DocumentModel, alignment: Alignment, *,
               series: str | None) -> DataItem.DataItem | None:
        """Show `alignment`, creating the item if missing (never made, or deleted by the
        user); None while it holds no tilt (an empty line plot is not drawn)."""
        angles, shifts = alignment.by_angle()
        if angles.size == 0:
            return None
        step = np.diff(angles)
        even = step.size > 0 and step[0] > 0 and bool(np.allclose(step, step[0]))
        along = (Calibration.Calibration(float(angles[0]), float(step[0]), "°") if even
                 else Calibration.Calibration())
        meta: dict[str, Any] = {"fusetomo": {
            "series": series, "kind": "alignment", "rows": ["ds", "dd"],
            "angles_deg": angles.tolist(), "summary": alignment.summary(),
            "axis_offset_px": alignment.axis_offset_px,
            "model_refinements": alignment.model_refinements,
            "last_update_px": alignment.last_update_px}}
        xdata = DataAndMetadata.new_data_and_metadata(
            np.ascontiguousarray(shifts.T), intensity_calibration=Calibration.Calibration(
                units="px"), dimensional_calibrations=[Calibration.Calibration(), along],
            metadata=meta)
        if self.item is None or self.item not in document_model.data_items:
            self.item = DataItem.new_data_item(xdata)
            self.item.title = ALIGNMENT_TITLE
            document_model.append_data_item(self.item)
            display = document_model.get_display_item_for_data_item(self.item)
            if display is not None:
                display.display_type = "line_plot"
                for layer, name in zip(display.display_layers, ("ds", "dd"), strict=False):
                    layer.label = name
        else:
            self.item.set_xdata(xdata)
        return self.item

    def forget(self) -> None:
        self.item = None
