"""The live loop end to end: simulated instrument -> controller -> run file, crash and
restart recovery, hostile messages over a real socket, and the control/replay/live-demo
commands. (The session's answer to every kind of message, without sockets, is in
test_live_session.py.)

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
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_corpus import (
    SID,
    haadf_frames,
    hostile,
    shifted,
    small_series_sim,
    start_frames,
)
from live_fixtures import (
    SMALL,
    STRICT,
    Driver,
    controller_thread,
    instrument_thread,
    recorded_tilts,
    silent_endpoint,
    wait_for,
)

from fusetomo.adapters.protocol import (
    ACK,
    ERROR,
    HELLO,
    MAX_HEADER_BYTES,
    SERIES_END,
    STATUS,
    encode,
    make,
)
from fusetomo.adapters.runfile import describe_run, read_run, read_snapshot, verify_run
from fusetomo.adapters.transport import StatusSubscriber
from fusetomo.cli import main
from fusetomo.cli.children import fusetomo_argv
from fusetomo.controller.live import (
    LiveController,
    LiveError,
    LiveParams,
    orthoslices,
    rebuild_solver,
)

CLI_STRICT = ["--strict-schedule", "--max-idle-iterations", "0", "--iterations-per-tilt",
              str(STRICT.iterations_per_tilt), "--final-iterations",
              str(STRICT.final_iterations), "--device", "cpu"]
PLAN_TILTS = 11 + 3  # SMALL: 11 HAADF and 3 chemical tilts


@pytest.fixture(scope="module")
def small_series():
    return small_series_sim()


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
    lat = [ev for ev in rec.events if ev["kind"] == "latency"]
    assert len(lat) >= 3 and all(0 < ev["latency_s"] < 30 for ev in lat)
    # Processing is the latency less the wait behind earlier tilts; the lag counts the
    # tilts still waiting when each was published.
    assert all(0 < ev["processing_s"] <= ev["latency_s"] + 1e-9 for ev in lat)
    assert all(ev["lag_tilts"] >= 0 and (ev["lag_s"] > 0) == (ev["lag_tilts"] > 0)
               for ev in lat)
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
@pytest.mark.slow
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
@pytest.mark.slow
def test_instrument_killed_and_restarted_the_series_continues(tmp_path):
    def argv(bind: str) -> list[str]:
        return fusetomo_argv(
            "instrument-sim", "--bind", bind, "--size", "16", "--seed", "3", "--tilt-range",
            "-60", "60", "--haadf-step", "12", "--chem-step", "60", "--speed", "100",
            "--series-id", "restart-test", "--log-level", "WARNING")

    run = tmp_path / "run.h5"
    # The first instrument binds port 0; the second takes the port the first was given.
    first = subprocess.Popen(argv("tcp://127.0.0.1:0"), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    second = None
    try:
        assert first.stdout is not None
        line = first.stdout.readline()
        assert line.startswith("instrument listening on"), line
        endpoint = line.split()[-1]
        with controller_thread(endpoint, run,
                               LiveParams(device="cpu", iterations_per_tilt=1,
                                          max_idle_iterations=2, final_iterations=2,
                                          heartbeat_s=0.3, timeout_s=30)) as (ctrl, result):
            wait_for(lambda: recorded_tilts(run) >= 5, 30, "5 recorded tilts")
            first.send_signal(signal.SIGKILL)
            first.wait()
            n_before = recorded_tilts(run)
            second = subprocess.Popen(argv(endpoint), stdout=subprocess.DEVNULL,
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


# -- (c) hostile messages over a real socket ------------------------------------------------
# The kinds that killed the controller before (issue 18): exit 1 and a traceback, and again
# on every --resume, since the instrument resends what was not acknowledged.
KILLERS = ("angle 10**400", "dose 10**400", "t_sent 10**400", "t_acquired 10**400",
           "seq 10**400", "series_start background 10**400",
           "series_start pixel_size_nm 10**400", "series_start dose budget 10**400",
           "series_end n_haadf 10**400", "nested 5000 deep", "a field nested 3000 deep",
           "type a list", "type an object", "series_start seq 2**63-1",
           "integer of 5000 digits", "an unknown field 1e400", "101 frames",
           "header > 64 KiB", "shape 2**40 x 2")


def _send_corpus(drv: Driver, entries: list, seq: int,
                 sent: list | None = None) -> int:
    """Each entry (built for next seq 2) gets its error reply; returns the next seq (one
    more per spent seq). `sent` collects (name, frames as sent, code, spent)."""
    for name, frames, code in entries:
        frames = shifted(frames, 2, seq)
        reply = drv.exchange(frames)
        assert (reply.type, reply.header["code"]) == (ERROR, code), (name, reply.header)
        spent = bool(reply.header.get("spent"))
        if sent is not None:
            sent.append((name, frames, code, spent))
        seq += spent
    return seq


def test_hostile_messages_over_the_socket_get_errors_and_the_series_completes(tmp_path,
                                                                              small_series):
    """A sample of the corpus (test_live_session.py has all of it) through the controller's
    DEALER: each gets its error reply, and the controller records the rest and completes."""
    s = small_series
    run = tmp_path / "run.h5"
    drv = Driver()
    corpus = hostile(s, 2, {"recorded_haadf": 0, "free_haadf": 1, "free_chem": 0})
    sample = [h for h in corpus if h[0] in KILLERS or corpus.index(h) % 8 == 0]
    try:
        with controller_thread(drv.endpoint, run, STRICT) as (ctrl, result):
            assert drv.wait_hello().header["last_seq"] == -1
            assert drv.exchange(start_frames(s)).type == ACK
            assert drv.exchange(haadf_frames(s, 1, 0)).header["status"] == "recorded"
            seq = _send_corpus(drv, sample, 2)
            assert drv.exchange(haadf_frames(s, seq, 1)).header["status"] == "recorded"
            drv.sock.send_multipart([drv.peer, *encode(make(
                SERIES_END, SID, seq + 1, n_haadf=2, n_chem=0))])
            wait_for(lambda: "code" in result or "error" in result, 30, "the controller")
        assert result.get("code") == 0, result
        assert len(ctrl.rejected) == len(sample)
    finally:
        drv.close()
    assert read_run(run).seq["haadf"].tolist() == [1, seq]


def test_a_frame_over_the_socket_limit_drops_the_connection_not_the_controller(tmp_path,
                                                                             small_series,
                                                                             caplog):
    """A frame larger than the controller's DEALER accepts (ZeroMQ's MAXMSGSIZE, set from
    the series' geometry) is never buffered: ZeroMQ drops that connection, the controller
    notices, connects again and says hello, and the series goes on."""
    caplog.set_level(logging.WARNING, logger="fusetomo.live")
    s = small_series
    run = tmp_path / "run.h5"
    drv = Driver()
    try:
        with controller_thread(drv.endpoint, run, STRICT) as (ctrl, result):
            drv.wait_hello()
            assert drv.exchange(start_frames(s)).type == ACK
            assert ctrl.frame_limit == ctrl.session.frame_limit == 2 * MAX_HEADER_BYTES
            header, _ = haadf_frames(s, 1, 0)
            drv.sock.send_multipart([drv.peer, header, bytes(8 * 2**20)])  # 8 MiB
            # Sent after the oversized frame on the same connection, so lost with it: sent
            # again after the hello of the new connection (Driver.exchange).
            assert drv.exchange(haadf_frames(s, 1, 0)).header["status"] == "recorded"
            drv.sock.send_multipart([drv.peer, *encode(make(
                SERIES_END, SID, 2, n_haadf=1, n_chem=0))])
            wait_for(lambda: "code" in result or "error" in result, 30, "the controller")
        assert result.get("code") == 0, result
        assert ctrl.rejected == []  # never decoded, so never refused
    finally:
        drv.close()
    assert read_run(run).seq["haadf"].tolist() == [1]
    assert sum("disconnected; waiting for it" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_a_resumed_controller_process_survives_what_would_have_killed_it(tmp_path,
                                                                          small_series):
    """`fusetomo control` as a process gets the messages that used to kill it, is killed
    (-9), resumed, and gets them again (an instrument resends what was not acknowledged):
    it answers each with an error both times and completes the series."""
    s = small_series
    run = tmp_path / "run.h5"
    corpus = hostile(s, 2, {"recorded_haadf": 0, "free_haadf": 1, "free_chem": 0})
    killers = [h for h in corpus if h[0] in KILLERS]
    assert len(killers) == len(KILLERS)
    drv = Driver()
    argv = fusetomo_argv("control", "--instrument", drv.endpoint, "--record", str(run),
                         "--timeout", "60", "--log-level", "ERROR", *CLI_STRICT)
    procs = []
    try:
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
        assert drv.wait_hello(30).header["last_seq"] == -1
        assert drv.exchange(start_frames(s)).type == ACK
        assert drv.exchange(haadf_frames(s, 1, 0)).header["status"] == "recorded"
        sent: list = []
        seq = _send_corpus(drv, killers, 2, sent)
        assert procs[0].poll() is None
        procs[0].kill()
        procs[0].wait()
        procs.append(subprocess.Popen([*argv, "--resume"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
        assert drv.wait_hello(30).header["last_seq"] == seq - 1  # spent seqs included
        for name, frames, code, spent in sent:  # resent as they were: refused again
            reply = drv.exchange(frames)
            assert (reply.type, reply.header["code"]) == (ERROR, code), name
            assert bool(reply.header.get("spent")) == spent, name
        assert drv.exchange(haadf_frames(s, seq, 1)).header["status"] == "recorded"
        drv.sock.send_multipart([drv.peer, *encode(make(SERIES_END, SID, seq + 1,
                                                        n_haadf=2, n_chem=0))])
        out, err = procs[1].communicate(timeout=60)
        assert procs[1].returncode == 0, err[-2000:]
        assert "run complete" in out
    finally:
        drv.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rec = read_run(run)
    assert rec.complete and rec.seq["haadf"].tolist() == [1, seq]


# -- the commands ---------------------------------------------------------------------------
def test_control_times_out_without_an_instrument(tmp_path, capsys):
    run = tmp_path / "run.h5"
    with silent_endpoint() as nowhere:
        code = main(["control", "--instrument", nowhere, "--record", str(run), "--timeout",
                     "0.5", "--log-level", "ERROR"])
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_live_demo_json(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        fusetomo_argv("live-demo", "--out", str(out), "--specimen", "core-shell", "--size",
                      "16", "--speed", "1e4", "--tilt-range", "-60", "60", "--haadf-step",
                      "12", "--chem-step", "60", "--final-iterations", "5", "--device",
                      "cpu", "--json", "--quiet"),
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in ("nrmse_mean", "nrmse", "haadf_tilts", "chem_tilts", "dose_e_per_A2",
                "latency_s_median", "processing_s_median", "lag_s_median", "lag_s_max",
                "chem_maps_taken", "chem_maps_allowed", "chem_dose_saved_e_per_A2"):
        assert key in summary, key
    # The default plan: every planned spectrum image taken, none saved.
    assert (summary["chem_maps_taken"], summary["chem_maps_allowed"]) == (3, 3)
    assert summary["chem_dose_saved_e_per_A2"] == 0.0
    assert 0 < summary["processing_s_median"] <= summary["latency_s_median"]
    assert (summary["haadf_tilts"], summary["chem_tilts"]) == (11, 3)
    assert set(summary["nrmse"]) == {"Co", "S", "O"}
    assert 0 < summary["nrmse_mean"] < 1.5 and summary["latency_s_median"] > 0
    assert json.loads((out / "summary.json").read_text())["nrmse"] == summary["nrmse"]
    assert describe_run(out / "run.h5")["complete"]


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- authentication on every socket ------------------------------------------------------------
def test_keys_authenticate_every_socket(tmp_path):
    """`fusetomo keys DIR`, then the instrument, the controller and a viewer with those keys:
    the series completes; a controller without the keys never reaches the instrument (its
    hello cannot make it drop anything), and a viewer without them gets no status and no
    operator answer."""
    from fusetomo.adapters.keys import keys_for
    from fusetomo.adapters.transport import OperatorClient, OperatorError

    keys = tmp_path / "keys"
    assert main(["keys", str(keys)]) == 0
    run = tmp_path / "run.h5"
    params = LiveParams(device="cpu", iterations_per_tilt=1, idle_iterations=False,
                        final_iterations=1, heartbeat_s=0.3, timeout_s=60)
    with instrument_thread(speed=1e3, auto=False, curve=keys_for(keys, "instrument")) as inst:
        rogue = Driver.client(inst.endpoint)  # a DEALER without keys
        rogue.send_multipart(encode(make(HELLO, "*", 0, last_seq=3)))
        with controller_thread(inst.endpoint, run, params,
                               curve=keys_for(keys, "controller"),
                               server_curve=keys_for(keys, "controller-server")) as (ctrl,
                                                                                      res):
            wait_for(lambda: ctrl.run_file is not None, 30, "the series start")
            viewer = keys_for(keys, "viewer")
            good = StatusSubscriber(ctrl.publish_endpoint, ("status",), curve=viewer)
            bad = StatusSubscriber(ctrl.publish_endpoint, ("status",))
            try:
                assert good.recv(5000) is not None
                assert bad.recv(1500) is None
            finally:
                good.close()
                bad.close()
            with pytest.raises(OperatorError, match="no reply"):
                OperatorClient(ctrl.operator_endpoint).send("resume", timeout_s=1.0)
            reply = OperatorClient(ctrl.operator_endpoint, curve=viewer).send("resume")
            assert reply["status"] == "done"
            wait_for(lambda: "code" in res or "error" in res, 120, "the series end")
        rogue.close(0)
    assert res.get("code") == 0, res
    assert inst.stats.hellos >= 1 and describe_run(run)["complete"]
    assert (describe_run(run)["haadf_tilts"], describe_run(run)["chem_tilts"]) == (11, 3)


# -- no listening socket the user did not ask for -----------------------------------------------
def _listening(pid: int) -> list[str]:
    """The addresses (ip:port) process `pid` listens on (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = []
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN, ours
                host, port = f[1].split(":")
                ip = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)) \
                    if len(host) == 8 else host
                out.append(f"{ip}:{int(port, 16)}")
    return sorted(out)


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_importing_the_solver_starts_no_mpi_and_opens_no_socket():
    """sigpy imports mpi4py.MPI; without the deferral MPICH listens on every interface."""
    probe = subprocess.Popen([sys.executable, "-c", "import fusetomo.cli, "
                              "fusetomo.controller.reconstruct, fusetomo.solver.slabs, sigpy, "
                              "time\n"
                              "print('ready', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout is not None and probe.stdout.readline().strip() == "ready"
        assert _listening(probe.pid) == []
    finally:
        probe.kill()
        probe.wait()


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
@pytest.mark.slow
def test_the_controller_listens_only_where_asked_on_loopback(tmp_path):
    with silent_endpoint() as nowhere:
        for extra, n in (([], 2), (["--operator", "none"], 1)):
            proc = subprocess.Popen(
                fusetomo_argv("control", "--instrument", nowhere, "--record",
                              str(tmp_path / f"run{n}.h5"), "--timeout", "30", *extra),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().startswith("controller publishing status on")
                socks = _listening(proc.pid)
                assert len(socks) == n and all(s.startswith("127.0.0.1:") for s in socks), \
                    socks
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            assert proc.returncode == 0  # SIGTERM: a clean end


# -- kills and signals at the end ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_controller_stopped_mid_series_exits_0_and_resume_completes(tmp_path, sig):
    """SIGTERM or SIGINT (Ctrl-C) in the middle of a series: exit 0, the run file closed
    (any HDF5 reader opens it), nothing recorded lost; --resume records the rest."""
    run = tmp_path / "run.h5"
    with instrument_thread(speed=60.0) as inst:
        argv = fusetomo_argv("control", "--instrument", inst.endpoint, "--record", str(run),
                             "--timeout", "30", "--log-level", "WARNING", *CLI_STRICT)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: recorded_tilts(run) >= 4 or proc.poll() is not None, 30,
                     "4 recorded tilts")
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            proc.send_signal(getattr(signal, sig))
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == 0
        with h5py.File(run, "r") as f:  # closed properly
            n_stopped = len(f["run/haadf/seq"]) + len(f["run/chem/seq"])
        assert 4 <= n_stopped < PLAN_TILTS and not describe_run(run)["complete"]
        resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True,
                                 timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        wait_for(lambda: inst.stats.end_acked, 10, "the instrument's series_end ack")
    _check_each_tilt_once(run)
    assert verify_run(run)["haadf_tilts"] == 11



@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_controller_stopped_after_the_series_end_is_finished_by_resume(tmp_path, how):
    """Killed (-9) or stopped (SIGTERM or SIGINT, exit 0) during its final iterations,
    after the series end is recorded: `reconstruct` reads the run file as it was left, and
    `--resume` runs the final iterations, records the final reconstruction and exits 0."""
    run = tmp_path / "run.h5"
    with instrument_thread(speed=1e4) as inst:
        argv = fusetomo_argv("control", "--instrument", inst.endpoint, "--record", str(run),
                             "--timeout", "30", "--log-level", "WARNING", "--device", "cpu",
                             "--strict-schedule", "--max-idle-iterations", "0",
                             "--iterations-per-tilt", "1")
        proc = subprocess.Popen([*argv, "--final-iterations", "100000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: describe_run(run)["complete"] if run.exists() else False, 60,
                     "the series end")
            time.sleep(0.5)  # well into the final iterations
            proc.send_signal(getattr(signal, how))
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == (-signal.SIGKILL if how == "SIGKILL" else 0)
    rec = read_run(run)
    assert rec.complete and not any(ev["kind"] == "finished" for ev in rec.events)
    out = tmp_path / "recon.h5"
    assert main(["reconstruct", str(run), "--out", str(out), "--iterations", "2",
                 "--quiet", "--device", "cpu"]) == 0
    resumed = subprocess.run([*argv, "--final-iterations", "3", "--resume"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rec = read_run(run)
    kinds = [ev["kind"] for ev in rec.events]
    assert "resumed" in kinds and kinds[-1] == "finished"
    iteration, _ = read_snapshot(run)
    assert iteration == rec.costs["iteration"][-1]
    assert verify_run(run)["haadf_tilts"] == 11
    with h5py.File(run, "r") as f:  # closed properly: any HDF5 reader opens it
        assert f.attrs["format"] == "fusetomo-run"
    again = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to resume" in again.stderr
