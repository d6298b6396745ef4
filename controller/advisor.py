"""When to spend the next spectrum image: the advisor and the fixed baseline policies.

After every HAADF tilt the controller asks a policy whether to take a spectrum image at the
current stage tilt. Three policies answer the same question:
- `AdaptiveAdvisor` (science.md §4): predicts, under the current Laplace posterior, the
  information gain of a spectrum image at the current tilt and at each remaining planned
  tilt (solver/design.py), and advises
    * `acquire_now` when the current tilt is among the tilts a greedy choice of the
      remaining budget would pick (highest predicted gain per unit dose first, keeping the
      minimum angular spacing from the chemical tilts taken and from each other),
    * `wait` when better tilts are still to come (it names the best one and both gains),
    * `stop_spectroscopy` when the budget (maps or chemical dose) is spent, or when even at
      the best remaining tilt the reconstruction already predicts the chemical projection
      with a variance below `stop_ratio` of a spectrum image's own Poisson variance (a new
      map would mostly measure its own noise).
  Without any chemical map yet there is no reconstruction to predict from, so the first
  eligible tilt is taken.
- `UniformPolicy`: K maps at evenly spaced tilts of the plan (the usual practice).
- `RandomPolicy`: K maps at tilts drawn at random from the plan (seeded).

Greedy sequential design is within (1 - 1/e) of the optimum for submodular gains (the
linear-Gaussian case); here it is a heuristic on a linearised posterior, which is why
bench/advisor.py measures it against the two baselines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusetomo.core.angles import same_angle
from fusetomo.core.errors import FusetomoError
from fusetomo.solver.design import Metric, candidate_gains
from fusetomo.solver.uncertainty import UncertaintyParams, UncertaintyState, estimate_std_error

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusedSolver

ACQUIRE, WAIT, STOP = "acquire_now", "wait", "stop_spectroscopy"
ACTIONS = (ACQUIRE, WAIT, STOP)
POLICIES = ("adaptive", "uniform", "random")
SPACING_TOL = 1e-3  # degrees of slack in the minimum spacing between spectrum images


class AdvisorError(FusetomoError, ValueError):
    """Bad advisor parameters or a request it cannot answer; the message names the value."""


@dataclass(frozen=True)
class AdvisorParams:
    """The advisor's budget, spacing and stop rule."""

    chem_maps: int | None = None  # at most this many spectrum images (None: no limit)
    chem_dose_budget: float | None = None  # e/A^2 for spectroscopy (None: no limit)
    min_spacing_deg: float | None = None  # None: 0.75 x (planned span / chem_maps), or 8 deg
    # Stop when, at the best remaining tilt, the reconstruction already predicts the
    # chemical projection with a variance below `stop_ratio` x a spectrum image's own
    # Poisson variance (mean over the specimen's rays and the elements).
    stop_ratio: float = 0.004
    min_maps: int = 3  # the stop rule applies only once this many maps are taken
    # Before the first map nothing can be predicted: 'uniform' takes it at the first tilt
    # the uniform plan of the budget would take; 'now' at the very first tilt.
    first_map: str = "uniform"
    metric: Metric = "jacobi"  # 'jacobi' (cheap std) or 'sampled' (posterior samples)
    probes: int = 4  # posterior samples of the 'sampled' metric
    cg_iterations: int = 30
    seed: int = 0  # RandomPolicy's draw

    def __post_init__(self) -> None:
        if self.chem_maps is not None and (isinstance(self.chem_maps, bool)
                                           or not isinstance(self.chem_maps, int)
                                           or self.chem_maps < 1):
            raise AdvisorError(f"chem_maps must be an integer >= 1 (or None), got "
                               f"{self.chem_maps!r}")
        if self.chem_dose_budget is not None and not (math.isfinite(self.chem_dose_budget)
                                                      and self.chem_dose_budget > 0):
            raise AdvisorError(f"chem_dose_budget must be > 0 e/A^2, got "
                               f"{self.chem_dose_budget!r}")
        if self.min_spacing_deg is not None and not (math.isfinite(self.min_spacing_deg)
                                                     and 0 <= self.min_spacing_deg < 180):
            raise AdvisorError(f"min_spacing_deg must lie in [0, 180), got "
                               f"{self.min_spacing_deg!r}")
        if not (math.isfinite(self.stop_ratio) and self.stop_ratio >= 0):
            raise AdvisorError(f"stop_ratio must be >= 0, got {self.stop_ratio!r}")
        if self.first_map not in ("uniform", "now"):
            raise AdvisorError(f"first_map must be 'uniform' or 'now', got {self.first_map!r}")
        if self.metric not in ("jacobi", "sampled"):
            raise AdvisorError(f"metric must be 'jacobi' or 'sampled', got {self.metric!r}")
        for name in ("probes", "cg_iterations"):
            if getattr(self, name) < 1:
                raise AdvisorError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Advice:
    """One piece of advice, as published (topic `advice`) and recorded (event `advice`)."""

    id: int
    tilt_seq: int
    angle: float
    action: str
    reason: str
    gain_per_dose: float | None = None  # nats per e/A^2 at the current tilt
    best_angle: float | None = None
    best_gain_per_dose: float | None = None
    variance_ratio: float | None = None  # at the best tilt: predicted / Poisson variance
    # expected fraction of the total chemical variance a map here removes (per element)
    variance_reduction: dict[str, float] | None = None
    candidates: list[dict[str, float]] = field(default_factory=list)
    chem_maps_used: int = 0
    chem_maps_budget: int | None = None
    chem_dose_used: float = 0.0
    chem_dose_budget: float | None = None
    policy: str = "adaptive"
    mode: str = "auto"
    seconds: float = 0.0
    answer: str | None = None  # accept | skip | force (operator), None in auto mode
    decision: str | None = None  # acquire | continue

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SeriesState:
    """What the policy needs to know about the series so far."""

    angle: float  # current stage tilt
    tilt_seq: int
    remaining: Sequence[float]  # planned HAADF tilts still to come, in acquisition order
    chem_angles: Sequence[float]  # spectrum images taken
    chem_dose_used: float
    chem_dose_per_map: float  # e/A^2 of one spectrum image


def auto_spacing(planned: Sequence[float], chem_maps: int | None) -> float:
    """0.75 x the even spacing of `chem_maps` over the planned span (8 deg if no budget)."""
    if not planned or chem_maps is None:
        return 8.0
    span = float(max(planned) - min(planned))
    return 0.75 * span / max(chem_maps, 1)


def _far_enough(angle: float, taken: Sequence[float], spacing: float) -> bool:
    return all(abs(angle - t) >= spacing - SPACING_TOL for t in taken)


class _Policy:
    name = "policy"

    def __init__(self, params: AdvisorParams, planned: Sequence[float]) -> None:
        self.params = params
        self.planned = [float(a) for a in planned]
        self.spacing = (params.min_spacing_deg if params.min_spacing_deg is not None
                        else auto_spacing(self.planned, params.chem_maps))
        self._next_id = 0

    def _budget_left(self, s: SeriesState) -> int | None:
        """Spectrum images still allowed (None: unlimited)."""
        p = self.params
        left: list[int] = []
        if p.chem_maps is not None:
            left.append(p.chem_maps - len(s.chem_angles))
        if p.chem_dose_budget is not None and s.chem_dose_per_map > 0:
            left.append(math.floor((p.chem_dose_budget - s.chem_dose_used)
                                   / s.chem_dose_per_map + 1e-9))
        return min(left) if left else None

    def _new(self, s: SeriesState, action: str, reason: str, **kw: Any) -> Advice:
        self._next_id += 1
        p = self.params
        return Advice(id=self._next_id, tilt_seq=s.tilt_seq, angle=float(s.angle),
                      action=action, reason=reason, chem_maps_used=len(s.chem_angles),
                      chem_maps_budget=p.chem_maps, chem_dose_used=float(s.chem_dose_used),
                      chem_dose_budget=p.chem_dose_budget, policy=self.name, **kw)

    def _budget_advice(self, s: SeriesState) -> Advice | None:
        left = self._budget_left(s)
        if left is not None and left <= 0:
            p = self.params
            what = (f"{len(s.chem_angles)} of {p.chem_maps} maps taken"
                    if p.chem_maps is not None and len(s.chem_angles) >= p.chem_maps
                    else f"chemical dose {s.chem_dose_used:.4g} of {p.chem_dose_budget} "
                         f"e/A^2 spent")
            return self._new(s, STOP, f"budget spent: {what}")
        return None

    def advise(self, solver: FusedSolver | None, s: SeriesState) -> Advice:
        raise NotImplementedError


class _FixedPolicy(_Policy):
    """A policy with its tilts chosen before the series (uniform, random)."""

    def __init__(self, params: AdvisorParams, planned: Sequence[float]) -> None:
        super().__init__(params, planned)
        if params.chem_maps is None:
            raise AdvisorError(f"the {self.name} policy needs a number of maps (chem_maps)")
        k = min(params.chem_maps, len(self.planned))
        self.targets = sorted(self._choose(sorted(self.planned), k))

    def _choose(self, angles: list[float], k: int) -> list[float]:
        raise NotImplementedError

    def advise(self, solver: FusedSolver | None, s: SeriesState) -> Advice:
        stop = self._budget_advice(s)
        if stop is not None:
            return stop
        if any(same_angle(s.angle, t) for t in self.targets):
            return self._new(s, ACQUIRE, f"{self.name} plan: a spectrum image at "
                             f"{s.angle:+.1f} deg")
        nxt = [a for a in s.remaining if any(same_angle(a, t) for t in self.targets)]
        return self._new(s, WAIT, f"{self.name} plan: next spectrum image at "
                         f"{nxt[0]:+.1f} deg" if nxt else f"{self.name} plan: no more "
                         "spectrum images planned", best_angle=nxt[0] if nxt else None)


class UniformPolicy(_FixedPolicy):
    name = "uniform"

    def _choose(self, angles: list[float], k: int) -> list[float]:
        # k tilts evenly spread over the span, each the centre of its 1/k of the tilts.
        idx = np.round((np.arange(k) + 0.5) * len(angles) / k - 0.5).astype(int)
        return [angles[i] for i in np.unique(np.clip(idx, 0, len(angles) - 1))]


class RandomPolicy(_FixedPolicy):
    name = "random"

    def _choose(self, angles: list[float], k: int) -> list[float]:
        rng = np.random.default_rng([self.params.seed, 0xAD715E])
        return [angles[i] for i in rng.choice(len(angles), size=k, replace=False)]


class AdaptiveAdvisor(_Policy):
    name = "adaptive"

    def __init__(self, params: AdvisorParams, planned: Sequence[float]) -> None:
        super().__init__(params, planned)
        self.stopped: str | None = None
        self._first_targets: list[float] = []
        if params.first_map == "uniform" and params.chem_maps is not None:
            self._first_targets = UniformPolicy(params, planned).targets
        self.std: dict[str, np.ndarray] | None = None  # the last standard errors
        self.state: UncertaintyState | None = None

    def refresh_uncertainty(self, solver: FusedSolver) -> dict[str, np.ndarray]:
        """Standard errors at the solver's current volumes (cheap mode; 'sampled' also draws
        posterior samples, warm-started from the previous tilt's)."""
        p = self.params
        up = (UncertaintyParams(mode="accurate", probes=p.probes, probe_batch=p.probes,
                                cg_iterations=p.cg_iterations, seed=p.seed)
              if p.metric == "sampled" else UncertaintyParams(mode="cheap"))
        self.std, self.state = estimate_std_error(solver, up, warm_start=self.state)
        return self.std

    def advise(self, solver: FusedSolver | None, s: SeriesState) -> Advice:
        stop = self._budget_advice(s)
        if stop is not None:
            return stop
        if self.stopped is not None:
            return self._new(s, STOP, self.stopped)
        here_ok = _far_enough(s.angle, s.chem_angles, self.spacing)
        if solver is None or not solver.ready or solver.n_chem == 0:
            first = self._first_targets
            if here_ok and (not first or any(same_angle(s.angle, t) for t in first)):
                return self._new(s, ACQUIRE, "no spectrum image yet: nothing can be predicted "
                                 "before the first, taken where even spacing puts one")
            if here_ok:
                nxt = [a for a in s.remaining if any(same_angle(a, t) for t in first)]
                return self._new(s, WAIT, "no spectrum image yet: the first goes where even "
                                 f"spacing puts one ({nxt[0]:+.1f} deg)" if nxt else
                                 "no spectrum image yet", best_angle=nxt[0] if nxt else None)
            return self._new(s, WAIT, f"within {self.spacing:.1f} deg of a spectrum image")
        t0 = time.perf_counter()
        std = self.refresh_uncertainty(solver)
        cands = [a for a in s.remaining if _far_enough(a, s.chem_angles, self.spacing)]
        angles = ([float(s.angle)] if here_ok else []) + cands
        if not angles:
            return self._new(s, WAIT, f"no planned tilt left at least {self.spacing:.1f} deg "
                             "from the spectrum images taken",
                             seconds=time.perf_counter() - t0)
        g = candidate_gains(solver, angles, metric=self.params.metric,
                            samples=None if self.state is None else self.state.solutions,
                            std=std)
        dose = max(s.chem_dose_per_map, 1e-12)
        gpd = g.total / dose
        best = int(np.argmax(gpd))
        ratio = float(np.mean(g.variance_ratio[best]))
        cand_list = [{"angle": float(a), "gain_per_dose": float(v)}
                     for a, v in zip(g.angles, gpd, strict=True)]
        kw: dict[str, Any] = {
            "gain_per_dose": float(gpd[0]) if here_ok else None,
            "best_angle": float(g.angles[best]), "best_gain_per_dose": float(gpd[best]),
            "variance_ratio": ratio, "candidates": cand_list}
        if g.variance_reduction is not None:
            kw["variance_reduction"] = {e: float(v) for e, v in zip(
                g.elements, g.variance_reduction[0 if here_ok else best], strict=True)}
        if ratio < self.params.stop_ratio and len(s.chem_angles) >= self.params.min_maps:
            self.stopped = (f"diminishing returns: at the best remaining tilt "
                            f"({g.angles[best]:+.1f} deg) the reconstruction already predicts "
                            f"the maps to {ratio:.3g} of a spectrum image's noise variance "
                            f"(stop below {self.params.stop_ratio:g})")
            return self._new(s, STOP, self.stopped, seconds=time.perf_counter() - t0, **kw)
        if not here_ok:
            return self._new(s, WAIT, f"within {self.spacing:.1f} deg of a spectrum image; "
                             f"best ahead {g.angles[best]:+.1f} deg ({gpd[best]:.3g} nats "
                             "per e/A^2)", seconds=time.perf_counter() - t0, **kw)
        picks = self._greedy(g.angles, gpd, self._budget_left(s))
        kw["seconds"] = time.perf_counter() - t0
        if 0 in picks:
            return self._new(s, ACQUIRE, f"gain here {gpd[0]:.3g} nats per e/A^2 is among the "
                             f"best {len(picks)} of {len(angles)} remaining tilts (best "
                             f"{g.angles[best]:+.1f} deg, {gpd[best]:.3g})", **kw)
        return self._new(s, WAIT, f"better tilts ahead: {g.angles[best]:+.1f} deg "
                         f"({gpd[best]:.3g} nats per e/A^2) vs here {gpd[0]:.3g}", **kw)

    def _greedy(self, angles: np.ndarray, gain: np.ndarray, budget: int | None) -> list[int]:
        """Indices a greedy choice of `budget` tilts picks (highest gain first, keeping
        the minimum spacing between picks)."""
        k = len(angles) if budget is None else budget
        picks: list[int] = []
        for i in np.argsort(-gain, kind="stable"):
            if len(picks) >= k:
                break
            if all(abs(angles[i] - angles[j]) >= self.spacing - SPACING_TOL for j in picks):
                picks.append(int(i))
        return picks


def make_policy(name: str, params: AdvisorParams, planned: Sequence[float]) -> _Policy:
    """The policy called `name` (adaptive, uniform, random) over the planned tilts."""
    if name == "adaptive":
        return AdaptiveAdvisor(params, planned)
    if name == "uniform":
        return UniformPolicy(params, planned)
    if name == "random":
        return RandomPolicy(params, planned)
    raise AdvisorError(f"policy must be one of {list(POLICIES)}, got {name!r}")


Policy = _Policy
__all__ = ["ACQUIRE", "ACTIONS", "POLICIES", "STOP", "WAIT", "AdaptiveAdvisor", "Advice",
           "AdvisorError", "AdvisorParams", "Policy", "RandomPolicy", "SeriesState",
           "UniformPolicy", "auto_spacing", "make_policy"]
