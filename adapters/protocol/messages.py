"""The protocol's messages as typed, frozen dataclasses, and the one place each is checked.

`Message` is what goes out (`codec.make`) and the base of what comes in: `header` (the JSON
object as received, unknown fields kept) and `arrays` (the frames as arrays). `decode`
returns the subclass of the message's type, whose `parse` has checked every field it has
(types, finiteness, ranges, element symbols, frames against the elements); receivers use
the typed fields and never check them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fusetomo.adapters.protocol.errors import ProtocolError
from fusetomo.adapters.protocol.fields import (
    MAX_DOSE,
    MAX_ID,
    MAX_SEQ,
    Fields,
    finite_float,
    show,
)

PROTOCOL_VERSION = 1
MAX_SIDE = 8192
SERIES_ID_MAX = 200

# Data from the instrument.
SERIES_START, HAADF_TILT, CHEM_TILT, SERIES_END = ("series_start", "haadf_tilt", "chem_tilt",
                                                   "series_end")
# Controller -> instrument (ack and error also instrument -> controller, as replies).
HELLO, ACK, ERROR, COMMAND = "hello", "ack", "error", "command"
# Published by the controller.
STATUS, EVENT = "status", "event"
# Operator (viewer, Nion Swift panel) -> controller, on the controller's operator socket.
OPERATOR = "operator"
DATA_TYPES = (SERIES_START, HAADF_TILT, CHEM_TILT, SERIES_END)

# `continue` releases an instrument that holds at each tilt for the controller's decision
# (series_start `holds_for_advice`), without a spectrum image.
COMMANDS = ("go_to_tilt", "acquire_haadf", "acquire_spectrum", "pause", "resume", "abort",
            "continue")
COMMAND_ARGS = ("angle", "dose", "dwell_ms")
OPERATOR_ACTIONS = ("accept", "skip", "force", "pause", "resume", "abort", "auto", "manual")


@dataclass(frozen=True, eq=False)
class Message:
    """A protocol message: its JSON header and its array frames (none for most types)."""

    header: dict[str, Any]
    arrays: tuple[np.ndarray, ...] | list[np.ndarray] = ()

    @property
    def type(self) -> str:
        return str(self.header["type"])

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    @property
    def series(self) -> str:
        return str(self.header.get("series", "*"))


@dataclass(frozen=True, eq=False, kw_only=True)
class SeriesStart(Message):
    elements: tuple[str, ...]
    Z: Mapping[str, float]
    shape: tuple[int, int]
    scheme: Mapping[str, Any]
    dose_budget_e_per_A2: float | None  # noqa: N815 (the protocol's name)
    pixel_size_nm: float | None
    gamma: float | None
    background: Mapping[str, float]  # only the elements whose background is stated
    holds_for_advice: bool
    planned_haadf: int | None  # len(scheme.haadf_angles), when the scheme lists them
    planned_chem: int | None
    haadf_order: tuple[float, ...]  # scheme.haadf_angles (acquisition order), or ()
    chem_dose_e_per_A2: float | None  # noqa: N815

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> SeriesStart:
        f = _fields(h)
        els = f.elements(allow_empty=True)  # none: a HAADF-only series
        z_in = f.mapping("Z")
        assert z_in is not None
        if sorted(z_in) != sorted(els):
            raise f.fail("bad_series", f"Z is given for {show(sorted(z_in))}, the elements "
                                       f"are {list(els)}")
        Z = {e: _in_range(f, f"Z of {e}", z_in[e], 0.0, 118.0, above=True) for e in els}
        shape = h.get("shape")
        if "shape" not in h:
            raise f.fail("missing_field", "missing field 'shape'")
        if (not isinstance(shape, list) or len(shape) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool)
                           and 1 <= s <= MAX_SIDE for s in shape)):
            raise f.fail("bad_shape", f"shape {show(shape)} must be [n_slices, n_det] within "
                                      f"1..{MAX_SIDE}")
        scheme = f.mapping("scheme")
        assert scheme is not None
        order: tuple[float, ...] = ()
        planned: dict[str, int | None] = {}
        for key in ("haadf_angles", "chem_angles"):
            if key in scheme:
                angles = f.angles(f"scheme.{key}", scheme[key])
                planned[key] = len(angles)
                if key == "haadf_angles":
                    order = angles
        budget = f.number("dose_budget_e_per_A2", 0.0, MAX_DOSE, nullable=True)
        pixel = f.number("pixel_size_nm", 0.0, 1e6, nullable=True, above=True)
        gamma = f.number("gamma", 1.0, 2.5, required=False, nullable=True, code="bad_series")
        bg_in = f.mapping("background", required=False, nullable=True)
        background: dict[str, float] = {}
        if bg_in is not None:
            extra = [e for e in bg_in if e not in els]
            if extra:
                raise f.fail("bad_series", f"background is given for {show(extra[0])}, "
                                           f"which is not one of the elements {list(els)}")
            background = {e: _in_range(f, f"background of {e}", v, 0.0, 1e12)
                          for e, v in bg_in.items()}
        return cls(h, tuple(arrays), elements=els, Z=Z, shape=(shape[0], shape[1]),
                   scheme=scheme, dose_budget_e_per_A2=budget, pixel_size_nm=pixel,
                   gamma=gamma, background=background,
                   holds_for_advice=f.boolean("holds_for_advice"),
                   planned_haadf=planned.get("haadf_angles"),
                   planned_chem=planned.get("chem_angles"), haadf_order=order,
                   chem_dose_e_per_A2=f.number("chem_dose_e_per_A2", 0.0, MAX_DOSE,
                                               required=False, nullable=True))


@dataclass(frozen=True, eq=False, kw_only=True)
class Tilt(Message):
    """A HAADF image or a spectrum image's element maps at one tilt angle."""

    modality: ClassVar[str]
    angle: float
    dose_e_per_A2: float  # noqa: N815
    t_acquired: float | None

    @property
    def frames(self) -> tuple[np.ndarray, ...]:
        return tuple(self.arrays)

    @staticmethod
    def _common(f: Fields) -> dict[str, Any]:
        angle = _typed_number(f, "angle")
        if abs(angle) > 90:
            raise f.fail("bad_angle", f"tilt angle {show(f.h['angle'])} outside [-90, 90]")
        dose = _typed_number(f, "dose_e_per_A2", code="bad_dose")
        if not 0 <= dose <= MAX_DOSE:
            raise f.fail("bad_dose", f"dose {show(f.h['dose_e_per_A2'])} must be in "
                                     f"[0, {MAX_DOSE:g}] e/A^2")
        return {"angle": angle, "dose_e_per_A2": dose,
                "t_acquired": f.number("t_acquired", required=False, nullable=True)}

    @staticmethod
    def _check_frames(f: Fields, arrays: tuple[np.ndarray, ...], names: tuple[str, ...],
                      counts: bool) -> None:
        if len(arrays) != len(names):
            what = "image" if names == ("HAADF",) else "elements"
            raise f.fail("frame_count", f"{len(arrays)} frames for {len(names)} {what} "
                                        f"(expected {len(names)} data frame(s))")
        shape = arrays[0].shape if arrays else None
        for i, a in enumerate(arrays):
            if a.ndim != 2 or a.shape != shape or a.dtype.kind not in "fiu":
                raise f.fail("bad_shape", f"frame {i} is {a.dtype}{a.shape}; frames must "
                                          "be 2-D real arrays of one shape")
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                n = int(np.count_nonzero(~np.isfinite(a)))
                raise f.fail("not_finite", f"frame {i} holds {n} NaN/inf values")
            if counts and a.size and a.dtype.kind != "u" and float(a.min()) < 0:
                raise f.fail("negative_counts", f"element {names[i]!r} has negative counts "
                                                f"(min {float(a.min())})")


@dataclass(frozen=True, eq=False, kw_only=True)
class HaadfTilt(Tilt):
    modality: ClassVar[str] = "haadf"
    image: np.ndarray

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> HaadfTilt:
        f = _fields(h)
        common = cls._common(f)
        cls._check_frames(f, arrays, ("HAADF",), counts=False)
        return cls(h, arrays, image=arrays[0], **common)


@dataclass(frozen=True, eq=False, kw_only=True)
class ChemTilt(Tilt):
    modality: ClassVar[str] = "chem"
    elements: tuple[str, ...]
    maps: Mapping[str, np.ndarray]  # element -> count map
    haadf_seq: int | None

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> ChemTilt:
        f = _fields(h)
        common = cls._common(f)
        els = f.elements()
        cls._check_frames(f, arrays, els, counts=True)
        return cls(h, arrays, elements=els, maps=dict(zip(els, arrays, strict=True)),
                   haadf_seq=f.integer("haadf_seq", 0, MAX_SEQ, required=False,
                                       nullable=True),
                   **common)


@dataclass(frozen=True, eq=False, kw_only=True)
class SeriesEnd(Message):
    n_haadf: int
    n_chem: int
    reason: str | None

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> SeriesEnd:
        f = _fields(h)
        n_haadf = f.integer("n_haadf", 0, MAX_SEQ)
        n_chem = f.integer("n_chem", 0, MAX_SEQ)
        assert n_haadf is not None and n_chem is not None
        return cls(h, arrays, n_haadf=n_haadf, n_chem=n_chem,
                   reason=f.text("reason", 200, required=False, nullable=True))


@dataclass(frozen=True, eq=False, kw_only=True)
class Hello(Message):
    last_seq: int

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> Hello:
        last = _fields(h).integer("last_seq", -1, MAX_SEQ)
        assert last is not None
        return cls(h, arrays, last_seq=last)


@dataclass(frozen=True, eq=False, kw_only=True)
class Ack(Message):
    ack_seq: int
    status: str
    reason: str | None
    cmd: str | None

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> Ack:
        f = _fields(h)
        ack_seq, status = f.integer("ack_seq", 0, MAX_ID), f.text("status", 64)
        assert ack_seq is not None and status is not None
        return cls(h, arrays, ack_seq=ack_seq, status=status,
                   reason=f.text("reason", 4096, required=False, nullable=True),
                   cmd=f.text("cmd", 64, required=False, nullable=True))


@dataclass(frozen=True, eq=False, kw_only=True)
class ErrorReply(Message):
    code: str
    message: str
    bad_seq: int | None
    spent: bool  # the refused data message's seq is spent: do not send it again

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> ErrorReply:
        f = _fields(h)
        code, text = f.text("code", 64), f.text("message", 65536)
        assert code is not None and text is not None
        return cls(h, arrays, code=code, message=text,
                   bad_seq=f.integer("bad_seq", 0, MAX_ID, required=False, nullable=True),
                   spent=f.boolean("spent"))


@dataclass(frozen=True, eq=False, kw_only=True)
class Command(Message):
    cmd: str
    id: int
    args: Mapping[str, Any]  # angle, dose, dwell_ms: from `args` or the top level

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> Command:
        f = _fields(h)
        cmd, cid = f.text("cmd", 64), f.integer("id", 0, MAX_ID)
        assert cmd is not None and cid is not None
        if cmd not in COMMANDS:
            raise f.fail("unknown_command", f"command {show(cmd)} is not one of "
                                            f"{list(COMMANDS)}")
        nested = f.mapping("args", required=False, nullable=True) or {}
        args = {k: nested[k] for k in COMMAND_ARGS if k in nested}
        args.update({k: h[k] for k in COMMAND_ARGS if k in h})
        return cls(h, arrays, cmd=cmd, id=cid, args=args)


@dataclass(frozen=True, eq=False, kw_only=True)
class Status(Message):
    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> Status:
        return cls(h, arrays)


@dataclass(frozen=True, eq=False, kw_only=True)
class Event(Message):
    event: str

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> Event:
        name = _fields(h).text("event", 200)
        assert name is not None
        return cls(h, arrays, event=name)


@dataclass(frozen=True, eq=False, kw_only=True)
class Operator(Message):
    action: str
    id: int
    advice_id: int | None

    @classmethod
    def parse(cls, h: dict[str, Any], arrays: tuple[np.ndarray, ...] = ()) -> Operator:
        f = _fields(h)
        action, oid = f.text("action", 64), f.integer("id", 0, MAX_ID)
        assert action is not None and oid is not None
        if action not in OPERATOR_ACTIONS:
            raise f.fail("unknown_action", f"operator action {show(action)} is not one of "
                                            f"{list(OPERATOR_ACTIONS)}")
        aid = h.get("advice_id")
        if action in ("accept", "skip") and (isinstance(aid, bool) or not isinstance(aid, int)):
            raise f.fail("missing_field", f"operator {action}: needs the integer "
                                          f"'advice_id' of the advice it answers, got "
                                          f"{show(aid)}")
        advice_id = f.integer("advice_id", 0, MAX_ID, required=False, nullable=True)
        return cls(h, arrays, action=action, id=oid, advice_id=advice_id)


TYPES: dict[str, Any] = {
    SERIES_START: SeriesStart, HAADF_TILT: HaadfTilt, CHEM_TILT: ChemTilt,
    SERIES_END: SeriesEnd, HELLO: Hello, ACK: Ack, ERROR: ErrorReply, COMMAND: Command,
    STATUS: Status, EVENT: Event, OPERATOR: Operator,
}
WITH_ARRAYS = (HAADF_TILT, CHEM_TILT)


def _fields(h: dict[str, Any]) -> Fields:
    seq = h.get("seq")
    return Fields(h, str(h.get("type")), seq if isinstance(seq, int) else None)


def _typed_number(f: Fields, name: str, code: str = "bad_angle") -> float:
    """A required number: bad_field for another type, `code` when not finite."""
    if name not in f.h:
        raise f.fail("missing_field", f"missing field {name!r}")
    v = f.h[name]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise f.fail("bad_field", f"field {name!r} has type {type(v).__name__}, value "
                                  f"{show(v)}")
    num = f.number(name, code=code)
    assert num is not None
    return num


def _in_range(f: Fields, what: str, v: Any, lo: float, hi: float,
              above: bool = False) -> float:
    x = finite_float(v)
    if x is None or x > hi or x < lo or (above and x == lo):
        raise f.fail("bad_series", f"{what} must be a number in {'(' if above else '['}"
                                   f"{lo:g}, {hi:g}], got {show(v)}")
    return x


def typed(msg: Message) -> Message:
    """The typed message of `msg` (a Message built in memory, e.g. by `make`), checked as
    `decode` checks a received one (without the byte-level checks: dtype, checksum)."""
    if type(msg) is not Message:
        return msg
    from fusetomo.adapters.protocol.codec import check_common

    h = dict(msg.header)
    check_common(h)
    arrays = tuple(np.asarray(a) for a in msg.arrays)
    if h["type"] not in WITH_ARRAYS and arrays:
        raise ProtocolError("bad_payload", f"{h['type']}: carries no arrays but "
                            f"{len(arrays)} were given", seq=h.get("seq"))
    return TYPES[h["type"]].parse(h, arrays)

