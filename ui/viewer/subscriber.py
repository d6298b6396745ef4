"""The receiving thread: a QThread that owns a `StatusSubscriber` (ZeroMQ sockets are used
by the thread that made them), folds each message into the ViewerModel, and tells the UI
by signals. Decoding (JSON, the slices' lists into arrays) happens here, never on the UI
thread; the window redraws on a timer, so a fast controller cannot flood it."""

from __future__ import annotations

from typing import Any

from PySide6 import QtCore

from fusetomo.adapters.protocol import ProtocolError
from fusetomo.adapters.transport import StatusSubscriber
from fusetomo.ui.viewer.model import ViewerModel

TOPICS = ("status", "slices", "advice", "event", "alignment")


class SubscriberThread(QtCore.QThread):
    """Receives from the controller's status PUB at `endpoint` until `stop()`."""

    received = QtCore.Signal(str, int)  # topic, model version after applying it
    failed = QtCore.Signal(str)  # a message that could not be decoded or shown

    def __init__(self, endpoint: str, model: ViewerModel, *, poll_ms: int = 100,
                 parent: QtCore.QObject | None = None, curve: Any = None) -> None:
        super().__init__(parent)
        if poll_ms <= 0:
            raise ValueError(f"poll_ms must be > 0, got {poll_ms}")
        self.endpoint = endpoint
        self.model = model
        self.poll_ms = poll_ms
        self.curve = curve  # the viewer's CurveKeys for an authenticated controller
        self.setObjectName("fusetomo-status-subscriber")

    def run(self) -> None:
        try:
            sub = StatusSubscriber(self.endpoint, TOPICS, curve=self.curve)
        except Exception as e:  # a bad address: say so in the window, do not crash Qt
            self.failed.emit(f"cannot subscribe to {self.endpoint}: {e}")
            return
        try:
            while not self.isInterruptionRequested():
                try:
                    got = sub.recv(self.poll_ms)
                except ProtocolError as e:
                    self.failed.emit(f"bad status message [{e.code}]: {e}")
                    continue
                if got is None:
                    continue
                topic, msg = got
                if not self.model.apply_message(topic, msg):
                    errors = self.model.view().errors
                    if topic in TOPICS and errors:
                        self.failed.emit(errors[-1])
                    continue
                self.received.emit(topic, self.model.version)
        finally:
            sub.close()

    def stop(self, timeout_ms: int = 3000) -> None:
        self.requestInterruption()
        self.wait(timeout_ms)
