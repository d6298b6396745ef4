"""The viewer window (pyqtgraph on PySide6): orthoslices of each element (or their standard
error), the RGB chemical overlay, the cost terms against iteration, dose used against the
budget, the tilt angles taken per modality on a polar plot, the live alignment's shifts against
tilt angle (when the controller aligns), and the advisor's advice with Accept / Skip / Force.
A recorded run adds a slider over tilts.

The window only draws a `ViewerModel` and sends operator commands: receiving (the
subscriber thread), reading a run file and sending commands happen off the UI thread, and
a timer redraws at most every `refresh_ms`, only when the model changed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtWidgets

from fusetomo.ui.screenshot import save_png
from fusetomo.ui.viewer.costplot import CostPlots
from fusetomo.ui.viewer.model import (
    ViewerModel,
    ViewerState,
)
from fusetomo.ui.viewer.operator import OperatorLink
from fusetomo.ui.viewer.panels import (
    SHIFT_COLOURS,
    AdviceBox,
    AlignmentPanel,
    DoseBar,
    PolarAngles,
    advice_html,
    status_text,
)
from fusetomo.ui.viewer.qtcompat import RefcountGuard
from fusetomo.ui.viewer.runsource import RecordedRun
from fusetomo.ui.viewer.slicegrid import SliceGrid

__all__ = ["SHIFT_COLOURS", "ViewerWindow"]


class ViewerWindow(QtWidgets.QMainWindow):
    """Draws `model`; with `run`, a slider moves over the run's tilts."""

    operator_done = QtCore.Signal(str, object, object)  # action, reply | None, error | None

    def __init__(self, model: ViewerModel, *, elements: Sequence[str] | None = None,
                 show_std: bool = False, refresh_ms: int = 200, run: RecordedRun | None = None,
                 operator_endpoint: str | None = None, title: str = "fusetomo viewer",
                 curve: Any = None) -> None:
        """`curve`: the viewer's CurveKeys (`fusetomo keys`) for an authenticated
        controller's operator socket."""
        super().__init__()
        if refresh_ms <= 0:
            raise ValueError(f"refresh_ms must be > 0, got {refresh_ms}")
        self._guard = RefcountGuard.install()  # PySide6 6.12.0 on CPython 3.11: see there
        self.model = model
        self.run = run
        self.wanted_elements = tuple(elements) if elements else None
        self.operator_endpoint = operator_endpoint
        self.state = ViewerState()
        self.drawn_version = -1
        self._sending = False
        self.last_reply: tuple[str, dict[str, Any] | None, str | None] | None = None
        self.setWindowTitle(title)
        self._build(show_std)
        self.operator = OperatorLink(self.operator_done.emit, curve=curve)
        self.operator_done.connect(self._on_operator_done)
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusetomo-run")
        self._wanted_tilt = -1
        self._wanted_lock = threading.Lock()
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(refresh_ms)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

    # -- layout --------------------------------------------------------------------------
    def _build(self, show_std: bool) -> None:
        central = QtWidgets.QWidget()
        outer = QtWidgets.QVBoxLayout(central)
        top = QtWidgets.QHBoxLayout()
        self.status_label = QtWidgets.QLabel("waiting for the controller")
        self.status_label.setWordWrap(True)
        self.std_box = QtWidgets.QCheckBox("show standard error")
        self.std_box.setChecked(show_std)
        self.std_box.toggled.connect(self._on_std_toggled)
        top.addWidget(self.status_label, 1)
        top.addWidget(self.std_box)
        outer.addLayout(top)

        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.slices = SliceGrid()
        split.addWidget(self.slices)
        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        self.costs = CostPlots()
        self.dose = DoseBar()
        self.polar = PolarAngles()
        self.align_plot = AlignmentPanel()
        rl.addWidget(self.costs, 3)
        rl.addWidget(self.dose, 1)
        rl.addWidget(self.polar, 2)
        rl.addWidget(self.align_plot, 2)
        rl.addWidget(self._advice_box())
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        outer.addWidget(split, 1)

        self.slider: QtWidgets.QSlider | None = None
        self.slider_label: QtWidgets.QLabel | None = None
        if self.run is not None:
            row = QtWidgets.QHBoxLayout()
            self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
            self.slider.setRange(0, self.run.n_tilts)
            self.slider.setValue(self.run.n_tilts)
            self.slider.valueChanged.connect(self.request_tilt)
            self.slider_label = QtWidgets.QLabel()
            row.addWidget(QtWidgets.QLabel("tilt"))
            row.addWidget(self.slider, 1)
            row.addWidget(self.slider_label)
            outer.addLayout(row)
        self.setCentralWidget(central)

    def _advice_box(self) -> QtWidgets.QGroupBox:
        box = AdviceBox(advice_html(None, self.state), self._on_accept, self._on_skip,
                        self._on_force)
        self.advice_label, self.reply_label = box.advice_label, box.reply_label
        self.accept_button, self.skip_button = box.accept_button, box.skip_button
        self.force_button = box.force_button
        return box

    # -- drawing -------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Redraw when the model changed since the last drawing (or `force`)."""
        self._guard.top_up()
        version = self.model.version
        if not force and version == self.drawn_version:
            return False
        self.state = self.model.view()
        self.drawn_version = version
        self.draw(self.state)
        return True

    def shown_elements(self, state: ViewerState) -> tuple[str, ...]:
        if self.wanted_elements is None:
            return state.elements
        return tuple(e for e in self.wanted_elements if e in state.elements)

    def draw(self, state: ViewerState) -> None:
        std = self.std_box.isChecked()
        text = status_text(state)
        if std and not state.std_slices:
            text += " · no standard error yet"
        missing = [e for e in self.wanted_elements or () if state.elements
                   and e not in state.elements]
        if missing:
            text += f" · not in this series: {', '.join(missing)}"
        self.status_label.setText(text)
        self.slices.draw(state, self.shown_elements(state), std)
        self.costs.draw(state)
        self.dose.draw(state)
        self.polar.draw(state)
        self.align_plot.draw(state)
        self.advice_label.setText(advice_html(state.advice, state))
        self._update_buttons(state)
        if self.slider_label is not None:
            self.slider_label.setText(state.caption or "")

    def endpoint(self) -> str | None:
        return self.operator_endpoint or self.state.operator_endpoint

    def _update_buttons(self, state: ViewerState) -> None:
        live = self.run is None and bool(self.endpoint()) and not self._sending
        open_advice = state.advice is not None and state.advice.open
        self.accept_button.setEnabled(live and open_advice)
        self.skip_button.setEnabled(live and open_advice)
        self.force_button.setEnabled(live)

    @QtCore.Slot()
    def _on_std_toggled(self) -> None:
        self.refresh(force=True)

    # -- operator ------------------------------------------------------------------------
    @QtCore.Slot()
    def _on_accept(self) -> None:
        self.send_operator("accept")

    @QtCore.Slot()
    def _on_skip(self) -> None:
        self.send_operator("skip")

    @QtCore.Slot()
    def _on_force(self) -> None:
        self.send_operator("force")

    def send_operator(self, action: str) -> None:
        endpoint = self.endpoint()
        adv = self.state.advice
        advice_id = adv.id if adv is not None and action in ("accept", "skip") else None
        try:
            self.operator.send(endpoint or "", action, advice_id=advice_id)
        except (ValueError, RuntimeError) as e:
            self.reply_label.setText(f"{action}: {e}")
            return
        self._sending = True
        self._update_buttons(self.state)
        self.reply_label.setText(f"{action}: sent to {endpoint}…")

    @QtCore.Slot(str, object, object)
    def _on_operator_done(self, action: str, reply: dict[str, Any] | None,
                          error: str | None) -> None:
        self._sending = False
        self.last_reply = (action, reply, error)
        if error is not None:
            self.reply_label.setText(f"{action} failed: {error}")
        else:
            reason = (reply or {}).get("reason")
            self.reply_label.setText(f"{action}: {(reply or {}).get('status', 'done')}"
                                     + (f" ({reason})" if reason else ""))
        self._update_buttons(self.state)

    # -- recorded runs ---------------------------------------------------------------------
    def request_tilt(self, k: int) -> None:
        """Show the run after tilt k; the run file is read in a worker thread, and only the
        newest request is served when the slider moves faster than the file is read."""
        if self.run is None:
            return
        with self._wanted_lock:
            self._wanted_tilt = k
        self._loader.submit(self._load_tilt, k)

    def _load_tilt(self, k: int) -> None:
        with self._wanted_lock:
            if k != self._wanted_tilt:
                return
        assert self.run is not None
        try:
            state = self.run.state_at(k)
        except Exception as e:  # shown in the status line; the window keeps working
            state = self.model.view()
            state.errors = [*state.errors[-19:], f"tilt {k}: {e}"]
        with self._wanted_lock:
            if k == self._wanted_tilt:
                self.model.replace_state(state)

    def show_tilt_now(self, k: int) -> None:
        """Show tilt k synchronously (screenshots)."""
        if self.run is None:
            raise ValueError("no recorded run is open")
        with self._wanted_lock:
            self._wanted_tilt = k
        if self.slider is not None:
            self.slider.blockSignals(True)
            self.slider.setValue(k)
            self.slider.blockSignals(False)
        self.model.replace_state(self.run.state_at(k))
        self.refresh(force=True)

    # -- output and teardown -------------------------------------------------------------
    def save_screenshot(self, path: str | Path) -> tuple[int, int]:
        """Redraw, render the window into `path` (PNG) and return its (width, height)."""
        self.refresh(force=True)
        return save_png(self, path)

    def shutdown(self) -> None:
        self.timer.stop()
        self.operator.close()
        self._loader.shutdown(wait=True, cancel_futures=True)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.shutdown()
        super().closeEvent(event)
