"""A simulated microscope that serves a tilt series over the fusetomo wire protocol.

`SimulatedInstrument` is an `InstrumentSession` (adapters/instrument: the socket, delivery,
commands, plan walking, holding for advice, exactly as the Nion adapter) over a
`SimulatedMicroscope` (simulators/microscope.py: the physics). It precomputes every
projection of its plan (one `forward.simulate` call, or a series/run file read for
replay), binds an `InstrumentServer` (ROUTER) and, after the controller's first `hello`,
walks the plan step by step, each step taking the step's time divided by the speed factor:
at each step a `haadf_tilt`, and at chemical steps also a `chem_tilt` with one float32 count
frame per element (series order). `series_start` is seq 0; `series_end` is last.

Holding for advice (`hold_for_advice`): the plan is HAADF-only and a spectrum image can be
had at every planned tilt (all are simulated up front, one noise draw). After each plan
step the instrument holds at that tilt until the controller decides: `acquire_spectrum`
(the spectrum image at this tilt: a `chem_tilt` whose `haadf_seq` is the step's HAADF
image, which is not repeated) or `continue`. With no decision within `hold_timeout_s` it
goes on by itself (logged). series_start says `holds_for_advice: true`.

Dose accounting: every tilt header carries its own dose (`dose_e_per_A2`) and the cumulative
dose per modality so far (`dose_total_e_per_A2` {haadf, chem}); series_end carries the
totals. Manual acquisitions (`acquire_haadf`, `acquire_spectrum` with `dose` or `dwell_ms`)
are projected on demand at the commanded dose; replayed ones take the file's frame.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from fusetomo.adapters.instrument.commands import InstrumentStats
from fusetomo.adapters.instrument.plans import (
    ORDERS,
    SEQUENTIAL,
    TiltPlan,
    TiltScheme,
    from_angles,
    make_plan,
)
from fusetomo.adapters.instrument.session import InstrumentSession, SessionConfig
from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import read_series, total_dose
from fusetomo.adapters.transport import DEFAULT_BIND, CurveKeys
from fusetomo.core.angles import angle_key
from fusetomo.simulators.forward import AcquisitionParams, simulate
from fusetomo.simulators.microscope import (
    InstrumentError,
    SimulatedMicroscope,
    Timing,
    apply_shift,
)
from fusetomo.simulators.specimens import check_size, make_specimen, resample

log = logging.getLogger("fusetomo.instrument")

SERIES_ID_MAX = 200

__all__ = ["InstrumentError", "InstrumentParams", "InstrumentStats", "SimulatedInstrument",
           "apply_shift"]


@dataclass
class InstrumentParams:
    """What the simulated instrument acquires and how fast. Times are seconds at speed 1."""

    specimen: str = "nanocubes"  # built-in name or HDF5 specimen file
    size: int = 64
    seed: int = 0
    scheme: str = SEQUENTIAL  # 'sequential' | 'dose-symmetric'
    tilt_range: tuple[float, float] = (-70.0, 70.0)
    haadf_step: float = 3.0
    chem_step: float = 15.0
    haadf_angles: tuple[float, ...] | None = None  # explicit lists replace the range grid
    chem_angles: tuple[float, ...] | None = None
    speed: float = 1.0
    t_tilt: float = 2.0
    t_track: float = 1.0
    t_haadf_scan: float = 4.0
    t_spectrum_image: float = 60.0
    drift_sigma_px: float = 0.0  # 0: off
    axis_offset_px: float = 0.0  # 0: off
    auto: bool = True  # follow the plan by itself (False: start paused; `resume` runs it)
    window: int = 64  # max unacknowledged data messages in flight
    source: str | Path | None = None  # series/run file to replay instead of simulating
    bind: str = DEFAULT_BIND
    curve: CurveKeys | None = None  # CURVE server keys, for a controller on another host
    series_id: str | None = None  # default: a fresh 'sim-...' id
    acquisition: AcquisitionParams = field(default_factory=AcquisitionParams)
    dose_budget: float | None = None  # e/A^2; default: the plan's total dose
    hold_for_advice: bool = False  # hold after each tilt for acquire_spectrum / continue
    hold_timeout_s: float = 120.0  # then go on without a spectrum image
    haadf_only: bool = False  # a HAADF-only series: no element announced, no spectrum image

    def __post_init__(self) -> None:
        if self.source is None:
            try:
                check_size(self.size)
            except ValueError as e:
                raise InstrumentError(str(e)) from None
        if self.scheme not in ORDERS:
            raise InstrumentError(f"tilt scheme {self.scheme!r} is not one of {list(ORDERS)}")
        _positive("speed", self.speed)
        if self.haadf_only and (self.hold_for_advice or self.source is not None):
            raise InstrumentError("haadf_only simulates a series without spectrum images: it "
                                  "takes no advice and no replay source (a HAADF-only file "
                                  "replays as it is)")
        if self.hold_for_advice and self.source is not None:
            raise InstrumentError("hold_for_advice needs a simulated series (a replayed "
                                  "file has spectrum images only where they were taken)")
        for name in ("t_tilt", "t_track", "t_haadf_scan", "t_spectrum_image",
                     "drift_sigma_px", "hold_timeout_s"):
            _non_negative(name, getattr(self, name))
        if not math.isfinite(self.axis_offset_px):
            raise InstrumentError(f"axis_offset_px must be finite, got {self.axis_offset_px}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise InstrumentError(f"window must be an integer >= 1, got {self.window!r}")
        if self.series_id is not None and not 0 < len(self.series_id) <= SERIES_ID_MAX:
            raise InstrumentError(f"series id must be 1..{SERIES_ID_MAX} characters, got "
                                  f"{self.series_id!r}")
        if self.dose_budget is not None:
            _positive("dose_budget", self.dose_budget)
        if self.source is not None and (self.haadf_angles is not None
                                        or self.chem_angles is not None):
            raise InstrumentError("give either a replay source file or explicit tilt angles, "
                                  f"not both (source {str(self.source)!r})")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise InstrumentError(f"{name} must be a finite number > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise InstrumentError(f"{name} must be a finite number >= 0, got {value!r}")


class SimulatedInstrument(InstrumentSession):
    """A simulated (or replaying) microscope behind an `InstrumentServer`."""

    def __init__(self, params: InstrumentParams, *, ctx: zmq.Context | None = None) -> None:
        self.params = params
        series_id = params.series_id or f"sim-{uuid.uuid4().hex[:12]}"
        self._acq = params.acquisition
        self._fine: np.ndarray | None = None  # fine specimen volumes (simulated source)
        self._Z = np.zeros(0)
        if params.source is not None:
            plan, series = self._load_source(Path(params.source))
        else:
            plan, series = self._simulate()
        self.series = series
        for s in plan:
            if angle_key(s.angle) not in {angle_key(a) for a in series.haadf_angles}:
                raise InstrumentError(f"no HAADF image at planned tilt {s.angle}")
            if s.with_spectrum and angle_key(s.angle) not in {
                    angle_key(a) for a in series.common_chem_angles}:
                raise InstrumentError(f"no chemical maps at planned tilt {s.angle}")
        attrs = series.attrs
        self.haadf_dose = _number(attrs.get("haadf_dose_e_per_A2"))
        self.chem_dose = _number(attrs.get("chem_dose_e_per_A2"))
        budget = params.dose_budget
        if budget is None:
            # Holding for advice, the plan has no spectrum image: the budget still counts
            # those the plain plan would take (chem_step), so that it means the same.
            budget = total_dose(attrs, len(plan), getattr(self, "_budget_chem", plan.n_chem))
        self.dose_budget = budget
        p = params
        timing = Timing(p.speed, p.t_tilt, p.t_track, p.t_haadf_scan, p.t_spectrum_image,
                        p.drift_sigma_px, p.axis_offset_px, p.seed)
        scope = SimulatedMicroscope(series, timing, fine=self._fine, Z=self._Z,
                                    acq=self._acq, haadf_dose=self.haadf_dose,
                                    chem_dose=self.chem_dose)
        config = SessionConfig(
            series_id, plan, tuple(series.elements), self._start_fields(plan, series),
            haadf_dwell_us=scope.haadf_dwell_us, exposure_ms=scope.exposure_ms,
            haadf_dose=self.haadf_dose, chem_dose=self.chem_dose, bind=p.bind,
            curve=p.curve, window=p.window, auto=p.auto, hold_for_advice=p.hold_for_advice,
            hold_timeout_s=p.hold_timeout_s)
        super().__init__(config, scope, ctx=ctx, error_type=InstrumentError)

    # -- data preparation ---------------------------------------------------------------
    def _simulate(self) -> tuple[TiltPlan, TiltSeries]:
        p = self.params
        plan = make_plan(p.scheme, p.tilt_range, p.haadf_step, p.chem_step,
                         haadf_angles=p.haadf_angles, chem_angles=p.chem_angles)
        scheme = plan.tilt_scheme()
        self._budget_chem = plan.n_chem  # the plan's spectrum images, for the dose budget
        if p.hold_for_advice:
            # HAADF-only plan; a spectrum image is simulated at every tilt for the taking.
            plan = from_angles(plan.haadf_angles, [], p.scheme)
            grid = tuple(sorted(plan.haadf_angles))
            scheme = TiltScheme(haadf_angles=grid, chem_angles=grid)
        elif plan.n_chem == 0 and not p.haadf_only:
            raise InstrumentError("the tilt plan has no chemical tilt; the simulated series "
                                  "needs at least one spectrum image")
        o = self._acq.oversample
        spec = make_specimen(p.specimen, p.size * o, seed=p.seed)
        if spec.size != p.size * o:
            spec = resample(spec, p.size * o)
        sim = simulate(spec, p.size, scheme, self._acq, seed=p.seed)
        self._fine = spec.volumes
        self._Z = np.asarray(spec.Z)
        series = sim.series
        if p.haadf_only:  # the HAADF images alone, announced with no element
            plan = from_angles(plan.haadf_angles, [], p.scheme)
            series = TiltSeries(series.haadf, series.haadf_angles, {}, {}, gamma=series.gamma,
                                pixel_size_nm=series.pixel_size_nm, attrs=dict(series.attrs))
        log.info("simulated %s at size %d: %d HAADF + %d chemical tilts (%s)", spec.name,
                 p.size, len(plan), plan.n_chem, plan.order)
        return plan, series

    def _load_source(self, path: Path) -> tuple[TiltPlan, TiltSeries]:
        series = read_series(path)
        haadf = {angle_key(a) for a in series.haadf_angles}
        for a in series.common_chem_angles:
            if angle_key(a) not in haadf:
                raise InstrumentError(f"{path}: chemical tilt {float(a)} has no HAADF image, "
                                      "so it cannot be replayed (a spectrum image always "
                                      "comes with its HAADF)")
        plan = from_angles(series.haadf_angles.tolist(), series.common_chem_angles.tolist(),
                           self.params.scheme)
        log.info("replaying %s: %d HAADF + %d chemical tilts (%s)", path, len(plan),
                 plan.n_chem, plan.order)
        return plan, series

    def _start_fields(self, plan: TiltPlan, s: TiltSeries) -> dict[str, Any]:
        p = self.params
        return {
            "elements": list(s.elements),
            "Z": {e: int(s.Z[e]) for e in s.elements},
            "shape": list(s.shape),
            "scheme": plan.as_header(),
            "dose_budget_e_per_A2": self.dose_budget,
            "pixel_size_nm": s.pixel_size_nm,
            "gamma": s.gamma,
            "background": {e: float(s.background.get(e, 0.0)) for e in s.elements},
            "haadf_dose_e_per_A2": self.haadf_dose,
            "chem_dose_e_per_A2": self.chem_dose,
            "specimen": str(s.attrs.get("specimen", p.specimen)),
            "source": None if p.source is None else str(p.source),
            "seed": p.seed,
            "speed": p.speed,
            "drift_sigma_px": p.drift_sigma_px,
            "axis_offset_px": p.axis_offset_px,
            "auto": p.auto,
            "window": p.window,
            "holds_for_advice": p.hold_for_advice,
            # Holding, the plan is HAADF-only: the spectrum images it had (the advisor's
            # allowance when no budget is given).
            "planned_chem_maps": self._budget_chem if p.hold_for_advice else None,
        }

    def nominal_dwell_ms(self, spectrum: bool) -> float:
        """Per-pixel dwell (ms) of a plan acquisition: scan time over the pixels."""
        c = self.config
        return c.exposure_ms if spectrum else c.haadf_dwell_us / 1000.0


def _number(value: Any) -> float:
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        v = float(value)
        if math.isfinite(v) and v >= 0:
            return v
    return 0.0
