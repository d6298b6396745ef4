"""The live controller: a `LiveSession` behind its sockets.

One loop in one thread: it polls the instrument's DEALER, the operator ROUTER and the
connection monitor, hands what arrives to the session and sends what the session returns
(replies and commands on the DEALER, events on the status PUB); when nothing arrives it
lets the session do its next step (an iteration), so that a tilt waits at most one
iteration before it is recorded and acknowledged. It says `hello` when the connection is
(re)made and whenever nothing arrived for `heartbeat_s`, so that the instrument resends what
it has not had acknowledged, and gives up after `timeout_s` of silence.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from fusetomo.adapters.runfile import RunFile, RunFileError
from fusetomo.adapters.transport import (
    ControllerClient,
    CurveKeys,
    OperatorServer,
    StatusPublisher,
)
from fusetomo.controller.live.params import HEALTHY, INTERRUPTED, LiveError, LiveParams
from fusetomo.controller.live.publish import Outputs
from fusetomo.controller.live.session import LiveSession
from fusetomo.solver.fusion import FusedSolver

log = logging.getLogger("fusetomo.live")
RECONNECT_S = 0.2  # after a disconnection, connect again this much later


class LiveController:
    """Connects to the instrument at `instrument_address`, records into `run_path`, and
    publishes status on `publish_bind`. `run()` returns 0 once the series end is recorded
    and the final reconstruction is saved, 1 if `stop_event` interrupted it at any moment
    (between two steps; the run file is closed and can be resumed), and raises LiveError
    when the series cannot be completed."""

    def __init__(self, instrument_address: str, run_path: str | Path,
                 params: LiveParams | None = None, *, resume: bool = False,
                 publish_bind: str = "tcp://127.0.0.1:0", curve: CurveKeys | None = None,
                 identity: bytes = b"fusetomo-controller",
                 server_curve: CurveKeys | None = None) -> None:
        """`curve`: this controller's keys as a CURVE client of the instrument;
        `server_curve`: as a CURVE server of its status PUB and operator ROUTER (the viewers
        and panels whose public keys it accepts)."""
        self.session = LiveSession(run_path, params, resume=resume)
        self.address = instrument_address
        self.run_path = self.session.run_path
        self.params = self.session.params
        self.identity = identity
        self._curve = curve
        self._server_curve = server_curve
        self._publish_bind = publish_bind
        self._ctx: zmq.Context | None = None
        self._client: ControllerClient | None = None
        self._monitor: zmq.Socket | None = None
        self.publisher: StatusPublisher | None = None
        self.operator: OperatorServer | None = None
        self._last_rx = time.monotonic()
        self._last_hello = 0.0
        self._reconnect_at: float | None = None

    # -- public ---------------------------------------------------------------------------
    @property
    def run_file(self) -> RunFile | None:
        return self.session.run

    @property
    def solver(self) -> FusedSolver | None:
        return self.session.solver

    @property
    def latencies(self) -> list[float]:
        return self.session.latencies

    @property
    def rejected(self) -> list[tuple[str, int | None]]:
        return self.session.rejected

    @property
    def operator_endpoint(self) -> str | None:
        return None if self.operator is None else self.operator.endpoint

    @property
    def publish_endpoint(self) -> str:
        if self.publisher is None:
            raise LiveError("the controller is not running")
        return self.publisher.endpoint

    def run(self, stop_event: threading.Event | None = None, *,
            on_ready: Callable[[LiveController], None] | None = None) -> int:
        """Serve until the series is complete. `on_ready(self)` is called once the sockets
        are up (the status endpoint is known) and the run file is open when resuming."""
        self._open()
        try:
            self._send(self.session.start())
            if on_ready is not None:
                on_ready(self)
            if self.session.finished:
                return HEALTHY
            return self._loop(stop_event)
        except RunFileError as e:  # writing failed (disk full, file removed, ...)
            raise LiveError(f"cannot record to {self.run_path}: {e}") from None
        finally:
            self._close()

    # -- sockets --------------------------------------------------------------------------
    def _open(self) -> None:
        self._ctx = zmq.Context()
        try:
            self.publisher = StatusPublisher(self._publish_bind, ctx=self._ctx,
                                             curve=self._server_curve)
            self._client = ControllerClient(self.address, identity=self.identity,
                                            ctx=self._ctx, curve=self._curve,
                                            max_frame=self.session.frame_limit)
            if self.params.operator_bind is not None:
                self.operator = OperatorServer(self.params.operator_bind, ctx=self._ctx,
                                               curve=self._server_curve)
        except (zmq.ZMQError, ValueError, OSError) as e:  # bad address, port or key file
            self._close()
            raise LiveError(f"cannot open the sockets (instrument {self.address!r}, status "
                            f"{self._publish_bind!r}): {e}") from None
        self.session.operator_endpoint = self.operator_endpoint
        self._monitor = self._client.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._last_rx = time.monotonic()

    def _close(self) -> None:
        run = self.session.run
        if run is not None:
            with contextlib.suppress(RunFileError, OSError):
                run.close()
        if self._client is not None and self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._client.sock.disable_monitor()
        if self._monitor is not None:
            self._monitor.close(0)
        for ep in (self._client, self.publisher, self.operator):
            if ep is not None:
                ep.close()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _send(self, out: Outputs) -> None:
        assert self._client is not None
        for msg in out.to_instrument:
            try:
                self._client.send(msg, block=False)
            except zmq.Again:  # nobody connected: the instrument resends on the next hello
                log.debug("could not send %s (no connection)", msg.type)
        if self.publisher is not None:
            for topic, msg in out.events:
                self.publisher.publish(topic, msg)
        # Frames up to the series' image size from now on (a reconnect when it changes:
        # the new connection's hello tells the instrument what is recorded).
        self._client.set_max_frame(self.session.frame_limit)

    # -- the loop -------------------------------------------------------------------------
    def _loop(self, stop_event: threading.Event | None) -> int:
        assert self._client is not None and self._monitor is not None
        s = self.session
        poller = zmq.Poller()
        poller.register(self._client.sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        if self.operator is not None:
            poller.register(self.operator.sock, zmq.POLLIN)
        while not s.finished:
            if stop_event is not None and stop_event.is_set():
                # Between two steps: the last iteration is recorded, the file is closed
                # by run(); --resume goes on (after the series end: the final iterations).
                log.info("stopped %s; continue with --resume",
                         "during the final iterations" if s.ended else "before the series end")
                return INTERRUPTED
            events = dict(poller.poll(0 if s.busy else self.params.poll_ms))
            if self._monitor in events:
                self._on_monitor()
            if self.operator is not None and self.operator.sock in events:
                self._on_operator()
            if self._client.sock in events:
                frames = self._client.recv_frames(0)
                if frames is not None:
                    self._last_rx = time.monotonic()
                    self._send(s.receive(frames, time.time()))
                    continue
            self._send(s.step())
            self._heartbeat()
        return HEALTHY

    def _on_monitor(self) -> None:
        assert self._monitor is not None
        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                log.info("connected to the instrument at %s", self.address)
                self._hello("connect")
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                log.warning("instrument at %s disconnected; waiting for it", self.address)
                self._send(self.session.disconnected())
                self._reconnect_at = time.monotonic() + RECONNECT_S

    def _on_operator(self) -> None:
        assert self.operator is not None
        while True:
            got = self.operator.recv_frames(0)
            if got is None:
                return
            peer, frames = got
            out = self.session.on_operator(frames)
            self._send(out)
            if out.operator_reply is not None:
                self.operator.reply(peer, out.operator_reply)

    def _hello(self, why: str) -> None:
        self._send(self.session.hello(why))
        self._last_hello = time.monotonic()

    def _heartbeat(self) -> None:
        now = time.monotonic()
        silent = now - self._last_rx
        p, s = self.params, self.session
        if p.timeout_s is not None and silent > p.timeout_s:
            run = s.run
            what = "no instrument answered" if run is None else "the instrument went silent"
            where = "" if run is None else (
                f" ({run.haadf_count} HAADF + {run.chem_count} chemical tilts are recorded "
                f"in {self.run_path}; continue with --resume)")
            raise LiveError(f"{what} at {self.address} for {p.timeout_s:g} s; the series "
                            f"is not complete{where}")
        # Not gated on the monitor's connected flag: the handshake can complete before the
        # monitor is attached, and a hello sent with no peer is simply dropped.
        if silent > p.heartbeat_s and now - self._last_hello > p.heartbeat_s:
            self._hello("heartbeat")
        if now - s.last_status > 1.0:
            self._send(s.tick())
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect_at = None
            assert self._client is not None
            self._client.reconnect()
