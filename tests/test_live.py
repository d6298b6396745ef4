"""The live loop end to end: simulated instrument -> controller -> run file, crash and
restart recovery, a corpus of hostile messages, and the control/replay/live-demo commands.

Tolerances: on the CPU the controller's final volumes are reproduced *bit for bit* by
replaying the recorded iteration schedule offline (`rebuild_solver`), and a run killed with
SIGKILL and resumed ends with the same volumes as an uninterrupted one to within 1e-5 of the
volumes' maximum (in practice identical: the strict schedule makes the iterations the same).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from live_fixtures import (
    SMALL,
    STRICT,
    Driver,
    controller_thread,
    free_port,
    instrument_thread,
    recorded_tilts,
    wait_for,
)

from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    COMMAND,
    ERROR,
    HAADF_TILT,
    HELLO,
    SERIES_END,
    SERIES_START,
    STATUS,
    encode,
    make,
)
from fusetomo.adapters.runfile import describe_run, read_run, read_snapshot
from fusetomo.adapters.transport import StatusSubscriber
from fusetomo.controller.cli import main
from fusetomo.controller.cli_live import fusetomo_argv
from fusetomo.controller.live import (
    LiveController,
    LiveError,
    LiveParams,
    orthoslices,
    rebuild_solver,
)
from fusetomo.simulators.forward import AcquisitionParams, TiltScheme, simulate

CLI_STRICT = ["--strict-schedule", "--max-idle-iterations", "0", "--iterations-per-tilt",
              str(STRICT.iterations_per_tilt), "--final-iterations",
              str(STRICT.final_iterations), "--device", "cpu"]
PLAN_TILTS = 11 + 3  # SMALL: 11 HAADF and 3 chemical tilts


def _plan_angles() -> list[float]:
    lo, hi = SMALL["tilt_range"]
    return list(np.arange(lo, hi + 1e-9, SMALL["haadf_step"]))


def _check_each_tilt_once(path: Path) -> None:
    d = describe_run(path)
    assert d["complete"] and d["problem"] is None, d
    assert (d["haadf_tilts"], d["chem_tilts"], d["duplicates"]) == (11, 3, 0), d
    rec = read_run(path)
    np.testing.assert_allclose(np.sort(rec.series.haadf_angles), _plan_angles())
    seqs = np.sort(np.concatenate([rec.seq["haadf"], rec.seq["chem"]]))
    assert seqs.tolist() == list(range(1, PLAN_TILTS + 1))  # series_start is seq 0


def _max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(a[e] - b[e]).max() / max(np.abs(a[e]).max(), 1e-30)) for e in a)


# -- end to end -------------------------------------------------------------------------------
def test_live_run_records_each_tilt_once_publishes_and_replays_exactly(tmp_path):
    run = tmp_path / "run.h5"
    params = LiveParams(device="cpu", iterations_per_tilt=2, max_idle_iterations=3,
                        final_iterations=3, slices_every=2)
    got: list[tuple[str, dict]] = []
    with instrument_thread(speed=200.0) as inst, \
            controller_thread(inst.endpoint, run, params) as (ctrl, result):
        wait_for(lambda: ctrl.publisher is not None, 10, "the status socket")
        sub = StatusSubscriber(ctrl.publish_endpoint)
        deadline = time.monotonic() + 120
        try:
            while "code" not in result and "error" not in result:
                assert time.monotonic() < deadline, "the live run did not finish in 120 s"
                m = sub.recv(100)
                if m is not None:
                    got.append((m[0], m[1].header))
        finally:
            sub.close()
    assert result.get("code") == 0, result
    assert inst.stats.end_acked
    _check_each_tilt_once(run)

    # The live result is the offline replay of the recorded schedule, bit for bit.
    rec = read_run(run)
    iteration, live = read_snapshot(run)
    solver = rebuild_solver(rec, params)
    assert solver.iteration == iteration == rec.costs["iteration"][-1]
    offline = solver.volumes()
    for e in live:
        np.testing.assert_array_equal(live[e], offline[e])
    # One latency per tilt from the first that made the solver ready, all positive.
    lat = [ev["latency_s"] for ev in rec.events if ev["kind"] == "latency"]
    assert len(lat) >= 3 and all(0 < v < 30 for v in lat)
    assert any(ev["kind"] == "finished" for ev in rec.events)

    # Status and low-resolution orthoslices were published while it ran.
    topics = {t for t, _ in got}
    assert {"status", "slices", "event"} <= topics, topics
    status = [h for t, h in got if t == "status"]
    assert max(h["haadf_tilts"] for h in status) >= 1
    assert all(h["type"] == STATUS and "costs" in h for h in status)
    sl = next(h for t, h in got if t == "slices")["slices"]
    assert list(sl) == rec.series.elements
    for planes in sl.values():
        for k in ("s", "u", "v"):
            a = np.asarray(planes[k])
            assert a.ndim == 2 and max(a.shape) <= 16 and 0 <= a.min() <= a.max() <= 255


def test_orthoslices_are_small_and_quantised():
    x = np.random.default_rng(0).random((2, 64, 64, 64)).astype(np.float32)
    out = orthoslices(x, ["Co", "O"], 32)
    assert set(out) == {"Co", "O"}
    for el in out.values():
        assert np.asarray(el["s"]).shape == (32, 32) and el["vmax"] > 0
    assert len(json.dumps(out)) < 60_000


def test_live_params_reject_bad_values():
    with pytest.raises(ValueError, match="iterations_per_tilt"):
        LiveParams(iterations_per_tilt=-1)
    with pytest.raises(ValueError, match="heartbeat_s"):
        LiveParams(heartbeat_s=0)
    with pytest.raises(ValueError, match="device"):
        LiveParams(device="tpu")


# -- (a) kill -9 of the controller, then --resume --------------------------------------------
def test_controller_killed_at_a_random_tilt_resumes_to_the_same_result(tmp_path):
    n_kill = random.Random().randint(2, PLAN_TILTS - 3)
    print(f"killing the controller once {n_kill} tilts are recorded")
    run = tmp_path / "run.h5"
    with instrument_thread(speed=60.0) as inst:
        argv = fusetomo_argv("control", "--instrument", inst.endpoint, "--record", str(run),
                             "--timeout", "30", "--log-level", "WARNING", *CLI_STRICT)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: recorded_tilts(run) >= n_kill or proc.poll() is not None, 30,
                     f"{n_kill} recorded tilts")
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert not describe_run(run)["complete"]
        resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True,
                                 timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        assert "run complete" in resumed.stdout
        wait_for(lambda: inst.stats.end_acked, 10, "the instrument's series_end ack")
    _check_each_tilt_once(run)
    assert any(ev["kind"] == "resumed" for ev in read_run(run).events)

    # An uninterrupted run of the same series with the same schedule.
    ref = tmp_path / "ref.h5"
    with instrument_thread(speed=1e4) as inst2, \
            controller_thread(inst2.endpoint, ref, STRICT) as (_, result):
        wait_for(lambda: "code" in result or "error" in result, 60, "the reference run")
    assert result.get("code") == 0, result
    a, b = read_run(run).series, read_run(ref).series
    np.testing.assert_array_equal(a.haadf, b.haadf)
    it_a, vol_a = read_snapshot(run)
    it_b, vol_b = read_snapshot(ref)
    assert it_a == it_b
    diff = _max_rel_diff(vol_a, vol_b)
    print(f"resumed vs uninterrupted: max relative difference {diff:.2e}")
    assert diff <= 1e-5


# -- (b) the instrument process dies and restarts ---------------------------------------------
def test_instrument_killed_and_restarted_the_series_continues(tmp_path):
    port = free_port()
    argv = fusetomo_argv(
        "instrument-sim", "--bind", f"tcp://127.0.0.1:{port}", "--size", "16", "--seed", "3",
        "--tilt-range", "-60", "60", "--haadf-step", "12", "--chem-step", "60", "--speed",
        "100", "--series-id", "restart-test", "--log-level", "WARNING")
    run = tmp_path / "run.h5"
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    second = None
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("instrument listening on")
        with controller_thread(f"tcp://127.0.0.1:{port}", run,
                               LiveParams(device="cpu", iterations_per_tilt=1,
                                          max_idle_iterations=2, final_iterations=2,
                                          heartbeat_s=0.3, timeout_s=30)) as (ctrl, result):
            wait_for(lambda: recorded_tilts(run) >= 5, 30, "5 recorded tilts")
            first.send_signal(signal.SIGKILL)
            first.wait()
            n_before = recorded_tilts(run)
            second = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            wait_for(lambda: "code" in result or "error" in result, 60, "the series end")
            assert result.get("code") == 0, result
            assert n_before < PLAN_TILTS
            assert ctrl.rejected == []  # resends are acknowledged as duplicates
        assert second.wait(timeout=15) == 0  # it exits once series_end is acknowledged
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    _check_each_tilt_once(run)


# -- (c) hostile messages -------------------------------------------------------------------
SID = "hostile"


@pytest.fixture(scope="module")
def small_series():
    sim = simulate("core-shell", 16, TiltScheme((-60.0, 60.0), 12.0, 60.0),
                   AcquisitionParams(oversample=1), seed=1)
    return sim.series


def _start(s, seq: int = 0, series: str = SID, **over) -> list[bytes]:
    fields = {"elements": s.elements, "Z": {e: int(s.Z[e]) for e in s.elements},
              "shape": list(s.shape),
              "scheme": {"haadf_angles": s.haadf_angles.tolist(),
                         "chem_angles": s.common_chem_angles.tolist()},
              "dose_budget_e_per_A2": None, "pixel_size_nm": 0.5, "gamma": s.gamma,
              "background": {e: float(s.background[e]) for e in s.elements}}
    fields.update(over)
    return encode(make(SERIES_START, series, seq, **fields))


def _haadf(s, seq: int, i: int = 0, image=None, series: str = SID, **over) -> list[bytes]:
    img = s.haadf[i] if image is None else image
    return encode(make(HAADF_TILT, series, seq, [img], angle=float(s.haadf_angles[i]),
                       dose_e_per_A2=10.0, **over))


def _chem(s, seq: int, j: int = 0, elements=None, maps=None, **over) -> list[bytes]:
    els = list(s.elements) if elements is None else elements
    first = s.elements[0]
    arrays = [s.chem.get(e, s.chem[first])[j] for e in els] if maps is None else maps
    return encode(make(CHEM_TILT, SID, seq, arrays, angle=float(s.common_chem_angles[j]),
                       elements=els, dose_e_per_A2=100.0, **over))


def _tamper(frames: list[bytes], drop: tuple[str, ...] = (), **changes) -> list[bytes]:
    h = json.loads(frames[0])
    for k in drop:
        h.pop(k, None)
    h.update(changes)
    return [json.dumps(h).encode(), *frames[1:]]


# Refusals of a tilt that was next in sequence but whose content cannot be recorded: the
# controller spends its seq (the series goes on), so the sender moves to the next one.
SEQ_CONSUMING = ("shape_mismatch", "element_mismatch", "duplicate_tilt")


def _shifted(frames: list[bytes], by: int) -> list[bytes]:
    """The message with its seq moved by `by` (unparseable headers are left as they are)."""
    if by == 0:
        return frames
    try:
        h = json.loads(frames[0])
    except (UnicodeDecodeError, ValueError):
        return frames
    if not isinstance(h, dict) or not isinstance(h.get("seq"), int):
        return frames
    return _tamper(frames, seq=h["seq"] + by)


def _hostile(s, n: int, st: dict) -> list[tuple[str, list[bytes], str]]:
    """(name, frames, expected error code); n is the next expected seq, st the state."""
    H = _haadf(s, n, st["free_haadf"])
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
        ("no version", _tamper(H, drop=("v",)), "missing_field"),
        ("version 2", _tamper(H, v=2), "bad_version"),
        ("version as text", _tamper(H, v="1"), "bad_version"),
        ("version true", _tamper(H, v=True), "bad_version"),
        ("unknown type", _tamper(H, type="tilt"), "unknown_type"),
        ("no type", _tamper(H, drop=("type",)), "unknown_type"),
        ("no seq", _tamper(H, drop=("seq",)), "missing_field"),
        ("seq as text", _tamper(H, seq=str(n)), "bad_field"),
        ("negative seq", _tamper(H, seq=-1), "bad_field"),
        ("seq float", _tamper(H, seq=float(n) + 0.5), "bad_field"),
        ("seq true", _tamper(H, seq=True), "bad_field"),
        ("empty series id", _tamper(H, series=""), "bad_field"),
        ("series id 201 chars", _tamper(H, series="s" * 201), "bad_field"),
        ("series id number", _tamper(H, series=7), "bad_field"),
        ("no t_sent", _tamper(H, drop=("t_sent",)), "missing_field"),
        ("no angle", _tamper(H, drop=("angle",)), "missing_field"),
        ("angle as text", _tamper(H, angle="0"), "bad_field"),
        ("angle 95", _tamper(H, angle=95.0), "bad_angle"),
        ("no dose", _tamper(H, drop=("dose_e_per_A2",)), "missing_field"),
        ("negative dose", _tamper(H, dose_e_per_A2=-1.0), "bad_dose"),
        ("no dtype", _tamper(H, drop=("dtype",)), "missing_field"),
        ("dtype complex64", _tamper(H, dtype="complex64"), "bad_dtype"),
        ("dtype object", _tamper(H, dtype="object"), "bad_dtype"),
        ("3-D shape", _tamper(H, shape=[1, 16, 16]), "bad_shape"),
        ("shape of text", _tamper(H, shape=["16", "16"]), "bad_shape"),
        ("zero shape", _tamper(H, shape=[0, 16]), "too_large"),
        ("absurd shape", _tamper(H, shape=[100_000, 100_000]), "too_large"),
        ("512 MiB frame", _tamper(H, shape=[8192, 8192], dtype="float64"), "too_large"),
        ("data frame missing", H[:1], "frame_count"),
        ("extra frame", [*H, H[1]], "frame_count"),
        ("truncated frame", [H[0], H[1][:-7]], "frame_size"),
        ("frame too long", [H[0], H[1] + b"\0" * 4], "frame_size"),
        ("dtype mismatch", _tamper(H, dtype="float64"), "frame_size"),
        ("checksum mismatch", [H[0], bytes(flipped)], "checksum"),
        ("no checksum", _tamper(H, drop=("checksum",)), "missing_field"),
        ("NaN pixel", _haadf(s, n, st["free_haadf"], nan_img), "not_finite"),
        ("inf pixel", _haadf(s, n, st["free_haadf"], inf_img), "not_finite"),
        ("negative counts", _chem(s, n, st["free_chem"], maps=[neg, s.chem[el1][0],
                                                             s.chem[s.elements[2]][0]]),
         "negative_counts"),
        ("unknown element", _chem(s, n, st["free_chem"], elements=["Xx", el1, "O"]),
         "unknown_element"),
        ("fewer frames than elements", _chem(s, n, st["free_chem"], maps=[img]),
         "frame_count"),
        ("duplicate element", _chem(s, n, st["free_chem"], elements=[el0, el0, el1]),
         "bad_field"),
        ("empty element list", _tamper(_chem(s, n, st["free_chem"])[:1], elements=[],
                                       checksum="00000000"), "bad_field"),
        ("series_end with a frame", [*encode(make(SERIES_END, SID, n, n_haadf=0, n_chem=0)),
                                     b"x"], "bad_payload"),
        ("series_end count as text", encode(make(SERIES_END, SID, n, n_haadf="1", n_chem=0)),
         "bad_field"),
        # What needs the series' state:
        ("element not in the series", _chem(s, n, st["free_chem"],
                                            elements=[el0, el1, "Au"]), "element_mismatch"),
        ("element missing", _chem(s, n, st["free_chem"], elements=[el0, el1]),
         "element_mismatch"),
        ("shape mismatch", _haadf(s, n, st["free_haadf"], img[:8]), "shape_mismatch"),
        ("other series id", _haadf(s, n, st["free_haadf"], series="other"), "wrong_series"),
        ("seq gap", _haadf(s, n + 5, st["free_haadf"]), "out_of_order"),
        ("seq far ahead", _haadf(s, 2**52, st["free_haadf"]), "out_of_order"),
        ("seq beyond 2**53", _haadf(s, 2**62, st["free_haadf"]), "bad_field"),
        ("repeated angle, new seq", _haadf(s, n, st["recorded_haadf"]), "duplicate_tilt"),
        ("another series_start", _start(s, n, series="intruder"), "series_in_progress"),
        ("hello from the instrument", encode(make(HELLO, SID, n, last_seq=0)),
         "unexpected_type"),
        ("command from the instrument", encode(make(COMMAND, SID, n, cmd="pause", id=1)),
         "unexpected_type"),
        ("status from the instrument", encode(make(STATUS, SID, n)), "unexpected_type"),
        ("series_end with wrong counts", encode(make(SERIES_END, SID, n, n_haadf=99,
                                                     n_chem=0)), "count_mismatch"),
    ]


def test_hostile_messages_get_specific_errors_and_change_nothing(tmp_path, small_series,
                                                                 caplog):
    s = small_series
    run = tmp_path / "run.h5"
    drv = Driver()
    errors: list[tuple[str, str]] = []

    def expect_error(name: str, frames: list[bytes], code: str) -> None:
        reply = drv.exchange(frames)
        assert reply.type == ERROR, (name, reply.header)
        assert reply.header["code"] == code, (name, reply.header)
        errors.append((name, code))

    def expect_ack(frames: list[bytes], status: str, seq: int) -> None:
        reply = drv.exchange(frames)
        assert reply.type == ACK, reply.header
        assert (reply.header["ack_seq"], reply.header["status"]) == (seq, status)

    caplog.set_level(logging.WARNING, logger="fusetomo.live")
    try:
        with controller_thread(drv.endpoint, run, STRICT) as (_, result):
            assert drv.wait_hello().header["last_seq"] == -1
            # Before any series_start, and bad series_starts.
            expect_error("tilt before series_start", _haadf(s, 1), "no_series")
            expect_error("series_end before series_start",
                         encode(make(SERIES_END, SID, 1, n_haadf=0, n_chem=0)), "no_series")
            expect_error("Z of the wrong elements", _start(s, Z={"Au": 79}), "bad_series")
            expect_error("gamma 5", _start(s, gamma=5.0), "bad_series")
            expect_error("negative background",
                         _start(s, background={e: -1.0 for e in s.elements}), "bad_series")
            expect_error("unknown element in series_start",
                         _start(s, elements=["Xx"], Z={"Xx": 1}), "unknown_element")
            expect_error("bad series shape", _start(s, shape=[16]), "bad_shape")
            expect_error("no elements", _start(s, elements=[], Z={}), "bad_field")
            assert not run.exists()
            expect_ack(_start(s), "recorded", 0)
            expect_ack(_start(s), "duplicate", 0)

            # Valid tilts (HAADF, and chemical maps at the chemical angles), with the
            # hostile corpus spread between them.
            valid: list[list[bytes]] = []
            chem_at = {float(a): j for j, a in enumerate(s.common_chem_angles)}
            for i, a in enumerate(s.haadf_angles):
                valid.append(_haadf(s, 0, i))
                if float(a) in chem_at:
                    valid.append(_chem(s, 0, chem_at[float(a)]))
            seq, n_h, n_c = 1, 0, 0
            corpus_done = 0
            corpus_size = None
            while valid:
                frames = _tamper(valid.pop(0), seq=seq)
                is_chem = json.loads(frames[0])["type"] == CHEM_TILT
                expect_ack(frames, "recorded", seq)
                n_h, n_c = n_h + (not is_chem), n_c + is_chem
                if seq == 1:
                    expect_ack(frames, "duplicate", 1)  # a resend changes nothing
                seq += 1
                st = {"recorded_haadf": 0, "free_haadf": min(n_h, len(s.haadf_angles) - 1),
                      "free_chem": min(n_c, len(s.common_chem_angles) - 1)}
                corpus, base = _hostile(s, seq, st), seq
                corpus_size = len(corpus)
                batch = corpus[corpus_done:corpus_done + 6] if valid else corpus[corpus_done:]
                for name, bad, code in batch:
                    expect_error(name, _shifted(bad, seq - base), code)
                    if code in SEQ_CONSUMING:  # next in sequence, refused for its content:
                        seq += 1               # its seq is spent and the series goes on
                corpus_done += len(batch)
            assert corpus_done == corpus_size
            expect_ack(encode(make(SERIES_END, SID, seq, n_haadf=n_h, n_chem=n_c)),
                       "recorded", seq)
            wait_for(lambda: "code" in result or "error" in result, 30, "the controller")
        assert result.get("code") == 0, result
    finally:
        drv.close()

    assert len(errors) >= 50 + 8
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


# -- the commands ---------------------------------------------------------------------------
def test_control_times_out_without_an_instrument(tmp_path, capsys):
    run = tmp_path / "run.h5"
    code = main(["control", "--instrument", f"tcp://127.0.0.1:{free_port()}", "--record",
                 str(run), "--timeout", "0.5", "--log-level", "ERROR"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out.startswith("controller publishing status on tcp://127.0.0.1:")
    assert "fusetomo: error: no instrument answered" in err and "not complete" in err
    assert not run.exists()


def test_control_refuses_to_overwrite_and_to_resume_nothing(tmp_path, capsys):
    existing = tmp_path / "run.h5"
    existing.write_bytes(b"x")
    assert main(["control", "--instrument", "tcp://127.0.0.1:1", "--record",
                 str(existing)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["control", "--instrument", "tcp://127.0.0.1:1", "--record",
                 str(tmp_path / "none.h5"), "--resume"]) == 2
    assert "no such run file" in capsys.readouterr().err
    with pytest.raises(LiveError, match="exists"):
        LiveController("tcp://127.0.0.1:1", existing)


def test_replay_of_a_series_then_of_its_run_records_the_same_data(tmp_path, small_series,
                                                                  capsys):
    from fusetomo.adapters.seriesfile import write_series

    series = tmp_path / "series.h5"
    write_series(series, small_series)
    first, second = tmp_path / "r1.h5", tmp_path / "r2.h5"
    for src, dst in ((series, first), (first, second)):
        code = main(["replay", str(src), "--speed", "1e4", "--record", str(dst), *CLI_STRICT,
                     "--timeout", "30", "--log-level", "WARNING"])
        out = capsys.readouterr().out
        assert code == 0 and "run complete" in out, out
    a, b = read_run(first), read_run(second)
    assert a.complete and b.complete
    order = np.argsort(a.series.haadf_angles)
    np.testing.assert_array_equal(a.series.haadf[order], small_series.haadf)
    np.testing.assert_array_equal(a.series.haadf, b.series.haadf)
    for e in small_series.elements:
        np.testing.assert_array_equal(a.series.chem[e], b.series.chem[e])
    # Same data in the same order with the strict schedule: the same reconstruction.
    assert _max_rel_diff(read_snapshot(first)[1], read_snapshot(second)[1]) == 0.0


def test_live_demo_json(tmp_path):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    proc = subprocess.run(
        fusetomo_argv("live-demo", "--out", str(out), "--specimen", "core-shell", "--size",
                      "16", "--speed", "1e4", "--tilt-range", "-60", "60", "--haadf-step",
                      "12", "--chem-step", "60", "--final-iterations", "5", "--device",
                      "cpu", "--json", "--quiet"),
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in ("nrmse_mean", "nrmse", "haadf_tilts", "chem_tilts", "dose_e_per_A2",
                "latency_s_median"):
        assert key in summary, key
    assert (summary["haadf_tilts"], summary["chem_tilts"]) == (11, 3)
    assert set(summary["nrmse"]) == {"Co", "S", "O"}
    assert 0 < summary["nrmse_mean"] < 1.5 and summary["latency_s_median"] > 0
    assert json.loads((out / "summary.json").read_text())["nrmse"] == summary["nrmse"]
    assert describe_run(out / "run.h5")["complete"]
    assert time.perf_counter() - t0 < 90


def test_live_demo_reports_a_failing_instrument(tmp_path):
    proc = subprocess.run(
        fusetomo_argv("live-demo", "--out", str(tmp_path / "d"), "--specimen", "nope",
                      "--size", "16", "--quiet"),
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("fusetomo: error:") and "nope" in proc.stderr



def test_curve_encrypted_connection_says_hello(tmp_path):
    import zmq.auth

    from fusetomo.adapters.transport import CurveKeys, InstrumentServer

    keys = tmp_path / "keys"
    clients = tmp_path / "clients"
    keys.mkdir()
    clients.mkdir()
    _, server_secret = zmq.auth.create_certificates(str(keys), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(keys), "client")
    Path(client_public).rename(clients / "client.key")
    server = InstrumentServer(curve=CurveKeys(Path(server_secret),
                                              authorized_clients_dir=clients))
    curve = CurveKeys(Path(client_secret), server_public_file=keys / "server.key")
    try:
        with controller_thread(server.endpoint, tmp_path / "run.h5", STRICT, curve=curve):
            got = server.recv(10_000)
            assert got is not None and got[1].type == HELLO
    finally:
        server.close()


def test_instrument_sim_and_control_over_curve(tmp_path):
    """Both command-line processes, an encrypted and authenticated link, a whole series."""
    import zmq.auth

    keys, clients = tmp_path / "keys", tmp_path / "clients"
    keys.mkdir()
    clients.mkdir()
    _, server_secret = zmq.auth.create_certificates(str(keys), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(keys), "client")
    Path(client_public).rename(clients / "client.key")
    inst = subprocess.Popen(
        fusetomo_argv("instrument-sim", "--size", "16", "--tilt-range", "-60", "60",
                      "--haadf-step", "12", "--chem-step", "60", "--speed", "200",
                      "--log-level", "WARNING", "--curve-secret", str(server_secret),
                      "--curve-clients", str(clients)),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert inst.stdout is not None
        endpoint = inst.stdout.readline().split()[-1]
        run = tmp_path / "run.h5"
        proc = subprocess.run(
            fusetomo_argv("control", "--instrument", endpoint, "--record", str(run),
                          "--device", "cpu", "--timeout", "60", "--final-iterations", "1",
                          "--curve-secret", str(client_secret),
                          "--curve-server-key", str(keys / "server.key")),
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        d = describe_run(run)
        assert d["complete"] and (d["haadf_tilts"], d["chem_tilts"]) == (11, 3), d
        assert inst.wait(timeout=15) == 0
    finally:
        if inst.poll() is None:
            inst.kill()


def test_instrument_sim_curve_needs_both_options(tmp_path, capsys):
    code = main(["instrument-sim", "--curve-secret", str(tmp_path / "x.key_secret")])
    assert code == 2
    assert "--curve-clients" in capsys.readouterr().err


def test_a_refused_tilt_does_not_stall_the_series(tmp_path, small_series):
    """A tilt that is next in sequence but cannot be recorded (here: an angle already
    recorded) gets an error reply, its seq is spent (persistently), the next tilt is
    recorded, and a hello then tells the instrument to drop the refused one."""
    s = small_series
    run = tmp_path / "run.h5"
    drv = Driver()
    try:
        with controller_thread(drv.endpoint, run, STRICT) as (_, result):
            assert drv.wait_hello().header["last_seq"] == -1
            assert drv.exchange(_start(s)).type == ACK
            assert drv.exchange(_haadf(s, 1, 0)).header["status"] == "recorded"
            reply = drv.exchange(_haadf(s, 2, 0))  # the same angle again, new seq
            assert (reply.type, reply.header["code"]) == (ERROR, "duplicate_tilt")
            reply = drv.exchange(_haadf(s, 3, 1))
            assert (reply.type, reply.header["ack_seq"], reply.header["status"]) == \
                (ACK, 3, "recorded")
            drv.sock.send_multipart([drv.peer, *encode(make(SERIES_END, SID, 4, n_haadf=2,
                                                            n_chem=0))])
            wait_for(lambda: "code" in result or "error" in result, 30, "the controller")
    finally:
        drv.close()
    rec = read_run(run)
    assert rec.seq["haadf"].tolist() == [1, 3]
    assert [ev["tilt_seq"] for ev in rec.events if ev["kind"] == "seq_consumed"] == [2]
