"""The panel's connection to a controller, on one worker thread.

The thread owns both sockets (ZeroMQ sockets are not thread-safe): a SUB on the controller's
status PUB (`StatusSubscriber`) and, once the controller has said where, a DEALER to its
operator ROUTER (`OperatorClient`, docs/operator channel). It never touches the UI: messages,
replies and errors are handed over through `post`, which the panel sets to the document
controller's `queue_task`, so the callbacks run on the UI thread.

Keeping up: the worker reads everything the SUB holds at each poll and keeps only the newest
message per `mailbox_key` (the topic; events are all kept): a status, a preview, an advice
replaces the one before it while the UI has not taken it yet. It posts one drain task when
the mailbox becomes non-empty, never one per message, and the UI thread takes the whole
mailbox at once (`on_messages`, in order of arrival). A UI slower than the controller's
publishing therefore skips stale states instead of queueing them (an earlier panel posted
one task per message and fell ~65 s behind while the controller published slices at every
idle iteration).

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
Received = tuple[str, dict[str, Any]]  # (topic, header)


def mailbox_key(topic: str, header: dict[str, Any]) -> tuple[str, str]:
    """Messages with the same key supersede each other: status, slices, advice, alignment
    per topic (the newest says all); events are kept each (small, a few per tilt, and
    `reconstruction_updated` carries the per-tilt timing)."""
    if topic == "event":
        return topic, f"{header.get('event')}#{header.get('seq')}"
    return topic, ""


class Mailbox:
    """The newest message per key, in order of arrival, shared by the worker (put) and the
    UI thread (take). `put` says whether a drain must be posted (the mailbox was empty and
    no drain is pending)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Received] = {}
        self._pending = False
        self.superseded = 0  # messages replaced before the UI took them

    def put(self, topic: str, header: dict[str, Any]) -> bool:
        key = mailbox_key(topic, header)
        with self._lock:
            if self._items.pop(key, None) is not None:
                self.superseded += 1
            self._items[key] = (topic, header)  # re-inserted: ordered by newest arrival
            post = not self._pending
            self._pending = True
        return post

    def take(self) -> list[Received]:
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
            self._pending = False
        return items


@dataclass(frozen=True)
class LinkParams:
    poll_ms: int = 50  # how long the worker waits for a status message before checking commands
    reply_timeout_s: float = 2.0  # operator command -> ack
    join_timeout_s: float = 2.0  # close() waits this long for the worker
    max_batch: int = 1000  # messages read per poll before operator commands get a turn

    def __post_init__(self) -> None:
        if self.poll_ms < 1:
            raise ValueError(f"poll_ms must be >= 1, got {self.poll_ms}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
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
    `on_messages([(topic, header), ...])` with the newest message of each kind received
    since the last call (`Mailbox`), `on_error(text)` for a message
    that could not be decoded, `on_result(OperatorResult)` for each operator command."""

    def __init__(self, status_endpoint: str, *, post: Callable[[Task], None],
                 on_messages: Callable[[list[Received]], None],
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
        self._post, self._on_messages = post, on_messages
        self.mailbox = Mailbox()
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
        """Wait up to poll_ms for a message, then take every message already there (at most
        `max_batch`), keeping the newest of each kind in the mailbox."""
        timeout = self.params.poll_ms
        for _ in range(self.params.max_batch):
            try:
                got = sub.recv(timeout)
            except ProtocolError as e:
                self._deliver(self._on_error, f"undecodable status message: [{e.code}] {e}")
                continue
            if got is None:
                return
            timeout = 0
            topic, msg = got
            endpoint = msg.header.get("operator_endpoint")
            if topic == "status" and isinstance(endpoint, str) and endpoint:
                self._operator_endpoint = endpoint
            if self.mailbox.put(topic, msg.header):
                self._deliver(self._drain)

    def _drain(self) -> None:
        # On the UI thread: everything the mailbox holds, at once.
        items = self.mailbox.take()
        if items:
            self._on_messages(items)

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
