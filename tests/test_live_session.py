"""The live session, without sockets: every message an instrument may send (valid, duplicate,
out of order, hostile, malformed) and what the session answers, records and publishes.
(End-to-end runs over real sockets and processes are in test_live.py.)"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
from hostile_corpus import (
    SID,
    chem_frames,
    haadf_frames,
    hostile,
    shifted,
    small_series_sim,
    start_frames,
    tamper,
)
from live_fixtures import STRICT

from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    ERROR,
    HAADF_TILT,
    MAX_HEADER_BYTES,
    SERIES_END,
    Message,
    SeriesStart,
    decode,
    encode,
    make,
)
from fusetomo.adapters.runfile import describe_run, read_run
from fusetomo.controller.live import LiveSession, Outputs
from fusetomo.controller.live.memory import memory_needed


@pytest.fixture(scope="module")
def small_series():
    return small_series_sim()


def spends(frames: list[bytes], code: str, next_seq: int) -> bool:
    """Whether refusing `frames` with `code` spends its seq (docs/protocol.md §3)."""
    def no_constants(name: str) -> None:
        raise ValueError(name)  # NaN, Infinity: not JSON, the header cannot be read

    try:
        text = bytes(frames[0]).decode("utf-8") if frames else "null"
        h = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    if not isinstance(h, dict):
        return False
    seq = h.get("seq")
    return (h.get("type") in (HAADF_TILT, CHEM_TILT) and h.get("series") == SID
            and isinstance(seq, int) and not isinstance(seq, bool) and seq == next_seq
            and code not in ("out_of_order", "wrong_series", "no_series",
                             "series_complete"))


def one_reply(out: Outputs) -> Message:
    """The one reply (ack, error or hello) the session sent to the instrument."""
    replies = out.replies
    assert len(replies) == 1, [m.header for m in replies]
    return replies[0]


def finish(ses: LiveSession, max_steps: int = 10_000) -> None:
    """Step the session until it has finished (after its series end)."""
    for _ in range(max_steps):
        if ses.finished:
            return
        ses.step()
    raise AssertionError("the session did not finish")


def test_hostile_messages_get_specific_errors_and_change_nothing(tmp_path, small_series,
                                                                 caplog):
    s = small_series
    run = tmp_path / "run.h5"
    ses = LiveSession(run, STRICT)
    ses.start()
    errors: list[tuple[str, str]] = []

    def expect_error(name: str, frames: list[bytes], code: str, next_seq: int = -1) -> bool:
        """The error reply; whether it spent the message's seq (checked against the rule:
        a tilt of this series, next in sequence, refused for its content)."""
        reply = one_reply(ses.receive(frames))
        assert reply.type == ERROR, (name, reply.header)
        assert reply.header["code"] == code, (name, reply.header)
        errors.append((name, code))
        spent = bool(reply.header.get("spent"))
        assert spent == spends(frames, code, next_seq), (name, reply.header)
        return spent

    def expect_ack(frames: list[bytes], status: str, seq: int) -> None:
        reply = one_reply(ses.receive(frames))
        assert reply.type == ACK, reply.header
        assert (reply.header["ack_seq"], reply.header["status"]) == (seq, status)

    caplog.set_level(logging.WARNING, logger="fusetomo.live")
    assert one_reply(ses.hello()).header["last_seq"] == -1
    # Before any series_start, and bad series_starts.
    expect_error("tilt before series_start", haadf_frames(s, 1), "no_series")
    expect_error("series_end before series_start",
                 encode(make(SERIES_END, SID, 1, n_haadf=0, n_chem=0)), "no_series")
    expect_error("Z of the wrong elements", start_frames(s, Z={"Au": 79}), "bad_series")
    expect_error("gamma 5", start_frames(s, gamma=5.0), "bad_series")
    expect_error("negative background",
                 start_frames(s, background={e: -1.0 for e in s.elements}), "bad_series")
    expect_error("unknown element in series_start",
                 start_frames(s, elements=["Xx"], Z={"Xx": 1}), "unknown_element")
    expect_error("bad series shape", start_frames(s, shape=[16]), "bad_shape")
    expect_error("elements not a list", start_frames(s, elements="Cu", Z={}), "bad_field")
    assert not run.exists()
    expect_ack(start_frames(s), "recorded", 0)
    expect_ack(start_frames(s), "duplicate", 0)

    # Valid tilts (HAADF, and chemical maps at the chemical angles), with the
    # hostile corpus spread between them.
    valid: list[list[bytes]] = []
    chem_at = {float(a): j for j, a in enumerate(s.common_chem_angles)}
    for i, a in enumerate(s.haadf_angles):
        valid.append(haadf_frames(s, 0, i))
        if float(a) in chem_at:
            valid.append(chem_frames(s, 0, chem_at[float(a)]))
    seq, n_h, n_c = 1, 0, 0
    corpus_done = 0
    corpus_size = None
    while valid:
        frames = tamper(valid.pop(0), seq=seq)
        is_chem = json.loads(frames[0])["type"] == CHEM_TILT
        expect_ack(frames, "recorded", seq)
        n_h, n_c = n_h + (not is_chem), n_c + is_chem
        if seq == 1:
            expect_ack(frames, "duplicate", 1)  # a resend changes nothing
        seq += 1
        st = {"recorded_haadf": 0, "free_haadf": min(n_h, len(s.haadf_angles) - 1),
              "free_chem": min(n_c, len(s.common_chem_angles) - 1)}
        corpus, base = hostile(s, seq, st), seq
        corpus_size = len(corpus)
        batch = corpus[corpus_done:corpus_done + 6] if valid else corpus[corpus_done:]
        for name, bad, code in batch:
            # A tilt next in sequence refused for its content spends its seq: the
            # sender drops it and moves on, and so does the series.
            if expect_error(name, shifted(bad, base, seq), code, seq):
                seq += 1
        corpus_done += len(batch)
    assert corpus_done == corpus_size
    expect_ack(encode(make(SERIES_END, SID, seq, n_haadf=n_h, n_chem=n_c)),
               "recorded", seq)
    finish(ses)

    assert len(errors) >= 150 + 8
    # One log line per rejection, naming its code.
    logged = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(logged) == len(errors)
    for (_, code), line in zip(errors, logged, strict=True):
        assert f"[{code}]" in line
    # The run holds exactly the valid tilts, in order, and each rejection as an event.
    rec = read_run(run)
    assert rec.complete
    np.testing.assert_array_equal(rec.series.haadf, s.haadf)
    np.testing.assert_array_equal(rec.series.haadf_angles, s.haadf_angles)
    for e in s.elements:
        np.testing.assert_array_equal(rec.series.chem[e], s.chem[e])
    rejected = [ev for ev in rec.events if ev["kind"] == "rejected"]
    assert len(rejected) == len(errors) - 8  # the 8 before series_start had no run file
    assert describe_run(run)["duplicates"] == 0




def test_a_refused_tilt_does_not_stall_the_series(tmp_path, small_series):
    """A tilt that is next in sequence but cannot be recorded (here: an angle already
    recorded) gets an error reply, its seq is spent (persistently), the next tilt is
    recorded, and a hello then tells the instrument to drop the refused one."""
    s = small_series
    run = tmp_path / "run.h5"
    ses = LiveSession(run, STRICT)
    ses.start()
    assert one_reply(ses.hello()).header["last_seq"] == -1
    assert one_reply(ses.receive(start_frames(s))).type == ACK
    assert one_reply(ses.receive(haadf_frames(s, 1, 0))).header["status"] == "recorded"
    reply = one_reply(ses.receive(haadf_frames(s, 2, 0)))  # the same angle again, new seq
    assert (reply.type, reply.header["code"]) == (ERROR, "duplicate_tilt")
    assert one_reply(ses.hello()).header["last_seq"] == 2  # the instrument drops seq 2
    reply = one_reply(ses.receive(haadf_frames(s, 3, 1)))
    assert (reply.type, reply.header["ack_seq"], reply.header["status"]) == \
        (ACK, 3, "recorded")
    ses.receive(encode(make(SERIES_END, SID, 4, n_haadf=2, n_chem=0)))
    finish(ses)
    rec = read_run(run)
    assert rec.seq["haadf"].tolist() == [1, 3]
    assert [ev["tilt_seq"] for ev in rec.events if ev["kind"] == "seq_consumed"] == [2]


# -- every hostile kind, one at a time, against a fresh session ------------------------------
CORPUS_STATE = {"recorded_haadf": 0, "free_haadf": 1, "free_chem": 0}
CORPUS = hostile(small_series_sim(), 2, CORPUS_STATE)


@pytest.mark.parametrize(("name", "frames", "code"), CORPUS, ids=[c[0] for c in CORPUS])
def test_each_hostile_kind_is_refused_and_the_series_goes_on(tmp_path, small_series, name,
                                                             frames, code):
    """Refused with its code (nothing else escapes), its seq spent exactly when it is a
    tilt of this series next in sequence, nothing recorded changed, and the next tilt is
    recorded."""
    s = small_series
    ses = LiveSession(tmp_path / "run.h5", STRICT)
    ses.start()
    assert one_reply(ses.receive(start_frames(s))).header["status"] == "recorded"
    assert one_reply(ses.receive(haadf_frames(s, 1, 0))).header["status"] == "recorded"
    reply = one_reply(ses.receive(frames))
    assert (reply.type, reply.header["code"]) == (ERROR, code), reply.header
    spent = bool(reply.header.get("spent"))
    assert spent == spends(frames, code, 2)
    assert (ses.run.haadf_count, ses.run.chem_count) == (1, 0)
    nxt = 3 if spent else 2
    ok = one_reply(ses.receive(haadf_frames(s, nxt, 1)))
    assert (ok.type, ok.header["status"], ok.header["ack_seq"]) == (ACK, "recorded", nxt)
    assert one_reply(ses.hello()).header["last_seq"] == nxt


# -- bounded memory ---------------------------------------------------------------------------
def test_a_series_that_cannot_fit_in_memory_is_refused_at_its_start(tmp_path, small_series):
    s = small_series
    ses = LiveSession(tmp_path / "run.h5", STRICT)
    ses.start()
    reply = one_reply(ses.receive(start_frames(s, shape=[8192, 8192])))
    assert (reply.type, reply.header["code"]) == (ERROR, "too_big_for_memory")
    assert "GiB" in reply.header["message"] and not (tmp_path / "run.h5").exists()
    # The same series fits a machine with room for it, not one without.
    need = memory_needed(typed_start(s), STRICT)
    small = LiveSession(tmp_path / "a.h5", replace(STRICT, memory_limit_bytes=need - 1))
    small.start()
    assert one_reply(small.receive(start_frames(s))).header["code"] == "too_big_for_memory"
    big = LiveSession(tmp_path / "b.h5", replace(STRICT, memory_limit_bytes=need))
    big.start()
    assert one_reply(big.receive(start_frames(s))).header["status"] == "recorded"
    # Recording only needs a few frames.
    rec = replace(STRICT, reconstruct=False)
    assert memory_needed(typed_start(s), rec) == 16 * 8 * 16 * 16


def test_the_frame_limit_follows_the_series_geometry(tmp_path, small_series):
    """Before series_start: twice the header limit; after: a float64 image of the series'
    declared shape (never less than that floor). A frame over it is refused by decode."""
    s = small_series
    floor = 2 * MAX_HEADER_BYTES
    ses = LiveSession(tmp_path / "run.h5", STRICT)
    ses.start()
    assert ses.frame_limit == floor == 131072
    assert one_reply(ses.receive(start_frames(s, shape=[256, 300]))).header["status"] == \
        "recorded"
    assert ses.frame_limit == 8 * 256 * 300 == 614400
    small = LiveSession(tmp_path / "small.h5", STRICT)
    small.start()
    small.receive(start_frames(s))
    assert small.frame_limit == floor  # 16 x 16: the floor
    big = np.zeros((200, 200), np.float32)  # 160000 bytes: over the floor
    reply = one_reply(small.receive(haadf_frames(s, 1, image=big)))
    assert (reply.type, reply.header["code"]) == (ERROR, "too_large"), reply.header
    assert "160000" in reply.header["message"]


def typed_start(s) -> SeriesStart:
    msg = decode(start_frames(s))
    assert isinstance(msg, SeriesStart)
    return msg


def test_events_peers_cause_are_rate_limited_and_counted(tmp_path, small_series):
    """5000 error messages from the instrument: the run file records what the budget
    allows (a burst, then a rate) and counts the rest in an events_dropped event."""
    s = small_series
    ses = LiveSession(tmp_path / "run.h5", STRICT)
    now = [0.0]
    ses.recorder.budget.clock = lambda: now[0]
    ses.start()
    ses.receive(start_frames(s))
    burst = int(ses.recorder.budget.burst)
    for i in range(5000):
        assert ses.receive(encode(make(ERROR, SID, i, code="x", message="m"))).replies == []
    now[0] = 1.0  # a second later: `rate` more are allowed, and the count is recorded
    ses.receive(encode(make(ERROR, SID, 0, code="x", message="m")))
    events = ses.run.events()
    logged = [e for e in events if e["kind"] == "instrument_error"]
    dropped = [e for e in events if e["kind"] == "events_dropped"]
    assert len(logged) == burst + 1
    assert [e["count"] for e in dropped] == [5000 - burst]
    assert ses.run.path.stat().st_size < 2 * 2**20


# -- operator messages ---------------------------------------------------------------------------
def test_operator_messages_are_answered_and_forwarded(tmp_path, small_series):
    """Without a series pause is refused; with one it becomes a command to the instrument
    (recorded); advice answers are refused while the advisor is off; a malformed message
    gets an error reply; every answer is an ack to its sender."""
    s = small_series
    ses = LiveSession(tmp_path / "run.h5", STRICT)
    ses.start()

    def op(action: str, **fields):
        out = ses.on_operator(encode(make("operator", "*", 0, action=action, id=7, **fields)))
        assert out.operator_reply is not None
        return out

    out = op("pause")
    assert out.operator_reply.header["status"] == "rejected" and out.commands == []
    ses.receive(start_frames(s))
    out = op("pause")
    r = out.operator_reply.header
    assert (r["type"], r["ack_seq"], r["status"]) == ("ack", 7, "done")
    assert [c.header["cmd"] for c in out.commands] == ["pause"]
    assert "advisor is off" in op("accept", advice_id=1).operator_reply.header["reason"]
    bad = ses.on_operator([b"{"]).operator_reply
    assert (bad.type, bad.header["code"]) == (ERROR, "bad_json")
    events = [e for e in ses.run.events() if e["kind"] in ("operator", "command")]
    assert [(e["kind"], e.get("action") or e.get("cmd")) for e in events] == [
        ("command", "pause"), ("operator", "pause"), ("operator", "accept")]
