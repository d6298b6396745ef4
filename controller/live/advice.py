"""Advice in the live session: `AdviceHook` puts the advice desk (`desk.AdviceDesk`) into
the session; `ReleaseHook` stands in for it when the advisor is off and the instrument holds
for advice (every tilt is released at once)."""

from __future__ import annotations

import logging
from typing import Any

from fusetomo.adapters.protocol import STATUS, SeriesStart
from fusetomo.controller.live.desk import (
    ANSWERS,
    MODES,
    AdviceDesk,
    AdviceParams,
    finite_or_none,
)
from fusetomo.controller.live.hooks import HookContext, LiveHook
from fusetomo.controller.live.reconstruction import Pending, TiltIn

log = logging.getLogger("fusetomo.live")

__all__ = ["ANSWERS", "MODES", "AdviceDesk", "AdviceHook", "AdviceParams", "ReleaseHook",
           "advice_record", "finite_or_none"]


def advice_record(adv: Any) -> dict[str, Any]:
    """An advice as recorded in the run file (without the candidate list's bulk)."""
    d = adv.as_dict()
    cands = d.pop("candidates")
    d["n_candidates"] = len(cands)
    return d


class AdviceHook(LiveHook):
    """The advice desk in the live session: advice after each HAADF tilt's k iterations
    (at once while the solver is not ready), decisions sent to an instrument that holds,
    and the operator's answers."""

    def __init__(self, params: AdviceParams, start: SeriesStart) -> None:
        self.desk = AdviceDesk(params, start)  # ValueError: no advice for this series
        self.params = params

    @property
    def std(self) -> dict[str, Any] | None:
        return self.desk.std

    def added(self, tilt: TiltIn, ready: bool, ctx: HookContext) -> None:
        if tilt.advise and not ready:
            self.advise(tilt.seq, tilt.angle, ctx)

    def settled(self, tilts: tuple[Pending, ...], ctx: HookContext) -> None:
        for q in tilts:
            if q.advise_angle is not None:
                self.advise(q.seq, q.advise_angle, ctx)

    def advise(self, seq: int, angle: float, ctx: HookContext) -> None:
        desk, run, solver = self.desk, ctx.run, ctx.solver
        assert run is not None
        adv = desk.advise(solver if solver is not None and solver.ready else None,
                          angle=angle, tilt_seq=seq, recorded_haadf=run.angles("haadf"),
                          chem_angles=run.angles("chem"),
                          chem_dose_used=float(run.dose_e_per_A2.get("chem", 0.0)))
        if desk.std is not None and solver is not None:
            ctx.std.maps, ctx.std.iteration = desk.std, solver.iteration
        log.info("advice %d at %+.1f deg: %s (%s)", adv.id, angle, adv.action, adv.reason)
        run.record_event("advice", **advice_record(adv))
        ctx.publish("advice", STATUS, advice=adv.as_dict())
        if desk.mode == "auto":
            self.decide(None, ctx)

    def decide(self, answer: str | None, ctx: HookContext) -> None:
        assert ctx.run is not None
        adv = self.desk.decide(answer)
        ctx.run.record_event("advice_decision", advice_id=adv.id, answer=answer,
                             decision=adv.decision, angle=adv.angle)
        ctx.publish("advice", STATUS, advice=adv.as_dict())
        if self.desk.holds:
            ctx.command("acquire_spectrum" if adv.decision == "acquire" else "continue")
        log.info("advice %d: %s -> %s", adv.id, answer or "auto", adv.decision)

    def operate(self, action: str, advice_id: int | None, ctx: HookContext) -> str | None:
        desk = self.desk
        if action in ("auto", "manual"):
            desk.mode = action
            if action == "auto" and desk.pending is not None:
                self.decide(None, ctx)
            ctx.status(ctx.state())
            return f"advice mode {action}"
        if action == "force" and desk.pending is None:
            if not desk.holds:
                raise ValueError("force: no advice is waiting and the instrument does not "
                                 "hold for advice")
            return f"sent as command {ctx.command('acquire_spectrum')}"
        if action not in ANSWERS:
            return None
        desk.check_answer(action, advice_id)
        self.decide(action, ctx)
        return f"advice {advice_id if advice_id is not None else ''} answered {action}".strip()

    def tick(self, ctx: HookContext) -> None:
        if self.desk.pending is not None:
            ctx.publish("advice", STATUS, advice=self.desk.pending.as_dict())

    def status_fields(self) -> dict[str, Any]:
        return {"chem_maps_budget": self.params.advisor.chem_maps,
                "advice_mode": self.desk.mode}


class ReleaseHook(LiveHook):
    """The advisor is off but the instrument holds for advice: release every HAADF tilt."""

    def added(self, tilt: TiltIn, ready: bool, ctx: HookContext) -> None:
        if tilt.modality == "haadf":
            ctx.command("continue")
