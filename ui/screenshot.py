"""A Qt widget rendered to a PNG file (the viewer's and the series view's --screenshot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_png"]


def save_png(widget: Any, path: str | Path) -> tuple[int, int]:
    """Process pending events, render `widget` into `path` and return (width, height);
    OSError when the file cannot be written."""
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication.instance()
    if app is not None:
        app.processEvents()
    image = widget.grab()
    if not image.save(str(path)):
        raise OSError(f"{path}: could not write the screenshot")
    return image.width(), image.height()
