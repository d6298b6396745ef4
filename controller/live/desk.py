"""The live controller's advice desk: one spectroscopy policy per series, the advice
waiting for an answer, and how an answer becomes a decision.

The desk is told about every HAADF tilt (once its k iterations are done) and returns the
advice; in `auto` mode it decides at once (follow the advice), in `manual` mode the advice
waits for the operator: accept (follow it), skip (do not take a spectrum image now) or
force (take one now, whatever the advice). A decision is `acquire` or `continue`; the
controller sends it to an instrument that holds for advice (series_start
`holds_for_advice`), and records the advice and the decision either way. No sockets here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fusetomo.adapters.protocol import SeriesStart
from fusetomo.controller.advisor import (
    ACQUIRE,
    AdaptiveAdvisor,
    Advice,
    AdvisorParams,
    Policy,
    SeriesState,
    make_policy,
)
from fusetomo.core.angles import angle_key
from fusetomo.solver.fusion import FusedSolver

MODES = ("off", "auto", "manual")
ANSWERS = ("accept", "skip", "force")


@dataclass(frozen=True)
class AdviceParams:
    """Which policy advises and who answers."""

    mode: str = "off"  # off | auto (follow the advice) | manual (the operator answers)
    policy: str = "adaptive"
    advisor: AdvisorParams = field(default_factory=AdvisorParams)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"advice mode must be one of {list(MODES)}, got {self.mode!r}")


class AdviceDesk:
    """Advice for one series announced by `header` (its series_start)."""

    def __init__(self, params: AdviceParams, start: SeriesStart | Mapping[str, Any]) -> None:
        """`start`: the series_start (typed, or its header)."""
        self.params = params
        self.mode = "manual" if params.mode == "manual" else "auto"
        if isinstance(start, SeriesStart):
            self.order = list(start.haadf_order)
            self.holds = start.holds_for_advice
            dose = start.chem_dose_e_per_A2
            planned_chem = start.planned_chem or _count(start.header.get("planned_chem_maps"))
        else:
            scheme = start.get("scheme") if isinstance(start.get("scheme"), dict) else {}
            self.order = [float(a) for a in scheme.get("haadf_angles", [])]
            self.holds = bool(start.get("holds_for_advice", False))
            dose = finite_or_none(start.get("chem_dose_e_per_A2"))
            chem = scheme.get("chem_angles")
            planned_chem = (len(chem) if isinstance(chem, list) and chem
                            else _count(start.get("planned_chem_maps")))
        self.dose_per_map = dose if dose is not None and dose > 0 else 1.0
        advisor = params.advisor
        if advisor.planned_maps is None and planned_chem:
            # Without a budget, the plan's own spectrum images are the allowance.
            advisor = replace(advisor, planned_maps=int(planned_chem))
        self.policy: Policy = make_policy(params.policy, advisor, self.order)
        self.pending: Advice | None = None
        self.history: list[Advice] = []

    @property
    def std(self) -> dict[str, Any] | None:
        """The standard errors the adaptive policy computed for its last advice."""
        return self.policy.std if isinstance(self.policy, AdaptiveAdvisor) else None

    def remaining(self, recorded: set[int]) -> list[float]:
        """Planned HAADF tilts not recorded yet (`recorded`: their angle keys), in
        acquisition order."""
        return [a for a in self.order if angle_key(a) not in recorded]

    def advise(self, solver: FusedSolver | None, *, angle: float, tilt_seq: int,
               recorded_haadf: list[float], chem_angles: list[float],
               chem_dose_used: float) -> Advice:
        rec = {angle_key(a) for a in recorded_haadf}
        state = SeriesState(angle=angle, tilt_seq=tilt_seq, remaining=self.remaining(rec),
                            chem_angles=chem_angles, chem_dose_used=chem_dose_used,
                            chem_dose_per_map=self.dose_per_map)
        adv = self.policy.advise(solver, state)
        adv.mode = self.mode
        self.history.append(adv)
        self.pending = adv
        return adv

    def decide(self, answer: str | None) -> Advice:
        """Turn the pending advice into a decision (answer None: follow it, as in auto)."""
        adv = self.pending
        if adv is None:
            raise ValueError("no advice is waiting for an answer")
        if answer is not None and answer not in ANSWERS:
            raise ValueError(f"answer must be one of {list(ANSWERS)}, got {answer!r}")
        acquire = answer == "force" or (answer in (None, "accept") and adv.action == ACQUIRE)
        adv.answer = answer
        adv.decision = "acquire" if acquire else "continue"
        self.pending = None
        return adv

    def check_answer(self, action: str, advice_id: int | None) -> None:
        """ValueError naming the problem if `action` cannot answer the pending advice."""
        adv = self.pending
        if adv is None:
            raise ValueError(f"{action}: no advice is waiting for an answer")
        if action in ("accept", "skip") and advice_id != adv.id:
            raise ValueError(f"{action}: advice {advice_id} is not the one waiting "
                             f"(advice {adv.id} at {adv.angle:+.1f} deg)")


def _count(v: Any) -> int | None:
    """A positive integer header value, else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def finite_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

