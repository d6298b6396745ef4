"""Operator commands from the viewer, sent off the UI thread.

`fusetomo.adapters.transport.OperatorClient` (a DEALER; operator_spec) is imported when the
first command is sent, so that the viewer runs against a controller package that lacks
it and says so only when a button is pressed. A client is not thread-safe: one worker
thread owns it (and a new one when the endpoint changes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fusetomo.core.errors import FusetomoError

ACTIONS = ("accept", "skip", "force", "pause", "resume", "abort", "auto", "manual")
NEEDS_ADVICE = ("accept", "skip")

# on_done(action, reply header or None, error text or None), called in the worker thread.
DoneCallback = Callable[[str, dict[str, Any] | None, str | None], None]


class OperatorUnavailableError(FusetomoError, RuntimeError):
    """This fusetomo has no operator client (adapters.transport.OperatorClient)."""


def operator_client_class() -> type:
    try:
        from fusetomo.adapters.transport import OperatorClient
    except ImportError as e:  # an older fusetomo: the live viewer still works, buttons do not
        raise OperatorUnavailableError("this fusetomo has no OperatorClient in "
                                  f"fusetomo.adapters.transport ({e})") from None
    return OperatorClient


class OperatorLink:
    """Sends `action`s to the controller at `endpoint`, one at a time, in a worker thread;
    `on_done` gets the reply (or the error) in that thread."""

    def __init__(self, on_done: DoneCallback, *, timeout_s: float = 2.0,
                 curve: Any = None) -> None:
        """`curve`: the viewer's CurveKeys for an authenticated controller (None: none)."""
        self._on_done = on_done
        self._curve = curve
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusetomo-operator")
        self._client: Any = None
        self._client_endpoint: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    def send(self, endpoint: str, action: str, *, advice_id: int | None = None) -> Future:
        if action not in ACTIONS:
            raise ValueError(f"operator action {action!r} is not one of {list(ACTIONS)}")
        if action in NEEDS_ADVICE and advice_id is None:
            raise ValueError(f"operator action {action!r} needs the advice id it answers")
        if not endpoint:
            raise ValueError("no operator endpoint: the controller has not published one "
                             "(pass --operator tcp://HOST:PORT)")
        with self._lock:
            if self._closed:
                raise RuntimeError("the operator link is closed")
            return self._pool.submit(self._send, endpoint, action, advice_id)

    def _send(self, endpoint: str, action: str, advice_id: int | None) -> dict[str, Any] | None:
        try:
            client = self._client_for(endpoint)
            reply = client.send(action, advice_id=advice_id, timeout_s=self._timeout_s)
        except Exception as e:  # any failure is shown to the operator, never raised in Qt
            self._on_done(action, None, str(e) or type(e).__name__)
            if not isinstance(e, OperatorUnavailableError | ValueError):
                self._drop_client()  # a socket in an unknown state: start afresh next time
            return None
        self._on_done(action, dict(reply), None)
        return dict(reply)

    def _client_for(self, endpoint: str) -> Any:
        if self._client is not None and self._client_endpoint == endpoint:
            return self._client
        self._drop_client()
        cls = operator_client_class()
        self._client = cls(endpoint) if self._curve is None else cls(endpoint,
                                                                     curve=self._curve)
        self._client_endpoint = endpoint
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client, self._client_endpoint = None, None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # The client belongs to the worker thread: close it there, then stop the thread.
        self._pool.submit(self._drop_client)
        self._pool.shutdown(wait=True)
