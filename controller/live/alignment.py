"""Live alignment as a hook: each tilt is aligned before the solver takes it (whole pixels
moved in the data, the fraction in its projector), the shifts are refined against the fused
model in idle time and during the final iterations, and published on the `alignment` topic
(docs/alignment.md; the aligner itself is `controller/live/aligner.py`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from fusetomo.adapters.protocol import STATUS
from fusetomo.adapters.runfile import RunRecord
from fusetomo.controller.live.aligner import LiveAligner, LiveAlignParams
from fusetomo.controller.live.hooks import HookContext, LiveHook
from fusetomo.controller.live.params import LiveError
from fusetomo.controller.live.reconstruction import TiltIn
from fusetomo.solver.alignment import AlignmentError
from fusetomo.solver.fusion import FusedSolver


def final_refinement_due(i: int, n_final: int, every: int, aligner: LiveAligner) -> bool:
    """Whether to refine the alignment before final iteration i (of n_final): at the first,
    then every `every` iterations until a step is below the aligner's tolerance (no step is
    applied then, so it stays converged). Refining on to the end instead was measured to cost
    10-20 % of the live <NRMSE> (bench/alignment.py): each applied step restarts the
    solver's momentum."""
    if i == 0:
        return n_final > 0
    return bool(every) and i % every == 0 and not aligner.converged


def realign(record: RunRecord, solver: FusedSolver | None,
            params: LiveAlignParams) -> LiveAligner:
    """For `--resume --align`: the recorded (raw) tilts aligned again, HAADF tilts in their
    recorded order (each against its nearest aligned neighbour), then each spectrum image
    against its HAADF image; the replayed solver (if any) takes the aligned data and their
    fractional shifts in place of the raw ones. Its volumes stay (a warm start); the idle
    refinements then refine the shifts against the model as live. The live run's own
    refinement history is not replayed."""
    series = record.series
    aligner = LiveAligner(params)
    try:
        for a, img in zip(series.haadf_angles, series.haadf, strict=True):
            aligner.align_haadf(float(a), img)
        els = list(series.elements)
        for j, a in enumerate(series.common_chem_angles):
            aligner.align_chem(float(a), {e: series.chem[e][j] for e in els},
                               Z=[series.Z[e] for e in els], gamma=series.gamma or 1.7,
                               background=[series.background.get(e, 0.0) for e in els])
    except AlignmentError as e:
        raise LiveError(f"cannot align the recorded tilts of the run again: {e}") from None
    if solver is None or solver.n_haadf == 0:
        return aligner
    solver.replace_haadf(np.stack([aligner.solver_haadf(float(a))[0]
                                   for a in solver.haadf_proj.angles]))
    if solver.n_chem:
        c = [aligner.solver_chem(float(a))[0] for a in solver.chem_proj.angles]
        solver.replace_chem({e: np.stack([m[e] for m in c]) for e in solver.elements})
    aligner.set_solver_shifts(solver)
    return aligner


class AlignmentHook(LiveHook):
    """Aligns tilts on arrival and refines the alignment while the controller waits."""

    def __init__(self, params: LiveAlignParams, final_every: int) -> None:
        self.params = params
        self.final_every = final_every
        self.aligner = LiveAligner(params)
        self.refine_due = False

    def prepare(self, tilt: TiltIn, ctx: HookContext) -> TiltIn:
        solver = ctx.solver
        if solver is None:
            return tilt
        if tilt.modality == "haadf":
            assert tilt.image is not None
            self.aligner.align_haadf(tilt.angle, tilt.image, solver if solver.ready else None)
            image, frac = self.aligner.solver_haadf(tilt.angle)
            out = dataclasses.replace(tilt, image=image, shifts=frac)
        else:
            assert tilt.maps is not None
            self.aligner.align_chem(tilt.angle, tilt.maps, Z=list(solver.Z),
                                    gamma=solver.gamma,
                                    background=[float(b) for b in solver.background])
            maps, frac = self.aligner.solver_chem(tilt.angle)
            out = dataclasses.replace(tilt, maps=maps, shifts=frac)
        self.refine_due = True
        return out

    def idle(self, ctx: HookContext) -> bool:
        if not self.refine_due or ctx.solver is None or not ctx.solver.ready:
            return False
        self.refine(ctx)
        return True

    def final_iteration(self, i: int, n: int, ctx: HookContext) -> None:
        if final_refinement_due(i, n, self.final_every, self.aligner):
            self.refine(ctx)

    def refine(self, ctx: HookContext) -> None:
        """One refinement of every tilt's shift against the fused model; the solver takes
        the new shifts (its images are not touched: the shifts are in its projectors)."""
        solver, run = ctx.solver, ctx.run
        assert solver is not None and run is not None
        self.refine_due = False
        changed = self.aligner.refine(solver)
        status = self.aligner.status()
        run.record_event("alignment", moved=len(changed), iteration=solver.iteration,
                         axis_offset_px=status["axis_offset_px"],
                         update_px=status["last_update_px"],
                         angles=status["angles"][-64:], shifts_px=status["shifts_px"][-64:])
        ctx.publish("alignment", STATUS, alignment=status)

    def resume(self, record: RunRecord, ctx: HookContext) -> None:
        self.aligner = realign(record, ctx.solver, self.params)
        self.refine_due = True
