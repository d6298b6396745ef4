"""The ends of a live session: a series start (run file, reconstruction, hooks), a resume
from the run file, the finish after the series end, and the status every viewer reads."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from fusetomo.adapters.protocol import ACK, ProtocolError, SeriesEnd, SeriesStart
from fusetomo.adapters.runfile import RunFileError, read_run
from fusetomo.controller.live import iterating
from fusetomo.controller.live.advice import AdviceHook, ReleaseHook
from fusetomo.controller.live.alignment import AlignmentHook
from fusetomo.controller.live.hooks import LiveHook
from fusetomo.controller.live.memory import check_fits
from fusetomo.controller.live.params import LiveError, LiveParams
from fusetomo.controller.live.reconstruction import (
    LiveReconstruction,
    owed_after_crash,
    rebuild_solver,
    solver_for,
    start_of,
)
from fusetomo.controller.live.timing import lag_of
from fusetomo.controller.live.uncertainty import UncertaintyHook

if TYPE_CHECKING:
    from fusetomo.controller.live.session import LiveSession

log = logging.getLogger("fusetomo.live")


def make_hooks(params: LiveParams, start: SeriesStart,
               record_event: Any) -> list[LiveHook]:
    """The hooks of a series, in the order they are called: alignment (prepares each tilt),
    advice (or the release of an instrument that holds), standard errors (after advice,
    which may have computed them)."""
    hooks: list[LiveHook] = []
    if params.align is not None:
        hooks.append(AlignmentHook(params.align, params.align_final_every))
    advice: AdviceHook | None = None
    if params.advice.mode != "off":
        try:
            advice = AdviceHook(params.advice, start)
        except ValueError as e:
            log.warning("no advice for this series: %s", e)
            record_event("advice_off", reason=str(e))
    elif start.holds_for_advice:
        log.warning("the instrument holds for advice but the advisor is off: every tilt "
                    "is released without a spectrum image (use --advice auto|manual)")
    if advice is not None:
        hooks.append(advice)
    elif start.holds_for_advice:
        hooks.append(ReleaseHook())
    if params.uncertainty:
        hooks.append(UncertaintyHook(advice))
    return hooks


def on_start(s: LiveSession, start: SeriesStart) -> None:
    run = s.run
    if run is not None:
        if start.series == run.series_id and start.seq == s.recorder.start_seq:
            s.send(ACK, start.seq, ack_seq=start.seq, status="duplicate")
            return
        raise ProtocolError("series_in_progress", f"series {run.series_id!r} is being "
                            f"recorded; series_start of {start.series!r} (seq {start.seq}) "
                            "refused", seq=start.seq)
    check_fits(start, s.params)
    try:
        solver = solver_for(start, s.params)
    except ValueError as e:
        raise ProtocolError("bad_series", f"series_start: {e}", seq=start.seq) from None
    run = s.recorder.create(start)
    p = s.params
    s.recon = LiveReconstruction(solver, p) if p.reconstruct else None
    s.hooks = make_hooks(p, start, run.record_event) if p.reconstruct else []
    s.device_label = "cpu" if solver.device.id < 0 else f"gpu:{solver.device.id}"
    run.record_event(
        "controller", iterations_per_tilt=p.iterations_per_tilt,
        idle_iterations=p.idle_iterations, max_idle_iterations=p.max_idle_iterations,
        final_iterations=p.final_iterations, interleave=p.interleave,
        reconstruct=p.reconstruct, device=s.device_label,
        fusion=dataclasses.asdict(solver.params))
    s.send(ACK, start.seq, ack_seq=start.seq, status="recorded")
    log.info("series %s started: %s, shape %s", start.series, list(start.elements),
             list(start.shape))
    s.event("series_start", elements=list(start.elements), shape=list(start.shape))
    s.status("recording")


def on_end(s: LiveSession, end: SeriesEnd) -> None:
    """Record the series end (its counts checked), acknowledge it, and start finishing."""
    rec = s.recorder
    if not rec.is_new(end):
        s.send(ACK, end.seq, ack_seq=end.seq, status="duplicate")
        return
    rec.check_end(end)
    run = rec.require_run(end)
    run.mark_complete(end)
    rec.end_seq = end.seq
    s.send(ACK, end.seq, ack_seq=end.seq, status="recorded")
    log.info("series end recorded: %d HAADF + %d chemical tilts", run.haadf_count,
             run.chem_count)
    s.event("series_end", haadf_tilts=run.haadf_count, chem_tilts=run.chem_count)
    s.ended = True
    if s.recon is not None:
        s.recon.finish()


def resume(s: LiveSession) -> None:
    """Continue the run file: rebuild the reconstruction by replaying its recorded iteration
    schedule, and carry on from its last seq. A run whose series end is recorded but whose
    final reconstruction is not (a crash during the final iterations) is finished."""
    try:
        record = read_run(s.run_path)
    except (RunFileError, OSError) as e:
        raise LiveError(f"cannot resume {s.run_path}: {e}") from None
    done = any(ev.get("kind") == "finished" for ev in record.events)
    if record.complete and done:
        # Recorded to the end: reopening once clears the flag a writer killed before it
        # closed the file leaves, so that any HDF5 reader opens it.
        s.recorder.resume(record, allow_complete=True).close()
        log.warning("%s: the series is complete and its final reconstruction recorded; "
                    "nothing to resume", s.run_path)
        s.finished = True
        return
    t0 = time.perf_counter()
    p = s.params
    try:
        check_fits(start_of(record), p)
    except ProtocolError as e:
        raise LiveError(f"cannot resume {s.run_path}: {e}") from None
    solver = rebuild_solver(record, p) if p.reconstruct else None
    run = s.recorder.resume(record, allow_complete=record.complete)
    start = start_of(record)
    if solver is not None:
        s.recon = LiveReconstruction(solver, p)
        s.hooks = make_hooks(p, start, run.record_event)
        s.device_label = "cpu" if solver.device.id < 0 else f"gpu:{solver.device.id}"
        for h in s.hooks:
            h.resume(record, s)
        if solver.ready:
            s.recon.owed = owed_after_crash(record, p)
    if p.align is None and any(ev.get("kind") == "alignment" for ev in record.events):
        log.warning("%s was aligned live: resume with --align to go on aligning", s.run_path)
    iteration = 0 if solver is None else solver.iteration
    owed = 0 if s.recon is None else s.recon.owed
    log.info("resumed %s: %d HAADF + %d chemical tilts, last seq %d; %d iterations "
             "replayed in %.1f s, %d owed", s.run_path, run.haadf_count, run.chem_count,
             s.recorder.last_seq(), iteration, time.perf_counter() - t0, owed)
    run.record_event("resumed", last_seq=s.recorder.last_seq(), iteration=iteration,
                     owed=owed)
    if record.complete:  # the series end is recorded: finish
        log.warning("%s: the series end is recorded but not the final reconstruction; "
                    "running the final iterations", s.run_path)
        s.ended = True
        if s.recon is not None:
            s.recon.finish()


def finish(s: LiveSession) -> None:
    """After the series end and the final iterations: the final snapshot (and standard
    errors), the closing event."""
    recon, run = s.recon, s.run
    assert run is not None
    if recon is not None and recon.ready and recon.solver.x is None:
        iterating.settle(s, recon.take_settled())
        if not recon.solver.elements:  # a HAADF-only series: its result is the HAADF volume
            run.record_snapshot(recon.iteration, {"HAADF": recon.solver.haadf_volume()},
                                final=True)
        else:
            log.warning("the series ended without a spectrum image: the HAADF volume was "
                        "reconstructed, no element volumes")
    elif recon is not None and recon.ready:
        iterating.settle(s, recon.take_settled())
        run.record_snapshot(recon.iteration, recon.solver.volumes(), final=True)
        for h in s.hooks:
            h.finished(s)
    elif s.params.reconstruct:
        log.warning("the series ended without both HAADF and chemical tilts: no "
                    "reconstruction")
    iteration = 0 if recon is None else recon.iteration
    s.recorder.flush_dropped()
    run.record_event("finished", iteration=iteration,
                     latency_s_median=_median(s.latencies),
                     processing_s_median=_median(_processing(recon)))
    s.status("complete")
    s.event("complete", iteration=iteration)
    s.finished = True
    log.info("run complete: %s", s.run_path)


def cost_weights(fusion: Any) -> dict[str, float]:
    """The λ weighting each cost term in the objective (the viewers plot weighted terms)."""
    return {"haadf": float(fusion.lambda_haadf), "chem": float(fusion.lambda_chem),
            "tv": float(fusion.lambda_tv)}


def status_fields(s: LiveSession, state: str) -> dict[str, Any]:
    run, solver, recon = s.run, s.solver, s.recon
    start = run.start_header if run is not None else {}
    fields: dict[str, Any] = {
        "state": state,
        "iteration": 0 if solver is None else solver.iteration,
        "costs": {} if recon is None else recon.last_costs,
        "cost_weights": None if solver is None else cost_weights(solver.params),
        "haadf_tilts": 0 if run is None else run.haadf_count,
        "chem_tilts": 0 if run is None else run.chem_count,
        "planned_haadf": _planned(start, "haadf_angles"),
        "planned_chem": _planned(start, "chem_angles"),
        "dose_e_per_A2": None if run is None else run.dose_e_per_A2,
        "last_seq": s.recorder.last_seq(),
        "owed_iterations": 0 if recon is None else recon.owed,
        "latency_s": s.latencies[-1] if s.latencies else None,
        **_timing_fields(recon),
        "haadf_angles": [] if run is None else run.angles("haadf"),
        "chem_angles": [] if run is None else run.angles("chem"),
        "dose_budget_e_per_A2": start.get("dose_budget_e_per_A2"),
        "chem_maps_budget": None,
        "advice_mode": "off",
        "operator_endpoint": s.operator_endpoint,
    }
    for h in s.hooks:
        fields.update(h.status_fields())
    return fields


def _timing_fields(recon: LiveReconstruction | None) -> dict[str, Any]:
    """The last settled tilt's processing time and the lag behind the newest tilt now
    (controller/live/timing.py)."""
    if recon is None:
        return {"processing_s": None, "lag_s": 0.0, "lag_tilts": 0}
    n, lag = lag_of(time.time(), [q.t_arrival for q in recon.pending])
    return {"processing_s": recon.timing.processing_s, "lag_s": lag, "lag_tilts": n}


def _planned(header: dict[str, Any], key: str) -> int | None:
    scheme = header.get("scheme")
    if isinstance(scheme, dict) and isinstance(scheme.get(key), list):
        return len(scheme[key])
    return None


def _processing(recon: LiveReconstruction | None) -> list[float]:
    """The processing time of every tilt this session settled."""
    if recon is None:
        return []
    return list(recon.timing.history)


def _median(values: list[float]) -> float | None:
    import numpy as np

    return float(np.median(values)) if values else None
