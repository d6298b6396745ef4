"""How an instrument answers the protocol's commands (docs/protocol.md §2): one state
machine shared by the simulated instrument (simulators/instrument.py) and the Nion Swift
adapter (adapters/nion/), which differ only in how they acquire.

pause / resume act before the next plan step; abort ends the series; continue releases a
tilt held for advice; go_to_tilt and the acquisitions are queued while the plan is not
running (paused, not started, holding, or finished) and are acknowledged when done. An
instrument mixes in `CommandDispatch` and provides the hooks below.
"""

from __future__ import annotations

from collections import deque
from typing import Any

MANUAL_COMMANDS = ("go_to_tilt", "acquire_haadf", "acquire_spectrum")


class CommandDispatch:
    """The command state machine. The instrument provides: `series_id`, `stats.reason`,
    `_end_seq`, `_paused`, `_holding`, `_next_step`, `_queue`, `plan_running`, and the
    hooks `_reply_command`, `_stop_series` and `_command_args` (raising `_arg_error`)."""

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
