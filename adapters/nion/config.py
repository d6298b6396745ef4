"""What the Nion Swift tomography adapter acquires, and from which controls and devices."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from fusetomo.adapters.instrument.plans import (
    ORDERS,
    SEQUENTIAL,
    SchemeError,
    TiltPlan,
    from_angles,
    make_plan,
)
from fusetomo.adapters.spectra import (
    DEFAULT_EDX_LINES,
    DEFAULT_EELS_EDGES,
    EdgeWindow,
    EdxWindow,
)
from fusetomo.adapters.transport import DEFAULT_BIND, CurveKeys
from fusetomo.core.elements import ATOMIC_NUMBER
from fusetomo.core.errors import FusetomoError

EELS, EDX = "eels", "edx"
SERIES_ID_MAX = 200


class NionAdapterError(FusetomoError, ValueError):
    """A bad adapter setting, or a microscope that lacks what the adapter needs; the message
    names the value (a missing control, device or channel by its name)."""


@dataclass(frozen=True)
class NionTomoConfig:
    """One tilt series at a Nion microscope.

    Angles in degrees; the tilt control is driven in radians. `size` is the scan's pixels a
    side for HAADF scans and spectrum images alike (the controller needs one image shape).
    `haadf_dwell_us` is the HAADF-only scan's pixel time; `exposure_ms` the camera exposure
    per spectrum-image pixel (the scan then dwells as long). `fov_nm`, `rotation_deg`: None
    keeps what the scan is set to. `transpose`: the tilt axis runs along the scan's x axis
    (columns); fusetomo wants it along axis 0, so images are transposed.
    """

    elements: tuple[str, ...]
    # tilt plan (see simulators/schemes.py)
    scheme: str = SEQUENTIAL
    tilt_range: tuple[float, float] = (-70.0, 70.0)
    haadf_step: float = 3.0
    chem_step: float = 15.0
    haadf_angles: tuple[float, ...] | None = None
    chem_angles: tuple[float, ...] | None = None
    # the stage
    tilt_control: str = "StageOutA"
    tilt_tolerance_factor: float = 1.0  # SetValAndConfirm's tolfactor
    tilt_timeout_ms: int = 60_000
    settle_s: float = 0.0  # wait after the tilt is confirmed
    # scans and spectra
    size: int = 256
    haadf_dwell_us: float = 4.0
    exposure_ms: float = 10.0
    fov_nm: float | None = None
    rotation_deg: float | None = None
    haadf_channel: str = "HAADF"
    haadf_per_us: bool = False  # divide HAADF images by their pixel time (integrating ADCs)
    transpose: bool = False
    spectra: str = EELS  # 'eels' | 'edx'
    camera_binning: int = 1
    edge_windows: Mapping[str, EdgeWindow] | None = None  # adds to / overrides the defaults
    edx_windows: Mapping[str, EdxWindow] | None = None
    # devices: None = the STEM controller's own (first stem controller, its scan, its EELS)
    instrument_id: str | None = None
    scan_id: str | None = None
    camera_id: str | None = None
    # series metadata
    Z: Mapping[str, int] | None = None  # default: atomic numbers
    gamma: float | None = None  # HAADF exponent for the fusion model (None: controller's)
    beam_current_pa: float | None = None  # None: the `BeamCurrent` control (A), if any
    dose_budget: float | None = None  # e/A^2; None: the plan's total
    # protocol
    bind: str = DEFAULT_BIND
    curve: CurveKeys | None = None
    series_id: str | None = None  # default: a fresh 'nion-...' id
    window: int = 64
    auto: bool = True  # run the plan once the controller says hello (False: wait for resume)
    # Hold at each tilt for the controller's decision (docs/protocol.md, "Holding for
    # advice"): a HAADF-only plan, a spectrum image where `acquire_spectrum` asks for one.
    hold_for_advice: bool = False
    hold_timeout_s: float = 120.0  # then go on without a spectrum image
    extra: Mapping[str, object] = field(default_factory=dict)  # added to series_start

    def __post_init__(self) -> None:
        els = tuple(self.elements)
        object.__setattr__(self, "elements", els)
        if not els:
            raise NionAdapterError("elements must name at least one element")
        for e in els:
            if e not in ATOMIC_NUMBER:
                raise NionAdapterError(f"unknown element {e!r}")
        if len(set(els)) != len(els):
            raise NionAdapterError(f"duplicate element in {list(els)}")
        if self.spectra not in (EELS, EDX):
            raise NionAdapterError(f"spectra must be {EELS!r} or {EDX!r}, got {self.spectra!r}")
        given, defaults = ((self.edge_windows or {}, DEFAULT_EELS_EDGES)
                           if self.spectra == EELS else (self.edx_windows or {},
                                                         DEFAULT_EDX_LINES))
        for e in els:
            if e not in given and e not in defaults:
                where = "edge_windows" if self.spectra == EELS else "edx_windows"
                raise NionAdapterError(f"no default {self.spectra.upper()} window for element "
                                       f"{e!r}; give one in {where}")
        if self.scheme not in ORDERS:
            raise NionAdapterError(f"scheme {self.scheme!r} is not one of {list(ORDERS)}")
        if not isinstance(self.tilt_control, str) or not self.tilt_control:
            raise NionAdapterError(f"tilt_control must be a control name, got "
                                   f"{self.tilt_control!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) \
                or not 1 <= self.size <= 8192:
            raise NionAdapterError(f"size must be an integer in 1..8192, got {self.size!r}")
        for name in ("haadf_dwell_us", "exposure_ms", "tilt_tolerance_factor"):
            _positive(name, getattr(self, name))
        _non_negative("settle_s", self.settle_s)
        for name in ("fov_nm", "dose_budget"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.beam_current_pa is not None:
            _non_negative("beam_current_pa", self.beam_current_pa)
        if self.rotation_deg is not None and not math.isfinite(self.rotation_deg):
            raise NionAdapterError(f"rotation_deg must be finite, got {self.rotation_deg}")
        if self.gamma is not None and not 1.0 <= self.gamma <= 2.5:
            raise NionAdapterError(f"gamma must lie in [1, 2.5], got {self.gamma}")
        for name in ("tilt_timeout_ms", "window", "camera_binning"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise NionAdapterError(f"{name} must be an integer >= 1, got {v!r}")
        if self.series_id is not None and not 0 < len(self.series_id) <= SERIES_ID_MAX:
            raise NionAdapterError(f"series id must be 1..{SERIES_ID_MAX} characters, got "
                                   f"{self.series_id!r}")
        if self.Z is not None:
            missing = [e for e in els if e not in self.Z]
            if missing:
                raise NionAdapterError(f"Z gives no value for element {missing[0]!r}")
        _positive("hold_timeout_s", self.hold_timeout_s)
        self.plan()  # validate the tilt plan now

    def plan(self) -> TiltPlan:
        try:
            plan = make_plan(self.scheme, self.tilt_range, self.haadf_step, self.chem_step,
                             haadf_angles=self.haadf_angles, chem_angles=self.chem_angles)
        except SchemeError as e:
            raise NionAdapterError(f"tilt plan: {e}") from None
        if plan.n_chem == 0 and not self.hold_for_advice:
            raise NionAdapterError("the tilt plan has no chemical tilt; give chem_angles or a "
                                   "chem_step within the tilt range")
        return plan

    def acquisition_plan(self) -> TiltPlan:
        """The plan the adapter walks: `plan()`, or its tilts without spectrum images when
        holding for advice (the controller then decides where to take them)."""
        plan = self.plan()
        return from_angles(plan.haadf_angles, [], self.scheme) if self.hold_for_advice \
            else plan

    def z_of(self, element: str) -> int:
        return int(self.Z[element]) if self.Z is not None else ATOMIC_NUMBER[element]


def _positive(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise NionAdapterError(f"{name} must be a finite number > 0, got {v!r}")


def _non_negative(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise NionAdapterError(f"{name} must be a finite number >= 0, got {v!r}")
