"""Tilt schemes: the angles of a series (`TiltScheme`, what the forward model simulates)
and ordered acquisition plans (`TiltPlan`, what an instrument walks).

A plan is the list of steps the microscope goes through, in order; each step is a tilt angle
and whether a spectrum image (EELS/EDX) is taken there. A chemical tilt always comes with its
simultaneous HAADF image, so every step yields a HAADF image and chemical steps also a
spectrum image.

- `sequential`: from one end of the tilt range to the other (low to high unless `descending`).
- `dose_symmetric`: Hagen's scheme, starting at `start` (0 degrees) and alternating sides:
  0, +s, -s, +2s, -2s, ... (`group` consecutive tilts per side before switching; Hagen et al.
  2017 use groups of 2 or more). When one side of the range is used up the other continues.
- `from_angles`: explicit HAADF and chemical angle lists, put in either order.

Chemical angles that do not lie on the HAADF grid are added to it (a spectrum image always
yields a HAADF image too). Angles the same to 1e-6 degree (`fusetomo.core.angles`) are the
same tilt.
Every invalid value raises `SchemeError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fusetomo.core.angles import angle_key
from fusetomo.core.errors import FusetomoError

SEQUENTIAL, DOSE_SYMMETRIC = "sequential", "dose-symmetric"
ORDERS = (SEQUENTIAL, DOSE_SYMMETRIC)
MAX_STEPS = 10_000


@dataclass(frozen=True)
class TiltScheme:
    """Tilt angles: a range with HAADF and chemical steps, or explicit lists (degrees)."""

    tilt_range: tuple[float, float] = (-70.0, 70.0)
    haadf_step: float = 3.0
    chem_step: float = 15.0
    haadf_angles: tuple[float, ...] | None = None
    chem_angles: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        lo, hi = self.tilt_range
        if not -90 <= lo < hi <= 90:
            raise ValueError(f"tilt range must satisfy -90 <= lo < hi <= 90, got {(lo, hi)}")
        if self.haadf_step <= 0 or self.chem_step <= 0:
            raise ValueError("tilt steps must be > 0")

    def haadf(self) -> np.ndarray:
        if self.haadf_angles is not None:
            return np.asarray(self.haadf_angles, dtype=np.float64)
        lo, hi = self.tilt_range
        return np.arange(lo, hi + 1e-9, self.haadf_step)

    def chem(self) -> np.ndarray:
        if self.chem_angles is not None:
            return np.asarray(self.chem_angles, dtype=np.float64)
        lo, hi = self.tilt_range
        return np.arange(lo, hi + 1e-9, self.chem_step)


class SchemeError(FusetomoError, ValueError):
    """A tilt scheme with a bad range, step, angle or order; the message names the value."""


@dataclass(frozen=True)
class PlanStep:
    angle: float  # degrees
    with_spectrum: bool  # a spectrum image (with its simultaneous HAADF) at this tilt


@dataclass(frozen=True)
class TiltPlan:
    """An ordered acquisition plan; iterates, indexes and measures like its list of steps."""

    steps: tuple[PlanStep, ...]
    order: str

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise SchemeError(f"tilt order {self.order!r} is not one of {list(ORDERS)}")
        if not self.steps:
            raise SchemeError("a tilt plan needs at least one step")
        if len(self.steps) > MAX_STEPS:
            raise SchemeError(f"a tilt plan of {len(self.steps)} steps exceeds {MAX_STEPS}")
        seen: set[float] = set()
        for s in self.steps:
            _check_angle(s.angle, "plan angle")
            key = angle_key(s.angle)
            if key in seen:
                raise SchemeError(f"tilt {s.angle} appears twice in the plan")
            seen.add(key)

    def __iter__(self) -> Iterator[PlanStep]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> PlanStep:
        return self.steps[i]

    @property
    def haadf_angles(self) -> list[float]:
        """Every step's angle, in acquisition order."""
        return [s.angle for s in self.steps]

    @property
    def chem_angles(self) -> list[float]:
        """The chemical steps' angles, in acquisition order."""
        return [s.angle for s in self.steps if s.with_spectrum]

    @property
    def n_chem(self) -> int:
        return sum(1 for s in self.steps if s.with_spectrum)

    def tilt_scheme(self) -> TiltScheme:
        """The same tilts, sorted ascending, as the forward model's `TiltScheme` (so that
        `simulate` over it gives the series an offline `fusetomo simulate` would)."""
        return TiltScheme(haadf_angles=tuple(sorted(self.haadf_angles)),
                          chem_angles=tuple(sorted(self.chem_angles)))

    def as_header(self) -> dict[str, object]:
        """The `scheme` field of series_start."""
        return {"haadf_angles": self.haadf_angles, "chem_angles": self.chem_angles,
                "order": self.order}


# -- validation helpers ---------------------------------------------------------------------
def _check_angle(angle: float, what: str) -> float:
    if isinstance(angle, bool):
        raise SchemeError(f"{what} {angle!r} is not a number")
    try:
        a = float(angle)
    except (TypeError, ValueError):
        raise SchemeError(f"{what} {angle!r} is not a number") from None
    if not math.isfinite(a) or abs(a) > 90:
        raise SchemeError(f"{what} {angle!r} must be finite and within [-90, 90] degrees")
    return a


def _check_range(tilt_range: Sequence[float]) -> tuple[float, float]:
    if len(tilt_range) != 2:
        raise SchemeError(f"tilt range must be (lo, hi), got {tuple(tilt_range)!r}")
    lo = _check_angle(tilt_range[0], "tilt range low end")
    hi = _check_angle(tilt_range[1], "tilt range high end")
    if not lo < hi:
        raise SchemeError(f"tilt range must satisfy lo < hi, got {(lo, hi)}")
    return lo, hi


def _check_step(step: float, name: str, span: float) -> float:
    try:
        s = float(step)
    except (TypeError, ValueError):
        raise SchemeError(f"{name} {step!r} is not a number") from None
    if not math.isfinite(s) or s <= 0:
        raise SchemeError(f"{name} must be a finite number > 0, got {step!r}")
    if span / s + 1 > MAX_STEPS:
        raise SchemeError(f"{name} {s} gives more than {MAX_STEPS} tilts over {span} degrees")
    return s


def _check_group(group: int) -> int:
    if isinstance(group, bool) or not isinstance(group, int | np.integer) or group < 1:
        raise SchemeError(f"dose-symmetric group must be an integer >= 1, got {group!r}")
    return int(group)


# -- ordering -------------------------------------------------------------------------------
def _merge(haadf: Sequence[float], chem: Sequence[float]) -> dict[int, PlanStep]:
    """Angle key -> step: the HAADF angles plus any chemical angle not among them."""
    steps: dict[int, PlanStep] = {}
    for a in haadf:
        steps.setdefault(angle_key(a), PlanStep(float(a), False))
    for a in chem:
        k = angle_key(a)
        angle = steps[k].angle if k in steps else float(a)
        steps[k] = PlanStep(angle, True)
    return steps


def _sequential_order(steps: dict[int, PlanStep], descending: bool) -> list[PlanStep]:
    return sorted(steps.values(), key=lambda s: s.angle, reverse=descending)


def _symmetric_order(steps: dict[int, PlanStep], start: float, group: int) -> list[PlanStep]:
    """First the tilt at `start` (if planned), then `group` tilts on the positive side, then
    `group` on the negative side, each side moving away from `start`, and so on."""
    k0 = angle_key(start)
    first = [steps[k] for k in steps if k == k0]
    pos = sorted((s for k, s in steps.items() if k > k0), key=lambda s: s.angle)
    neg = sorted((s for k, s in steps.items() if k < k0), key=lambda s: -s.angle)
    out = list(first)
    i = j = 0
    while i < len(pos) or j < len(neg):
        out.extend(pos[i:i + group])
        i += group
        out.extend(neg[j:j + group])
        j += group
    return out


# -- public constructors --------------------------------------------------------------------
def sequential(tilt_range: Sequence[float] = (-70.0, 70.0), haadf_step: float = 3.0,
               chem_step: float = 15.0, *, descending: bool = False) -> TiltPlan:
    """HAADF every `haadf_step` and spectra every `chem_step` degrees from lo (the grid of
    `forward.TiltScheme`), acquired from one end of the range to the other."""
    lo, hi = _check_range(tilt_range)
    hs = _check_step(haadf_step, "HAADF step", hi - lo)
    cs = _check_step(chem_step, "chemical step", hi - lo)
    haadf = np.arange(lo, hi + 1e-9, hs)
    chem = np.arange(lo, hi + 1e-9, cs)
    return TiltPlan(tuple(_sequential_order(_merge(haadf, chem), descending)), SEQUENTIAL)


def _grid_around(start: float, lo: float, hi: float, step: float) -> np.ndarray:
    k_lo = -math.floor((start - lo) / step + 1e-9)
    k_hi = math.floor((hi - start) / step + 1e-9)
    return start + np.arange(k_lo, k_hi + 1) * step


def dose_symmetric(tilt_range: Sequence[float] = (-70.0, 70.0), haadf_step: float = 3.0,
                   chem_step: float = 15.0, *, start: float = 0.0, group: int = 1) -> TiltPlan:
    """Hagen's dose-symmetric scheme: HAADF at start + k*haadf_step and spectra at
    start + k*chem_step within the range, acquired 0, +s, -s, +2s, -2s, ... (group 1)."""
    lo, hi = _check_range(tilt_range)
    hs = _check_step(haadf_step, "HAADF step", hi - lo)
    cs = _check_step(chem_step, "chemical step", hi - lo)
    st = _check_angle(start, "dose-symmetric start angle")
    if not lo <= st <= hi:
        raise SchemeError(f"dose-symmetric start angle {start!r} lies outside the tilt range "
                          f"{(lo, hi)}")
    g = _check_group(group)
    steps = _merge(_grid_around(st, lo, hi, hs), _grid_around(st, lo, hi, cs))
    return TiltPlan(tuple(_symmetric_order(steps, st, g)), DOSE_SYMMETRIC)


def from_angles(haadf_angles: Sequence[float], chem_angles: Sequence[float] = (),
                order: str = SEQUENTIAL, *, start: float = 0.0, group: int = 1,
                descending: bool = False) -> TiltPlan:
    """A plan over explicit angle lists (degrees), put in `order`."""
    if order not in ORDERS:
        raise SchemeError(f"tilt order {order!r} is not one of {list(ORDERS)}")
    haadf = [_check_angle(a, "HAADF angle") for a in haadf_angles]
    chem = [_check_angle(a, "chemical angle") for a in chem_angles]
    if not haadf and not chem:
        raise SchemeError("explicit tilt lists are both empty")
    for name, angles in (("HAADF", haadf), ("chemical", chem)):
        keys = [angle_key(a) for a in angles]
        if len(set(keys)) != len(keys):
            dup = next(a for a, k in zip(angles, keys, strict=True) if keys.count(k) > 1)
            raise SchemeError(f"{name} angle {dup} is listed twice")
    steps = _merge(haadf, chem)
    if order == SEQUENTIAL:
        return TiltPlan(tuple(_sequential_order(steps, descending)), SEQUENTIAL)
    st = _check_angle(start, "dose-symmetric start angle")
    return TiltPlan(tuple(_symmetric_order(steps, st, _check_group(group))), DOSE_SYMMETRIC)


def make_plan(order: str = SEQUENTIAL, tilt_range: Sequence[float] = (-70.0, 70.0),
              haadf_step: float = 3.0, chem_step: float = 15.0, *,
              haadf_angles: Sequence[float] | None = None,
              chem_angles: Sequence[float] | None = None) -> TiltPlan:
    """The plan of one of `ORDERS`, over a range grid or over explicit lists (either list
    given replaces the grid; a missing chemical list means no spectra beyond those listed)."""
    if order not in ORDERS:
        raise SchemeError(f"tilt scheme {order!r} is not one of {list(ORDERS)}")
    if haadf_angles is not None or chem_angles is not None:
        return from_angles(haadf_angles or (), chem_angles or (), order)
    if order == SEQUENTIAL:
        return sequential(tilt_range, haadf_step, chem_step)
    return dose_symmetric(tilt_range, haadf_step, chem_step)
