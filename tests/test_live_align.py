"""Live alignment (controller/live_align.py) on a series from the simulated instrument with
its per-tilt drift and tilt-axis offset turned on, received over real ZeroMQ sockets."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from threads import CheckedThread

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
from fusetomo.controller.live.aligner import LiveAligner, LiveAlignParams, solver_reprojector
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
    t = CheckedThread(inst.serve, stop, name="instrument", start=True)
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
        client.close()
        t.finish(10)
    start = next(m for m in msgs if m.type == SERIES_START)
    return start, [m for m in msgs if m.type in (HAADF_TILT, CHEM_TILT)]


def true_shift(msg) -> np.ndarray:
    d = msg.header["drift_px"]
    return np.array([d[0], d[1] + msg.header["axis_offset_px"]])


def rms(angles, est, true) -> float:
    d = gauge_free(angles, est) - gauge_free(angles, true)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


def feed(aligner: LiveAligner, start, tilts, solver=None, iterations: int = 0):
    """Feed every tilt to the aligner, and to `solver` (as controller/live.py does: whole
    pixels moved in the image, the fraction in its projector; k iterations and one
    refinement after each tilt once it is ready)."""
    els = start.header["elements"]
    Z = [start.header["Z"][e] for e in els]
    bg = [start.header["background"][e] for e in els]
    truth, chem = {}, {}
    for m in tilts:
        a = float(m.header["angle"])
        if m.type == HAADF_TILT:
            aligner.align_haadf(a, m.arrays[0], solver if solver is not None and solver.ready
                                else None)
            truth[a] = true_shift(m)
            if solver is not None:
                img, frac = aligner.solver_haadf(a)
                solver.add_haadf(a, img, shifts=frac[None])
        else:
            shift = aligner.align_chem(a, dict(zip(els, m.arrays, strict=True)), Z=Z,
                                       gamma=start.header.get("gamma") or 1.7, background=bg)
            chem[a] = (shift, m)
            if solver is not None:
                maps, frac = aligner.solver_chem(a)
                solver.add_chem(a, {e: v[None] for e, v in maps.items()}, shifts=frac[None])
        if solver is not None and solver.ready and iterations:
            solver.run(iterations)
            aligner.refine(solver)  # sets the solver's shifts
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
    # registered drift is small), and its maps for the solver are counts moved by whole
    # pixels, with the rest of the shift as the solver's fraction.
    for a, (shift, msg) in chem.items():
        np.testing.assert_allclose(shift, aligner.shift_for_chem(a), atol=0.5)
        assert msg.header["drift_px"] == next(
            t.header["drift_px"] for t in tilts if t.type == HAADF_TILT
            and t.header["angle"] == msg.header["angle"])
        maps, frac = aligner.solver_chem(a)
        assert all(v.min() >= 0 and v.shape == (32, 32) for v in maps.values())
        assert np.all(np.abs(frac) <= 0.5)
        whole = np.round(shift)
        first = start.header["elements"][0]
        raw = msg.arrays[0]
        k = (slice(max(int(whole[0]), 0), 32 + min(int(whole[0]), 0)),
             slice(max(int(whole[1]), 0), 32 + min(int(whole[1]), 0)))
        moved = np.roll(maps[first], (int(whole[0]), int(whole[1])), axis=(0, 1))
        np.testing.assert_array_equal(moved[k], raw[k])  # whole pixels: copied, exact
    # refine() re-fits the axis offset from the centre-of-mass trajectory
    aligner.refine(None)
    est2 = np.stack([aligner.shifts[a] for a in ang])
    c_est = fit_axis(ang, est2[:, 1])[0]
    c_true = fit_axis(ang, true[:, 1])[0]
    assert c_est == pytest.approx(c_true, abs=0.5)
    assert aligner.axis_offset_px == pytest.approx(c_true, abs=0.5)
    assert rms(ang, est2, true) < 0.5
    json.dumps(aligner.status())  # publishable as is


def test_refinement_against_the_fused_model(stream):
    """Fed as the controller feeds it, the model refinement brings the shifts from the
    arrival's accuracy to a small fraction of a pixel, and the solver holds them."""
    start, tilts = stream
    els = start.header["elements"]

    def solver():
        return FusedSolver(32, 32, els, [start.header["Z"][e] for e in els], device="cpu",
                           background=[start.header["background"][e] for e in els])

    coarse = LiveAligner()
    truth, _ = feed(coarse, start, tilts)
    aligner, s = LiveAligner(), solver()
    feed(aligner, start, tilts, s, iterations=3)
    for _ in range(6):  # the final iterations, with refinements between them
        s.run(5)
        aligner.refine(s)  # sets the solver's shifts
    ang = aligner.angles
    true = np.stack([truth[a] for a in ang])
    e_coarse = rms(ang, np.stack([coarse.shifts[a] for a in ang]), true)
    e_model = rms(ang, np.stack([aligner.shifts[a] for a in ang]), true)
    assert aligner.model_refinements > 5
    assert e_model < 0.06 and e_model < 0.25 * e_coarse, (e_model, e_coarse)  # 0.03, 0.25
    # the solver's shifts are the aligner's, less the whole pixels moved in the images
    whole = np.round(aligner.axis_frame_shifts() - aligner.model_shifts(ang))
    np.testing.assert_allclose(aligner.axis_frame_shifts() - whole, s.haadf_proj.shifts,
                               atol=1e-9)
    ang_c, total_c = aligner.chem_axis_frame_shifts()
    np.testing.assert_allclose(aligner.chem_model_shifts(ang_c), s.chem_proj.shifts,
                               atol=1e-9)
    assert np.all(np.abs(total_c - aligner.chem_model_shifts(ang_c)
                         - np.round(total_c - aligner.chem_model_shifts(ang_c))) < 1e-9)
    reproj = solver_reprojector(s)(ang[:2])
    assert reproj.shape == (2, 32, 32) and reproj.max() > 0
    st = aligner.status()
    assert st["model_refinements"] == aligner.model_refinements
    assert st["last_update_px"] is not None and st["last_update_px"] < 0.05


def test_bad_input_is_refused():
    al = LiveAligner()
    img = np.zeros((16, 16), np.float32)
    img[5:10, 6:11] = 1
    al.align_haadf(0.0, img)
    with pytest.raises(AlignmentError, match="already aligned"):
        al.align_haadf(0.0, img)
    with pytest.raises(AlignmentError, match="shape"):
        al.align_haadf(3.0, np.zeros((8, 16), np.float32))
    with pytest.raises(AlignmentError, match="no HAADF tilt for the spectrum image at 5"):
        al.align_chem(5.0, {"Co": img})
    with pytest.raises(AlignmentError, match="NaN"):
        al.align_chem(0.0, {"Co": np.full((16, 16), np.nan, np.float32)})
    with pytest.raises(AlignmentError, match="not been given to the solver"):
        al.model_shifts([0.0])
    with pytest.raises(AlignmentError, match="no spectrum image aligned at 0"):
        al.solver_chem(0.0)
    with pytest.raises(AlignmentError, match="rotation_deg"):
        LiveAlignParams(rotation_deg=float("nan"))
    with pytest.raises(AlignmentError, match="max_step_px"):
        LiveAlignParams(max_step_px=0.0)
    with pytest.raises(AlignmentError, match="reference"):
        al.align_haadf(6.0, img, reference=42)
