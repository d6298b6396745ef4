"""The panel's connection to a controller, on one worker thread.

The thread owns both sockets (ZeroMQ sockets are not thread-safe): a SUB on the controller's
status PUB (`StatusSubscriber`) and, once the controller has said where, a DEALER to its
operator ROUTER (`OperatorClient`, docs/operator channel). It never touches the UI: every
message, reply and error is handed over through `post`, which the panel sets to the document
controller's `queue_task`, so the callbacks run on the UI thread in arrival order.

Operator commands (`send`) are queued to the thread, which sends them between two polls of
the SUB; the reply (or the reason there is none) comes back through `post` as well. Sending
blocks the worker for at most `reply_timeout_s`, never the UI.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from fusetomo.adapters.protocol import ProtocolError
from fusetomo.adapters.transport import CurveKeys, StatusSubscriber

log = logging.getLogger(__name__)

Task = Callable[[], None]


@dataclass(frozen=True)
class LinkParams:
    poll_ms: int = 50  # how long the worker waits for a status message before checking commands
    reply_timeout_s: float = 2.0  # operator command -> ack
    join_timeout_s: float = 2.0  # close() waits this long for the worker

    def __post_init__(self) -> None:
        if self.poll_ms < 1:
            raise ValueError(f"poll_ms must be >= 1, got {self.poll_ms}")
        if not self.reply_timeout_s > 0:
            raise ValueError(f"reply_timeout_s must be > 0, got {self.reply_timeout_s}")


@dataclass(frozen=True)
class OperatorResult:
    """What became of one operator command: the controller's reply header, or an error."""

    action: str
    advice_id: int | None
    reply: dict[str, Any] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def _default_client_factory(endpoint: str, ctx: zmq.Context, *,
                            curve: CurveKeys | None = None) -> Any:
    # Imported here so that a fusetomo without the operator channel still shows status.
    from fusetomo.adapters.transport import OperatorClient
    return OperatorClient(endpoint, ctx=ctx, curve=curve)


class ControllerLink:
    """Subscribes to `status_endpoint` and delivers, on the UI thread (through `post`):
    `on_message(topic, header)` for each status message, `on_error(text)` for a message
    that could not be decoded, `on_result(OperatorResult)` for each operator command."""

    def __init__(self, status_endpoint: str, *, post: Callable[[Task], None],
                 on_message: Callable[[str, dict[str, Any]], None],
                 on_error: Callable[[str], None],
                 on_result: Callable[[OperatorResult], None],
                 operator_endpoint: str | None = None, params: LinkParams | None = None,
                 ctx: zmq.Context | None = None,
                 client_factory: Callable[[str, zmq.Context], Any] = _default_client_factory,
                 curve: CurveKeys | None = None) -> None:
        """`curve`: the viewer's keys (`keys_for(DIR, "viewer")`) for a controller whose
        status and operator sockets authenticate (`fusetomo control --keys DIR`)."""
        if not status_endpoint:
            raise ValueError("status endpoint is empty (expected e.g. tcp://127.0.0.1:5556)")
        self.status_endpoint = status_endpoint
        self.params = params or LinkParams()
        self._post, self._on_message = post, on_message
        self._on_error, self._on_result = on_error, on_result
        self._ctx = ctx or zmq.Context.instance()
        self._curve = curve
        self._client_factory = (functools.partial(client_factory, curve=curve)
                                if curve is not None else client_factory)
        self._operator_endpoint = operator_endpoint  # read and written by the worker only
        self._commands: queue.Queue[tuple[str, int | None]] = queue.Queue()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fusetomo-nion-link",
                                        daemon=True)

    def start(self) -> None:
        """Start the worker; raises (on this thread) if the SUB cannot be made."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def send(self, action: str, *, advice_id: int | None = None) -> None:
        """Queue an operator command (returns at once; the result comes via on_result)."""
        if self._stop.is_set():
            raise RuntimeError("the link is closed")
        self._commands.put((action, advice_id))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the worker and close its sockets; nothing is posted once this returns."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.params.join_timeout_s)
            if self._thread.is_alive():
                log.warning("fusetomo link thread did not stop within %.1f s",
                            self.params.join_timeout_s)

    # -- worker thread --------------------------------------------------------------------
    def _deliver(self, fn: Callable[..., None], *args: Any) -> None:
        if not self._stop.is_set():
            self._post(functools.partial(fn, *args))

    def _run(self) -> None:
        try:
            sub = StatusSubscriber(self.status_endpoint, ctx=self._ctx, curve=self._curve)
        except (zmq.ZMQError, ValueError) as e:
            self._start_error = ValueError(f"cannot connect to {self.status_endpoint!r}: {e}")
            self._started.set()
            return
        self._started.set()
        client, client_endpoint = None, None
        try:
            while not self._stop.is_set():
                self._receive(sub)
                while not self._stop.is_set():
                    try:
                        action, advice_id = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if client is not None and client_endpoint != self._operator_endpoint:
                        client.close()
                        client = None
                    problem = None
                    if client is None and self._operator_endpoint:
                        try:
                            client = self._client_factory(self._operator_endpoint, self._ctx)
                            client_endpoint = self._operator_endpoint
                        except (ImportError, ValueError, zmq.ZMQError) as e:
                            problem = f"cannot reach {self._operator_endpoint!r}: {e}"
                    result = (OperatorResult(action, advice_id, None, problem) if problem
                              else self._command(client, action, advice_id))
                    self._deliver(self._on_result, result)
        finally:
            sub.close()
            if client is not None:
                client.close()

    def _receive(self, sub: StatusSubscriber) -> None:
        try:
            got = sub.recv(self.params.poll_ms)
        except ProtocolError as e:
            self._deliver(self._on_error, f"undecodable status message: [{e.code}] {e}")
            return
        if got is None:
            return
        topic, msg = got
        endpoint = msg.header.get("operator_endpoint")
        if topic == "status" and isinstance(endpoint, str) and endpoint:
            self._operator_endpoint = endpoint
        self._deliver(self._on_message, topic, msg.header)

    def _command(self, client: Any, action: str, advice_id: int | None) -> OperatorResult:
        if client is None:
            return OperatorResult(action, advice_id, None, "the controller has not said where "
                                  "operator commands go (no operator_endpoint in its status)")
        try:
            reply = client.send(action, advice_id=advice_id,
                                timeout_s=self.params.reply_timeout_s)
        except (ValueError, zmq.ZMQError) as e:  # OperatorError is a ValueError
            return OperatorResult(action, advice_id, None, str(e))
        return OperatorResult(action, advice_id, dict(reply), None)
