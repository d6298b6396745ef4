"""A screenshot of the fusetomo panel in the real Nion Swift (Qt, offscreen platform: no
Xvfb needed), made by tests/nion_screenshot.py in a subprocess with a scratch HOME. The
copy under docs/ (docs/nionswift.md) is made the same way:

    QT_QPA_PLATFORM=offscreen HOME=$(mktemp -d) python tests/nion_screenshot.py \\
        docs/images/nionswift-panel.png
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nion.swift")
pytest.importorskip("PySide6")

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_screenshot_of_the_panel_in_swift(tmp_path: Path) -> None:
    out = tmp_path / "panel.png"
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(home)}
    done = subprocess.run([sys.executable, str(HERE / "nion_screenshot.py"), str(out)],
                          env=env, timeout=240, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    import matplotlib.image

    img = matplotlib.image.imread(out)  # floats 0..1, [rows, columns, RGB(A)]
    assert img.shape[1] == 1400 and 860 <= img.shape[0] <= 900
    grey = img[..., :3].mean(axis=2)
    assert float(grey.std()) > 0.05  # not blank
    # the panel's text is drawn: dark pixels in the right-hand dock (the fusetomo panel)
    dock = grey[img.shape[0] // 2:, 1000:]
    assert float((dock < 0.3).mean()) > 0.005
    assert np.isfinite(grey).all()
