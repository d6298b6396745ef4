"""Standard errors as a hook: the cheap per-voxel standard error (science.md §3) at the
current volumes once a tilt's k iterations are done (unless the adaptive advisor has just
computed it), published with the orthoslices and recorded with every snapshot."""

from __future__ import annotations

from fusetomo.controller.live.hooks import HookContext, LiveHook
from fusetomo.controller.live.reconstruction import Pending
from fusetomo.solver.uncertainty import UncertaintyParams, estimate_std_error


class UncertaintyHook(LiveHook):
    def __init__(self, advice_has_std: object = None) -> None:
        # The advice hook, whose policy may have computed the errors at this iteration.
        self.advice = advice_has_std

    def settled(self, tilts: tuple[Pending, ...], ctx: HookContext) -> None:
        solver = ctx.solver
        if solver is None:
            return
        fresh = (self.advice is not None and getattr(self.advice, "std", None) is not None
                 and ctx.std.iteration == solver.iteration)
        if not fresh:
            self.refresh(ctx)

    def refresh(self, ctx: HookContext) -> None:
        solver = ctx.solver
        if solver is None or not solver.ready or solver.x is None:
            return
        ctx.std.maps, _ = estimate_std_error(solver, UncertaintyParams(mode="cheap"))
        ctx.std.iteration = solver.iteration

    def snapshot(self, iteration: int, ctx: HookContext) -> None:
        if ctx.std.maps is not None and ctx.run is not None:
            ctx.run.record_std_error(ctx.std.iteration, ctx.std.maps)

    def finished(self, ctx: HookContext) -> None:
        self.refresh(ctx)
        if ctx.std.maps is not None and ctx.run is not None:  # stored exactly (final)
            ctx.run.record_std_error(ctx.std.iteration, ctx.std.maps, final=True)
