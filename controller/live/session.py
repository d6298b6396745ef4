"""The live session: the whole live controller without its sockets.

Messages go in (`receive(frames)` or `on_message(msg)` from the instrument, `on_operator`
from viewers and panels); `Outputs` come back: replies and commands for the instrument,
events for the status PUB, the reply to an operator. Between messages `step()` does what is
due: a tilt's k warm-start iterations, alignment work or idle iterations while waiting,
and after the series end the final iterations, the final snapshot and `complete`. The
session owns the run file (through its `Recorder`) and the reconstruction (a
`LiveReconstruction`); alignment, advice and standard errors are `LiveHook`s.

For every message from the instrument, in order:
    decode (protocol: a typed message, every field checked) -> sequence (recorder: new,
    duplicate or refused) -> record in the run file (flushed) -> ACK -> hooks.prepare ->
    solver.add -> k iterations (step) -> publish -> hooks.settled (advice, std errors)
Every refusal gets an ERROR reply with a specific code, a log line and a `rejected` event,
and changes nothing recorded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fusetomo.adapters.protocol import (
    ACK,
    COMMAND,
    ERROR,
    EVENT,
    HELLO,
    MAX_HEADER_BYTES,
    STATUS,
    Ack,
    ChemTilt,
    ErrorReply,
    HaadfTilt,
    Message,
    ProtocolError,
    SeriesEnd,
    SeriesStart,
    Tilt,
    decode,
    make,
)
from fusetomo.adapters.runfile import RunFile, RunFileError
from fusetomo.controller.live import iterating, startup
from fusetomo.controller.live.hooks import ErrorMaps, LiveHook
from fusetomo.controller.live.operator import operate
from fusetomo.controller.live.params import PHASE_FINAL, PHASE_IDLE, LiveError, LiveParams
from fusetomo.controller.live.publish import Outputs
from fusetomo.controller.live.reconstruction import LiveReconstruction, tilt_in
from fusetomo.controller.live.recorder import Recorder
from fusetomo.solver.fusion import FusedSolver

log = logging.getLogger("fusetomo.live")


class LiveSession:
    """Records into `run_path` the series an instrument sends, and reconstructs it."""

    def __init__(self, run_path: str | Path, params: LiveParams | None = None, *,
                 resume: bool = False) -> None:
        self.run_path = Path(run_path)
        self.params = params or LiveParams()
        self.resume_requested = resume
        self.recorder = Recorder(self.run_path, self.params.max_logged_rejections)
        self.recon: LiveReconstruction | None = None
        self.hooks: list[LiveHook] = []
        self.std = ErrorMaps()
        self.latencies: list[float] = []
        self.rejected: list[tuple[str, int | None]] = []  # (code, seq), for callers
        self.operator_endpoint: str | None = None
        self.ended = self.finished = False
        self.device_label = "cpu"
        self._out: Outputs | None = None
        self._pub_seq = self._out_seq = self._cmd_id = 0
        self._state = "waiting"
        self.last_status = 0.0
        if not resume and self.run_path.exists():
            raise LiveError(f"{self.run_path} exists: continue it with --resume, or record "
                            "to a new file (a run file is never overwritten)")
        if resume and not self.run_path.exists():
            raise LiveError(f"{self.run_path}: no such run file to resume")

    # -- what hooks see (HookContext) -------------------------------------------------------
    @property
    def solver(self) -> FusedSolver | None:
        return None if self.recon is None else self.recon.solver

    @property
    def run(self) -> RunFile | None:
        return self.recorder.run

    def publish(self, topic: str, mtype: str, **fields: Any) -> None:
        self._emit().events.append((topic, make(mtype, self.recorder.series, self._pub_seq,
                                                **fields)))
        self._pub_seq += 1

    def event(self, name: str, **fields: Any) -> None:
        self.publish("event", EVENT, event=name, **fields)

    def command(self, cmd: str, **args: Any) -> int:
        self._cmd_id += 1
        self.send(COMMAND, cmd=cmd, id=self._cmd_id, **args)
        if self.run is not None:
            self.run.record_event("command", cmd=cmd, id=self._cmd_id, **args)
        return self._cmd_id

    def state(self) -> str:
        return "recording" if self.recon is not None and self.recon.pending else "iterating"

    def status(self, state: str) -> None:
        self._state, self.last_status = state, time.monotonic()
        self.publish("status", STATUS, **startup.status_fields(self, state))

    def send(self, mtype: str, seq: int | None = None, **fields: Any) -> None:
        """To the instrument. Replies (ack, error) carry the seq of the message they
        answer; other messages the controller's own counter."""
        if seq is None:
            seq, self._out_seq = self._out_seq, self._out_seq + 1
        self._emit().to_instrument.append(make(mtype, self.recorder.series, seq, **fields))

    # -- inputs -----------------------------------------------------------------------------
    def receive(self, frames: Sequence[Any], t_arrival: float | None = None) -> Outputs:
        """Raw frames from the instrument."""
        with self._collect() as out:
            try:
                msg = decode(frames, self.frame_limit)
            except ProtocolError as e:
                self._reject(e)
            else:
                self.on_message(msg, t_arrival)
        return out

    def on_message(self, msg: Message, t_arrival: float | None = None) -> Outputs:
        """A decoded message from the instrument."""
        with self._collect() as out:
            try:
                self._dispatch(msg, time.time() if t_arrival is None else t_arrival)
            except ProtocolError as e:
                e.mtype = e.mtype or msg.header.get("type")
                self._reject(e)
            except (LiveError, RunFileError):
                raise  # the run file cannot be written: the controller stops
            except Exception as e:  # a bug must not let a message kill the controller
                log.exception("failed on %s seq %s", msg.header.get("type"),
                              msg.header.get("seq"))
                self._reject(ProtocolError("internal", f"{type(e).__name__}: {e}",
                                           seq=msg.header.get("seq"),
                                           mtype=msg.header.get("type")))
        return out

    def on_operator(self, frames: Sequence[Any]) -> Outputs:
        """An operator message (accept, skip, force, pause, resume, abort, auto, manual);
        `Outputs.operator_reply` is the answer for its sender."""
        with self._collect() as out:
            out.operator_reply = operate(self, frames)
        return out

    def hello(self, why: str = "heartbeat") -> Outputs:
        with self._collect() as out:
            log.debug("hello (%s), last_seq %d", why, self.recorder.last_seq())
            self.send(HELLO, last_seq=self.recorder.last_seq())
        return out

    def tick(self) -> Outputs:
        """About once a second while nothing happens: the state again (a viewer that
        connects while the instrument is paused learns it), and the hooks' repeats."""
        with self._collect() as out:
            self.status(self._state)
            for h in self.hooks:
                h.tick(self)
        return out

    def disconnected(self) -> Outputs:
        with self._collect() as out:
            self.event("disconnected")
        return out

    @property
    def busy(self) -> bool:
        """Whether `step()` has work now (the loop then does not wait on its sockets)."""
        return not self.finished and (self.ended or (self.recon is not None
                                                     and not self.recon.done()))

    def step(self) -> Outputs:
        """Do the next due work: an iteration (owed, idle or final), a hook's idle work,
        or, after the series end, finishing."""
        with self._collect() as out:
            recon = self.recon
            phase = None if recon is None else recon.due()
            if phase == PHASE_IDLE and any(h.idle(self) for h in self.hooks):
                return out
            if phase == PHASE_FINAL and recon is not None and recon.final_left is not None:
                n = self.params.final_iterations
                for h in self.hooks:
                    h.final_iteration(n - recon.final_left, n, self)
            if phase is not None:
                iterating.iterate(self, phase)
            elif self.ended and not self.finished:
                startup.finish(self)
        return out

    def start(self) -> Outputs:
        """Open the session: resume the run file (if asked), then the first status."""
        with self._collect() as out:
            if self.resume_requested:
                startup.resume(self)
            if not self.finished:
                self.status("waiting")
        return out

    @property
    def frame_limit(self) -> int:
        """Largest frame accepted: a float64 image of the series, or twice the header
        limit (so that a header a little too large still gets its error reply)."""
        run = self.run
        least = 2 * MAX_HEADER_BYTES
        return least if run is None else max(least, 8 * run.shape[0] * run.shape[1])

    # -- messages ---------------------------------------------------------------------------
    def _dispatch(self, msg: Message, t_arrival: float) -> None:
        if isinstance(msg, SeriesStart):
            startup.on_start(self, msg)
        elif isinstance(msg, HaadfTilt | ChemTilt):
            self._on_tilt(msg, t_arrival)
        elif isinstance(msg, SeriesEnd):
            startup.on_end(self, msg)
        elif isinstance(msg, ErrorReply):  # logged, never answered (no error ping-pong)
            log.warning("instrument reports [%s] %s", msg.code, msg.message[:500])
            self.recorder.record_peer_event("instrument_error", code=msg.code[:64],
                                            message=msg.message[:500])
        elif isinstance(msg, Ack) and msg.cmd is not None:
            # The instrument's answer to a command (commands are sent by other tools too).
            self.recorder.record_peer_event("command_ack", cmd=msg.cmd, ack_seq=msg.ack_seq,
                                            status=msg.status[:64],
                                            reason=(msg.reason or "")[:500] or None)
        elif not isinstance(msg, Ack):
            raise ProtocolError("unexpected_type", f"{msg.type}: not a message an "
                                "instrument sends to the controller", seq=msg.seq)

    def _reject(self, e: ProtocolError) -> None:
        log.warning("rejected %s seq %s: [%s] %s", e.mtype or "message", e.seq, e.code, e)
        self.rejected.append((e.code, e.seq))
        spent = False
        if self.recorder.can_spend(e):
            assert e.seq is not None
            if e.seq not in self.recorder.consumed:
                self.recorder.spend(e.seq)
            spent = True
        bad = e.seq if isinstance(e.seq, int) and e.seq >= 0 else None
        text = str(e)[:2000]
        self.send(ERROR, bad or 0, code=e.code, message=text, bad_seq=bad,
                  **({"spent": True} if spent else {}))
        self.event("rejected", code=e.code, bad_seq=bad, message=text[:500])
        self.recorder.record_peer_event("rejected", code=e.code, bad_seq=bad,
                                        message=text[:500])

    def _on_tilt(self, tilt: Tilt, t_arrival: float) -> None:
        rec = self.recorder
        if not rec.is_new(tilt):
            self.send(ACK, tilt.seq, ack_seq=tilt.seq, status="duplicate")
            return
        try:
            rec.record_tilt(tilt)
        except RunFileError as e:  # writing failed (disk full, ...): tell, then stop
            self.send(ERROR, tilt.seq, code="record_failed", message=str(e),
                      bad_seq=tilt.seq)
            raise
        self.send(ACK, tilt.seq, ack_seq=tilt.seq, status="recorded")
        recon = self.recon
        if recon is None:  # recording only
            self.event("tilt_received", tilt_seq=tilt.seq, modality=tilt.modality,
                       angle=tilt.angle)
            return
        t = tilt_in(tilt, recon.solver.elements)
        for h in self.hooks:
            t = h.prepare(t, self)
        recon.add(t, t_arrival)
        self.event("tilt_received", tilt_seq=tilt.seq, modality=tilt.modality,
                   angle=tilt.angle)
        for h in self.hooks:
            h.added(t, recon.ready, self)
        self.status("recording")
        if not self.params.interleave:
            while recon.owed > 0:
                iterating.iterate(self, recon.due())
        iterating.settle(self, recon.take_settled())

    # -- plumbing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _collect(self) -> Iterator[Outputs]:
        """Outputs of one public call (a nested call adds to its caller's)."""
        if self._out is not None:
            yield self._out
            return
        self._out = Outputs()
        try:
            yield self._out
        finally:
            self._out = None

    def _emit(self) -> Outputs:
        # Outside a public call (misuse) the messages go to an Outputs nobody reads.
        return self._out if self._out is not None else Outputs()
