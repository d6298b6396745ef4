"""Property-based fuzzing (Hypothesis) of every receive path: whatever the frames, the
decoder returns a typed message or raises the protocol's error, and the live session, the
operator path and the instrument answer with an error reply; nothing else escapes, and the
session never falls back on its `internal` catch-all."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from hostile_corpus import haadf_frames, small_series_sim, start_frames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_fixtures import STRICT

from fusetomo.adapters.protocol import (
    ERROR,
    MAX_DEPTH,
    Message,
    ProtocolError,
    checksum,
    decode,
)
from fusetomo.adapters.protocol.messages import TYPES
from fusetomo.controller.live import LiveSession

SERIES = small_series_sim()
SID = "hostile"
FIELDS = ("type", "v", "series", "seq", "t_sent", "angle", "dose_e_per_A2", "dtype",
          "shape", "checksum", "elements", "Z", "scheme", "background", "gamma",
          "pixel_size_nm", "dose_budget_e_per_A2", "n_haadf", "n_chem", "last_seq",
          "ack_seq", "status", "code", "message", "bad_seq", "cmd", "id", "args", "action",
          "advice_id", "event", "haadf_seq", "t_acquired", "holds_for_advice", "reason")

numbers = st.one_of(
    st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**400, -(10**400), 2**53, 2**63, -(2**63) - 1, 0, -1, 1, 90, 91]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20),
                    st.sampled_from([*TYPES, "Co", "O", "Xx", "float32", "int64"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)


@st.composite
def headers(draw) -> dict:
    """Headers near the valid ones: known types and fields, any values."""
    h = {"type": draw(st.sampled_from(list(TYPES)) | values), "v": draw(st.just(1) | values),
         "series": draw(st.just(SID) | values), "seq": draw(st.integers(0, 20) | values),
         "t_sent": draw(st.just(0.0) | values)}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=8)):
        h[name] = draw(values)
    return h


def _encode_header(h: dict) -> bytes:
    return json.dumps(h, allow_nan=True).encode()


@st.composite
def frame_lists(draw) -> list[bytes]:
    """A header (well-formed JSON, or not), then arbitrary array frames, possibly with
    a matching checksum, dtype and shape."""
    kind = draw(st.sampled_from(["json", "bytes", "deep"]))
    if kind == "bytes":
        head = draw(st.binary(max_size=200))
    elif kind == "deep":
        depth = draw(st.integers(MAX_DEPTH - 2, 3000))
        head = b'{"type":"haadf_tilt","x":' + b"[" * depth + b"]" * depth + b"}"
    else:
        h = draw(headers())
        frames = draw(st.lists(st.binary(max_size=64), max_size=4))
        if draw(st.booleans()) and frames:  # make the declared sizes agree with the frames
            n = len(frames[0]) // 4 * 4 or 4
            frames = [f[:n].ljust(n, b"\0") for f in frames]
            h.update(dtype="float32", shape=[1, n // 4], checksum=checksum(frames))
        return [_encode_header(h), *frames]
    return [head, *draw(st.lists(st.binary(max_size=16), max_size=3))]


@settings(max_examples=400, deadline=None)
@given(frame_lists())
def test_decode_returns_a_message_or_raises_the_protocol_error(frames):
    try:
        msg = decode(frames)
    except ProtocolError as e:
        assert e.code and str(e)
        assert e.seq is None or isinstance(e.seq, int)
    else:
        assert isinstance(msg, Message) and msg.type in TYPES


_SESSION: dict = {}


def _session() -> LiveSession:
    """One session recording a series (made once: Hypothesis calls the test many times)."""
    if "s" not in _SESSION:
        tmp = Path(tempfile.mkdtemp(prefix="fusetomo-fuzz-"))
        ses = LiveSession(tmp / "run.h5", STRICT)
        ses.start()
        ses.receive(start_frames(SERIES))
        ses.receive(haadf_frames(SERIES, 1, 0))
        _SESSION["s"] = ses
    return _SESSION["s"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_lists())
def test_the_session_answers_anything_with_an_error_reply(frames):
    ses = _session()
    before = (ses.run.haadf_count, ses.run.chem_count)
    out = ses.receive(frames)  # must not raise
    for reply in out.replies:
        if reply.type == ERROR:
            assert reply.header["code"] != "internal", reply.header
    # Fuzzed frames may be a valid tilt (then recorded); they never remove anything.
    assert (ses.run.haadf_count, ses.run.chem_count) >= before


@settings(max_examples=200, deadline=None)
@given(frame_lists())
def test_the_operator_path_answers_anything(frames):
    out = _session().on_operator(frames)
    assert out.operator_reply is not None
    assert out.operator_reply.type in ("ack", "error")


_INSTRUMENT: dict = {}


@settings(max_examples=200, deadline=None)
@given(frame_lists())
def test_the_instrument_handles_anything_a_controller_may_send(frames):
    """The instrument side (Nion adapter on a fake microscope; the simulated instrument is
    the same session): decode, then handle, raise nothing but the protocol's error."""
    from instrument_fixtures import make_session

    if "s" not in _INSTRUMENT:
        _INSTRUMENT["s"] = make_session("nion")
    inst = _INSTRUMENT["s"]
    try:
        msg = decode(frames, 64 * 1024)
    except ProtocolError:
        return
    inst._handle(b"fuzzer", msg)


def test_a_fuzzed_valid_tilt_is_still_checked_against_the_series():
    """A sanity check of the fuzz set-up: the session records a valid tilt it is sent."""
    ses = _session()
    n = ses.recorder.last_seq() + 1
    angle_index = int(np.argmax([a not in ses.run.angles("haadf")
                                 for a in SERIES.haadf_angles]))
    reply = ses.receive(haadf_frames(SERIES, n, angle_index)).replies[0]
    assert reply.header["status"] == "recorded"
