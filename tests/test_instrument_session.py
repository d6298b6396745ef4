"""The instrument side of the protocol, written once and run against both backends of
`InstrumentSession`: the simulated instrument (simulators/) and the Nion Swift adapter on a
fake microscope (adapters/nion/), each serving over a real ROUTER to a minimal controller.
Delivery (hello, resend, window, acks), malformed messages, pause and resume, continue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from instrument_fixtures import FakeController, make_session, serving, tilts

from fusetomo.adapters.instrument import InstrumentSession, Outbox
from fusetomo.adapters.keys import keys_for, make_keys
from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    ERROR,
    HAADF_TILT,
    SERIES_END,
    SERIES_START,
)

BACKENDS = ("simulated", "nion")


@contextmanager
def running(backend: str, **kw) -> Iterator[tuple[InstrumentSession, FakeController, dict]]:
    session = make_session(backend, **kw)
    with serving(session, wait_s=0.0) as out:
        ctl = FakeController(session.endpoint)
        try:
            yield session, ctl, out
        finally:
            ctl.close()


def wait_done(out: dict, timeout: float = 5.0) -> None:
    """Until the session's serve returned (its series end was acknowledged)."""
    deadline = time.monotonic() + timeout
    while "stats" not in out and "error" not in out:
        assert time.monotonic() < deadline, "serve did not return"
        time.sleep(0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_hello_resends_exactly_the_unacked_after_last_seq(backend):
    with running(backend, window=200) as (s, ctl, out):
        ctl.hello()
        first = ctl.collect(lambda m: m.type == SERIES_END, ack=False)
        n = len(first)
        assert [m.seq for m in first] == list(range(n))
        acked = {q for q in range(n - 1) if q % 3 == 0}  # not series_end
        for q in sorted(acked):
            ctl.ack(q)
        k = 10
        ctl.hello(last_seq=k)
        again = ctl.collect(ack=False, quiet=0.5)
        assert [m.seq for m in again] == [q for q in range(k + 1, n) if q not in acked]
        for a, b in zip(again, (first[m.seq] for m in again), strict=True):
            assert a.header["type"] == b.header["type"]
            for x, y in zip(a.arrays, b.arrays, strict=True):
                np.testing.assert_array_equal(x, y)
        assert s.stats.resent == len(again)  # seq <= k counted as recorded, not resent
        for m in again:
            ctl.ack(m.seq)
        wait_done(out)
        assert s.unacked == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_limits_unacked_messages_in_flight(backend):
    with running(backend, window=5) as (s, ctl, _):
        ctl.hello()
        got = ctl.collect(ack=False, quiet=0.4)
        assert [m.seq for m in got] == [0, 1, 2, 3, 4]
        ctl.ack(0)
        ctl.ack(2)
        more = ctl.collect(ack=False, quiet=0.4)
        assert [m.seq for m in more] == [5, 6]
        ctl.hello(last_seq=1)  # 0 and 1 recorded; 3, 4, 5, 6 are resent, then 7
        again = ctl.collect(ack=False, quiet=0.4)
        assert [m.seq for m in again] == [3, 4, 5, 6, 7]
        assert len(s.unacked) > 5  # the plan ran on; the outbox keeps the rest


@pytest.mark.parametrize("backend", BACKENDS)
def test_hello_resends_the_unacknowledged_in_order(backend):
    with running(backend) as (_, ctl, _out):
        ctl.hello()
        got = ctl.collect(lambda x: x.type == SERIES_END, ack=False)
        seqs = [x.seq for x in got]
        assert seqs == list(range(len(seqs)))  # 0 .. end, no gap
        ctl.command("nonsense", 1)  # refused by decode on the instrument side
        err = ctl.recv()
        assert err is not None and err.type == ERROR and err.header["code"] == "unknown_command"
        ctl.hello(last_seq=2)  # recorded up to 2: the rest comes again
        again = ctl.collect(lambda x: x.type == SERIES_END)
        assert [x.seq for x in again] == seqs[3:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_and_unexpected_messages_get_errors_and_the_series_goes_on(backend):
    with running(backend) as (s, ctl, out):
        ctl.client.sock.send_multipart([b"{not json"])
        err = ctl.recv()
        assert err.type == ERROR and err.header["code"] == "bad_json"
        ctl.client.sock.send_multipart([b'{"type":"hello","v":1,"series":"x","seq":4,'
                                        b'"t_sent":0}'])
        err = ctl.recv()
        assert err.header["code"] == "missing_field" and "last_seq" in err.header["message"]
        assert err.header["bad_seq"] == 4
        ctl.send(SERIES_END, seq=7, n_haadf=0, n_chem=0)
        err = ctl.recv()
        assert err.header["code"] == "unexpected_type" and err.header["bad_seq"] == 7
        ctl.send(ERROR, code="checksum", message="seq 3 was damaged")
        ctl.hello()
        msgs = ctl.collect(lambda m: m.type == SERIES_END)
        wait_done(out)
        assert msgs[-1].header["n_haadf"] == len(s.plan)
    assert s.stats.errors_sent == 3 and s.stats.errors_received == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_pause_before_start_then_resume(backend):
    with running(backend) as (s, ctl, out):
        ctl.command("pause", 1)
        ack = ctl.reply_to(1)
        assert ack.header["status"] == "done" and ack.header["cmd"] == "pause"
        ctl.hello()
        got = ctl.collect(quiet=0.4)
        assert [m.type for m in got] == [SERIES_START]
        assert s.paused and s.stats.steps_done == 0
        ctl.command("resume", 2)
        msgs = ctl.collect(lambda m: m.type == SERIES_END)
        replies = [m for m in msgs if m.type == ACK]
        assert [r.header["ack_seq"] for r in replies] == [2]
        assert len(tilts(msgs)) == len(s.plan)
        wait_done(out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_continue_is_refused_when_not_holding(backend):
    with running(backend, auto=False) as (_s, ctl, _out):
        ctl.hello()
        ctl.collect(lambda x: x.type == SERIES_START)
        ctl.command("continue", 5)
        reply = ctl.reply_to(5).header
        assert reply["status"] == "rejected" and "not holding" in reply["reason"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spent_refusal_is_not_sent_again(backend):
    """The controller refused seq 2 for good (error reply with `spent`): the instrument
    drops it, so a later hello does not bring it back."""
    with running(backend, window=200) as (s, ctl, _):
        ctl.hello()
        first = ctl.collect(lambda m: m.type == SERIES_END, ack=False)
        assert first[2].type in (HAADF_TILT, CHEM_TILT)
        ctl.send(ERROR, seq=2, code="not_finite", message="frame 0 holds NaN", bad_seq=2,
                 spent=True)
        time.sleep(0.2)
        assert 2 not in s.unacked
        ctl.hello(last_seq=1)
        again = ctl.collect(ack=False, quiet=0.5)
        assert [m.seq for m in again] == [m.seq for m in first[3:]]


def test_outbox_window_and_acks():
    box = Outbox("s", window=2)
    for _ in range(4):
        box.emit(HAADF_TILT, [np.zeros((2, 2), np.float32)], angle=0.0, dose_e_per_A2=0.0)
    sent: list[int] = []
    assert box.flush(lambda peer, msg: sent.append(msg.seq)) == 0  # no controller yet
    box.on_hello(b"c", -1)
    box.flush(lambda peer, msg: sent.append(msg.seq))
    assert sent == [0, 1]  # the window
    assert box.on_ack(0) and not box.on_ack(0)
    box.flush(lambda peer, msg: sent.append(msg.seq))
    assert sent == [0, 1, 2]
    assert box.on_hello(b"c", 1) == 1  # 2 was in flight: it is due again
    box.flush(lambda peer, msg: sent.append(msg.seq))
    assert sent == [0, 1, 2, 2, 3] and box.unacked == [2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hello_beyond_what_was_sent_drops_nothing(backend):
    """A rogue (or confused) peer's hello {last_seq: 10**9} would make the instrument drop
    every unacknowledged message; nothing is dropped and what is unacknowledged is sent again
    (a restarted instrument gets such hellos from a controller that recorded its
    predecessor's tilts: test_live.py::test_instrument_killed_and_restarted_...)."""
    with running(backend, window=200, auto=False) as (s, ctl, _):
        ctl.hello()
        got = ctl.collect(ack=False, quiet=0.4)
        assert [m.type for m in got] == [SERIES_START]
        ctl.hello(last_seq=2**53 - 1)
        again = ctl.collect(ack=False, quiet=0.4)
        assert [(m.type, m.seq) for m in again] == [(SERIES_START, 0)]
        assert s.unacked == [0] and s.stats.hellos_ahead == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_series_start_is_held_back_until_resume(backend):
    """A controller that refuses series_start (say, an element it does not know) gets it
    once, not again at every heartbeat hello: the plan pauses, series_start stays
    unacknowledged but held; `resume` sends it again."""
    with running(backend, window=200, auto=False) as (s, ctl, _):
        ctl.hello()
        first = ctl.collect(ack=False, quiet=0.4)
        assert [m.type for m in first] == [SERIES_START]
        ctl.send(ERROR, seq=0, code="unknown_element", message="element 'Xx'", bad_seq=0)
        time.sleep(0.3)
        assert s.paused and s.stats.series_refused == 1
        assert "unknown_element" in s.refused and 0 in s.unacked
        for _ in range(3):  # heartbeats
            ctl.hello()
        assert ctl.collect(ack=False, quiet=0.5) == []
        ctl.command("resume", 1)
        again = ctl.collect(lambda m: m.type == SERIES_START, ack=False, quiet=1.0)
        assert again[-1].type == SERIES_START and again[-1].seq == 0
        assert s.refused is None and s.outbox.held == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_keys_only_the_controller_holding_them_is_obeyed(backend, tmp_path):
    """`fusetomo keys DIR`: a controller without the keys cannot say hello, pause or resume
    (the CURVE handshake fails: nothing reaches the session); the one with them runs the
    series."""
    keys = tmp_path / "keys"
    make_keys(keys)
    session = make_session(backend, auto=False, curve=keys_for(keys, "instrument"))
    with serving(session, wait_s=5.0):
        rogue = FakeController(session.endpoint, identity=b"rogue")
        try:
            rogue.hello()
            rogue.command("resume", 1)
            assert rogue.recv(1.0) is None
            assert session.stats.hellos == 0 and session.stats.commands == 0
        finally:
            rogue.close()
        ctl = FakeController(session.endpoint, curve=keys_for(keys, "controller"))
        try:
            ctl.hello()
            ctl.command("resume", 1)
            assert ctl.reply_to(1).header["status"] == "done"
            got = ctl.until(lambda m: m.type == SERIES_END, timeout=20.0)
            n = len(tilts(ctl.received))
            assert ctl.received[0].type == SERIES_START and n > 0
            assert got[-1].header["n_haadf"] == n
        finally:
            ctl.close()
    assert session.stats.hellos >= 1 and session.stats.commands == 1
