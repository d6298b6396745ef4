"""How an instrument answers the protocol's commands (docs/protocol.md §2): one state
machine shared by the simulated instrument (simulators/instrument.py) and the Nion Swift
adapter (adapters/nion/), which differ only in how they acquire.

pause / resume act before the next plan step; abort ends the series; continue releases a
tilt held for advice; go_to_tilt and the acquisitions are queued while the plan is not
running (paused, not started, holding, or finished) and are acknowledged when done. An
instrument mixes in `CommandDispatch` and provides the hooks below.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import zmq

from fusetomo.adapters.protocol import ERROR, Message, ProtocolError, make
from fusetomo.adapters.transport import InstrumentServer

log = logging.getLogger("fusetomo.instrument")

MANUAL_COMMANDS = ("go_to_tilt", "acquire_haadf", "acquire_spectrum")


class CommandDispatch:
    """The command state machine, and the receiving end of the instrument's socket. The
    instrument provides: `server` (an InstrumentServer), `series_id`, `stats` (reason,
    errors_sent), `_end_seq`, `_paused`, `_holding`, `_next_step`, `_queue`,
    `plan_running`, and the hooks `_handle`, `_reply`, `_reply_command`, `_stop_series` and
    `_command_args` (raising `_arg_error`)."""

    server: Any

    series_id: str
    stats: Any
    _end_seq: int | None
    _paused: bool
    _holding: int | None
    _next_step: int
    _queue: deque[dict[str, Any]]
    _arg_error: type[Exception] = ValueError

    @property
    def plan_running(self) -> bool:
        raise NotImplementedError

    def _reply_command(self, cmd: dict[str, Any], status: str, reason: str | None = None,
                       **extra: Any) -> None:
        raise NotImplementedError

    def _stop_series(self) -> None:
        """Abort: drop what is in progress and queued, send series_end (aborted)."""
        raise NotImplementedError

    def _command_args(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _handle(self, peer: bytes, msg: Message) -> None:
        raise NotImplementedError

    def _reply(self, peer: bytes, msg: Message) -> None:
        raise NotImplementedError

    def _receive(self, timeout_ms: int) -> None:
        """Handle at most one message from a controller; a malformed one gets an error
        reply naming the problem (the caller's loop then advances and flushes again)."""
        assert self.server is not None
        try:
            got = self.server.recv(timeout_ms)
        except ProtocolError as e:
            peer = getattr(e, "peer", None)
            log.warning("malformed message from the controller: %s (%s)", e, e.code)
            if peer is not None:
                self._reply_error(peer, e.code, str(e), e.seq)
            return
        if got is not None:
            self._handle(*got)

    def _bind_server(self, address: str, curve: Any, ctx: Any) -> str:
        """Bind the instrument's ROUTER (once) and return the endpoint actually bound."""
        if self.server is None:
            try:
                self.server = InstrumentServer(address, ctx=ctx, curve=curve)
            except zmq.ZMQError as e:
                raise self._arg_error(f"cannot bind {address!r}: {e}") from None
            log.info("instrument listening on %s (series %s)", self.server.endpoint,
                     self.series_id)
        return self.server.endpoint

    def _reply_error(self, peer: bytes, code: str, text: str, bad_seq: int | None) -> None:
        self.stats.errors_sent += 1
        self._reply(peer, make(ERROR, self.series_id, bad_seq if bad_seq is not None else 0,
                               code=code, message=text, bad_seq=bad_seq))

    def _on_resume(self) -> None:
        """Called when `resume` is accepted (e.g. to forget the last failure)."""

    def dispatch_command(self, cmd: dict[str, Any], args: dict[str, Any]) -> None:
        """Answer `cmd` {cmd, id, seq, peer} with arguments `args`."""
        name = cmd["cmd"]
        if self._end_seq is not None:
            self._reply_command(cmd, "rejected", f"series {self.series_id} has ended "
                                f"({self.stats.reason})")
            return
        if name == "pause":
            self._paused = True
            self._reply_command(cmd, "done", next_step=self._next_step)
        elif name == "resume":
            self._paused = False
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
