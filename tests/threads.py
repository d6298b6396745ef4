"""A test's helper thread that keeps its target's exception, so that the test can check
that the thread stopped and fail with the thread's own error."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class CheckedThread(threading.Thread):
    """A daemon thread running `target(*args)`; `finish()` joins it, fails if it is still
    running, and re-raises the exception that ended it, if any."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: str | None = None,
                 start: bool = False) -> None:
        super().__init__(daemon=True, name=name)
        self._fn, self._args = target, args
        self.result: Any = None
        self.error: BaseException | None = None
        if start:
            self.start()

    def run(self) -> None:
        try:
            self.result = self._fn(*self._args)
        except BaseException as e:  # re-raised by finish(), in the test's thread
            self.error = e

    def finish(self, timeout: float = 30.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"thread {self.name} did not stop within {timeout} s"
        if self.error is not None:
            raise self.error
