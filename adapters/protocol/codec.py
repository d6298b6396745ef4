"""Bytes <-> messages: `make`, `encode`, `decode`, `checksum`.

A message is [header, frame_0, ..., frame_k]: a UTF-8 JSON object, then raw C-ordered array
bytes. Array-carrying messages declare `dtype`, `shape` (of each frame) and `checksum`
(CRC-32 of the frames' bytes, in order, as 8 hex digits). `decode` refuses, with a
`ProtocolError` naming the problem, anything that is not such a message: too many frames, a
header over 64 KiB, nested deeper than `MAX_DEPTH`, with NaN/Infinity or an integer outside
int64, an unknown type or version, a declared frame size over the limit, frames whose
length or checksum do not match; then the type's `parse` checks its fields. No other
exception escapes `decode`, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from fusetomo.adapters.protocol.errors import ProtocolError
from fusetomo.adapters.protocol.fields import MAX_SEQ, Fields, show
from fusetomo.adapters.protocol.messages import (
    CHEM_TILT,
    HAADF_TILT,
    MAX_SIDE,
    PROTOCOL_VERSION,
    SERIES_ID_MAX,
    TYPES,
    WITH_ARRAYS,
    Message,
)

MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 256 * 1024 * 1024
MAX_FRAMES = 1 + 92  # a header and at most one map per element
MAX_DEPTH = 32  # JSON nesting of a header
DTYPES = ("float32", "float64", "uint16", "uint32", "int32")
_INT64 = 2**63


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
    if len(msg.arrays):
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


def decode(frames: Sequence[bytes | memoryview | Any],
           max_frame_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Frames -> the typed message of its type, or ProtocolError naming what is wrong.
    `max_frame_bytes` lowers the frame size limit (a receiver that knows the series'
    geometry refuses larger frames before reading them)."""
    if not frames:
        raise ProtocolError("empty", "empty message (no frames)")
    header = _header(frames[0])
    check_common(header)
    mtype = header["type"]
    if len(frames) > MAX_FRAMES:
        raise _fail("too_many_frames", f"{mtype}: {len(frames)} frames; no message has more "
                    f"than {MAX_FRAMES}", header)
    if mtype in WITH_ARRAYS:
        arrays = _payload(header, frames[1:], max_frame_bytes)
    elif len(frames) > 1:
        raise _fail("bad_payload", f"{mtype}: carries no arrays but {len(frames) - 1} frames "
                    "followed the header", header)
    else:
        arrays = ()
    return TYPES[mtype].parse(header, arrays)


def _header(raw_frame: Any) -> dict[str, Any]:
    raw = bytes(raw_frame)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("header_too_large", f"header is {len(raw)} bytes, the limit is "
                            f"{MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("bad_json", "header is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ProtocolError("bad_json", f"header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_json",
                            f"header must be a JSON object, got {type(header).__name__}")
    try:
        _check_values(header)
    except ProtocolError as e:
        raise _fail(e.code, str(e), header) from None
    return header


def _check_values(header: dict[str, Any]) -> None:
    """No nesting beyond MAX_DEPTH, no integer outside int64, no infinite number (JSON's
    1e400 reads as inf). Iterative: no recursion for a hostile peer to exhaust."""
    stack: list[tuple[Any, int, str]] = [(header, 1, "header")]
    while stack:
        x, d, path = stack.pop()
        if isinstance(x, dict | list):
            if d > MAX_DEPTH:
                raise ProtocolError("bad_json", f"{path}: nested deeper than {MAX_DEPTH}")
            items = x.items() if isinstance(x, dict) else enumerate(x)
            stack.extend((y, d + 1, f"{path}.{k}"[:120]) for k, y in items)
        elif isinstance(x, bool):
            continue
        elif isinstance(x, int) and not -_INT64 <= x < _INT64:
            raise ProtocolError("bad_field", f"{path}: integer {show(x)} outside the int64 "
                                "range")
        elif isinstance(x, float) and not math.isfinite(x):
            raise ProtocolError("bad_field", f"{path}: number is not finite ({x})")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a header")


def _fail(code: str, text: str, header: dict | None = None) -> ProtocolError:
    seq = header.get("seq") if isinstance(header, dict) else None
    ok = isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_SEQ
    mtype = header.get("type") if isinstance(header, dict) else None
    series = header.get("series") if isinstance(header, dict) else None
    return ProtocolError(code, text, seq=seq if ok else None,
                         mtype=mtype if isinstance(mtype, str) else None,
                         series=series if isinstance(series, str) else None)


def check_common(h: dict[str, Any]) -> None:
    """The fields every header has: v, type, series, seq, t_sent."""
    mtype = h.get("type")
    if "v" not in h:
        raise _fail("missing_field", "missing protocol version field 'v'", h)
    v = h["v"]
    if isinstance(v, bool) or not isinstance(v, int) or v != PROTOCOL_VERSION:
        raise _fail("bad_version", f"protocol version {show(v)} is not supported "
                    f"(this side speaks {PROTOCOL_VERSION})", h)
    if not isinstance(mtype, str) or mtype not in TYPES:
        raise _fail("unknown_type", f"unknown message type {show(mtype)}", h)
    seq = h.get("seq")
    f = Fields(h, mtype, seq if isinstance(seq, int) and not isinstance(seq, bool) else None)
    f.text("series", SERIES_ID_MAX, min_len=1)
    f.integer("seq", 0, MAX_SEQ)
    f.number("t_sent")


def _payload(h: dict, frames: Sequence[Any], limit: int) -> tuple[np.ndarray, ...]:
    mtype = h["type"]
    for name in ("dtype", "shape", "checksum"):
        if name not in h:
            raise _fail("missing_field", f"{mtype}: missing field {name!r}", h)
    dtype, shape = h["dtype"], h["shape"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _fail("bad_dtype", f"{mtype}: dtype {show(dtype)} is not one of {list(DTYPES)}",
                    h)
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise _fail("bad_shape", f"{mtype}: shape must be [n_slices, n_det], got "
                    f"{show(shape)}", h)
    if not all(1 <= s <= MAX_SIDE for s in shape):
        raise _fail("too_large", f"{mtype}: declared shape {shape} outside 1..{MAX_SIDE}", h)
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    if nbytes > min(limit, MAX_FRAME_BYTES):
        raise _fail("too_large", f"{mtype}: declared frame of {nbytes} bytes exceeds "
                    f"{min(limit, MAX_FRAME_BYTES)}", h)
    els = h.get("elements")
    expected = 1 if mtype == HAADF_TILT else (len(els) if isinstance(els, list) else 0)
    if len(frames) != expected:
        raise _fail("frame_count", f"{mtype}: expected {expected} data frame(s), got "
                    f"{len(frames)}", h)
    for i, b in enumerate(frames):
        if len(b) != nbytes:
            raise _fail("frame_size", f"{mtype}: frame {i} has {len(b)} bytes, shape {shape} "
                        f"of {dtype} needs {nbytes}", h)
    got = checksum(frames)
    if got != h["checksum"]:
        raise _fail("checksum", f"{mtype}: checksum mismatch (header {show(h['checksum'])}, "
                    f"payload {got!r})", h)
    return tuple(np.frombuffer(b, dtype=dtype).reshape(shape) for b in frames)


def as_float32(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack received frames as float32 (a copy: received buffers are read-only)."""
    return np.stack([np.asarray(a, dtype=np.float32) for a in arrays])


__all__ = ["CHEM_TILT", "DTYPES", "MAX_DEPTH", "MAX_FRAMES", "MAX_FRAME_BYTES",
           "MAX_HEADER_BYTES", "as_float32", "check_common", "checksum", "decode", "encode",
           "make"]
