"""How an instrument session answers the controller (docs/protocol.md §2): hello and ack
(delivery), error (logged), and the commands' state machine.

pause / resume act before the next plan step; abort ends the series; continue releases a
tilt held for advice; go_to_tilt and the acquisitions are queued while the plan is not
running (paused, not started, holding, or finished) and are acknowledged when done, with
the seqs of the tilts they produced. The session (session.py) provides the acquisitions.
"""

from __future__ import annotations

import itertools
import logging
import queue
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from fusetomo.adapters.instrument.delivery import Outbox
from fusetomo.adapters.protocol import (
    ACK,
    ERROR,
    SERIES_END,
    Ack,
    Command,
    ErrorReply,
    Hello,
    Message,
    ProtocolError,
    decode,
    finite_float,
    make,
)
from fusetomo.adapters.transport import CurveKeys, InstrumentServer

log = logging.getLogger("fusetomo.instrument")

MANUAL_COMMANDS = ("go_to_tilt", "acquire_haadf", "acquire_spectrum")
LOCAL_PEER = b""  # commands given in-process: their acks go nowhere
CONTROLLER_FRAME_LIMIT = 2 * 64 * 1024  # headers only (transport.HEADER_LIMIT)


@dataclass
class InstrumentStats:
    """What happened in one `serve`."""

    reason: str | None = None  # 'completed' | 'aborted' once series_end was made
    end_acked: bool = False
    n_haadf: int = 0
    n_chem: int = 0
    dose_haadf: float = 0.0
    dose_chem: float = 0.0
    steps_done: int = 0
    sent: int = 0  # data messages sent, resends included
    resent: int = 0
    hellos: int = 0
    hellos_ahead: int = 0  # hellos whose last_seq was beyond what was sent
    errors_received: int = 0  # error messages from the controller
    errors_sent: int = 0  # error replies to malformed or unexpected messages
    commands: int = 0
    failures: int = 0  # plan steps or manual acquisitions that raised
    series_refused: int = 0  # times the controller refused series_start


@dataclass
class Job:
    kind: str  # 'step' or one of MANUAL_COMMANDS
    step: int | None = None
    cmd: dict[str, Any] | None = None


class CommandDispatch:
    """The receiving end of an instrument session's socket and its command state."""

    stats: InstrumentStats
    outbox: Outbox
    config: Any
    plan: Any

    def __init__(self, series_id: str, error_type: type[Exception]) -> None:
        self.series_id = series_id
        self._arg_error = error_type
        self.server: InstrumentServer | None = None
        self._started = False
        self._paused = False
        self.refused: str | None = None  # why the controller refused series_start
        self._next_step = 0
        self._queue: deque[dict[str, Any]] = deque()  # manual commands waiting
        self._job: Job | None = None  # the job the worker is on
        self._end_seq: int | None = None
        self._holding: int | None = None  # plan step held for the controller's decision
        self._hold_deadline = 0.0
        self._step_seq: dict[int, int] = {}  # plan step -> seq of its HAADF image
        self._local: queue.Queue[dict[str, Any]] = queue.Queue()
        self._local_ids = itertools.count(1_000_000_000)

    @property
    def plan_running(self) -> bool:
        return (self._started and not self._paused and self._end_seq is None
                and self._holding is None and self._next_step < len(self.plan))

    def _stop_series(self) -> None:
        raise NotImplementedError

    def _on_resume(self) -> None:
        """Called when `resume` is accepted (e.g. to forget the last failure)."""

    # -- the socket -----------------------------------------------------------------------
    def _bind_server(self, address: str, curve: CurveKeys | None, ctx: Any) -> str:
        """Bind the instrument's ROUTER (once) and return the endpoint actually bound."""
        if self.server is None:
            try:
                self.server = InstrumentServer(address, ctx=ctx, curve=curve)
            except (zmq.ZMQError, ValueError, OSError) as e:
                raise self._arg_error(f"cannot bind {address!r}: {e}") from None
            log.info("instrument listening on %s (series %s)", self.server.endpoint,
                     self.series_id)
        return self.server.endpoint

    def _flush(self) -> None:
        if self.server is not None:
            self.stats.sent += self.outbox.flush(self.server.send)

    def _reply(self, peer: bytes, msg: Message) -> None:
        if self.server is not None and peer != LOCAL_PEER:
            self.server.send(peer, msg)

    def _receive(self, timeout_ms: int, wake: zmq.Socket | None = None) -> None:
        """Handle the messages from controllers that arrive within `timeout_ms` (returning
        early when the worker wakes the loop); a malformed one gets an error reply naming
        the problem."""
        assert self.server is not None
        poller = zmq.Poller()
        poller.register(self.server.sock, zmq.POLLIN)
        if wake is not None:
            poller.register(wake, zmq.POLLIN)
        events = dict(poller.poll(timeout_ms))
        if wake is not None and wake in events:
            while wake.poll(0):
                wake.recv()
        while self.server.sock in events or self.server.sock.poll(0):
            events = {}
            got = self.server.recv_frames(0)
            if got is None:
                return
            peer, frames = got
            try:
                msg = decode(frames, CONTROLLER_FRAME_LIMIT)
            except ProtocolError as e:
                log.warning("malformed message from the controller: %s (%s)", e, e.code)
                self._reply_error(peer, e.code, str(e), e.seq)
                continue
            self._handle(peer, msg)

    def _handle(self, peer: bytes, msg: Message) -> None:
        if isinstance(msg, Hello):
            last_seq = msg.last_seq
            if last_seq >= self.outbox.next_seq:
                # Nobody can have recorded what this instrument never sent: a restarted
                # instrument (its controller recorded the previous one's tilts) or a confused
                # or rogue peer. Nothing is dropped; what is unacknowledged is sent again (a
                # controller acknowledges what it has as duplicates).
                log.warning("hello: last_seq %d, but only seqs up to %d were sent: nothing "
                            "dropped", last_seq, self.outbox.next_seq - 1)
                self.stats.hellos_ahead += 1
                last_seq = -1
            self._on_hello(peer, last_seq)
        elif isinstance(msg, Ack):
            if self.outbox.on_ack(msg.ack_seq):
                self.stats.end_acked = self.outbox.end_acked
        elif isinstance(msg, ErrorReply):
            self.stats.errors_received += 1
            log.warning("controller reports error %s on seq %s: %s", msg.code, msg.seq,
                        msg.message[:500])
            if msg.spent and msg.bad_seq is not None and self.outbox.on_ack(msg.bad_seq):
                log.warning("seq %d was refused for good: not sent again", msg.bad_seq)
                self.stats.end_acked = self.outbox.end_acked
            elif msg.bad_seq == 0 and 0 in self.outbox.unacked \
                    and 0 not in self.outbox.held:
                self._series_refused(f"{msg.code}: {msg.message[:500]}")
        elif isinstance(msg, Command):
            self.stats.commands += 1
            self._on_command({"cmd": msg.cmd, "id": msg.id, "seq": msg.seq, "peer": peer},
                             dict(msg.args))
        else:
            self._reply_error(peer, "unexpected_type",
                              f"the instrument does not accept {msg.type!r} messages", msg.seq)

    def _series_refused(self, why: str) -> None:
        """series_start was refused: nothing of the series can be recorded, and resent at
        every hello it is refused again. Pause; hold it and what followed until `resume`
        (docs/protocol.md §3); nothing is dropped."""
        for seq in self.outbox.unacked:
            self.outbox.hold(seq)
        self._paused, self.refused = True, why
        self.stats.series_refused += 1
        log.error("series_start refused (%s): paused and held back until resume", why)

    def _on_hello(self, peer: bytes, last_seq: int) -> None:
        self.stats.hellos += 1
        resend = self.outbox.on_hello(peer, last_seq)  # drops what the controller recorded
        self.stats.resent += resend
        self.stats.end_acked = self.outbox.end_acked
        log.info("hello from %r, last_seq %d: %d message(s) to resend, %d unacked", peer,
                 last_seq, resend, len(self.outbox.unacked))
        if not self._started:
            self._started = True
            log.info("series %s started (%s)", self.series_id,
                     "paused" if self._paused else "running")

    def _reply_error(self, peer: bytes, code: str, text: str, bad_seq: int | None) -> None:
        self.stats.errors_sent += 1
        self._reply(peer, make(ERROR, self.series_id, bad_seq if bad_seq is not None else 0,
                               code=code, message=text[:2000], bad_seq=bad_seq))

    def _reply_command(self, cmd: dict[str, Any], status: str, reason: str | None = None,
                       **extra: Any) -> None:
        self._flush()  # data a command produced goes out before its ack (window permitting)
        if status == "rejected":
            log.warning("command %s (id %d) rejected: %s", cmd["cmd"], cmd["id"], reason)
        self._reply(cmd["peer"], make(ACK, self.series_id, cmd["seq"], ack_seq=cmd["id"],
                                      status=status, reason=reason, cmd=cmd["cmd"], **extra))

    def _drain_local(self) -> None:
        while True:
            try:
                cmd = self._local.get_nowait()
            except queue.Empty:
                return
            self.stats.commands += 1
            args = cmd.pop("args")
            self._on_command({**cmd, "peer": LOCAL_PEER}, args)

    # -- commands -------------------------------------------------------------------------
    def _on_command(self, cmd: dict[str, Any], args: dict[str, Any]) -> None:
        """Answer `cmd` {cmd, id, seq, peer} with arguments `args`."""
        name = cmd["cmd"]
        log.info("command %s (id %d) %s", name, cmd["id"], args or "")
        if self._end_seq is not None:
            self._reply_command(cmd, "rejected", f"series {self.series_id} has ended "
                                f"({self.stats.reason})")
            return
        if name == "pause":
            self._paused = True
            self._reply_command(cmd, "done", next_step=self._next_step)
        elif name == "resume":
            self._paused = False
            if self.outbox.release():
                log.info("resume: series_start and what followed due again (refused: %s)",
                         self.refused)
                self.refused = None
            self._on_resume()
            self._reply_command(cmd, "done", next_step=self._next_step)
        elif name == "abort":
            self._stop_series()
            self._reply_command(cmd, "done", end_seq=self._end_seq)
        elif name == "continue":
            if self._holding is None:
                self._reply_command(cmd, "rejected", "continue: the instrument is not "
                                    "holding for a decision")
                return
            self._holding = None
            self._reply_command(cmd, "done", next_step=self._next_step)
        elif name in MANUAL_COMMANDS:
            if self.plan_running:
                self._reply_command(cmd, "rejected", f"{name}: the plan is running (step "
                                    f"{self._next_step}); pause it first")
                return
            try:
                cmd.update(self._command_args(name, args))
            except self._arg_error as e:
                self._reply_command(cmd, "rejected", str(e))
                return
            self._queue.append(cmd)
        else:  # decode() lets only known commands through
            self._reply_command(cmd, "rejected", f"unknown command {name!r}")

    def _command_args(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """go_to_tilt: {angle}; acquisitions: {dwell_ms} per pixel, from `dose` (e/A^2)
        or `dwell_ms`, else the plan's nominal dwell."""
        c, err = self.config, self._arg_error
        if name == "go_to_tilt":
            a = finite_float(args.get("angle"))
            if a is None or abs(a) > 90:
                raise err(f"go_to_tilt: angle {args.get('angle')!r} must be a number within "
                          "[-90, 90] degrees")
            return {"angle": a}
        dose, dwell = args.get("dose"), args.get("dwell_ms")
        if dose is not None and dwell is not None:
            raise err(f"{name}: give dose or dwell_ms, not both (dose {dose!r}, dwell_ms "
                      f"{dwell!r})")
        spectrum = name == "acquire_spectrum"
        nominal_ms = c.exposure_ms if spectrum else c.haadf_dwell_us / 1000.0
        nominal_dose = c.chem_dose if spectrum else c.haadf_dose
        if dose is not None:
            d = finite_float(dose)
            if d is None or d <= 0:
                raise err(f"{name}: dose {dose!r} must be a number > 0 e/A^2")
            if nominal_dose <= 0:
                raise err(f"{name}: dose {dose!r} cannot be set: the nominal dose is unknown "
                          "(for a microscope, give beam_current_pa)")
            return {"dwell_ms": nominal_ms * d / nominal_dose}
        if dwell is not None:
            ms = finite_float(dwell)
            if ms is None or ms <= 0:
                raise err(f"{name}: dwell_ms {dwell!r} must be a number > 0")
            return {"dwell_ms": ms}
        return {"dwell_ms": nominal_ms}

    def _end(self, reason: str) -> None:
        if self._end_seq is not None:
            return
        s = self.stats
        s.reason = reason
        self._end_seq = self.outbox.emit(
            SERIES_END, n_haadf=s.n_haadf, n_chem=s.n_chem, reason=reason,
            steps_done=self._next_step, steps_planned=len(self.plan),
            dose_total_e_per_A2={"haadf": s.dose_haadf, "chem": s.dose_chem})
        self.outbox.mark_end(self._end_seq)
        log.info("series %s %s: %d HAADF + %d chemical tilts", self.series_id, reason,
                 s.n_haadf, s.n_chem)
