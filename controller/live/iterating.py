"""The live session's iterations: each one recorded, the tilts it settled published (status,
orthoslices, latency events), their hooks called, and a snapshot after a chemical tilt."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from fusetomo.adapters.protocol import STATUS
from fusetomo.controller.live.publish import orthoslices, slice_calibration
from fusetomo.controller.live.reconstruction import Pending

if TYPE_CHECKING:
    from fusetomo.controller.live.session import LiveSession


def iterate(s: LiveSession, phase: int | None) -> None:
    """One iteration of `phase` (recorded); a settled tilt's reconstruction is published."""
    recon, run = s.recon, s.run
    assert recon is not None and run is not None
    step = recon.update(phase)
    if step is None:
        return
    # the terms this run file records (one made before a term was added lacks it)
    run.record_costs(step.iteration, {k: v for k, v in step.costs.items()
                                      if k in run.cost_terms})
    if step.idle_stopped is not None:
        # Recorded and shown: the idle iterations stop until the next tilt, and why.
        run.record_event("idle_stopped", iteration=step.iteration, reason=step.idle_stopped)
        s.event("idle_stopped", iteration=step.iteration, reason=step.idle_stopped)
    p = s.params
    if (p.snapshot_every and step.iteration % p.snapshot_every == 0
            and recon.solver.x is not None):
        run.record_snapshot(step.iteration, recon.solver.volumes())
    if step.settled:
        settle(s, step.settled)
        return
    if step.iteration % p.publish_every == 0:
        s.status("iterating")
    if step.iteration % p.slices_every == 0:
        publish_slices(s)


def settle(s: LiveSession, done: tuple[Pending, ...]) -> None:
    """Publish the reconstruction for tilts whose k iterations are done; record their
    processing time, the lag behind the newest tilt and the latency (arrival -> published;
    controller/live/timing.py), and a snapshot after a chemical tilt."""
    recon, run = s.recon, s.run
    if not done or recon is None or run is None:
        return
    t = time.time()
    timing = recon.timing
    proc = timing.settled(t, [q.t_arrival for q in done], [q.t_arrival for q in recon.pending])
    s.status("iterating")
    publish_slices(s)
    lats = [t - q.t_arrival for q in done]
    s.event("reconstruction_updated", iteration=recon.iteration,
            tilt_seqs=[q.seq for q in done], latency_s=lats, processing_s=proc,
            lag_s=timing.lag_s, lag_tilts=timing.lag_tilts)
    for q, lat, pr in zip(done, lats, proc, strict=True):
        s.latencies.append(lat)
        run.record_event("latency", seq=q.seq, latency_s=lat, processing_s=pr,
                         lag_s=timing.lag_s, lag_tilts=timing.lag_tilts,
                         iteration=recon.iteration)
    for h in s.hooks:
        h.settled(done, s)
    if s.params.snapshot_chem and any(q.chem for q in done):
        run.record_snapshot(recon.iteration, recon.solver.volumes())
        for h in s.hooks:
            h.snapshot(recon.iteration, s)


def publish_slices(s: LiveSession) -> None:
    """The current volumes (and standard errors) as orthoslices, on the `slices` topic."""
    solver = s.solver
    if solver is not None and solver.in_haadf_phase and solver.iteration:
        # No spectrum image yet: the volume HAADF sees, under the name HAADF.
        vol = solver.haadf_volume()[None]
        s.publish("slices", STATUS, iteration=solver.iteration,
                  slices=orthoslices(vol, ["HAADF"], s.params.slice_size),
                  calibration=_calibration(s, vol.shape, 1))
        return
    if solver is None or solver.x is None:
        return
    extra: dict[str, Any] = {}
    n_volumes = len(solver.elements) * (1 if s.std.maps is None else 2)  # one header
    size = s.params.slice_size
    if s.std.maps is not None:
        std = np.stack([s.std.maps[e] for e in solver.elements])
        extra = {"std_slices": orthoslices(std, solver.elements, size, n_volumes),
                 "std_iteration": s.std.iteration}
    s.publish("slices", STATUS, iteration=solver.iteration,
              slices=orthoslices(solver.x, solver.elements, size, n_volumes),
              calibration=_calibration(s, solver.x.shape, n_volumes), **extra)


def _calibration(s: LiveSession, shape: tuple[int, ...], n_elements: int) -> dict[str, Any]:
    """The published slices' pixel size in nm (from the series' pixel size), for the
    viewers' scale bars and calibrated Nion data items."""
    start = s.run.start_header if s.run is not None else {}
    return slice_calibration(tuple(int(v) for v in shape), n_elements, s.params.slice_size,
                             start.get("pixel_size_nm"))
