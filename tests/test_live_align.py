"""Live alignment (controller/live_align.py) on a series from the simulated instrument with
its per-tilt drift and tilt-axis offset turned on, received over real ZeroMQ sockets."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    HAADF_TILT,
    HELLO,
    SERIES_END,
    SERIES_START,
    decode,
    make,
)
from fusetomo.adapters.transport import ControllerClient
from fusetomo.controller.live_align import LiveAligner, LiveAlignParams, solver_reprojector
from fusetomo.simulators.instrument import InstrumentParams, SimulatedInstrument
from fusetomo.solver.alignment import AlignmentError, fit_axis, gauge_free
from fusetomo.solver.fusion import FusedSolver

DRIFT, OFFSET = 1.0, 1.5


@pytest.fixture(scope="module")
def stream():
    """Every message of a drifted series (32 px, +-60 deg every 6, chemistry every 30)."""
    inst = SimulatedInstrument(InstrumentParams(
        size=32, speed=1e4, tilt_range=(-60.0, 60.0), haadf_step=6.0, chem_step=30.0, seed=4,
        drift_sigma_px=DRIFT, axis_offset_px=OFFSET))
    endpoint = inst.bind()
    stop = threading.Event()
    t = threading.Thread(target=inst.serve, args=(stop,), daemon=True)
    t.start()
    client = ControllerClient(endpoint, identity=b"align-test")
    series, msgs = "unknown", []
    try:
        client.send(make(HELLO, series, 0, last_seq=-1))
        while True:
            frames = client.recv_frames(5000)
            assert frames is not None, "the instrument went quiet"
            msg = decode(frames)
            if msg.type == SERIES_START:
                series = msg.header["series"]
            if msg.type != ACK:
                client.send(make(ACK, series, 0, ack_seq=msg.seq, status="recorded"))
            msgs.append(msg)
            if msg.type == SERIES_END:
                break
    finally:
        stop.set()
        t.join(10)
        client.close()
    start = next(m for m in msgs if m.type == SERIES_START)
    return start, [m for m in msgs if m.type in (HAADF_TILT, CHEM_TILT)]


def true_shift(msg) -> np.ndarray:
    d = msg.header["drift_px"]
    return np.array([d[0], d[1] + msg.header["axis_offset_px"]])


def rms(angles, est, true) -> float:
    d = gauge_free(angles, est) - gauge_free(angles, true)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


def feed(aligner: LiveAligner, start, tilts, reference=None):
    els = start.header["elements"]
    Z = [start.header["Z"][e] for e in els]
    bg = [start.header["background"][e] for e in els]
    truth, chem = {}, {}
    for m in tilts:
        a = float(m.header["angle"])
        if m.type == HAADF_TILT:
            aligner.align_haadf(a, m.arrays[0], reference)
            truth[a] = true_shift(m)
        else:
            shift, maps = aligner.align_chem(a, dict(zip(els, m.arrays, strict=True)), Z=Z,
                                             gamma=start.header.get("gamma") or 1.7,
                                             background=bg)
            chem[a] = (shift, maps, m)
    return truth, chem


def test_arrival_alignment_recovers_the_instruments_drift(stream):
    start, tilts = stream
    aligner = LiveAligner(LiveAlignParams(reference="previous"))
    truth, chem = feed(aligner, start, tilts)
    ang = aligner.angles
    est = np.stack([aligner.shifts[a] for a in ang])
    true = np.stack([truth[a] for a in ang])
    assert np.std(true) > 0.5  # the drift is really on
    assert rms(ang, est, true) < 0.5
    # The spectrum image was drifted with its HAADF image: it takes that shift (its own
    # registered drift is small), and its corrected maps match the HAADF-corrected ones.
    for a, (shift, maps, msg) in chem.items():
        np.testing.assert_allclose(shift, aligner.shift_for_chem(a), atol=0.5)
        assert msg.header["drift_px"] == next(
            t.header["drift_px"] for t in tilts if t.type == HAADF_TILT
            and t.header["angle"] == msg.header["angle"])
        assert all(v.min() >= 0 for v in maps.values())
    angles_c, maps_c = aligner.chem_stack()
    assert angles_c.size == len(chem)
    assert maps_c[start.header["elements"][0]].shape == (len(chem), 32, 32)
    # refine() re-fits the axis offset from the centre-of-mass trajectory
    aligner.refine(None, budget_s=1.0)
    est2 = np.stack([aligner.shifts[a] for a in ang])
    c_est = fit_axis(ang, est2[:, 1])[0]
    c_true = fit_axis(ang, true[:, 1])[0]
    assert c_est == pytest.approx(c_true, abs=0.5)
    assert aligner.axis_offset_px == pytest.approx(c_true, abs=0.5)
    assert rms(ang, est2, true) < 0.5
    json.dumps(aligner.status())  # publishable as is


def test_refine_against_the_solver_keeps_the_shifts(stream):
    start, tilts = stream
    aligner = LiveAligner()
    solver = None
    els = start.header["elements"]
    truth: dict[float, np.ndarray] = {}
    for m in tilts:
        a = float(m.header["angle"])
        if m.type == HAADF_TILT:
            aligner.align_haadf(a, m.arrays[0], solver)
            truth[a] = true_shift(m)
        else:
            aligner.align_chem(a, dict(zip(els, m.arrays, strict=True)))
    # the solver built from the aligned stacks, as the controller feeds it
    solver = FusedSolver(32, 32, els, [start.header["Z"][e] for e in els], device="cpu",
                         background=[start.header["background"][e] for e in els])
    ang, stack = aligner.haadf_stack()
    solver.add_haadf(ang, stack)
    ang_c, maps = aligner.chem_stack()
    solver.add_chem(ang_c, maps)
    solver.run(8)
    reproj = solver_reprojector(solver)(ang[:2])
    assert reproj.shape == (2, 32, 32) and reproj.max() > 0
    changed = aligner.refine(solver, budget_s=5.0)
    assert set(changed) <= set(ang.tolist())
    est = np.stack([aligner.shifts[a] for a in ang])
    true = np.stack([truth[a] for a in ang])
    assert rms(ang, est, true) < 0.5
    assert aligner.refinements == 1


def test_bad_input_is_refused():
    al = LiveAligner()
    img = np.zeros((16, 16), np.float32)
    img[5:10, 6:11] = 1
    al.align_haadf(0.0, img)
    with pytest.raises(AlignmentError, match="already aligned"):
        al.align_haadf(0.0, img)
    with pytest.raises(AlignmentError, match="shape"):
        al.align_haadf(3.0, np.zeros((8, 16), np.float32))
    with pytest.raises(AlignmentError, match="no HAADF tilt at 5"):
        al.align_chem(5.0, {"Co": img})
    with pytest.raises(AlignmentError, match="rotation_deg"):
        LiveAlignParams(rotation_deg=float("nan"))
    with pytest.raises(AlignmentError, match="reference"):
        al.align_haadf(6.0, img, reference=42)
