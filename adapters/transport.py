"""ZeroMQ sockets of the live loop, one class per role.

Patterns (docs/protocol.md says why):
- data and commands: the instrument binds a ROUTER, the controller connects a DEALER with a
  fixed identity. Tilts flow up, acknowledgements and commands flow down, asynchronously,
  over one connection that ZeroMQ re-establishes by itself when either side restarts. The
  controller acknowledges a tilt only once it is recorded; the instrument keeps every
  unacknowledged message and resends it when the controller says `hello` (at-least-once),
  and the controller drops what it already recorded (so each tilt is recorded once).
- status: the controller binds a PUB, viewers connect SUBs. Publishing never waits for a
  slow viewer (a full high-water mark drops status messages, never data).
- operator: the controller binds a ROUTER, viewers and the Nion Swift panel connect
  DEALERs and send `operator` messages (accept / skip / force an advice, pause, ...); each
  gets one `ack` reply.
Everything binds to 127.0.0.1 unless told otherwise. Every socket limits the size of the
frames it accepts (headers only: 128 KiB; the controller's DEALER: the series' image size,
once known; twice the 64 KiB header limit, so that a slightly too large header still gets
its error reply). CURVE encryption with client authentication (ZAP) is available on every
socket (`CurveKeys`; `fusetomo keys` makes the key files).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from fusetomo.adapters.protocol import (
    ACK,
    MAX_HEADER_BYTES,
    OPERATOR,
    Message,
    ProtocolError,
    decode,
    encode,
    make,
)
from fusetomo.core.errors import FusetomoError

DEFAULT_BIND = "tcp://127.0.0.1:0"
# The largest frame a socket accepts that carries headers only (everything but tilts):
# twice the header limit, so that a header a little too large still gets its error reply
# (header_too_large), while a larger frame drops its sender before it is buffered.
HEADER_LIMIT = 2 * MAX_HEADER_BYTES


@dataclass(frozen=True)
class CurveKeys:
    """Key files made by `fusetomo keys` (or `zmq.auth.create_certificates`). A server (the
    instrument's ROUTER; the controller's PUB and operator ROUTER) needs its secret key and
    the folder of the public keys of the clients it accepts (ZAP authentication: any other
    client is refused at the handshake); a client (the controller's DEALER; viewers' SUB
    and operator DEALER) its own secret key and the server's public key."""

    secret_file: Path
    server_public_file: Path | None = None  # client side
    authorized_clients_dir: Path | None = None  # server side


# One ZAP handler per context (ZeroMQ allows one): the keys folders it accepts.
_AUTHS: dict[int, tuple[Any, set[str]]] = {}


def _apply_server_curve(sock: zmq.Socket, ctx: zmq.Context, keys: CurveKeys) -> Any:
    from zmq.auth.thread import ThreadAuthenticator

    if keys.authorized_clients_dir is None:
        raise ValueError("a CURVE server needs the folder of authorised client public keys")
    folder = str(keys.authorized_clients_dir)
    if not Path(folder).is_dir():
        raise ValueError(f"{folder}: no such folder of authorised public keys")
    auth, folders = _AUTHS.get(id(ctx), (None, set()))
    new = auth is None
    if new:
        auth = ThreadAuthenticator(ctx)
        auth.start()
    if folder not in folders:
        folders.add(folder)
        # Every folder given for this context is accepted (the authenticator keeps one
        # set of keys per domain): reload all of them.
        auth.certs["*"] = {}
        for f in sorted(folders):
            auth.certs["*"].update(zmq.auth.load_certificates(f))
    _AUTHS[id(ctx)] = (auth, folders)
    pub, sec = zmq.auth.load_certificate(str(keys.secret_file))
    if sec is None:
        raise ValueError(f"{keys.secret_file}: not a secret key file")
    sock.curve_secretkey, sock.curve_publickey, sock.curve_server = sec, pub, True
    return auth if new else None


def _apply_client_curve(sock: zmq.Socket, keys: CurveKeys) -> None:
    pub, sec = zmq.auth.load_certificate(str(keys.secret_file))
    if sec is None or keys.server_public_file is None:
        raise ValueError("a CURVE client needs its secret key file and the server's public key")
    server_pub, _ = zmq.auth.load_certificate(str(keys.server_public_file))
    sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = sec, pub, server_pub


class _Endpoint:
    """A socket whose inbound frames are limited to `max_frame` bytes (ZeroMQ's
    MAXMSGSIZE: a peer that sends a larger frame is disconnected before it is buffered)."""

    def __init__(self, sock_type: int, ctx: zmq.Context | None,
                 max_frame: int = HEADER_LIMIT) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(sock_type)
        self.sock.linger = 0
        self.sock.maxmsgsize = max_frame
        self._auth: Any = None

    @property
    def endpoint(self) -> str:
        """The address actually bound or connected (with the real port after :0)."""
        return self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self) -> None:
        self.sock.close(0)
        if self._auth is not None:
            self._auth.stop()
            _AUTHS.pop(id(self.ctx), None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Router(_Endpoint):
    """A bound ROUTER answering any number of peers (who send headers only)."""

    def __init__(self, bind: str, ctx: zmq.Context | None,
                 curve: CurveKeys | None = None) -> None:
        super().__init__(zmq.ROUTER, ctx)
        self.sock.router_mandatory = False
        if curve is not None:
            self._auth = _apply_server_curve(self.sock, self.ctx, curve)
        self.sock.bind(bind)

    def send(self, peer: bytes, msg: Message) -> None:
        self.sock.send_multipart([peer, *encode(msg)], copy=False)

    def recv_frames(self, timeout_ms: int = 0) -> tuple[bytes, list[bytes]] | None:
        """(peer, frames) of the next message, undecoded; None on time-out."""
        if not self.sock.poll(timeout_ms):
            return None
        peer, *frames = self.sock.recv_multipart(copy=True)
        return peer, frames

    def recv(self, timeout_ms: int = 0) -> tuple[bytes, Message] | None:
        """Next message from a peer, None on time-out. A malformed message raises
        ProtocolError with `.peer` set so that the caller can reply."""
        if not self.sock.poll(timeout_ms):
            return None
        peer, *frames = self.sock.recv_multipart(copy=True)
        try:
            return peer, decode(frames)
        except ProtocolError as e:
            e.peer = peer  # type: ignore[attr-defined]
            raise


class InstrumentServer(_Router):
    """Instrument side: ROUTER bound at `bind`; talks to any number of controllers."""

    def __init__(self, bind: str = DEFAULT_BIND, *, ctx: zmq.Context | None = None,
                 curve: CurveKeys | None = None) -> None:
        super().__init__(bind, ctx, curve)


class ControllerClient(_Endpoint):
    """Controller side: DEALER connected to the instrument with a stable identity, so the
    instrument recognises the controller after a reconnect."""

    def __init__(self, connect: str, *, identity: bytes = b"fusetomo-controller",
                 ctx: zmq.Context | None = None, curve: CurveKeys | None = None,
                 max_frame: int = HEADER_LIMIT) -> None:
        super().__init__(zmq.DEALER, ctx, max_frame)
        self.sock.identity = identity
        self.sock.reconnect_ivl = 100
        self.sock.reconnect_ivl_max = 2000
        if curve is not None:
            _apply_client_curve(self.sock, curve)
        self.address = connect
        self.sock.connect(connect)

    @property
    def max_frame(self) -> int:
        return int(self.sock.maxmsgsize)

    def set_max_frame(self, n: int) -> None:
        """Accept frames up to `n` bytes from now on. ZeroMQ applies a socket's limit when a
        connection is made, so the connection is made again (the instrument then hears a
        new hello and resends what was not acknowledged)."""
        if n == self.max_frame:
            return
        self.sock.maxmsgsize = n
        self.reconnect()

    def reconnect(self) -> None:
        """Connect again. ZeroMQ does so by itself after most disconnections, but not after
        it dropped a peer for a frame over the limit."""
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disconnect(self.address)
        self.sock.connect(self.address)

    def send(self, msg: Message, *, block: bool = True) -> None:
        """zmq.Again when not `block` and the message cannot be queued now."""
        self.sock.send_multipart(encode(msg), flags=0 if block else zmq.NOBLOCK, copy=False)

    def recv_frames(self, timeout_ms: int) -> list[bytes] | None:
        """Raw frames (the controller decodes them itself to reply to bad ones)."""
        if not self.sock.poll(timeout_ms):
            return None
        return self.sock.recv_multipart(copy=True)


class StatusPublisher(_Endpoint):
    """Controller side: PUB bound at `bind`; topic frame, then a protocol message."""

    def __init__(self, bind: str = DEFAULT_BIND, *, ctx: zmq.Context | None = None,
                 hwm: int = 100, curve: CurveKeys | None = None) -> None:
        super().__init__(zmq.PUB, ctx)
        self.sock.sndhwm = hwm
        if curve is not None:
            self._auth = _apply_server_curve(self.sock, self.ctx, curve)
        self.sock.bind(bind)

    def publish(self, topic: str, msg: Message) -> None:
        # A slow subscriber never holds up the controller: its messages are dropped.
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart([topic.encode(), *encode(msg)], flags=zmq.NOBLOCK,
                                     copy=False)


class StatusSubscriber(_Endpoint):
    """Viewer side: SUB connected to a controller's status address."""

    def __init__(self, connect: str, topics: tuple[str, ...] = ("",), *,
                 ctx: zmq.Context | None = None, curve: CurveKeys | None = None) -> None:
        super().__init__(zmq.SUB, ctx)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        if curve is not None:
            _apply_client_curve(self.sock, curve)
        self.sock.connect(connect)

    def recv(self, timeout_ms: int) -> tuple[str, Message] | None:
        """(topic, message), None on time-out; ProtocolError for a malformed message."""
        if not self.sock.poll(timeout_ms):
            return None
        topic, *frames = self.sock.recv_multipart(copy=True)
        return topic.decode(errors="replace"), decode(frames, HEADER_LIMIT)


class OperatorError(FusetomoError, ValueError):
    """An operator command the controller rejected, or that got no reply in time."""


class OperatorServer(_Router):
    """Controller side: ROUTER bound at `bind` for operator commands from any number of
    viewers and panels (`recv`, and `reply` to the peer a message came from)."""

    def __init__(self, bind: str = DEFAULT_BIND, *, ctx: zmq.Context | None = None,
                 curve: CurveKeys | None = None) -> None:
        super().__init__(bind, ctx, curve)

    reply = _Router.send


class OperatorClient(_Endpoint):
    """Viewer / panel side: sends operator commands to a controller and waits for the
    reply. Not thread-safe: use it from one thread (e.g. a worker, or the UI thread)."""

    _ids = itertools.count(1)

    def __init__(self, connect: str, *, ctx: zmq.Context | None = None,
                 curve: CurveKeys | None = None) -> None:
        super().__init__(zmq.DEALER, ctx)
        if curve is not None:
            _apply_client_curve(self.sock, curve)
        self.sock.connect(connect)
        self.address = connect

    def send(self, action: str, *, advice_id: int | None = None, timeout_s: float = 2.0,
             **fields) -> dict:
        """Send `action` (accept, skip, force, pause, resume, abort, auto, manual) and
        return the controller's reply header; OperatorError when it is rejected or no
        reply comes within `timeout_s`."""
        cid = next(self._ids)
        extra = {} if advice_id is None else {"advice_id": int(advice_id)}
        self.sock.send_multipart(encode(make(OPERATOR, "*", 0, action=action, id=cid,
                                             **extra, **fields)), copy=False)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise OperatorError(f"no reply from the controller at {self.address} to "
                                    f"{action!r} within {timeout_s} s")
            try:
                reply = decode(self.sock.recv_multipart(copy=True), HEADER_LIMIT).header
            except ProtocolError as e:
                raise OperatorError(f"{action}: the controller's reply is malformed "
                                    f"[{e.code}] {e}") from None
            if reply.get("type") == ACK and reply.get("ack_seq") == cid:
                break
            if reply.get("type") == "error" and reply.get("bad_seq") in (cid, None):
                raise OperatorError(f"{action}: [{reply.get('code')}] {reply.get('message')}")
        if reply.get("status") != "done":
            raise OperatorError(f"{action} rejected: {reply.get('reason')}")
        return reply
