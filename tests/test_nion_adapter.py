"""The Nion Swift adapter, headless against nionswift-usim with a fusetomo specimen.

usim's instrument, scan and EELS camera run through nionswift-instrumentation's real
hardware sources (`record_immediate`, `grab_synchronized`), with the specimen plugged in by
`simulators/usim_tomo.py` (HAADF = projection at the stage tilt; EELS edges whose strengths
are the per-element projections).

Thresholds, and why:
- HAADF: usim adds Gaussian noise of std (mean specimen signal) / (300 sqrt(dwell/us)), so the
  relative RMS difference from the noiseless projection is ~1e-3 at a 4 us dwell (a few 1e-4
  on the synchronized scans); < 0.01 leaves room and still fails on any wrong tilt,
  orientation or one-pixel shift (those give > 0.1).
- EELS maps: each pixel's edge holds ~2 counts/eV per unit projection and ms; at 1 ms
  exposure the specimen's pixels hold tens to hundreds of edge counts over a background of
  comparable size, so Poisson noise alone limits the correlation with the projection to
  ~0.99; we require > 0.95 (a one-pixel misregistration drops it to ~0.9, the wrong element
  to < 0.6). The gain (least-squares slope of map on projection, over the specimen) must be
  within 10% of the edge counts the simulator puts in the signal window: the power-law fit
  also absorbs the lower edges' tails and clipping at 0 adds a little, both a few percent.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("nion.usim_device")
pytest.importorskip("nion.instrumentation")

from instrument_fixtures import FakeController, FakeMicroscope, fake_config, serving
from live_fixtures import STRICT, controller_thread

from fusetomo.adapters.nion import (
    NionAdapterError,
    NionMicroscope,
    NionTomoAdapter,
    NionTomoConfig,
    element_maps,
)
from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    COMMAND,
    HAADF_TILT,
    HELLO,
    SERIES_END,
    SERIES_START,
)
from fusetomo.adapters.runfile import read_run
from fusetomo.simulators.usim_tomo import UsimTomo, UsimTomoParams

SIZE = 32
EXPOSURE_MS = 1.0


@pytest.fixture(scope="module")
def usim() -> Iterator[UsimTomo]:
    with UsimTomo(UsimTomoParams(size=SIZE, seed=1)) as sim:
        yield sim


def _config(sim: UsimTomo, **kw) -> NionTomoConfig:
    base = dict(elements=tuple(sim.elements), Z=sim.Z, size=SIZE, haadf_dwell_us=4.0,
                exposure_ms=EXPOSURE_MS, fov_nm=sim.params.fov_nm,
                haadf_angles=(-60.0, -30.0, 0.0, 30.0, 60.0), chem_angles=(-30.0, 30.0))
    base.update(kw)
    return NionTomoConfig(**base)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _check_maps(sim: UsimTomo, maps: dict[str, np.ndarray], angle: float) -> None:
    _, proj = sim.specimen.projections(angle)
    assert sim.eels_simulator is not None
    for i, e in enumerate(sim.elements):
        m, p = maps[e].astype(np.float64), proj[i]
        r = np.corrcoef(m.ravel(), p.ravel())[0, 1]
        sup = p > 0.1 * p.max()
        gain = float(m[sup] @ p[sup] / (p[sup] @ p[sup]))
        expect = sim.eels_simulator.edge_window_counts(e, EXPOSURE_MS)
        assert r > 0.95, (e, angle, r)
        assert gain == pytest.approx(expect, rel=0.10), (e, angle, gain, expect)


# -- the microscope through nionswift-instrumentation -----------------------------------
def test_haadf_scan_is_the_projection_at_the_stage_tilt(usim):
    m = NionMicroscope(_config(usim))
    for angle in (0.0, 40.0):
        assert m.set_tilt(angle) == pytest.approx(angle)
        scan = m.acquire_haadf(4.0)
        ref, _ = usim.specimen.projections(angle)
        assert scan.image.shape == (SIZE, SIZE) and scan.dwell_us == 4.0
        assert scan.pixel_nm == pytest.approx(usim.params.pixel_size_nm)
        assert _rel(scan.image, ref) < 0.01
    ref0, _ = usim.specimen.projections(0.0)
    assert _rel(scan.image, ref0) > 0.1  # the tilt changed the image
    # an integrating detector's images are divided by their pixel time (from the metadata)
    per_us = NionMicroscope(_config(usim, haadf_per_us=True)).acquire_haadf(4.0)
    assert _rel(per_us.image, ref / 4.0) < 0.01


def test_spectrum_image_maps_follow_the_element_projections(usim):
    m = NionMicroscope(_config(usim))
    m.set_tilt(-25.0)
    sp = m.acquire_spectrum_image(EXPOSURE_MS)
    assert sp.si.shape == (SIZE, SIZE, 1024) and sp.energy_units == "eV"
    np.testing.assert_allclose(sp.energy, usim.params.energy_ev)
    ref, _ = usim.specimen.projections(-25.0)
    assert _rel(sp.haadf, ref) < 0.01  # the simultaneous HAADF, same pixels
    _check_maps(usim, element_maps(sp, _config(usim)), -25.0)


def test_a_microscope_without_the_tilt_control_is_named(usim):
    with pytest.raises(NionAdapterError, match="'StageOutB'"):
        NionMicroscope(_config(usim, tilt_control="StageOutB"))
    with pytest.raises(NionAdapterError, match="'Nope'"):
        NionMicroscope(_config(usim, haadf_channel="Nope"))
    with pytest.raises(NionAdapterError, match="'no_such_camera'"):
        NionMicroscope(_config(usim, camera_id="no_such_camera"))


# -- end to end: usim -> adapter -> controller -> run file --------------------------------
@pytest.mark.slow
def test_usim_series_end_to_end_through_the_live_controller(usim, tmp_path):
    config = _config(usim)
    adapter = NionTomoAdapter(config, NionMicroscope(config))
    run = tmp_path / "run.h5"
    with serving(adapter) as out, controller_thread(adapter.endpoint, run, STRICT) as (_, res):
        deadline = time.monotonic() + 90
        while "code" not in res and "error" not in res:
            assert time.monotonic() < deadline, "the series did not finish in 90 s"
            time.sleep(0.1)
    assert res.get("code") == 0, res
    assert out["stats"].end_acked and out["stats"].reason == "completed"
    rec = read_run(run)
    assert rec.complete
    s = rec.series
    assert s.elements == usim.elements
    np.testing.assert_allclose(np.sort(s.haadf_angles), [-60, -30, 0, 30, 60])
    np.testing.assert_allclose(np.sort(s.common_chem_angles), [-30, 30])
    for i, a in enumerate(s.haadf_angles):
        ref, _ = usim.specimen.projections(float(a))
        assert _rel(s.haadf[i], ref) < 0.01, a
    for j, a in enumerate(s.common_chem_angles):
        _check_maps(usim, {e: s.chem[e][j] for e in s.elements}, float(a))
    # dose: usim's 200 pA over (0.5 nm)^2 pixels
    d = 200e-12 / 1.602176634e-19 / 5.0**2
    np.testing.assert_allclose(np.sort(rec.dose_e_per_A2["chem"]), d * EXPOSURE_MS * 1e-3,
                               rtol=1e-6)


# -- protocol behaviour against a fake microscope and a fake controller ---------------------
# Delivery, malformed messages, pause and continue, for this adapter and the simulated
# instrument alike: tests/test_instrument_session.py.
@contextmanager
def fake_session(microscope: FakeMicroscope, **kw) -> Iterator[tuple]:
    adapter = NionTomoAdapter(fake_config(**kw), microscope)
    with serving(adapter) as out:
        ctl = FakeController(adapter.endpoint)
        try:
            yield adapter, ctl, out
        finally:
            ctl.close()


def test_commands_pause_resume_manual_and_abort():
    m = FakeMicroscope()
    with fake_session(m) as (adapter, ctl, out):
        ctl.send(HELLO, last_seq=-1)
        start = ctl.until(lambda x: x.type == SERIES_START)[-1].header
        assert start["shape"] == [8, 8] and start["scheme"]["chem_angles"] == [0.0]
        assert start["windows"]["O"]["signal_ev"] == [532.0, 575.0]
        assert adapter.state == "paused"  # auto off: waits for resume
        ctl.send(COMMAND, cmd="go_to_tilt", id=1, angle=95)
        assert "95" in ctl.reply(1)[-1].header["reason"]
        ctl.send(COMMAND, cmd="go_to_tilt", id=2, angle=12.5)
        done = ctl.reply(2)[-1].header
        assert done["status"] == "done" and done["angle"] == 12.5 and m.angle == 12.5
        ctl.send(COMMAND, cmd="acquire_spectrum", id=3, dwell_ms=6.0)
        h, c, ack = ctl.reply(3)
        assert (h.type, c.type, ack.header["seqs"]) == (HAADF_TILT, CHEM_TILT, [h.seq, c.seq])
        assert c.header["angle"] == 12.5 and c.header["elements"] == ["O"]
        # the O K edge: 100 counts/eV x 6 ms over its 532-575 eV window (44 channels)
        np.testing.assert_allclose(c.arrays[0], 100 * 6 * 44, rtol=1e-4)
        d = 100e-12 / 1.602176634e-19 * 6e-3 / 5.0**2  # 100 pA, 6 ms, (0.5 nm)^2
        assert c.header["dose_e_per_A2"] == pytest.approx(d)
        assert h.header["dose_e_per_A2"] == 0  # counted once, with the spectrum image
        ctl.send(COMMAND, cmd="resume", id=4)
        msgs = ctl.until(lambda x: x.type == HAADF_TILT and x.header["angle"] == -20.0)
        assert any(x.type == ACK and x.header["ack_seq"] == 4 for x in msgs)
        ctl.send(COMMAND, cmd="acquire_haadf", id=5)
        msgs = ctl.reply(5)
        assert msgs[-1].header["status"] == "rejected"  # running, or ended
        # the series may end (and say so) before the reply to command 5 arrives
        if not any(x.type == SERIES_END for x in msgs):
            msgs = ctl.until(lambda x: x.type == SERIES_END)
        end = next(x for x in msgs if x.type == SERIES_END).header
        assert end["reason"] == "completed" and (end["n_haadf"], end["n_chem"]) == (4, 2)
        assert m.moves == [12.5, -20.0, 0.0, 20.0]
    assert out["stats"].end_acked


def test_abort_stops_the_acquisition_in_progress():
    m = FakeMicroscope(block=True)
    with fake_session(m, auto=True) as (adapter, ctl, out):
        ctl.send(HELLO, last_seq=-1)
        ctl.until(lambda x: x.type == SERIES_START)
        t0 = time.monotonic()
        while not adapter.busy:
            assert time.monotonic() - t0 < 5
            time.sleep(0.01)
        ctl.send(COMMAND, cmd="abort", id=7)
        msgs = ctl.reply(7)
        assert msgs[-2].type == SERIES_END and msgs[-2].header["reason"] == "aborted"
        assert msgs[-2].header["n_haadf"] == 0 and m.aborted.is_set()
    assert out["stats"].end_acked


def test_a_failed_step_pauses_the_plan_and_resume_retries_it():
    m = FakeMicroscope(fail_at=0.0)
    with fake_session(m, auto=True) as (adapter, ctl, _):
        ctl.send(HELLO, last_seq=-1)
        ctl.until(lambda x: x.type == HAADF_TILT)  # -20
        t0 = time.monotonic()
        while adapter.state != "paused":
            assert time.monotonic() - t0 < 5
            time.sleep(0.01)
        assert "StageOutA = 0.0" in adapter.last_error and adapter.next_step == 1
        adapter.command("resume")  # in-process, as a Swift panel does
        msgs = ctl.until(lambda x: x.type == SERIES_END)
        assert [x.header["angle"] for x in msgs if x.type == HAADF_TILT] == [0.0, 20.0]


def test_bad_config_is_named():
    with pytest.raises(NionAdapterError, match="'Xx'"):
        NionTomoConfig(elements=("Xx",))
    with pytest.raises(NionAdapterError, match="no chemical tilt"):
        NionTomoConfig(elements=("O",), haadf_angles=(0.0,), chem_angles=())
    with pytest.raises(NionAdapterError, match="exposure_ms"):
        NionTomoConfig(elements=("O",), exposure_ms=0)
    # every element Z 3-92 has a default EELS edge (exspy's database); Li has no X-ray line
    with pytest.raises(NionAdapterError, match="edx_windows"):
        NionTomoConfig(elements=("Li",), spectra="edx")
    plan = NionTomoConfig(elements=("O",)).plan()  # the default: -70..70, 3 and 15 deg steps
    assert len(plan) == 47 and plan.n_chem == 10
    assert math.isclose(plan.chem_angles[0], -70.0) and math.isclose(plan.chem_angles[-1], 65.0)


@pytest.mark.slow
def test_usim_series_holding_for_the_advisor(usim, tmp_path):
    """usim -> adapter holding at each tilt -> controller whose uniform policy asks for two
    spectrum images: they are taken at the policy's tilts, sent without repeating their
    HAADF image, and the maps follow the element projections."""
    from fusetomo.controller.advisor import AdvisorParams, UniformPolicy
    from fusetomo.controller.live.advice import AdviceParams

    config = dataclasses.replace(_config(usim), hold_for_advice=True, chem_angles=None)
    adapter = NionTomoAdapter(config, NionMicroscope(config))
    assert adapter.plan.n_chem == 0
    advice = AdviceParams(mode="auto", policy="uniform", advisor=AdvisorParams(chem_maps=2))
    params = dataclasses.replace(STRICT, advice=advice)
    run = tmp_path / "run.h5"
    with serving(adapter) as out, controller_thread(adapter.endpoint, run, params) as (_, res):
        deadline = time.monotonic() + 90
        while "code" not in res and "error" not in res:
            assert time.monotonic() < deadline, "the series did not finish in 90 s"
            time.sleep(0.1)
    assert res.get("code") == 0, res
    assert out["stats"].reason == "completed"
    rec = read_run(run)
    s = rec.series
    targets = UniformPolicy(AdvisorParams(chem_maps=2), adapter.plan.haadf_angles).targets
    np.testing.assert_allclose(np.sort(s.common_chem_angles), sorted(targets))
    assert len(s.haadf_angles) == len(adapter.plan)  # no HAADF image sent twice
    for j, a in enumerate(s.common_chem_angles):
        _check_maps(usim, {e: s.chem[e][j] for e in s.elements}, float(a))
    decisions = [ev["decision"] for ev in rec.events if ev["kind"] == "advice_decision"]
    assert decisions.count("acquire") == 2 and len(decisions) == len(adapter.plan)




def test_nion_usim_keys_folder_without_the_keys_is_named(tmp_path, capsys):
    from fusetomo.cli import main

    assert main(["nion-usim", "--keys", str(tmp_path / "nokeys")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusetomo: error: ")
    assert f"{tmp_path / 'nokeys' / 'instrument.key_secret'}: missing" in err, err
