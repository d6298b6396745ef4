"""Live data items in the Nion Swift library: one 2D data item per element showing its three
orthoslices side by side (s | u | v, see `state.montage`), and one per element for its
standard error once the controller publishes it. Created on the first preview and updated in
place afterwards, so a display showing one follows the reconstruction.

UI thread only (the panel calls `update` from a task queued by the link's worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nion.data import DataAndMetadata
from nion.swift.model import DataItem, DocumentModel

from fusetomo.ui.nion.state import montage
from fusetomo.ui.slices import OrthoSlices

KINDS = {"value": "orthoslices", "std": "std error orthoslices"}


def title_for(element: str, kind: str) -> str:
    return f"fusetomo {element} {KINDS[kind]} (s | u | v)"


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
               iteration: int | None) -> list[DataItem.DataItem]:
        """Show `slices` (element -> OrthoSlices) in this kind's data items, creating any
        that is missing (never made, or deleted by the user); returns them."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        present = set(document_model.data_items)
        out = []
        for element, o in slices.items():
            image, panes = montage(o)
            meta: dict[str, Any] = {"fusetomo": {
                "series": series, "element": element, "kind": kind, "iteration": iteration,
                "vmax": o.vmax, "panes": panes}}
            xdata = DataAndMetadata.new_data_and_metadata(image, metadata=meta)
            item = self._items.get((element, kind))
            if item is None or item not in present:
                item = DataItem.new_data_item(xdata)
                item.title = title_for(element, kind)
                document_model.append_data_item(item)
                self._items[(element, kind)] = item
            else:
                item.set_xdata(xdata)
            out.append(item)
        return out

    def forget(self) -> None:
        """Drop the references (the document model owns and closes the items)."""
        self._items.clear()
