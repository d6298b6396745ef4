"""At-least-once delivery of an instrument's data messages (docs/protocol.md §3).

`Outbox` is the instrument side's bookkeeping, shared by the simulated instrument
(simulators/instrument.py) and the Nion Swift adapter (adapters/nion/): data messages are
numbered 0, 1, 2, ... without gaps; each stays until the controller acknowledges it; at most
`window` are in flight unacknowledged; a `hello` {last_seq} drops what the controller has
recorded (seq <= last_seq) and makes every other unacknowledged message due again, in
order. Not thread-safe: one thread (the one that owns the socket) calls it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusetomo.adapters.protocol import Message, make


class Outbox:
    """Unacknowledged data messages of one series, and who to send them to."""

    def __init__(self, series_id: str, window: int = 64) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.series_id = series_id
        self.window = window
        self.peer: bytes | None = None
        self.next_seq = 0
        self.end_seq: int | None = None  # seq of series_end, once made
        self.end_acked = False
        self.sent = 0  # data messages sent, resends included
        self.resent = 0
        self._messages: dict[int, Message] = {}  # insertion order is seq order
        self._in_flight: set[int] = set()
        self._held: set[int] = set()  # not sent again until released (see hold)

    def emit(self, mtype: str, arrays: Sequence[np.ndarray] = (), **fields: Any) -> int:
        """Number and keep a data message; it goes out with the next `flush`."""
        seq = self.next_seq
        self.next_seq += 1
        self._messages[seq] = make(mtype, self.series_id, seq, arrays, **fields)
        return seq

    def mark_end(self, seq: int) -> None:
        self.end_seq = seq

    def on_hello(self, peer: bytes, last_seq: int) -> int:
        """The controller has recorded everything up to `last_seq`; resend the rest. Returns
        how many sent messages will be resent."""
        self.peer = peer
        for seq in [s for s in self._messages if s <= last_seq]:
            self._drop(seq)
        n = len(self._in_flight)
        self.resent += n
        self._in_flight.clear()
        return n

    def on_ack(self, seq: int) -> bool:
        """Forget an acknowledged message; False if it was not outstanding."""
        if seq not in self._messages:
            return False
        self._drop(seq)
        return True

    def flush(self, send: Callable[[bytes, Message], None]) -> int:
        """Send what is due, oldest first, within the window; returns how many were sent."""
        if self.peer is None:
            return 0
        n = 0
        for seq, msg in self._messages.items():
            if len(self._in_flight) >= self.window:
                break
            if seq in self._in_flight or seq in self._held:
                continue
            msg.header["t_sent"] = time.time()
            send(self.peer, msg)
            self._in_flight.add(seq)
            n += 1
        self.sent += n
        return n

    def hold(self, seq: int) -> bool:
        """Keep an unacknowledged message but stop sending it (hellos included) until
        `release`: the controller refused it for its place in the series, and sending it
        again unchanged would be refused again. False if it was not outstanding."""
        if seq not in self._messages:
            return False
        self._held.add(seq)
        self._in_flight.discard(seq)
        return True

    def release(self) -> list[int]:
        """Make every held message due again; returns their seqs."""
        held, self._held = sorted(self._held), set()
        return held

    @property
    def held(self) -> list[int]:
        return sorted(self._held)

    @property
    def unacked(self) -> list[int]:
        return list(self._messages)

    def _drop(self, seq: int) -> None:
        self._messages.pop(seq, None)
        self._in_flight.discard(seq)
        self._held.discard(seq)
        if seq == self.end_seq:
            self.end_acked = True
