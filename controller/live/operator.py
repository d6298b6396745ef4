"""Operator messages (viewers, the Nion Swift panel): accept / skip / force an advice,
pause / resume / abort the instrument, auto / manual advice. Each gets one reply: an `ack`
(done or rejected, with the reason) or, for a message that cannot be decoded, an `error`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fusetomo.adapters.protocol import ACK, ERROR, Message, Operator, ProtocolError, decode, make

if TYPE_CHECKING:
    from fusetomo.controller.live.session import LiveSession

log = logging.getLogger("fusetomo.live")
INSTRUMENT_ACTIONS = ("pause", "resume", "abort")
OPERATOR_FRAME_LIMIT = 2 * 64 * 1024  # as the operator socket (transport.HEADER_LIMIT)


def operate(s: LiveSession, frames: Sequence[Any]) -> Message:
    """The reply to one operator message."""
    series = s.recorder.series
    try:
        msg = decode(frames, OPERATOR_FRAME_LIMIT)
    except ProtocolError as e:
        log.warning("malformed operator message: [%s] %s", e.code, e)
        return make(ERROR, series, 0, code=e.code, message=str(e)[:2000], bad_seq=None)
    status, reason = "done", None
    action = msg.action if isinstance(msg, Operator) else None
    advice_id = msg.advice_id if isinstance(msg, Operator) else None
    if action is None:
        status, reason = "rejected", f"{msg.type}: not an operator message"
    else:
        try:
            reason = _carry_out(s, action, advice_id)
        except ValueError as e:
            status, reason = "rejected", str(e)
    s.recorder.record_peer_event("operator", action=action, advice_id=advice_id,
                                 status=status, reason=reason)
    oid = msg.id if isinstance(msg, Operator) else 0
    return make(ACK, series, msg.seq, ack_seq=oid, status=status, reason=reason,
                action=action)


def _carry_out(s: LiveSession, action: str, advice_id: int | None) -> str:
    """Carry out an operator action; ValueError when it cannot be."""
    if action in INSTRUMENT_ACTIONS:
        if s.run is None:
            raise ValueError(f"{action}: no series is being recorded")
        return f"sent as command {s.command(action)}"
    for h in s.hooks:
        reason = h.operate(action, advice_id, s)
        if reason is not None:
            return reason
    raise ValueError(f"{action}: the advisor is off for this series")
