"""The live session's record: the run file and the data sequence numbers.

Data messages are numbered 0, 1, 2, ... by the instrument (docs/protocol.md §3). A seq that
is recorded (or is the series start or end) is a duplicate, acknowledged as such; the next
one (last recorded + 1) is recorded; one beyond it is refused (`out_of_order`) without
spending it, so that the instrument's in-order resend fills the gap. A tilt that is next in
sequence but refused for its content spends its seq, persistently (a `seq_consumed`
event), and the error reply says so (`spent`), so that the instrument stops resending it
and the series goes on. Events a peer can cause (rejections, the instrument's errors and
command replies, operator messages) are rate-limited and capped (`EventBudget`); what is
dropped is counted in an `events_dropped` event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusetomo.adapters.protocol import (
    CHEM_TILT,
    HAADF_TILT,
    ProtocolError,
    SeriesEnd,
    SeriesStart,
    Tilt,
)
from fusetomo.adapters.runfile import RecordRefusedError, RunFile, RunFileError, RunRecord
from fusetomo.controller.live.params import RUN_COST_TERMS, LiveError

# Refusals that are about a message's place in the sequence, not its content: they never
# spend its seq (the instrument resends, in order, or it is another series' message).
PLACE_CODES = ("out_of_order", "wrong_series", "no_series", "series_complete")
PEER_EVENT_KINDS = ("rejected", "instrument_error", "command_ack", "operator")


@dataclass
class EventBudget:
    """A token bucket for the events peers cause: `burst` at once, then `rate` per second,
    at most `cap` per session; the rest are counted, not recorded."""

    rate: float = 50.0
    burst: float = 200.0
    cap: int = 10_000
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(default=-1.0)
    last: float = 0.0
    recorded: int = 0
    dropped: int = 0  # since the last events_dropped record

    def allow(self) -> bool:
        now = self.clock()
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1 and self.recorded < self.cap:
            self.tokens -= 1
            self.recorded += 1
            return True
        self.dropped += 1
        return False


class Recorder:
    """The run file of one series and its sequence numbers (no sockets)."""

    def __init__(self, path: Path, max_rejections: int) -> None:
        self.path = path
        self.run: RunFile | None = None
        self.start_seq = -1
        self.consumed: list[int] = []  # seqs refused for their content (spent)
        self.end_seq: int | None = None
        self.max_rejections = max_rejections
        self.rejections_logged = 0
        self.budget = EventBudget()

    @property
    def series(self) -> str:
        return self.run.series_id if self.run is not None else "*"

    def last_seq(self) -> int:
        """The highest seq recorded or spent (series_start and series_end included)."""
        if self.run is None:
            return -1
        return max(self.run.last_seq, self.start_seq, max(self.consumed, default=-1),
                   -1 if self.end_seq is None else self.end_seq)

    # -- a new series, or the one in the file ---------------------------------------------
    def create(self, start: SeriesStart) -> RunFile:
        try:
            self.run = RunFile.create(self.path, start, cost_terms=RUN_COST_TERMS)
        except RunFileError as e:
            if isinstance(e.__cause__, OSError) or self.path.exists():
                raise LiveError(f"cannot create {self.path}: {e}") from None
            raise ProtocolError("bad_series", f"series_start: {e}", seq=start.seq) from None
        except OSError as e:
            raise LiveError(f"cannot create {self.path}: {e}") from None
        self.start_seq = start.seq
        return self.run

    def resume(self, record: RunRecord, *, allow_complete: bool = False) -> RunFile:
        try:
            self.run = RunFile.resume(self.path, allow_complete=allow_complete)
        except (RunFileError, OSError) as e:
            raise LiveError(f"cannot resume {self.path}: {e}") from None
        seq = self.run.start_header.get("seq")
        self.start_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else -1
        self.consumed = [int(ev["tilt_seq"]) for ev in record.events
                         if ev.get("kind") == "seq_consumed"
                         and isinstance(ev.get("tilt_seq"), int)]
        if record.complete:
            ends = [ev.get("seq") for ev in record.events if ev.get("kind") == "series_end"]
            self.end_seq = ends[-1] if ends and isinstance(ends[-1], int) else None
        return self.run

    # -- sequencing -------------------------------------------------------------------------
    def require_run(self, msg: Tilt | SeriesEnd) -> RunFile:
        run = self.run
        if run is None:
            raise ProtocolError("no_series", f"{msg.type} seq {msg.seq} before any "
                                "series_start", seq=msg.seq)
        if msg.series != run.series_id:
            raise ProtocolError("wrong_series", f"{msg.type} seq {msg.seq} is for series "
                                f"{msg.series!r}, recording {run.series_id!r}", seq=msg.seq)
        return run

    def is_new(self, msg: Tilt | SeriesEnd) -> bool:
        """True if `msg` is the next data message; False for a duplicate (acknowledge it as
        such); ProtocolError when it is refused."""
        run = self.require_run(msg)
        if run.has_seq(msg.seq) or msg.seq in (self.start_seq, self.end_seq, *self.consumed):
            return False
        if run.complete:
            raise ProtocolError("series_complete", f"{msg.type} seq {msg.seq} after the "
                                "series end was recorded", seq=msg.seq)
        expected = self.last_seq() + 1
        if msg.seq != expected:
            raise ProtocolError("out_of_order", f"{msg.type} seq {msg.seq}: expected seq "
                                f"{expected}", seq=msg.seq)
        return True

    def record_tilt(self, tilt: Tilt) -> None:
        """Record a tilt that is next in sequence; one refused for its content spends its
        seq (ProtocolError with the run file's code)."""
        assert self.run is not None
        try:
            self.run.record_tilt(tilt)
        except RecordRefusedError as e:
            if e.code not in PLACE_CODES:
                self.spend(tilt.seq)
            raise ProtocolError(e.code, str(e).removeprefix(f"{self.run.path}: "),
                                seq=tilt.seq, mtype=tilt.type, series=tilt.series) from None
        # Any other RunFileError is a failed write: the caller stops.

    def can_spend(self, e: ProtocolError) -> bool:
        """Whether a refused message's seq is spent: a tilt of this series, next in
        sequence (or already spent), refused for its content (what is in it, however
        malformed) rather than its place. Its sender is told (`spent` in the error reply)
        and drops it: no message can make the instrument resend it for ever, and no
        message can stall the series. Spending trusts the peer to be the instrument: on
        an untrusted network use CURVE (docs/protocol.md)."""
        run = self.run
        return (run is not None and not run.complete and e.seq is not None
                and e.series == run.series_id and e.mtype in (HAADF_TILT, CHEM_TILT)
                and e.code not in PLACE_CODES
                and (e.seq == self.last_seq() + 1 or e.seq in self.consumed))

    def spend(self, seq: int) -> None:
        assert self.run is not None
        self.consumed.append(seq)
        self.run.record_event("seq_consumed", tilt_seq=seq)

    def check_end(self, end: SeriesEnd) -> None:
        """The series end's counts must be what was recorded, or that plus the tilts whose
        seq was spent (the instrument counts them as sent): count_mismatch otherwise."""
        run = self.require_run(end)
        spent = len(self.consumed)
        rec_h, rec_c = run.haadf_count, run.chem_count
        ok = (end.n_haadf >= rec_h and end.n_chem >= rec_c
              and end.n_haadf + end.n_chem in (rec_h + rec_c, rec_h + rec_c + spent))
        if not ok:
            raise ProtocolError("count_mismatch", f"series_end seq {end.seq} announces "
                                f"{end.n_haadf} HAADF + {end.n_chem} chemical tilts, "
                                f"{rec_h} + {rec_c} are recorded ({spent} refused)",
                                seq=end.seq)

    # -- events ---------------------------------------------------------------------------
    def record_peer_event(self, kind: str, **payload: Any) -> None:
        """Record an event a peer caused, within the budget (rejections also within
        `max_rejections` per session)."""
        if self.run is None:
            return
        if kind == "rejected":
            if self.rejections_logged >= self.max_rejections:
                self.budget.dropped += 1
                return
            self.rejections_logged += 1
        if not self.budget.allow():
            return
        self.flush_dropped()
        self.run.record_event(kind, **payload)

    def flush_dropped(self) -> None:
        """Record how many peer events were dropped since the last such record."""
        if self.run is not None and self.budget.dropped:
            self.run.record_event("events_dropped", count=self.budget.dropped)
            self.budget.dropped = 0
