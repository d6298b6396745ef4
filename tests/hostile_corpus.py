"""A corpus of hostile and malformed messages from an "instrument", and the valid series
they are spread through (core-shell, 16^3, 11 HAADF + 3 chemical tilts). Each entry is
(name, frames, the error code the controller must answer with)."""

from __future__ import annotations

import json
import re

import numpy as np

from fusetomo.adapters.protocol import (
    CHEM_TILT,
    COMMAND,
    HAADF_TILT,
    HELLO,
    SERIES_END,
    SERIES_START,
    STATUS,
    encode,
    make,
)
from fusetomo.adapters.series import TiltSeries
from fusetomo.simulators.forward import AcquisitionParams, TiltScheme, simulate

SID = "hostile"


def small_series_sim() -> TiltSeries:
    """The corpus' series: core-shell, 16^3, 11 HAADF + 3 chemical tilts."""
    sim = simulate("core-shell", 16, TiltScheme((-60.0, 60.0), 12.0, 60.0),
                   AcquisitionParams(oversample=1), seed=1)
    return sim.series


def start_frames(s, seq: int = 0, series: str = SID, **over) -> list[bytes]:
    fields = {"elements": s.elements, "Z": {e: int(s.Z[e]) for e in s.elements},
              "shape": list(s.shape),
              "scheme": {"haadf_angles": s.haadf_angles.tolist(),
                         "chem_angles": s.common_chem_angles.tolist()},
              "dose_budget_e_per_A2": None, "pixel_size_nm": 0.5, "gamma": s.gamma,
              "background": {e: float(s.background[e]) for e in s.elements}}
    fields.update(over)
    return encode(make(SERIES_START, series, seq, **fields))


def haadf_frames(s, seq: int, i: int = 0, image=None, series: str = SID, **over) -> list[bytes]:
    img = s.haadf[i] if image is None else image
    return encode(make(HAADF_TILT, series, seq, [img], angle=float(s.haadf_angles[i]),
                       dose_e_per_A2=10.0, **over))


def chem_frames(s, seq: int, j: int = 0, elements=None, maps=None, **over) -> list[bytes]:
    els = list(s.elements) if elements is None else elements
    first = s.elements[0]
    arrays = [s.chem.get(e, s.chem[first])[j] for e in els] if maps is None else maps
    return encode(make(CHEM_TILT, SID, seq, arrays, angle=float(s.common_chem_angles[j]),
                       elements=els, dose_e_per_A2=100.0, **over))


def tamper(frames: list[bytes], drop: tuple[str, ...] = (), **changes) -> list[bytes]:
    h = json.loads(frames[0])
    for k in drop:
        h.pop(k, None)
    h.update(changes)
    return [json.dumps(h).encode(), *frames[1:]]


def shifted(frames: list[bytes], base: int, seq: int) -> list[bytes]:
    """The message built for next seq `base`, for next seq `seq`: a header whose "seq" is
    `base` (or `base` + 5, a gap) gets the same offset from `seq`, by editing the bytes
    (re-encoding would change what is hostile in them); other seqs and headers are left."""
    if seq == base or not frames:
        return frames
    m = re.search(rb'"seq":\s*(\d+)[,}]', frames[0])
    if m is None or int(m.group(1)) not in (base, base + 5):
        return frames
    new = str(int(m.group(1)) - base + seq).encode()
    head = frames[0][:m.start(1)] + new + frames[0][m.end(1):]
    return [head, *frames[1:]]


def hostile(s, n: int, st: dict) -> list[tuple[str, list[bytes], str]]:
    """(name, frames, expected error code); n is the next expected seq, st the state."""
    H = haadf_frames(s, n, st["free_haadf"])
    img = s.haadf[0]
    el0, el1 = s.elements[0], s.elements[1]
    nan_img, inf_img, neg = img.copy(), img.copy(), s.chem[el0][0].copy()
    nan_img[3, 4], inf_img[5, 6], neg[1, 1] = np.nan, np.inf, -1.0
    flipped = bytearray(H[1])
    flipped[10] ^= 0xFF
    return _basic(s, n, st, H, img, el0, el1, nan_img, inf_img, neg, flipped) + \
        _numbers_and_nesting(s, n, st, H) + _fields(s, n, st, H) + _start_fields(s, n) + \
        _other_types(s, n)


def _basic(s, n, st, H, img, el0, el1, nan_img, inf_img, neg, flipped):
    return [
        ("bad json", [b"{not json"], "bad_json"),
        ("not utf-8", [b"\xff\xfe{}"], "bad_json"),
        ("json array", [b"[1, 2]"], "bad_json"),
        ("json string", [b'"haadf_tilt"'], "bad_json"),
        ("json number", [b"42"], "bad_json"),
        ("json null", [b"null"], "bad_json"),
        ("empty header", [b""], "bad_json"),
        ("NaN in header", [b'{"type":"haadf_tilt","v":1,"angle":NaN}'], "bad_json"),
        ("header > 64 KiB", [b'{"pad":"' + b"x" * 70_000 + b'"}'], "header_too_large"),
        ("no version", tamper(H, drop=("v",)), "missing_field"),
        ("version 2", tamper(H, v=2), "bad_version"),
        ("version as text", tamper(H, v="1"), "bad_version"),
        ("version true", tamper(H, v=True), "bad_version"),
        ("unknown type", tamper(H, type="tilt"), "unknown_type"),
        ("no type", tamper(H, drop=("type",)), "unknown_type"),
        ("no seq", tamper(H, drop=("seq",)), "missing_field"),
        ("seq as text", tamper(H, seq=str(n)), "bad_field"),
        ("negative seq", tamper(H, seq=-1), "bad_field"),
        ("seq float", tamper(H, seq=float(n) + 0.5), "bad_field"),
        ("seq true", tamper(H, seq=True), "bad_field"),
        ("empty series id", tamper(H, series=""), "bad_field"),
        ("series id 201 chars", tamper(H, series="s" * 201), "bad_field"),
        ("series id number", tamper(H, series=7), "bad_field"),
        ("no t_sent", tamper(H, drop=("t_sent",)), "missing_field"),
        ("no angle", tamper(H, drop=("angle",)), "missing_field"),
        ("angle as text", tamper(H, angle="0"), "bad_field"),
        ("angle 95", tamper(H, angle=95.0), "bad_angle"),
        ("no dose", tamper(H, drop=("dose_e_per_A2",)), "missing_field"),
        ("negative dose", tamper(H, dose_e_per_A2=-1.0), "bad_dose"),
        ("no dtype", tamper(H, drop=("dtype",)), "missing_field"),
        ("dtype complex64", tamper(H, dtype="complex64"), "bad_dtype"),
        ("dtype object", tamper(H, dtype="object"), "bad_dtype"),
        ("3-D shape", tamper(H, shape=[1, 16, 16]), "bad_shape"),
        ("shape of text", tamper(H, shape=["16", "16"]), "bad_shape"),
        ("zero shape", tamper(H, shape=[0, 16]), "too_large"),
        ("absurd shape", tamper(H, shape=[100_000, 100_000]), "too_large"),
        ("512 MiB frame", tamper(H, shape=[8192, 8192], dtype="float64"), "too_large"),
        ("data frame missing", H[:1], "frame_count"),
        ("extra frame", [*H, H[1]], "frame_count"),
        ("truncated frame", [H[0], H[1][:-7]], "frame_size"),
        ("frame too long", [H[0], H[1] + b"\0" * 4], "frame_size"),
        ("dtype mismatch", tamper(H, dtype="float64"), "frame_size"),
        ("checksum mismatch", [H[0], bytes(flipped)], "checksum"),
        ("no checksum", tamper(H, drop=("checksum",)), "missing_field"),
        ("NaN pixel", haadf_frames(s, n, st["free_haadf"], nan_img), "not_finite"),
        ("inf pixel", haadf_frames(s, n, st["free_haadf"], inf_img), "not_finite"),
        ("negative counts", chem_frames(s, n, st["free_chem"], maps=[neg, s.chem[el1][0],
                                                             s.chem[s.elements[2]][0]]),
         "negative_counts"),
        ("unknown element", chem_frames(s, n, st["free_chem"], elements=["Xx", el1, "O"]),
         "unknown_element"),
        ("fewer frames than elements", chem_frames(s, n, st["free_chem"], maps=[img]),
         "frame_count"),
        ("duplicate element", chem_frames(s, n, st["free_chem"], elements=[el0, el0, el1]),
         "bad_field"),
        ("empty element list", tamper(chem_frames(s, n, st["free_chem"])[:1], elements=[],
                                       checksum="00000000"), "bad_field"),
        ("series_end with a frame", [*encode(make(SERIES_END, SID, n, n_haadf=0, n_chem=0)),
                                     b"x"], "bad_payload"),
        ("series_end count as text", encode(make(SERIES_END, SID, n, n_haadf="1", n_chem=0)),
         "bad_field"),
        # What needs the series' state:
        ("element not in the series", chem_frames(s, n, st["free_chem"],
                                            elements=[el0, el1, "Au"]), "element_mismatch"),
        ("element missing", chem_frames(s, n, st["free_chem"], elements=[el0, el1]),
         "element_mismatch"),
        ("shape mismatch", haadf_frames(s, n, st["free_haadf"], img[:8]), "shape_mismatch"),
        ("other series id", haadf_frames(s, n, st["free_haadf"], series="other"), "wrong_series"),
        ("seq gap", haadf_frames(s, n + 5, st["free_haadf"]), "out_of_order"),
        ("seq far ahead", haadf_frames(s, 2**52, st["free_haadf"]), "out_of_order"),
        ("seq beyond 2**53", haadf_frames(s, 2**62, st["free_haadf"]), "bad_field"),
        ("repeated angle, new seq", haadf_frames(s, n, st["recorded_haadf"]), "duplicate_tilt"),
        ("another series_start", start_frames(s, n, series="intruder"), "series_in_progress"),
        ("hello from the instrument", encode(make(HELLO, SID, n, last_seq=0)),
         "unexpected_type"),
        ("command from the instrument", encode(make(COMMAND, SID, n, cmd="pause", id=1)),
         "unexpected_type"),
        ("status from the instrument", encode(make(STATUS, SID, n)), "unexpected_type"),
        ("series_end with wrong counts", encode(make(SERIES_END, SID, n, n_haadf=99,
                                                     n_chem=0)), "count_mismatch"),
    ]




BIG = 10**400  # a JSON integer no float can hold
START_OK = None


def _header(frames: list[bytes]) -> dict:
    return json.loads(frames[0])


def _raw(h: dict, extra: bytes = b"") -> bytes:
    """A header as bytes with `extra` spliced in before the closing brace."""
    text = json.dumps(h).encode()
    return text[:-1] + extra + b"}" if extra else text


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _numbers_and_nesting(s, n: int, st: dict, H: list[bytes]):
    """The inputs that killed the controller before issue 18: numbers too large for a
    float, nesting that exhausts the recursion limit, unhashable types."""
    h = _header(H)
    start = _header(start_frames(s, n))
    return [
        ("angle 10**400", tamper(H, angle=BIG), "bad_field"),
        ("dose 10**400", tamper(H, dose_e_per_A2=BIG), "bad_field"),
        ("t_sent 10**400", tamper(H, t_sent=BIG), "bad_field"),
        ("t_acquired 10**400", tamper(H, t_acquired=BIG), "bad_field"),
        ("seq 10**400", tamper(H, seq=BIG), "bad_field"),
        ("series_start background 10**400",
         [_raw({**start, "background": {e: BIG for e in s.elements}})], "bad_field"),
        ("series_start pixel_size_nm 10**400",
         [_raw({**start, "pixel_size_nm": BIG})], "bad_field"),
        ("series_start dose budget 10**400",
         [_raw({**start, "dose_budget_e_per_A2": BIG})], "bad_field"),
        ("series_start Z 10**400", [_raw({**start, "Z": {e: BIG for e in s.elements}})],
         "bad_field"),
        ("series_end n_haadf 10**400",
         encode(make(SERIES_END, SID, n, n_haadf=BIG, n_chem=0)), "bad_field"),
        ("angle 1e400 (infinite)", [_raw({k: v for k, v in h.items() if k != "angle"},
                                         b', "angle": 1e400'), *H[1:]], "bad_field"),
        ("an unknown field 1e400", [_raw(h, b', "x": 1e400'), *H[1:]], "bad_field"),
        ("an unknown field -Infinity", [_raw(h, b', "x": -Infinity'), *H[1:]], "bad_json"),
        ("integer of 5000 digits", [_raw(h, b', "x": 1' + b"0" * 5000), *H[1:]],
         "bad_json"),
        ("nested 5000 deep", [_nested(5000)], "bad_json"),
        ("a field nested 3000 deep", [_raw(h, b', "x": ' + _nested(3000)), *H[1:]],
         "bad_json"),
        ("a field nested 40 deep", [_raw(h, b', "x": ' + _nested(40)), *H[1:]], "bad_json"),
        ("type a list", tamper(H, type=["haadf_tilt"]), "unknown_type"),
        ("type an object", tamper(H, type={"haadf_tilt": 1}), "unknown_type"),
        ("type a number", tamper(H, type=3), "unknown_type"),
        ("type null", tamper(H, type=None), "unknown_type"),
        ("type empty", tamper(H, type=""), "unknown_type"),
        ("type upper case", tamper(H, type="HAADF_TILT"), "unknown_type"),
        ("series_start seq 2**63-1", start_frames(s, 2**63 - 1), "bad_field"),
        ("seq 2**53", tamper(H, seq=2**53), "bad_field"),
        ("seq null", tamper(H, seq=None), "bad_field"),
        ("seq a list", tamper(H, seq=[n]), "bad_field"),
        ("version 0", tamper(H, v=0), "bad_version"),
        ("version 1.0", tamper(H, v=1.0), "bad_version"),
        ("version null", tamper(H, v=None), "bad_version"),
        ("version a list", tamper(H, v=[1]), "bad_version"),
        ("BOM before the header", [b"\xef\xbb\xbf" + H[0], *H[1:]], "bad_json"),
        ("NUL in a string", [_raw(h, b', "x": "a\x00b"'), *H[1:]], "bad_json"),
        ("Infinity in the header", [b'{"type":"haadf_tilt","v":1,"x":Infinity}'], "bad_json"),
        ("no frames at all", [], "empty"),
        ("101 frames", [H[0]] * 101, "too_many_frames"),
    ]


def _fields(s, n: int, st: dict, H: list[bytes]):
    """Every field of a tilt, of the wrong type or out of range."""
    C = chem_frames(s, n, st["free_chem"])
    big_shape = [2**40, 2]
    return [
        ("series null", tamper(H, series=None), "bad_field"),
        ("series a list", tamper(H, series=[SID]), "bad_field"),
        ("no series", tamper(H, drop=("series",)), "missing_field"),
        ("t_sent as text", tamper(H, t_sent="now"), "bad_field"),
        ("t_sent null", tamper(H, t_sent=None), "bad_field"),
        ("t_sent a list", tamper(H, t_sent=[1.0]), "bad_field"),
        ("angle null", tamper(H, angle=None), "bad_field"),
        ("angle a list", tamper(H, angle=[1.0]), "bad_field"),
        ("angle true", tamper(H, angle=True), "bad_field"),
        ("angle -90.0001", tamper(H, angle=-90.0001), "bad_angle"),
        ("angle 1e300", tamper(H, angle=1e300), "bad_angle"),
        ("angle 'nan'", tamper(H, angle="nan"), "bad_field"),
        ("dose as text", tamper(H, dose_e_per_A2="1"), "bad_field"),
        ("dose null", tamper(H, dose_e_per_A2=None), "bad_field"),
        ("dose 1e10", tamper(H, dose_e_per_A2=1e10), "bad_dose"),
        ("dose -1e-9", tamper(H, dose_e_per_A2=-1e-9), "bad_dose"),
        ("t_acquired as text", tamper(H, t_acquired="today"), "bad_field"),
        ("t_acquired a dict", tamper(H, t_acquired={"s": 1}), "bad_field"),
        ("dtype float16", tamper(H, dtype="float16"), "bad_dtype"),
        ("dtype int64", tamper(H, dtype="int64"), "bad_dtype"),
        ("dtype <f4", tamper(H, dtype="<f4"), "bad_dtype"),
        ("dtype empty", tamper(H, dtype=""), "bad_dtype"),
        ("dtype null", tamper(H, dtype=None), "bad_dtype"),
        ("dtype a number", tamper(H, dtype=4), "bad_dtype"),
        ("dtype a list", tamper(H, dtype=["float32"]), "bad_dtype"),
        ("shape of one side", tamper(H, shape=[16]), "bad_shape"),
        ("shape null", tamper(H, shape=None), "bad_shape"),
        ("shape negative", tamper(H, shape=[16, -1]), "too_large"),
        ("shape of booleans", tamper(H, shape=[True, 16]), "bad_shape"),
        ("shape of floats", tamper(H, shape=[16.0, 16]), "bad_shape"),
        ("shape an object", tamper(H, shape={"a": 1}), "bad_shape"),
        ("shape 2**40 x 2", tamper(H, shape=big_shape), "too_large"),
        ("shape 8192 x 8192 float32 (over the series' size)",
         tamper(H, shape=[8192, 8192]), "too_large"),
        ("checksum null", tamper(H, checksum=None), "checksum"),
        ("checksum a number", tamper(H, checksum=123), "checksum"),
        ("checksum empty", tamper(H, checksum=""), "checksum"),
        ("empty data frame", [H[0], b""], "frame_size"),
        ("one byte short", [H[0], H[1][:-1]], "frame_size"),
        ("chem elements a string", tamper(C, elements=s.elements[0]), "frame_count"),
        ("chem elements an object", tamper(C, elements={e: 1 for e in s.elements}),
         "frame_count"),
        ("chem elements of numbers", tamper(C, elements=[1, 2, 3]), "bad_field"),
        ("chem elements null", tamper(C, elements=None), "frame_count"),
        ("chem elements 93 long", tamper(C, elements=list(s.elements) * 31), "frame_count"),
        ("chem haadf_seq as text", tamper(C, haadf_seq="1"), "bad_field"),
        ("chem haadf_seq negative", tamper(C, haadf_seq=-1), "bad_field"),
        ("chem haadf_seq 2**60", tamper(C, haadf_seq=2**60), "bad_field"),
        ("chem dose 1e10", tamper(C, dose_e_per_A2=1e10), "bad_dose"),
        ("chem no angle", tamper(C, drop=("angle",)), "missing_field"),
        ("chem angle 91", tamper(C, angle=91.0), "bad_angle"),
        ("chem lower-case element", tamper(C, elements=[e.lower() for e in s.elements]),
         "unknown_element"),
    ]


def _start_fields(s, n: int):
    """series_start with each field wrong (refused before the run's state is looked at)."""
    def st(**over):
        return start_frames(s, n, **over)

    els = list(s.elements)
    z = {e: int(s.Z[e]) for e in els}
    return [
        ("start elements a string", st(elements="Co"), "bad_field"),
        ("start elements null", st(elements=None), "bad_field"),
        ("start elements of numbers", st(elements=[27, 8]), "bad_field"),
        ("start elements repeated", st(elements=[els[0], els[0]], Z={els[0]: 27}),
         "bad_field"),
        ("start Z missing an element", st(Z={els[0]: z[els[0]]}), "bad_series"),
        ("start Z zero", st(Z={e: 0 for e in els}), "bad_series"),
        ("start Z 200", st(Z={e: 200 for e in els}), "bad_series"),
        ("start Z as text", st(Z={e: "cobalt" for e in els}), "bad_series"),
        ("start Z a list", st(Z=[27, 16, 8]), "bad_field"),
        ("start no Z", start_frames(s, n, **{"Z": None}), "bad_field"),
        ("start shape null", st(shape=None), "bad_shape"),
        ("start shape 0 x 16", st(shape=[0, 16]), "bad_shape"),
        ("start shape 9000 x 16", st(shape=[9000, 16]), "bad_shape"),
        ("start shape of text", st(shape=["16", "16"]), "bad_shape"),
        ("start scheme a list", st(scheme=[1, 2]), "bad_field"),
        ("start scheme angles as text", st(scheme={"haadf_angles": "all"}), "bad_series"),
        ("start scheme angle 100", st(scheme={"haadf_angles": [0.0, 100.0]}), "bad_series"),
        ("start scheme angle of text", st(scheme={"chem_angles": ["0"]}), "bad_series"),
        ("start dose budget negative", st(dose_budget_e_per_A2=-5.0), "bad_field"),
        ("start dose budget as text", st(dose_budget_e_per_A2="lots"), "bad_field"),
        ("start pixel size 0", st(pixel_size_nm=0.0), "bad_field"),
        ("start pixel size negative", st(pixel_size_nm=-0.5), "bad_field"),
        ("start gamma 0.5", st(gamma=0.5), "bad_series"),
        ("start gamma as text", st(gamma="1.7"), "bad_series"),
        ("start background a list", st(background=[0.0, 0.0, 0.0]), "bad_field"),
        ("start background of an unknown element", st(background={"Au": 1.0}),
         "bad_series"),
        ("start background as text", st(background={e: "low" for e in els}), "bad_series"),
        ("start holds_for_advice as text", st(holds_for_advice="yes"), "bad_field"),
        ("start chem dose negative", st(chem_dose_e_per_A2=-1.0), "bad_field"),
    ]


def _other_types(s, n: int):
    """Messages an instrument does not send, and replies that are malformed."""
    def raw(mtype: str, **fields):
        return encode(make(mtype, SID, n, **fields))

    return [
        ("operator message from the instrument", raw("operator", action="accept", id=1,
                                                     advice_id=1), "unexpected_type"),
        ("event from the instrument", raw("event", event="x"), "unexpected_type"),
        ("event without its name", raw("event"), "missing_field"),
        ("hello without last_seq", raw(HELLO), "missing_field"),
        ("hello last_seq -2", raw(HELLO, last_seq=-2), "bad_field"),
        ("command of no known kind", raw(COMMAND, cmd="explode", id=1), "unknown_command"),
        ("command without id", raw(COMMAND, cmd="pause"), "missing_field"),
        ("operator of no known action", raw("operator", action="reboot", id=1),
         "unknown_action"),
        ("operator accept without advice_id", raw("operator", action="accept", id=1),
         "missing_field"),
        ("error reply without message", raw("error", code="x"), "missing_field"),
        ("error reply with a numeric code", raw("error", code=5, message="m"), "bad_field"),
        ("error reply with bad_seq as text", raw("error", code="x", message="m",
                                                 bad_seq="3"), "bad_field"),
        ("error reply of 70000 characters", raw("error", code="x", message="m" * 70_000),
         "header_too_large"),
        ("ack with ack_seq as text", raw("ack", ack_seq="1", status="done"), "bad_field"),
        ("ack with a negative ack_seq", raw("ack", ack_seq=-1, status="done"), "bad_field"),
        ("ack without status", raw("ack", ack_seq=1), "missing_field"),
        ("series_end with a negative count", raw(SERIES_END, n_haadf=-1, n_chem=0),
         "bad_field"),
        ("series_end with a fractional count", raw(SERIES_END, n_haadf=1.5, n_chem=0),
         "bad_field"),
        ("series_end with null counts", raw(SERIES_END, n_haadf=None, n_chem=None),
         "bad_field"),
        ("series_end with a reason of 500 characters",
         raw(SERIES_END, n_haadf=0, n_chem=0, reason="x" * 500), "bad_field"),
        ("status with a frame", [*raw(STATUS), b"x"], "bad_payload"),
    ]
