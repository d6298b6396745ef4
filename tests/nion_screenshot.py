"""Run the real Nion Swift (Qt, offscreen) with the fusetomo panel, feed it a recorded-like
live state from a StatusPublisher, and save a screenshot of the Swift window:

    QT_QPA_PLATFORM=offscreen HOME=<tmp> python tests/nion_screenshot.py OUT.png

What `nionui nionui_app.nionswift` does (nionui_app/nionswift/main.py), plus a Qt timer
that connects the panel, publishes, and grabs the window once the panel shows the slices.
Used by tests/test_nion_screenshot.py; exits 0 once OUT.png is written, 3 on time-out.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def _messages(operator: str | None) -> list[tuple[str, object]]:
    from fusetomo.adapters import protocol as proto
    from fusetomo.controller.live.publish import orthoslices, slice_calibration

    elements = ["Co", "Cu", "O", "Au"]
    n = 32
    z, y, x = np.mgrid[:n, :n, :n] - n / 2 + 0.5
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    vol = np.stack([(r < 12) * 1.0, ((r > 8) & (r < 12)) * 0.8, (r < 6) * 0.6,
                    (np.abs(x) + np.abs(y) < 6) * (np.abs(z) < 10) * 0.4]).astype(np.float32)
    std = 0.05 + 0.05 * vol
    series = "demo-3f9c"
    status = proto.make(
        proto.STATUS, series, 1, state="iterating", iteration=212,
        costs={"haadf": 0.0123, "chem": 4.56, "tv": 0.789}, haadf_tilts=29, chem_tilts=3,
        planned_haadf=47, planned_chem=None, chem_maps_budget=6,
        dose_e_per_A2={"haadf": 2900.0, "chem": 1510.0, "total": 4410.0},
        haadf_angles=[-70.0 + 3 * i for i in range(29)], dose_budget_e_per_A2=8000.0,
        advice_mode="manual", processing_s=0.84, lag_s=0.0, lag_tilts=0,
        operator_endpoint=operator)
    advice = proto.make(proto.STATUS, series, 2, advice={
        "id": 12, "angle": 14.0, "action": "acquire_now", "mode": "manual",
        "reason": "predicted <NRMSE> drops 9.1 % (stop below 5.5 %)",
        "gain_per_dose": 0.0123, "best_angle": 14.0, "chem_maps_used": 3,
        "chem_maps_budget": 6, "answer": None, "decision": None})
    timing = proto.make(proto.EVENT, series, 3, event="reconstruction_updated",
                        iteration=212, tilt_seqs=[29], processing_s=[0.84], lag_s=0.0,
                        lag_tilts=0)
    slices = proto.make(proto.STATUS, series, 4, iteration=212,
                        slices=orthoslices(vol, elements, 32, 8),
                        std_slices=orthoslices(std, elements, 32, 8), std_iteration=210,
                        calibration=slice_calibration(vol.shape, 8, 32, 0.5))
    return [("status", status), ("advice", advice), ("event", timing), ("slices", slices)]


def main(out: str, timeout_s: float = 40.0) -> int:
    from nion.swift import Application, Facade
    from nion.ui import Application as ApplicationUI
    from PySide6 import QtCore, QtWidgets

    from fusetomo.adapters.transport import StatusPublisher

    Facade.initialize()
    app = Application.Application(ApplicationUI.make_ui({"qt": None}))
    app.initialize(use_root_dir=False)  # Swift's plug-in loader: registers the panel
    if "nionswift_plugin.fusetomo" not in sys.modules:
        # a default editable install, which Swift's loader cannot see (README: install in
        # strict editable mode); tests/test_packaging.py checks the loader itself
        from fusetomo.ui.nion.panel import run
        run()
    pub = StatusPublisher()
    t0 = time.monotonic()
    result: dict[str, float] = {"code": 3}
    timers: list[QtCore.QTimer] = []  # made once Qt's application exists
    keep: list[object] = []

    def tick() -> None:
        dcs = [w for w in app.windows if hasattr(w, "find_dock_panel")]
        if not dcs:
            if time.monotonic() - t0 > timeout_s:
                app.exit()
            return
        dc = dcs[0]
        panel = dc.find_dock_panel("fusetomo-panel")
        if panel is None:
            if time.monotonic() - t0 > timeout_s:
                print("the fusetomo panel is not in the workspace", file=sys.stderr)
                app.exit()
            return
        h = panel.handler
        if h.link is None:
            panel.dock_widget.show()
            h.connect(pub.endpoint)
            window = max(QtWidgets.QApplication.topLevelWidgets(),
                         key=lambda w: w.width() * w.height() if w.isVisible() else 0)
            window.resize(1400, 860)
        for topic, msg in _messages("tcp://127.0.0.1:9"):  # sent now (t_sent)
            pub.publish(topic, msg)
        done = (h.state.advice is not None and h.data_items.get("Au", "std") is not None
                and h.timing_item.item is not None)
        if done and not result.get("t_done"):
            result["t_done"] = time.monotonic()
        # Swift renders its canvases (images, progress bars) on worker threads: give them
        # a few seconds before grabbing the window
        if done and time.monotonic() - result["t_done"] > 4.0:
            window = max(QtWidgets.QApplication.topLevelWidgets(),
                         key=lambda w: w.width() * w.height() if w.isVisible() else 0)
            QtWidgets.QApplication.processEvents()
            result["code"] = 0 if window.grab().save(out, "PNG") else 4
        if time.monotonic() - t0 > timeout_s:
            print(f"timed out: {h.n_messages} messages, advice {h.state.advice}, items "
                  f"{h.data_items.keys}, result {h.result_text!r}", file=sys.stderr)
        if (done and result["code"] != 3) or time.monotonic() - t0 > timeout_s:
            timers[0].stop()
            h.close()
            pub.close()
            app.exit()

    original_start = app.start

    def start(*args, **kwargs) -> bool:
        ok = original_start(*args, **kwargs)
        # a fresh profile opens Swift's project chooser: open a document window on an
        # in-memory project instead (nothing written to the user's libraries)
        from nion.swift import DocumentController
        from nion.swift.test import TestContext
        context = TestContext.create_memory_context()
        keep.append(context)
        model = context.create_document_model(auto_close=False)
        DocumentController.DocumentController(app.ui, model, workspace_id="library",
                                              app=app).show()
        timers.append(QtCore.QTimer())
        timers[0].timeout.connect(tick)
        timers[0].start(200)
        return ok

    app.start = start  # type: ignore[method-assign]
    app.run()
    return result["code"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
