"""The protocol's error: a stable code (sent back in the error reply) and a message that
names the field and the value (docs/protocol.md §4 lists the codes)."""

from __future__ import annotations

from fusetomo.core.errors import FusetomoError

# Found in a message by itself (decode), on either side of a socket.
DECODE_CODES: dict[str, str] = {
    "empty": "no frames",
    "too_many_frames": "more frames than any message carries",
    "header_too_large": "header over 64 KiB",
    "bad_json": "header not UTF-8 JSON, not an object, nested too deeply, or with NaN/Infinity",
    "missing_field": "a required field is absent",
    "bad_field": "a field of the wrong type or outside its range",
    "bad_version": "protocol version is not 1",
    "unknown_type": "type is not one of the protocol's",
    "bad_payload": "frames after a header that carries none",
    "bad_dtype": "dtype not in the allowed list",
    "bad_shape": "shape not [n_slices, n_det] of integers",
    "too_large": "declared side outside 1..8192, frame over 256 MiB, or over the series' size",
    "frame_count": "number of frames differs from what the header declares",
    "frame_size": "a frame's length differs from dtype x shape",
    "checksum": "CRC-32 of the frames differs from the header's",
    "bad_angle": "angle not finite or outside +-90 degrees",
    "bad_dose": "dose not finite, negative or absurd",
    "not_finite": "NaN or inf in an image or map",
    "negative_counts": "a chemical map has values < 0",
    "unknown_element": "not an element symbol (Z 1-92)",
    "unknown_command": "cmd not one of the seven commands",
    "unknown_action": "operator action not one of the eight",
    "bad_series": "series_start whose Z, gamma, background or scheme do not fit its elements",
}
# Found by the controller against the series being recorded (controller/live).
STATE_CODES: dict[str, str] = {
    "no_series": "data or series_end before any series_start",
    "wrong_series": "series id differs from the series being recorded",
    "series_in_progress": "series_start for another series while one is being recorded",
    "series_complete": "data after the series end was recorded",
    "out_of_order": "sequence number is not the next one (a gap, or below the series start)",
    "duplicate_tilt": "a tilt angle already recorded for that modality, under a new seq",
    "shape_mismatch": "image shape differs from the series' [n_slices, n_det]",
    "element_mismatch": "chemical tilt's elements differ from the series' elements",
    "count_mismatch": "series_end's tilt counts differ from the recorded ones",
    "too_big_for_memory": "series_start whose reconstruction cannot fit this machine's memory",
    "unexpected_type": "a message type the receiver is not sent by that peer",
    "record_failed": "the run file refused or failed to record the message",
    "internal": "the receiver failed on the message (a bug); nothing was recorded",
}


class ProtocolError(FusetomoError, ValueError):
    """A message that breaks the protocol. `code` is a stable machine-readable name (it is
    sent back in the error reply); the message names the field and the offending value.
    `seq` is the message's sequence number when it could be read (and `mtype`, `series` its
    type and series id)."""

    def __init__(self, code: str, message: str, *, seq: int | None = None,
                 mtype: str | None = None, series: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq
        self.mtype = mtype  # the message's type and series id, when they could be read
        self.series = series
