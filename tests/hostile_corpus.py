"""A corpus of hostile and malformed messages from an "instrument", and the valid series
they are spread through (core-shell, 16^3, 11 HAADF + 3 chemical tilts). Each entry is
(name, frames, the error code the controller must answer with)."""

from __future__ import annotations

import json

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


# Refusals of a tilt that was next in sequence but whose content cannot be recorded: the
# controller spends its seq (the series goes on), so the sender moves to the next one.
SEQ_CONSUMING = ("shape_mismatch", "element_mismatch", "duplicate_tilt")


def shifted(frames: list[bytes], by: int) -> list[bytes]:
    """The message with its seq moved by `by` (unparseable headers are left as they are)."""
    if by == 0:
        return frames
    try:
        h = json.loads(frames[0])
    except (UnicodeDecodeError, ValueError):
        return frames
    if not isinstance(h, dict) or not isinstance(h.get("seq"), int):
        return frames
    return tamper(frames, seq=h["seq"] + by)


def hostile(s, n: int, st: dict) -> list[tuple[str, list[bytes], str]]:
    """(name, frames, expected error code); n is the next expected seq, st the state."""
    H = haadf_frames(s, n, st["free_haadf"])
    img = s.haadf[0]
    el0, el1 = s.elements[0], s.elements[1]
    nan_img, inf_img, neg = img.copy(), img.copy(), s.chem[el0][0].copy()
    nan_img[3, 4], inf_img[5, 6], neg[1, 1] = np.nan, np.inf, -1.0
    flipped = bytearray(H[1])
    flipped[10] ^= 0xFF
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


