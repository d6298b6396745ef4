"""The fusetomo wire protocol (version 1): multipart ZeroMQ messages, never pickled.

A message is [header, frame_0, ..., frame_k]: a UTF-8 JSON object, then raw C-ordered array
bytes. Every header carries `type`, `v` (protocol version), `series`, `seq` (sender's
sequence number) and `t_sent` (Unix seconds). docs/protocol.md is the normative
description; this package is its one implementation:

- `messages`: the message types as frozen dataclasses (`SeriesStart`, `HaadfTilt`,
  `ChemTilt`, `SeriesEnd`, `Hello`, `Ack`, `ErrorReply`, `Command`, `Status`, `Event`,
  `Operator`), each with the one `parse` that checks its fields;
- `codec`: `make`, `encode`, `decode` (frames -> typed message), `checksum`;
- `fields`: safe reading of header fields (numbers checked before they are converted);
- `errors`: `ProtocolError` (code, message, seq) and the tables of codes.

`decode` checks everything a message can be checked for by itself. What needs the series'
state (duplicate or out-of-order sequence numbers and tilts, shapes that differ from the
series, elements outside the series) is checked by the receiver, which raises the same
`ProtocolError` with its own code.
"""

from fusetomo.adapters.protocol.codec import (
    DTYPES,
    MAX_DEPTH,
    MAX_FRAME_BYTES,
    MAX_FRAMES,
    MAX_HEADER_BYTES,
    as_float32,
    checksum,
    decode,
    encode,
    make,
)
from fusetomo.adapters.protocol.errors import DECODE_CODES, STATE_CODES, ProtocolError
from fusetomo.adapters.protocol.fields import MAX_ID, MAX_SEQ, finite_float
from fusetomo.adapters.protocol.messages import (
    ACK,
    CHEM_TILT,
    COMMAND,
    COMMAND_ARGS,
    COMMANDS,
    DATA_TYPES,
    ERROR,
    EVENT,
    HAADF_TILT,
    HELLO,
    MAX_SIDE,
    OPERATOR,
    OPERATOR_ACTIONS,
    PROTOCOL_VERSION,
    SERIES_END,
    SERIES_ID_MAX,
    SERIES_START,
    STATUS,
    Ack,
    ChemTilt,
    Command,
    ErrorReply,
    Event,
    HaadfTilt,
    Hello,
    Message,
    Operator,
    SeriesEnd,
    SeriesStart,
    Status,
    Tilt,
    typed,
)

__all__ = [
    "ACK", "CHEM_TILT", "COMMAND", "COMMANDS", "COMMAND_ARGS", "DATA_TYPES", "DECODE_CODES",
    "DTYPES", "ERROR", "EVENT", "HAADF_TILT", "HELLO", "MAX_DEPTH", "MAX_FRAMES",
    "MAX_FRAME_BYTES", "MAX_HEADER_BYTES", "MAX_ID", "MAX_SEQ", "MAX_SIDE", "OPERATOR",
    "OPERATOR_ACTIONS", "PROTOCOL_VERSION", "SERIES_END", "SERIES_ID_MAX", "SERIES_START",
    "STATE_CODES", "STATUS", "Ack", "ChemTilt", "Command", "ErrorReply", "Event", "HaadfTilt",
    "Hello", "Message", "Operator", "ProtocolError", "SeriesEnd", "SeriesStart", "Status",
    "Tilt", "as_float32", "checksum", "decode", "encode", "finite_float", "make", "typed",
]
