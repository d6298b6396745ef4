"""The simulated instrument, driven by a minimal fake controller over real ZeroMQ sockets."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from instrument_fixtures import FAST, FakeController, tilts
from threads import CheckedThread

from fusetomo.adapters.instrument.plans import DOSE_SYMMETRIC, dose_symmetric, sequential
from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    HAADF_TILT,
    SERIES_END,
    SERIES_START,
)
from fusetomo.adapters.seriesfile import total_dose, write_series
from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.simulators.instrument import (
    InstrumentError,
    InstrumentParams,
    SimulatedInstrument,
    apply_shift,
)

TILTS = (HAADF_TILT, CHEM_TILT)


@contextmanager
def running(**kwargs) -> Iterator[tuple[SimulatedInstrument, FakeController, CheckedThread]]:
    inst = SimulatedInstrument(InstrumentParams(**kwargs))
    endpoint = inst.bind()
    stop = threading.Event()
    thread = CheckedThread(inst.serve, stop, name="instrument", start=True)
    ctl = FakeController(endpoint)
    try:
        yield inst, ctl, thread
    finally:
        stop.set()
        ctl.close()
        thread.finish(5)


def offline(**kw):
    s = TiltScheme(tilt_range=kw["tilt_range"], haadf_step=kw["haadf_step"],
                   chem_step=kw["chem_step"])
    return simulate("nanocubes", kw["size"], s, seed=kw["seed"]).series


# -- the whole series ----------------------------------------------------------------------
def test_sequential_series_equals_the_offline_simulation():
    ref = offline(**FAST)
    with running(**FAST) as (inst, ctl, thread):
        ctl.hello()
        msgs = ctl.collect(lambda m: m.type == SERIES_END)
        thread.join(5)
        assert not thread.is_alive()  # series_end acked: serve returned
    start, end = msgs[0], msgs[-1]
    assert start.type == SERIES_START and start.seq == 0 and end.type == SERIES_END
    assert [m.seq for m in msgs] == list(range(len(msgs)))  # each message once, in order
    h = start.header
    assert h["elements"] == ref.elements and h["Z"] == ref.Z
    assert h["shape"] == [16, 16] and h["gamma"] == ref.gamma
    assert h["pixel_size_nm"] == ref.pixel_size_nm
    assert h["background"] == pytest.approx(ref.background)
    assert h["scheme"] == {"haadf_angles": ref.haadf_angles.tolist(),
                           "chem_angles": ref.common_chem_angles.tolist(),
                           "order": "sequential"}
    haadf, chem = tilts(msgs), tilts(msgs, CHEM_TILT)
    assert [m.header["angle"] for m in haadf] == ref.haadf_angles.tolist()
    assert [m.header["angle"] for m in chem] == ref.common_chem_angles.tolist()
    for i, m in enumerate(haadf):  # live data == offline data, bit for bit
        np.testing.assert_array_equal(m.arrays[0], ref.haadf[i])
        assert "drift_px" not in m.header and "axis_offset_px" not in m.header
        assert m.header["step"] == i and m.header["on_demand"] is False
    for j, m in enumerate(chem):
        assert m.header["elements"] == ref.elements and m.arrays[0].dtype == np.float32
        for k, e in enumerate(ref.elements):
            np.testing.assert_array_equal(m.arrays[k], ref.chem[e][j])
        assert msgs[msgs.index(m) - 1].type == HAADF_TILT  # with its simultaneous HAADF
        assert m.header["haadf_seq"] == m.seq - 1
    # Dose: per-image doses accumulate to the totals and match the file's accounting.
    hd, cd = ref.attrs["haadf_dose_e_per_A2"], ref.attrs["chem_dose_e_per_A2"]
    for i, m in enumerate(haadf):
        assert m.header["dose_e_per_A2"] == hd
        assert m.header["dose_total_e_per_A2"]["haadf"] == pytest.approx(hd * (i + 1))
    for j, m in enumerate(chem):
        assert m.header["dose_e_per_A2"] == pytest.approx(cd)
        assert m.header["dose_total_e_per_A2"]["chem"] == pytest.approx(cd * (j + 1))
    e = end.header
    assert (e["n_haadf"], e["n_chem"], e["reason"]) == (21, 5, "completed")
    totals = e["dose_total_e_per_A2"]
    assert totals["haadf"] + totals["chem"] == pytest.approx(total_dose(ref.attrs, 21, 5))
    assert h["dose_budget_e_per_A2"] == pytest.approx(total_dose(ref.attrs, 21, 5))
    assert inst.stats.end_acked and inst.stats.resent == 0


def test_dose_symmetric_order():
    kw = {**FAST, "scheme": DOSE_SYMMETRIC}
    plan = dose_symmetric(FAST["tilt_range"], FAST["haadf_step"], FAST["chem_step"])
    with running(**kw) as (_, ctl, thread):
        ctl.hello()
        msgs = ctl.collect(lambda m: m.type == SERIES_END)
        thread.join(5)
    angles = [m.header["angle"] for m in tilts(msgs)]
    assert angles[:5] == [0, 6, -6, 12, -12] and angles == plan.haadf_angles
    assert [m.header["angle"] for m in tilts(msgs, CHEM_TILT)] == [0, 30, -30, 60, -60]
    assert msgs[0].header["scheme"]["order"] == DOSE_SYMMETRIC
    assert sorted(angles) == sequential((-60, 60), 6, 30).haadf_angles


# Delivery (hello, resend, window), malformed messages, pause before start, continue:
# tests/test_instrument_session.py, for both backends.


# -- commands ------------------------------------------------------------------------------
def test_pause_mid_series_stops_before_the_next_step():
    # Steps take 7/200 s (HAADF) and 63/200 s (spectrum): slow enough to pause in between.
    kw = {**FAST, "speed": 200.0, "tilt_range": (-30.0, 30.0), "chem_step": 60.0}
    with running(**kw) as (inst, ctl, thread):
        ctl.hello()
        ctl.collect(lambda m: m.type == HAADF_TILT and m.header["angle"] == -24)
        ctl.command("pause", 5)
        assert ctl.reply_to(5).header["status"] == "done"
        ctl.collect(quiet=0.5)  # at most the step in progress
        n = inst.stats.steps_done
        assert 2 <= n < 11 and not ctl.collect(quiet=0.3)
        assert inst.stats.steps_done == n
        ctl.command("resume", 6)
        msgs = ctl.collect(lambda m: m.type == SERIES_END)
        assert [m.header["angle"] for m in tilts(ctl.received)] == list(range(-30, 31, 6))
        assert msgs[-1].header["reason"] == "completed"
        thread.join(5)


def test_manual_commands_and_abort():
    ref = offline(**FAST)
    with running(**FAST, auto=False) as (inst, ctl, thread):
        ctl.hello()
        assert [m.type for m in ctl.collect(quiet=0.3)] == [SERIES_START]
        ctl.command("go_to_tilt", 1, angle=100)
        bad = ctl.reply_to(1)
        assert bad.header["status"] == "rejected" and "100" in bad.header["reason"]
        ctl.command("acquire_haadf", 2, dose=-1)
        assert "-1" in ctl.reply_to(2).header["reason"]
        ctl.command("acquire_spectrum", 3, dose=1.0, dwell_ms=2.0)
        assert "not both" in ctl.reply_to(3).header["reason"]
        # go to 0 degrees and take a spectrum image at twice the nominal dose
        ctl.command("go_to_tilt", 4, angle=0)
        ok = ctl.reply_to(4)
        assert ok.header["status"] == "done" and ok.header["angle"] == 0
        cd = ref.attrs["chem_dose_e_per_A2"]
        ctl.command("acquire_spectrum", 5, dose=2 * cd)
        msgs = ctl.collect(lambda m: m.type == ACK and m.header["ack_seq"] == 5)
        h, c, done = msgs
        assert done.header["status"] == "done" and done.header["seqs"] == [h.seq, c.seq]
        assert (h.type, c.type) == (HAADF_TILT, CHEM_TILT)
        assert h.header["on_demand"] and c.header["cmd_id"] == 5 and c.header["angle"] == 0
        assert c.header["dose_e_per_A2"] == pytest.approx(2 * cd)
        assert c.header["dose_total_e_per_A2"]["chem"] == pytest.approx(2 * cd)
        i0 = ref.common_chem_angles.tolist().index(0)
        for k, e in enumerate(ref.elements):  # twice the counts of the planned map at 0
            ratio = c.arrays[k].sum() / ref.chem[e][i0].sum()
            assert ratio == pytest.approx(2.0, rel=0.1)
            assert c.header["background"][e] == pytest.approx(2 * ref.background[e])
        hi0 = ref.haadf_angles.tolist().index(0)
        assert np.corrcoef(h.arrays[0].ravel(), ref.haadf[hi0].ravel())[0, 1] > 0.99
        ctl.command("acquire_haadf", 6)
        msgs = ctl.collect(lambda m: m.type == ACK and m.header["ack_seq"] == 6)
        assert msgs[-1].header["status"] == "done" and len(tilts(msgs)) == 1
        assert msgs[0].header["dose_total_e_per_A2"]["haadf"] == pytest.approx(
            2 * ref.attrs["haadf_dose_e_per_A2"])
        # while the plan runs, manual acquisitions are refused
        ctl.command("resume", 7)
        ctl.command("acquire_spectrum", 8)
        msgs = ctl.collect(lambda m: m.type == ACK and m.header["ack_seq"] == 8)
        assert msgs[-1].header["status"] == "rejected"
        assert "pause it first" in msgs[-1].header["reason"]
        ctl.command("abort", 9)
        msgs = ctl.collect(lambda m: m.type == ACK and m.header["ack_seq"] == 9)
        assert msgs[-1].header["status"] == "done"
        assert msgs[-2].type == SERIES_END and msgs[-1].header["end_seq"] == msgs[-2].seq
        end = msgs[-2].header
        assert end["reason"] == "aborted" and end["n_chem"] >= 1
        assert end["n_haadf"] == inst.stats.n_haadf < 2 + 21
        thread.join(5)
        assert not thread.is_alive()


# -- drift ---------------------------------------------------------------------------------
def test_drift_shifts_images_and_records_the_offsets():
    ref = offline(**FAST)
    with running(**FAST, drift_sigma_px=0.8, axis_offset_px=1.5) as (_, ctl, thread):
        ctl.hello()
        msgs = ctl.collect(lambda m: m.type == SERIES_END)
        thread.join(5)
    assert msgs[0].header["drift_sigma_px"] == 0.8
    drifts = []
    for i, m in enumerate(tilts(msgs)):
        d = m.header["drift_px"]
        assert m.header["axis_offset_px"] == 1.5
        drifts.append(d)
        shift = (d[0], d[1] + 1.5)
        np.testing.assert_allclose(m.arrays[0], apply_shift(ref.haadf[i], shift), atol=1e-5)
        assert not np.allclose(m.arrays[0], ref.haadf[i])
    drifts = np.array(drifts)
    assert np.all(np.abs(drifts) > 0) and 0.3 < drifts.std() < 1.6
    for j, m in enumerate(tilts(msgs, CHEM_TILT)):
        h = msgs[msgs.index(m) - 1]
        assert m.header["drift_px"] == h.header["drift_px"]  # simultaneous: same drift
        d = m.header["drift_px"]
        for k, e in enumerate(ref.elements):
            want = apply_shift(ref.chem[e][j], (d[0], d[1] + 1.5), counts=True)
            np.testing.assert_allclose(m.arrays[k], want, atol=1e-4)


# -- replay and parameters -----------------------------------------------------------------
def test_replay_streams_a_series_file(tmp_path):
    ref = offline(**FAST)
    path = write_series(tmp_path / "s.h5", ref)
    with running(source=str(path), speed=1e4, scheme=DOSE_SYMMETRIC) as (inst, ctl, thread):
        ctl.hello()
        msgs = ctl.collect(lambda m: m.type == SERIES_END)
        thread.join(5)
    idx = {a: i for i, a in enumerate(ref.haadf_angles.tolist())}
    haadf = tilts(msgs)
    assert [m.header["angle"] for m in haadf][:3] == [0, 6, -6]
    for m in haadf:
        np.testing.assert_array_equal(m.arrays[0], ref.haadf[idx[m.header["angle"]]])
    assert msgs[0].header["source"] == str(path) and inst.stats.n_chem == 5


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"speed": 0}, "speed must be a finite number > 0, got 0"),
    ({"window": 0}, "window must be an integer >= 1, got 0"),
    ({"scheme": "zigzag"}, "'zigzag'"),
    ({"t_spectrum_image": -1}, "t_spectrum_image must be a finite number >= 0, got -1"),
    ({"drift_sigma_px": float("inf")}, "drift_sigma_px"),
    ({"size": 4}, "got 4"),
    ({"source": "x.h5", "haadf_angles": (0.0,)}, "not both"),
])
def test_bad_parameters_are_named(kwargs, needle):
    with pytest.raises(InstrumentError) as e:
        InstrumentParams(**kwargs)
    assert needle in str(e.value)


def test_plan_without_chemical_tilt_is_refused():
    with pytest.raises(InstrumentError, match="no chemical tilt"):
        SimulatedInstrument(InstrumentParams(size=16, haadf_angles=(0.0, 10.0)))


# -- command line --------------------------------------------------------------------------
def test_cli_prints_endpoint_and_serves_the_series():
    cmd = [sys.executable, "-m", "fusetomo.cli", "instrument-sim", "--bind",
           "tcp://127.0.0.1:0", "--specimen", "core-shell", "--size", "16", "--speed", "1e4",
           "--scheme", "dose-symmetric", "--tilt-range", "-30", "30", "--haadf-step", "10",
           "--chem-step", "30", "--drift", "0.5", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("instrument listening on tcp://127.0.0.1:"), line
        endpoint = line.split()[-1]
        assert not endpoint.endswith(":0")
        ctl = FakeController(endpoint)
        t0 = time.monotonic()
        ctl.hello()
        msgs = ctl.collect(lambda m: m.type == SERIES_END, quiet=5.0)
        ctl.close()
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - t0 < 8
    assert proc.returncode == 0, err
    assert [m.header["angle"] for m in tilts(msgs)] == [0, 10, -10, 20, -20, 30, -30]
    assert all("drift_px" in m.header for m in tilts(msgs))
    assert msgs[0].header["elements"] == ["Co", "S", "O"]
    assert "completed, 7 HAADF + 3 chemical tilts" in out and "acknowledged" in out


def test_cli_reports_bad_values():
    from fusetomo.cli import main

    assert main(["instrument-sim", "--size", "16", "--haadf-step", "0"]) == 2
    assert main(["instrument-sim", "--size", "16", "--bind", "nonsense://x"]) == 2
