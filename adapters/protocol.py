"""The fusetomo wire protocol (version 1): multipart ZeroMQ messages, never pickled.

A message is [header, frame_0, ..., frame_k]: a UTF-8 JSON object, then raw C-ordered array
bytes. Every header carries `type`, `v` (protocol version), `series`, `seq` (sender's
sequence number) and `t_sent` (Unix seconds). Array-carrying messages also declare `dtype`,
`shape` (of each frame) and `checksum` (CRC-32 of the frames' bytes, in order, as 8 hex
digits); chemical tilts name the element of each frame in `elements`. docs/protocol.md is
the normative description; this module is its one implementation.

`decode` checks everything a message can be checked for by itself (JSON, version, fields
and their types, declared sizes, frame count and length, checksum, finite values, counts
>= 0, element symbols). What needs the series' state (duplicate or out-of-order sequence
numbers and tilts, shapes that differ from the series, elements outside the series) is
checked by the receiver, which raises the same `ProtocolError` with its own code.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusetomo.adapters.elements import ATOMIC_NUMBER

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 256 * 1024 * 1024
MAX_SIDE = 8192
DTYPES = ("float32", "float64", "uint16", "uint32", "int32")

# Data from the instrument.
SERIES_START, HAADF_TILT, CHEM_TILT, SERIES_END = "series_start", "haadf_tilt", "chem_tilt", \
    "series_end"
# Controller -> instrument.
HELLO, ACK, ERROR, COMMAND = "hello", "ack", "error", "command"
# Published by the controller.
STATUS, EVENT = "status", "event"
# Operator (viewer, Nion Swift panel) -> controller, on the controller's operator socket.
OPERATOR = "operator"

# `continue` releases an instrument that holds at each tilt for the controller's decision
# (series_start `holds_for_advice`), without a spectrum image.
COMMANDS = ("go_to_tilt", "acquire_haadf", "acquire_spectrum", "pause", "resume", "abort",
            "continue")
OPERATOR_ACTIONS = ("accept", "skip", "force", "pause", "resume", "abort", "auto", "manual")

# type -> {field: allowed python types}; `None` in a tuple means the field may be null.
_NUM = (int, float)
_SCHEMA: dict[str, dict[str, tuple]] = {
    SERIES_START: {"elements": (list,), "Z": (dict,), "shape": (list,), "scheme": (dict,),
                   "dose_budget_e_per_A2": (*_NUM, type(None)),
                   "pixel_size_nm": (*_NUM, type(None))},
    HAADF_TILT: {"angle": _NUM, "dose_e_per_A2": _NUM},
    CHEM_TILT: {"angle": _NUM, "dose_e_per_A2": _NUM, "elements": (list,)},
    SERIES_END: {"n_haadf": (int,), "n_chem": (int,)},
    HELLO: {"last_seq": (int,)},
    ACK: {"ack_seq": (int,), "status": (str,)},
    ERROR: {"code": (str,), "message": (str,)},
    COMMAND: {"cmd": (str,), "id": (int,)},
    STATUS: {},
    EVENT: {"event": (str,)},
    OPERATOR: {"action": (str,), "id": (int,)},
}
_WITH_ARRAYS = (HAADF_TILT, CHEM_TILT)


class ProtocolError(ValueError):
    """A message that breaks the protocol. `code` is a stable machine-readable name (it is
    sent back in the error reply); the message names the field and the offending value."""

    def __init__(self, code: str, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq


@dataclass
class Message:
    header: dict[str, Any]
    arrays: list[np.ndarray] = field(default_factory=list)

    @property
    def type(self) -> str:
        return str(self.header["type"])

    @property
    def seq(self) -> int:
        return int(self.header["seq"])


def checksum(frames: Sequence[bytes | memoryview]) -> str:
    c = 0
    for f in frames:
        c = zlib.crc32(f, c)
    return f"{c & 0xFFFFFFFF:08x}"


def make(mtype: str, series: str, seq: int, arrays: Sequence[np.ndarray] = (),
         **fields: Any) -> Message:
    """Build a message; array metadata (dtype, shape, checksum) is filled in by `encode`."""
    header = {"type": mtype, "v": PROTOCOL_VERSION, "series": series, "seq": int(seq),
              "t_sent": time.time(), **fields}
    return Message(header, [np.ascontiguousarray(a) for a in arrays])


def encode(msg: Message) -> list[bytes]:
    """Message -> frames. Arrays of one message share dtype and shape."""
    header = dict(msg.header)
    header.setdefault("v", PROTOCOL_VERSION)
    header.setdefault("t_sent", time.time())
    frames: list[bytes] = []
    if msg.arrays:
        first = msg.arrays[0]
        for a in msg.arrays:
            if a.dtype != first.dtype or a.shape != first.shape:
                raise ProtocolError("bad_payload", "all frames of a message share dtype and "
                                    f"shape; got {a.dtype}{a.shape} vs {first.dtype}{first.shape}")
        frames = [np.ascontiguousarray(a).tobytes() for a in msg.arrays]
        header["dtype"] = str(first.dtype)
        header["shape"] = list(first.shape)
        header["checksum"] = checksum(frames)
    return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), *frames]


def _fail(code: str, text: str, header: dict | None = None) -> ProtocolError:
    seq = header.get("seq") if isinstance(header, dict) else None
    return ProtocolError(code, text, seq=seq if isinstance(seq, int) else None)


def decode(frames: Sequence[bytes | memoryview | Any]) -> Message:
    """Frames -> Message, or ProtocolError naming what is wrong."""
    if not frames:
        raise ProtocolError("empty", "empty message (no frames)")
    raw = bytes(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("header_too_large", f"header is {len(raw)} bytes, the limit is "
                            f"{MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ProtocolError("bad_json", f"header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_json",
                            f"header must be a JSON object, got {type(header).__name__}")
    _check_common(header)
    mtype = header["type"]
    for name, types in _SCHEMA[mtype].items():
        if name not in header:
            raise _fail("missing_field", f"{mtype}: missing field {name!r}", header)
        if not isinstance(header[name], types) or isinstance(header[name], bool):
            raise _fail("bad_field", f"{mtype}: field {name!r} has type "
                        f"{type(header[name]).__name__}, value {header[name]!r}", header)
    arrays = _payload(header, list(frames[1:])) if mtype in _WITH_ARRAYS else []
    if mtype not in _WITH_ARRAYS and len(frames) > 1:
        raise _fail("bad_payload", f"{mtype}: carries no arrays but {len(frames) - 1} frames "
                    "followed the header", header)
    _check_semantics(header, arrays)
    return Message(header, arrays)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a header")


def _check_common(h: dict) -> None:
    mtype = h.get("type")
    if "v" not in h:
        raise _fail("missing_field", "missing protocol version field 'v'", h)
    if h["v"] != PROTOCOL_VERSION or isinstance(h["v"], bool):
        raise _fail("bad_version", f"protocol version {h['v']!r} is not supported "
                    f"(this side speaks {PROTOCOL_VERSION})", h)
    if mtype not in _SCHEMA:
        raise _fail("unknown_type", f"unknown message type {mtype!r}", h)
    for name, types in (("series", (str,)), ("seq", (int,)), ("t_sent", _NUM)):
        if name not in h:
            raise _fail("missing_field", f"{mtype}: missing field {name!r}", h)
        if not isinstance(h[name], types) or isinstance(h[name], bool):
            raise _fail("bad_field", f"{mtype}: field {name!r} has type "
                        f"{type(h[name]).__name__}, value {h[name]!r}", h)
    if h["seq"] < 0:
        raise _fail("bad_field", f"{mtype}: seq must be >= 0, got {h['seq']}", h)
    if not 0 < len(h["series"]) <= 200:
        raise _fail("bad_field", f"{mtype}: series id must be 1..200 characters", h)


def _payload(h: dict, frames: list) -> list[np.ndarray]:
    mtype = h["type"]
    for name in ("dtype", "shape", "checksum"):
        if name not in h:
            raise _fail("missing_field", f"{mtype}: missing field {name!r}", h)
    dtype, shape = h["dtype"], h["shape"]
    if dtype not in DTYPES:
        raise _fail("bad_dtype", f"{mtype}: dtype {dtype!r} is not one of {list(DTYPES)}", h)
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise _fail("bad_shape", f"{mtype}: shape must be [n_slices, n_det], got {shape!r}", h)
    if not all(1 <= s <= MAX_SIDE for s in shape):
        raise _fail("too_large", f"{mtype}: declared shape {shape} outside 1..{MAX_SIDE}", h)
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    if nbytes > MAX_FRAME_BYTES:
        raise _fail("too_large", f"{mtype}: declared frame of {nbytes} bytes exceeds "
                    f"{MAX_FRAME_BYTES}", h)
    expected = 1 if mtype == HAADF_TILT else len(h.get("elements", []))
    if len(frames) != expected:
        raise _fail("frame_count", f"{mtype}: expected {expected} data frame(s), got "
                    f"{len(frames)}", h)
    bufs = [bytes(f) for f in frames]
    for i, b in enumerate(bufs):
        if len(b) != nbytes:
            raise _fail("frame_size", f"{mtype}: frame {i} has {len(b)} bytes, shape {shape} "
                        f"of {dtype} needs {nbytes}", h)
    got = checksum(bufs)
    if got != h["checksum"]:
        raise _fail("checksum", f"{mtype}: checksum mismatch (header {h['checksum']!r}, "
                    f"payload {got!r})", h)
    return [np.frombuffer(b, dtype=dtype).reshape(shape) for b in bufs]


def _check_semantics(h: dict, arrays: list[np.ndarray]) -> None:
    mtype = h["type"]
    if mtype in (HAADF_TILT, CHEM_TILT):
        a = h["angle"]
        if not math.isfinite(a) or abs(a) > 90:
            raise _fail("bad_angle", f"{mtype}: tilt angle {a!r} outside [-90, 90]", h)
        if not math.isfinite(h["dose_e_per_A2"]) or h["dose_e_per_A2"] < 0:
            raise _fail("bad_dose", f"{mtype}: dose {h['dose_e_per_A2']!r} must be >= 0", h)
        for i, arr in enumerate(arrays):
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                n = int(np.count_nonzero(~np.isfinite(arr)))
                raise _fail("not_finite", f"{mtype}: frame {i} holds {n} NaN/inf values", h)
            if mtype == CHEM_TILT and arr.size and float(arr.min()) < 0:
                raise _fail("negative_counts", f"{mtype}: element {h['elements'][i]!r} has "
                            f"negative counts (min {float(arr.min())})", h)
    if mtype in (CHEM_TILT, SERIES_START):
        els = h["elements"]
        if not els or not all(isinstance(e, str) for e in els):
            raise _fail("bad_field", f"{mtype}: elements must be a non-empty list of symbols, "
                        f"got {els!r}", h)
        unknown = [e for e in els if e not in ATOMIC_NUMBER]
        if unknown:
            raise _fail("unknown_element", f"{mtype}: unknown element {unknown[0]!r}", h)
        if len(set(els)) != len(els):
            raise _fail("bad_field", f"{mtype}: duplicate element in {els}", h)
    if mtype == SERIES_START:
        shape = h["shape"]
        if (len(shape) != 2 or not all(isinstance(s, int) and 1 <= s <= MAX_SIDE
                                       for s in shape)):
            raise _fail("bad_shape", f"series_start: shape {shape!r} must be [n_slices, n_det] "
                        f"within 1..{MAX_SIDE}", h)
    if mtype == OPERATOR:
        if h["action"] not in OPERATOR_ACTIONS:
            raise _fail("unknown_action", f"operator action {h['action']!r} is not one of "
                        f"{list(OPERATOR_ACTIONS)}", h)
        aid = h.get("advice_id")
        if h["action"] in ("accept", "skip") and (not isinstance(aid, int)
                                                  or isinstance(aid, bool)):
            raise _fail("missing_field", f"operator {h['action']}: needs the integer "
                        f"'advice_id' of the advice it answers, got {aid!r}", h)
    if mtype == COMMAND and h["cmd"] not in COMMANDS:
        raise _fail("unknown_command", f"command {h['cmd']!r} is not one of {list(COMMANDS)}",
                    h)


def as_float32(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack received frames as float32 (a copy: received buffers are read-only)."""
    return np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
