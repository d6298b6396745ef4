"""The viewer in physical units (issue 19): scale bars from the pixel size (nm, px without
one), colour bars labelled with the volumes' unit over the data's range, pane titles with
the slice position in nm, and the live cost plot: total and weighted terms, a line where
each tilt joined and where the idle iterations stopped.

References: lengths and positions computed here from the voxel size, averaging block and
volume shape; slice values from the controller's own `orthoslices` of a known volume;
markers from the cost rows' tilt counts and the `idle_stopped` events of a run file written
by a short live session (no sockets), against what the viewer made of the messages that
session published and of the run file.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before anything imports Qt

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyqtgraph")
pytest.importorskip("PySide6.QtWidgets")

import pyqtgraph as pg
from hostile_corpus import SID, chem_frames, haadf_frames, small_series_sim, start_frames
from PySide6 import QtWidgets

from fusetomo.adapters.protocol import SERIES_END, STATUS, decode, encode, make
from fusetomo.adapters.runfile import read_run
from fusetomo.controller.live import LiveParams, LiveSession
from fusetomo.controller.live.publish import orthoslices, slice_calibration
from fusetomo.solver.stopping import StopRule
from fusetomo.ui.slices import SliceCalibration
from fusetomo.ui.viewer.costplot import marker_positions
from fusetomo.ui.viewer.model import IdleStop, TiltMark, ViewerModel
from fusetomo.ui.viewer.runsource import RecordedRun
from fusetomo.ui.viewer.units import pane_title, scale_bar, weighted_costs
from fusetomo.ui.viewer.window import ViewerWindow


@pytest.fixture(scope="module")
def qapp() -> QtWidgets.QApplication:
    pg.setConfigOptions(imageAxisOrder="row-major")
    return pg.mkQApp("fusetomo-test")


# -- units without Qt ----------------------------------------------------------------------
def test_scale_bar_lengths() -> None:
    # 0.5 nm voxels averaged 2x2: 1 nm a pixel; 30 % of 32 px is 9.6 nm -> a 5 nm bar, 5 px.
    b = scale_bar(0.5 * 2, 32)
    assert (b.length_px, b.value, b.label) == (5.0, 5.0, "5 nm")
    # 0.25 nm voxels, block 2: 0.5 nm pixels; 4.8 nm allowed -> 2 nm = 4 px.
    b = scale_bar(0.25 * 2, 32)
    assert (b.length_px, b.label) == (4.0, "2 nm")
    # 0.4 nm voxels, block 2 on 32 px: 7.68 nm -> 5 nm = 6.25 px.
    assert scale_bar(0.8, 32).length_px == pytest.approx(6.25)
    # Unknown voxel size: pixels, never nm.
    b = scale_bar(None, 32)
    assert (b.length_px, b.label) == (5.0, "5 px")
    with pytest.raises(ValueError):
        scale_bar(1.0, 0)


def test_pane_titles_in_nm_or_px() -> None:
    cal = SliceCalibration(pixel_nm=0.8, voxel_nm=0.4, block=2, volume_shape=(12, 64, 64),
                           central=(("s", 6), ("u", 32), ("v", 20)))
    # (i + 1/2 - n/2) voxels of 0.4 nm
    assert pane_title("s", cal) == "s (normal to tilt axis) at +0.2 nm"
    assert pane_title("v", cal) == "v at -4.6 nm"
    nopx = SliceCalibration(volume_shape=(12, 64, 64), central=(("s", 6), ("u", 32)))
    assert pane_title("s", nopx) == "s (normal to tilt axis) at +0.5 px"
    assert pane_title("u", None) == "u"


def test_weighted_costs_and_total() -> None:
    w = weighted_costs({"haadf": [4.0, 2.0], "chem": [-100.0, -120.0], "tv": [10.0, 8.0]},
                       {"haadf": 1.0, "chem": 0.01, "tv": 0.005})
    assert w["chem"] == [-1.0, -1.2] and w["tv"] == [0.05, 0.04]
    assert w["total"] == pytest.approx([4.0 - 1.0 + 0.05, 2.0 - 1.2 + 0.04])
    assert math.isnan(weighted_costs({"haadf": [1.0], "chem": [math.nan], "tv": [1.0]},
                                     None)["total"][0])


# -- the slice grid ------------------------------------------------------------------------
def _volumes(ns: int, n: int, scale: float) -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(ns), np.arange(n), np.arange(n), indexing="ij")
    base = (1.0 + np.sin(x / 5.0) * np.cos(y / 7.0) + z / ns).astype(np.float32)
    return np.stack([scale * base, 0.5 * scale * base[::-1]])


def _slices_header(pixel_size_nm: float | None) -> dict:
    x = _volumes(12, 64, 3.0)
    std = 0.1 * x
    els = ["Co", "O"]
    return {"iteration": 9, "slices": orthoslices(x, els, 32, 4),
            "std_slices": orthoslices(std, els, 32, 4), "std_iteration": 8,
            "calibration": slice_calibration(x.shape, 4, 32, pixel_size_nm)}


def _window(model: ViewerModel) -> ViewerWindow:
    win = ViewerWindow(model, refresh_ms=1000)
    win.resize(1100, 760)
    win.refresh(force=True)
    return win


def test_slice_grid_scale_bars_colour_bars_and_titles(qapp) -> None:
    h = _slices_header(0.4)
    assert h["calibration"]["block"] == 2  # 64 px published as 32
    model = ViewerModel()
    assert model.apply("slices", decode(encode(make(STATUS, SID, 0, **h))).header)
    win = _window(model)
    try:
        grid = win.slices
        assert grid.titles["s"].text == "s (normal to tilt axis) at +0.2 nm"
        assert grid.titles["u"].text == "u at +0.2 nm"
        for p in ("s", "u", "v"):
            bar = grid.cells[("Co", p)].scale
            assert bar.bar is not None and bar.bar.label == "5 nm"
            xs, _ = bar.line.getData()
            assert xs[1] - xs[0] == pytest.approx(6.25)  # 5 nm / (0.4 nm x 2) a pixel
        vmax = {e: model.view().slices[e].vmax for e in ("Co", "O")}
        for e in ("Co", "O"):
            assert grid.bar_label(e) == f"{e} (counts/voxel)"
            assert tuple(grid.colour_bars[e].levels()) == pytest.approx((0.0, vmax[e]))
        # vmax is the largest block-averaged value of the three central slices.
        assert vmax["Co"] == pytest.approx(h["slices"]["Co"]["vmax"])
        win.std_box.setChecked(True)
        std_vmax = model.view().std_slices["O"].vmax
        assert grid.bar_label("O") == "O std. error (counts/voxel)"
        assert tuple(grid.colour_bars["O"].levels()) == pytest.approx((0.0, std_vmax))
        assert std_vmax == pytest.approx(h["std_slices"]["O"]["vmax"])
    finally:
        win.shutdown()
        win.close()


def test_without_a_pixel_size_the_viewer_says_px(qapp) -> None:
    model = ViewerModel()
    model.apply("slices", decode(encode(make(STATUS, SID, 0, **_slices_header(None)))).header)
    win = _window(model)
    try:
        bar = win.slices.cells[("O", "s")].scale
        assert bar.bar is not None and (bar.bar.label, bar.bar.length_px) == ("5 px", 5.0)
        assert win.slices.titles["s"].text == "s (normal to tilt axis) at +0.5 px"
        assert "nm" not in win.slices.titles["v"].text
    finally:
        win.shutdown()
        win.close()


# -- a short live run: markers where tilts joined and where the idle iterations stopped ----
IDLE = LiveParams(device="cpu", iterations_per_tilt=2, idle_iterations=True,
                  max_idle_iterations=25, final_iterations=4, interleave=True,
                  idle_stop=StopRule(tol=0.02, min_iterations=4, max_iterations=10**9))


@pytest.fixture(scope="module")
def live_run(tmp_path_factory) -> tuple[Path, list[tuple[str, dict]]]:
    """A 16^3 series (11 HAADF + 3 spectrum images) through a LiveSession that iterates
    while waiting (at most 25 idle iterations, stopped earlier by a loose rule); every
    published message, decoded as a subscriber gets it, and the run file."""
    s = small_series_sim()
    path = tmp_path_factory.mktemp("units") / "run.h5"
    ses = LiveSession(path, IDLE)
    published: list[tuple[str, dict]] = []

    def keep(out) -> None:
        published.extend((t, decode(encode(m)).header) for t, m in out.events)

    def idle() -> None:
        for _ in range(60):
            out = ses.step()
            keep(out)
            if ses.recon is None or ses.recon.done():
                return

    keep(ses.start())
    keep(ses.receive(start_frames(s)))
    seq = 1
    chem_at = {float(a): j for j, a in enumerate(s.common_chem_angles)}
    for i, a in enumerate(s.haadf_angles):
        keep(ses.receive(haadf_frames(s, seq, i)))
        seq += 1
        if float(a) in chem_at:
            keep(ses.receive(chem_frames(s, seq, chem_at[float(a)])))
            seq += 1
        idle()
    keep(ses.receive(encode(make(SERIES_END, SID, seq, n_haadf=len(s.haadf_angles),
                                 n_chem=len(chem_at)))))
    for _ in range(1000):
        if ses.finished:
            break
        keep(ses.step())
    assert ses.finished
    return path, published


def _expected_marks(path: Path) -> tuple[list[TiltMark], list[IdleStop]]:
    """From the run file: tilt j of a modality joined at the first cost row counting j."""
    rec = read_run(path)
    c = rec.costs
    marks = []
    for modality, key in (("haadf", "n_haadf"), ("chem", "n_chem")):
        n = np.asarray(c[key])
        for j in range(1, int(n.max()) + 1):
            marks.append(TiltMark(int(c["iteration"][np.flatnonzero(n >= j)[0]]), modality))
    stops = [IdleStop(int(e["iteration"]), str(e["reason"])) for e in rec.events
             if e.get("kind") == "idle_stopped"]
    return sorted(marks, key=lambda m: (m.iteration, m.modality)), stops


def test_markers_sit_where_tilts_joined_and_idle_iterations_stopped(qapp, live_run) -> None:
    path, published = live_run
    want_marks, want_stops = _expected_marks(path)
    # The first HAADF image and its spectrum image both arrive before iteration 1.
    assert len(want_marks) == 14 and want_marks[:2] == [TiltMark(1, "chem"),
                                                        TiltMark(1, "haadf")]
    assert want_stops, "the loose rule should stop some idle iterations"
    c = read_run(path).costs
    idle_rows = {int(i) for i, f in zip(c["iteration"], c["idle"], strict=True) if f}
    assert {m.iteration for m in want_stops} <= idle_rows
    assert {m.reason for m in want_stops} <= {"converged", "data terms rising"}

    live = ViewerModel()
    for topic, header in published:
        live.apply(topic, header)
    got = live.view()
    assert sorted(got.tilt_marks, key=lambda m: (m.iteration, m.modality)) == want_marks
    assert got.idle_stops == want_stops
    assert got.cost_weights == {"haadf": 1.0, "chem": 0.01, "tv": 0.005}

    recorded = RecordedRun(path).state_at()
    assert sorted(recorded.tilt_marks, key=lambda m: (m.iteration, m.modality)) == want_marks
    assert recorded.idle_stops == want_stops and recorded.cost_weights == got.cost_weights
    # A cost row is where the new data first counts: the rows just before a chemical
    # tilt's line count one spectrum image fewer.
    chem_first = [m.iteration for m in want_marks if m.modality == "chem"]
    its = list(c["iteration"])
    for k, it in enumerate(chem_first):
        row = its.index(it)
        assert c["n_chem"][row] == k + 1 and (row == 0 or c["n_chem"][row - 1] == k)

    # The plot: a line half an iteration before each joined tilt, one at each idle stop.
    win = ViewerWindow(ViewerModel(recorded), refresh_ms=1000)
    try:
        win.refresh(force=True)
        pos = marker_positions(recorded.tilt_marks, recorded.idle_stops)
        assert sorted(pos["chem"]) == [i - 0.5 for i in chem_first]
        assert pos["idle"] == [float(m.iteration) for m in want_stops]
        lines = win.costs.lines["total"]
        assert sorted(float(ln.value()) for ln in lines) == sorted(
            x for xs in pos.values() for x in xs)
        total = win.costs.curves["total"].getOriginalDataset()[1]  # not log10
        w = recorded.cost_weights
        assert w is not None
        want_total = (w["haadf"] * np.asarray(recorded.costs["haadf"])
                      + w["chem"] * np.asarray(recorded.costs["chem"])
                      + w["tv"] * np.asarray(recorded.costs["tv"]))
        np.testing.assert_allclose(total, want_total, rtol=1e-12)
        assert "λ HAADF 1, λ chemical 0.01, λ TV 0.005" in win.costs.header.text
        assert win.costs.names["chem"].text == "chemical data term"
        assert [win.costs.names[t].text for t in ("total", "haadf", "tv")] == [
            "total cost", "HAADF data term", "TV"]
    finally:
        win.shutdown()
        win.close()


def test_recorded_run_calibration(qapp, live_run) -> None:
    path, _ = live_run
    state = RecordedRun(path).state_at()
    cal = state.calibration
    assert cal is not None and (cal.voxel_nm, cal.pixel_nm, cal.block) == (0.5, 0.5, 1)
    win = ViewerWindow(ViewerModel(state), refresh_ms=1000)
    try:
        win.refresh(force=True)
        # 16 voxels of 0.5 nm: central slice 8 at +0.25 nm; 30 % of 16 px = 2.4 nm -> 2 nm.
        assert win.slices.titles["s"].text == "s (normal to tilt axis) at +0.25 nm"
        bar = win.slices.cells[(state.elements[0], "s")].scale.bar
        assert bar is not None and (bar.label, bar.length_px) == ("2 nm", 4.0)
    finally:
        win.shutdown()
        win.close()
