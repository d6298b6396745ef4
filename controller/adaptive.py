"""The adaptive spectroscopy advisor (issue 16): where to take the next spectrum image,
keeping the tilt range covered, and when to stop.

At every HAADF tilt it answers acquire now, wait or stop spectroscopy:
1. Budget: never more maps than the budget allows (`allowed`: the maps budget, the dose
   budget's maps, or the plan's spectrum images when no budget is given).
2. How many maps in all (`planned`): the stop rule (`StopRule`, below) predicts what the
   next map would still lower the error, and plans no map that would lower it by less
   than `stop_gain`; before the first map nothing is predicted and all allowed maps are
   planned.
3. Coverage (controller/coverage.py): the largest angular gap between maps (ends counted
   double) must stay within (1 + gap_slack) x the even spacing of the planned maps; a
   map is taken now when skipping this tilt would leave a gap the remaining planned maps
   cannot close (a sequential series cannot go back; a dose-symmetric one closes gaps on
   both sides), and the plan grows when coverage needs more maps than the stop rule.
4. Placement: between those constraints the current tilt is taken when it is among the
   tilts a greedy choice of the remaining planned maps would pick by predicted information
   gain per unit dose (solver/design.py), at least `min_spacing` apart, and when taking it
   keeps the coverage reachable.
Greedy sequential design is within (1 - 1/e) of the optimum for submodular gains (the
linear-Gaussian case); here it is a heuristic on a linearised posterior, which is why
bench/advisor.py measures it against the fixed policies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fusetomo.controller.coverage import even_gap, gap, maps_to_close, must_take
from fusetomo.controller.policies import (
    ACQUIRE,
    SPACING_TOL,
    STOP,
    WAIT,
    Advice,
    AdvisorParams,
    SeriesState,
    UniformPolicy,
    _Policy,
)
from fusetomo.controller.stoprule import StopRule
from fusetomo.core.angles import same_angle
from fusetomo.solver.design import candidate_gains
from fusetomo.solver.uncertainty import UncertaintyParams, UncertaintyState, estimate_std_error

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusedSolver


class AdaptiveAdvisor(_Policy):
    name = "adaptive"

    def __init__(self, params: AdvisorParams, planned: Sequence[float]) -> None:
        super().__init__(params, planned)
        grid = sorted(self.planned)
        self.lo, self.hi = (grid[0], grid[-1]) if grid else (0.0, 0.0)
        self.stop_rule = StopRule(params)
        self.stopped: str | None = None
        self.std: dict[str, np.ndarray] | None = None  # the last standard errors
        self.state: UncertaintyState | None = None
        self.k_plan: int | None = None

    # -- the numbers behind the advice --------------------------------------------------------
    def refresh_uncertainty(self, solver: FusedSolver) -> dict[str, np.ndarray]:
        """Standard errors at the solver's current volumes (cheap mode; 'sampled' also draws
        posterior samples, warm-started from the previous tilt's)."""
        p = self.params
        up = (UncertaintyParams(mode="accurate", probes=p.probes, probe_batch=p.probes,
                                cg_iterations=p.cg_iterations, seed=p.seed)
              if p.metric == "sampled" else UncertaintyParams(mode="cheap"))
        self.std, self.state = estimate_std_error(solver, up, warm_start=self.state)
        return self.std

    def _cap(self, s: SeriesState) -> int:
        allowed = self.allowed(s.chem_dose_per_map)
        return len(self.planned) if allowed is None else min(allowed, len(self.planned))

    def limit(self, k_plan: int) -> float:
        """The largest gap coverage allows with `k_plan` maps planned in all."""
        return even_gap(self.lo, self.hi, k_plan) * (1.0 + self.params.gap_slack)

    def spacing(self, k_plan: int) -> float:
        p = self.params
        if p.min_spacing_deg is not None:
            return p.min_spacing_deg
        return 0.5 * even_gap(self.lo, self.hi, k_plan)

    def _plan(self, s: SeriesState) -> int:
        """The maps to take in all: the stop rule's, within [maps taken, allowed], and at
        least what coverage needs from here."""
        cap = self._cap(s)
        n = len(s.chem_angles)
        k = max(self.stop_rule.plan(n, cap), n)
        ahead = [float(s.angle), *s.remaining]
        # coverage may need more maps than the stop rule asks for (a plan revised down
        # after maps were taken densely): the gap of the revised plan decides how many
        while k < cap:
            need = maps_to_close(s.chem_angles, ahead, self.lo, self.hi, self.limit(k))
            if need is not None and n + need <= k:
                break
            k += 1
        return k

    # -- the advice ---------------------------------------------------------------------------
    def advise(self, solver: FusedSolver | None, s: SeriesState) -> Advice:
        stop = self._budget_advice(s)
        if stop is not None:
            return stop
        if self.stopped is not None:
            return self._new(s, STOP, self.stopped, **self._facts(s))
        t0 = time.perf_counter()
        ready = solver is not None and solver.ready and solver.n_chem > 0
        k_plan = self.k_plan = self._plan(s)
        taken = [float(a) for a in s.chem_angles]
        left = k_plan - len(taken)
        limit = self.limit(k_plan)
        facts = self._facts(s)
        if left <= 0:
            self.stopped = self.stop_rule.message(len(taken), self._cap(s), gap(
                taken, self.lo, self.hi))
            facts = self._facts(s)
            return self._new(s, STOP, self.stopped, seconds=time.perf_counter() - t0, **facts)
        ahead = [float(a) for a in s.remaining]
        if must_take(float(s.angle), taken, ahead, self.lo, self.hi, limit, left):
            return self._new(s, ACQUIRE, f"coverage: without a spectrum image here the "
                             f"gap would exceed {limit:.1f} deg, which the {left} planned "
                             f"map(s) left could not close", seconds=time.perf_counter() - t0,
                             **facts)
        spacing = self.spacing(k_plan)
        here_ok = all(abs(s.angle - t) >= spacing - SPACING_TOL for t in taken) and (
            (need := maps_to_close([*taken, float(s.angle)], ahead, self.lo, self.hi, limit))
            is not None and need <= left - 1)
        if not ready:
            return self._first(s, k_plan, here_ok, t0, facts)
        if not here_ok:
            return self._new(s, WAIT, f"a spectrum image here would sit within {spacing:.1f} "
                             f"deg of one taken or leave a gap the plan cannot close",
                             seconds=time.perf_counter() - t0, **facts)
        assert solver is not None
        return self._by_gain(solver, s, taken, ahead, left, spacing, t0, facts)

    def _facts(self, s: SeriesState) -> dict[str, Any]:
        k = self.k_plan
        out: dict[str, Any] = {
            "chem_maps_planned": k,
            "max_gap_deg": (None if not s.chem_angles else
                            float(gap(s.chem_angles, self.lo, self.hi))),
            "gap_limit_deg": None if k is None else float(self.limit(k))}
        out.update(self.stop_rule.facts(len(s.chem_angles)))
        return out

    def _first(self, s: SeriesState, k_plan: int, here_ok: bool, t0: float,
               facts: dict[str, Any]) -> Advice:
        """Nothing to predict from before the first map: take it where even spacing of the
        planned maps puts one ('uniform'), or at once ('now')."""
        if self.params.first_map == "now" and here_ok:
            return self._new(s, ACQUIRE, "no spectrum image yet: nothing can be predicted "
                             "before the first", seconds=time.perf_counter() - t0, **facts)
        targets = UniformPolicy(AdvisorParams(chem_maps=k_plan), self.planned).targets
        if here_ok and any(same_angle(s.angle, t) for t in targets):
            return self._new(s, ACQUIRE, "no spectrum image yet: nothing can be predicted "
                             "before the first, taken where even spacing of the "
                             f"{k_plan} planned maps puts one",
                             seconds=time.perf_counter() - t0, **facts)
        nxt = [a for a in s.remaining if any(same_angle(a, t) for t in targets)]
        return self._new(s, WAIT, "no spectrum image yet: the first goes where even spacing "
                         f"puts one ({nxt[0]:+.1f} deg)" if nxt else "no spectrum image yet",
                         best_angle=nxt[0] if nxt else None,
                         seconds=time.perf_counter() - t0, **facts)

    def _by_gain(self, solver: FusedSolver, s: SeriesState, taken: list[float],
                 ahead: list[float], left: int, spacing: float, t0: float,
                 facts: dict[str, Any]) -> Advice:
        std = self.refresh_uncertainty(solver)
        cands = [a for a in ahead
                 if all(abs(a - t) >= spacing - SPACING_TOL for t in taken)]
        angles = [float(s.angle), *cands]
        g = candidate_gains(solver, angles, metric=self.params.metric,
                            samples=None if self.state is None else self.state.solutions,
                            std=std)
        if g.map_nrmse is not None:
            # the posterior's predicted <NRMSE> of a new map, over the tilts still possible
            self.stop_rule.observe(float(g.map_nrmse.mean()), len(taken))
            facts.update(self.stop_rule.facts(len(taken)))
        dose = max(s.chem_dose_per_map, 1e-12)
        gpd = g.total / dose
        best = int(np.argmax(gpd))
        kw: dict[str, Any] = {
            "gain_per_dose": float(gpd[0]), "best_angle": float(g.angles[best]),
            "best_gain_per_dose": float(gpd[best]),
            "variance_ratio": float(np.mean(g.variance_ratio[best])),
            "candidates": [{"angle": float(a), "gain_per_dose": float(v)}
                           for a, v in zip(g.angles, gpd, strict=True)], **facts}
        if g.variance_reduction is not None:
            kw["variance_reduction"] = {e: float(v) for e, v in zip(
                g.elements, g.variance_reduction[0], strict=True)}
        picks = self._greedy(g.angles, gpd, left, spacing)
        kw["seconds"] = time.perf_counter() - t0
        if 0 in picks:
            return self._new(s, ACQUIRE, f"gain here {gpd[0]:.3g} nats per e/A^2 is among the "
                             f"best {len(picks)} of {len(angles)} remaining tilts (best "
                             f"{g.angles[best]:+.1f} deg, {gpd[best]:.3g})", **kw)
        return self._new(s, WAIT, f"better tilts ahead: {g.angles[best]:+.1f} deg "
                         f"({gpd[best]:.3g} nats per e/A^2) vs here {gpd[0]:.3g}", **kw)

    @staticmethod
    def _greedy(angles: np.ndarray, gain: np.ndarray, budget: int, spacing: float
                ) -> list[int]:
        """Indices a greedy choice of `budget` tilts picks (highest gain first, keeping
        `spacing` between picks)."""
        picks: list[int] = []
        for i in np.argsort(-gain, kind="stable"):
            if len(picks) >= budget:
                break
            if all(abs(angles[i] - angles[j]) >= spacing - SPACING_TOL for j in picks):
                picks.append(int(i))
        return picks


__all__ = ["AdaptiveAdvisor"]
