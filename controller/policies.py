"""Spectroscopy policies: what a policy is told, what it answers, and the two fixed ones.

After every HAADF tilt the controller asks a policy whether to take a spectrum image at the
current stage tilt; the answer is an `Advice` (acquire now, wait, stop spectroscopy).
- `UniformPolicy`: K maps at evenly spaced tilts of the plan (the usual practice).
- `RandomPolicy`: K maps at tilts drawn at random from the plan (seeded).
- the adaptive advisor (controller/adaptive.py) decides from the reconstruction.
The budget is a number of maps (`chem_maps`), a chemical dose, or, when neither is given,
the plan's own spectrum images (`planned_maps`, from the series start): a policy never
takes more than the budget allows (`allowed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusetomo.core.angles import same_angle
from fusetomo.core.errors import FusetomoError
from fusetomo.solver.design import Metric

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
    """The advisor's budget, coverage and stop rule."""

    chem_maps: int | None = None  # at most this many spectrum images (None: no limit)
    chem_dose_budget: float | None = None  # e/A^2 for spectroscopy (None: no limit)
    # The plan's spectrum images: the budget when none is given (the controller sets it
    # from the series start; None: the plan has none).
    planned_maps: int | None = None
    # Stop rule (controller/adaptive.py): stop once the next map would lower the
    # posterior's predicted <NRMSE> by less than this fraction.
    stop_gain: float = 0.055
    min_maps: int = 3  # the stop rule plans at least this many maps
    # Coverage: the largest gap between maps (ends counted double) stays within
    # (1 + gap_slack) x the even spacing of the maps the advisor plans.
    gap_slack: float = 0.25
    min_spacing_deg: float | None = None  # None: half the even spacing of the planned maps
    # Before the first map nothing can be predicted: 'uniform' takes it where even spacing
    # of the planned maps puts the first; 'now' at the very first tilt.
    first_map: str = "uniform"
    metric: Metric = "jacobi"  # 'jacobi' (cheap std) or 'sampled' (posterior samples)
    probes: int = 4  # posterior samples of the 'sampled' metric
    cg_iterations: int = 30
    seed: int = 0  # RandomPolicy's draw

    def __post_init__(self) -> None:
        for name in ("chem_maps", "planned_maps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise AdvisorError(f"{name} must be an integer >= 1 (or None), got {v!r}")
        if self.chem_dose_budget is not None and not (math.isfinite(self.chem_dose_budget)
                                                      and self.chem_dose_budget > 0):
            raise AdvisorError(f"chem_dose_budget must be > 0 e/A^2, got "
                               f"{self.chem_dose_budget!r}")
        if self.min_spacing_deg is not None and not (math.isfinite(self.min_spacing_deg)
                                                     and 0 <= self.min_spacing_deg < 180):
            raise AdvisorError(f"min_spacing_deg must lie in [0, 180), got "
                               f"{self.min_spacing_deg!r}")
        if not (math.isfinite(self.stop_gain) and 0 <= self.stop_gain < 1):
            raise AdvisorError(f"stop_gain must lie in [0, 1), got {self.stop_gain!r}")
        if not (math.isfinite(self.gap_slack) and self.gap_slack >= 0):
            raise AdvisorError(f"gap_slack must be >= 0, got {self.gap_slack!r}")
        if isinstance(self.min_maps, bool) or not isinstance(self.min_maps, int) \
                or self.min_maps < 1:
            raise AdvisorError(f"min_maps must be an integer >= 1, got {self.min_maps!r}")
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
    chem_maps_allowed: int | None = None  # the budget's maps, or the plan's without one
    chem_maps_planned: int | None = None  # the maps the adaptive advisor now plans in all
    predicted_nrmse: float | None = None  # the posterior's <NRMSE> with the maps taken
    next_map_gain: float | None = None  # predicted relative drop of <NRMSE> by one more map
    max_gap_deg: float | None = None  # the largest gap between maps (ends counted double)
    gap_limit_deg: float | None = None  # what coverage allows
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


class _Policy:
    name = "policy"

    def __init__(self, params: AdvisorParams, planned: Sequence[float]) -> None:
        self.params = params
        self.planned = [float(a) for a in planned]
        self._next_id = 0

    def allowed(self, dose_per_map: float) -> int | None:
        """Spectrum images the budget allows in all (the maps budget, the dose budget's
        maps, or the plan's spectrum images when neither is given; None: no limit)."""
        p = self.params
        out: list[int] = []
        if p.chem_maps is not None:
            out.append(p.chem_maps)
        if p.chem_dose_budget is not None and dose_per_map > 0:
            out.append(math.floor(p.chem_dose_budget / dose_per_map + 1e-9))
        if not out and p.planned_maps is not None:
            out.append(p.planned_maps)
        return min(out) if out else None

    def _budget_left(self, s: SeriesState) -> int | None:
        """Spectrum images still allowed (None: unlimited)."""
        p = self.params
        left: list[int] = []
        if p.chem_maps is not None:
            left.append(p.chem_maps - len(s.chem_angles))
        if p.chem_dose_budget is not None and s.chem_dose_per_map > 0:
            left.append(math.floor((p.chem_dose_budget - s.chem_dose_used)
                                   / s.chem_dose_per_map + 1e-9))
        if not left and p.planned_maps is not None:
            left.append(p.planned_maps - len(s.chem_angles))
        return min(left) if left else None

    def _new(self, s: SeriesState, action: str, reason: str, **kw: Any) -> Advice:
        self._next_id += 1
        p = self.params
        return Advice(id=self._next_id, tilt_seq=s.tilt_seq, angle=float(s.angle),
                      action=action, reason=reason, chem_maps_used=len(s.chem_angles),
                      chem_maps_budget=p.chem_maps,
                      chem_maps_allowed=self.allowed(s.chem_dose_per_map),
                      chem_dose_used=float(s.chem_dose_used),
                      chem_dose_budget=p.chem_dose_budget, policy=self.name, **kw)

    def _budget_advice(self, s: SeriesState) -> Advice | None:
        left = self._budget_left(s)
        if left is not None and left <= 0:
            p = self.params
            n = len(s.chem_angles)
            if p.chem_maps is not None and n >= p.chem_maps:
                what = f"{n} of {p.chem_maps} maps taken"
            elif p.chem_dose_budget is not None:
                what = (f"chemical dose {s.chem_dose_used:.4g} of {p.chem_dose_budget} "
                        "e/A^2 spent")
            else:
                what = f"{n} of the plan's {p.planned_maps} maps taken"
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


Policy = _Policy
