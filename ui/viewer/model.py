"""The viewer's state, fed by decoded status messages (docs/protocol.md §2, topics `status`,
`slices`, `advice`, `event`, and `alignment` from a controller run with `--align`). Pure
Python and NumPy, no Qt: the receiving thread applies messages, the UI thread takes a
consistent copy (`ViewerModel.view`) to draw.

Every field a message may lack is optional here: an older controller, or a viewer that
connects mid-run, leaves it at its default.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fusetomo.adapters.protocol import Message
from fusetomo.core.errors import FusetomoError
from fusetomo.ui.alignment import Alignment, decode_alignment
from fusetomo.ui.fields import integer as _int
from fusetomo.ui.fields import number as _num
from fusetomo.ui.slices import OrthoSlices, SliceCalibration, decode_calibration, decode_slices

COST_TERMS = ("haadf", "chem", "tv")
ADVICE_ACTIONS = ("acquire_now", "wait", "stop_spectroscopy")
ANSWERS = ("accept", "skip", "force")
MAX_COST_ROWS = 100_000  # a long run's history stays bounded (oldest rows dropped)
MAX_MARKS = 10_000  # tilt and idle-stop markers kept


class ViewerDataError(FusetomoError, ValueError):
    """A status message whose content cannot be shown; names the field and the value."""


@dataclass(frozen=True)
class TiltMark:
    """A tilt joined the reconstruction: `iteration` is the first iteration whose costs
    include its data (the cost plot marks it just before, at iteration - 1/2)."""

    iteration: int
    modality: str  # "haadf" or "chem"


@dataclass(frozen=True)
class IdleStop:
    """An `idle_stopped` event: the stopping rule ended the idle iterations at `iteration`."""

    iteration: int
    reason: str


@dataclass(frozen=True)
class Advice:
    """The advisor's latest advice (operator_spec: topic `advice`)."""

    id: int
    action: str
    reason: str = ""
    tilt_seq: int | None = None
    angle: float | None = None
    gain_per_dose: float | None = None
    best_angle: float | None = None
    candidates: tuple[tuple[float, float], ...] = ()  # (angle, gain_per_dose)
    chem_maps_used: int | None = None
    chem_maps_budget: int | None = None
    chem_dose_used: float | None = None
    chem_dose_budget: float | None = None
    mode: str | None = None
    answer: str | None = None
    decision: str | None = None

    @property
    def open(self) -> bool:
        """Still waiting for the operator (no answer and no decision yet)."""
        return self.answer is None and self.decision is None


@dataclass
class ViewerState:
    """Everything the window draws. Arrays are replaced, never changed in place, so a
    shallow copy is a consistent snapshot."""

    series: str | None = None
    state: str | None = None
    iteration: int = 0
    cost_iterations: list[int] = field(default_factory=list)
    costs: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in COST_TERMS})
    cost_weights: dict[str, float] | None = None  # the λ of each term (None: unweighted)
    tilt_marks: list[TiltMark] = field(default_factory=list)
    idle_stops: list[IdleStop] = field(default_factory=list)
    seen_tilts: tuple[int, int] | None = None  # HAADF, chemical tilts of the last status
    haadf_tilts: int = 0
    chem_tilts: int = 0
    planned_haadf: int | None = None
    planned_chem: int | None = None
    dose: dict[str, float] = field(default_factory=dict)  # haadf, chem, total (e/A^2)
    dose_budget: float | None = None
    chem_maps_budget: int | None = None
    haadf_angles: list[float] = field(default_factory=list)
    chem_angles: list[float] = field(default_factory=list)
    latency_s: float | None = None  # arrival -> published, of the last settled tilt
    processing_s: float | None = None  # the solver's time on the last settled tilt
    lag_s: float | None = None  # how long the oldest tilt not yet shown has waited
    lag_tilts: int | None = None  # tilts received but not yet in the reconstruction
    advice_mode: str | None = None
    operator_endpoint: str | None = None
    elements: tuple[str, ...] = ()
    slices: dict[str, OrthoSlices] = field(default_factory=dict)
    slices_iteration: int | None = None
    calibration: SliceCalibration | None = None  # what a slice pixel is (None: unknown)
    std_slices: dict[str, OrthoSlices] = field(default_factory=dict)
    std_iteration: int | None = None
    advice: Advice | None = None
    alignment: Alignment | None = None
    last_event: str | None = None
    received: dict[str, int] = field(default_factory=dict)  # messages per topic
    errors: list[str] = field(default_factory=list)  # messages that could not be shown
    caption: str | None = None  # what a recorded run's slider shows (run mode)


# -- decoding helpers ------------------------------------------------------------------------
def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _angles(v: Any, name: str) -> list[float]:
    if not isinstance(v, list):
        raise ViewerDataError(f"status: {name} must be a list of degrees, got {v!r:.80}")
    out = [_num(a) for a in v]
    if any(a is None for a in out):
        raise ViewerDataError(f"status: {name} holds a value that is not a finite number: "
                              f"{v!r:.80}")
    return [float(a) for a in out]  # type: ignore[arg-type]


def decode_advice(doc: Any) -> Advice:
    if not isinstance(doc, Mapping):
        raise ViewerDataError(f"advice: expected an object, got {type(doc).__name__}")
    aid, action = _int(doc.get("id")), _str(doc.get("action"))
    if aid is None:
        raise ViewerDataError(f"advice: id must be an integer, got {doc.get('id')!r}")
    if action is None:
        raise ViewerDataError(f"advice: action must be a string, got {doc.get('action')!r}")
    cands = []
    for c in doc.get("candidates") or []:
        if isinstance(c, Mapping):
            a, g = _num(c.get("angle")), _num(c.get("gain_per_dose"))
            if a is not None and g is not None:
                cands.append((a, g))
    answer = _str(doc.get("answer"))
    return Advice(
        id=aid, action=action, reason=_str(doc.get("reason")) or "",
        tilt_seq=_int(doc.get("tilt_seq")), angle=_num(doc.get("angle")),
        gain_per_dose=_num(doc.get("gain_per_dose")), best_angle=_num(doc.get("best_angle")),
        candidates=tuple(cands), chem_maps_used=_int(doc.get("chem_maps_used")),
        chem_maps_budget=_int(doc.get("chem_maps_budget")),
        chem_dose_used=_num(doc.get("chem_dose_used")),
        chem_dose_budget=_num(doc.get("chem_dose_budget")), mode=_str(doc.get("mode")),
        answer=answer if answer in ANSWERS else None, decision=_str(doc.get("decision")))


# -- the model -----------------------------------------------------------------------------
class ViewerModel:
    """Thread-safe holder of a ViewerState: `apply` (receiving thread) folds one published
    message in; `view` (UI thread) returns a consistent copy; `version` grows with every
    change, so the UI redraws only when something changed."""

    def __init__(self, state: ViewerState | None = None) -> None:
        self._lock = threading.Lock()
        self._state = state or ViewerState()
        self.version = 0

    def view(self) -> ViewerState:
        with self._lock:
            s = self._state
            return replace(s, cost_iterations=list(s.cost_iterations),
                           costs={k: list(v) for k, v in s.costs.items()},
                           tilt_marks=list(s.tilt_marks), idle_stops=list(s.idle_stops),
                           dose=dict(s.dose), haadf_angles=list(s.haadf_angles),
                           chem_angles=list(s.chem_angles), slices=dict(s.slices),
                           std_slices=dict(s.std_slices), received=dict(s.received),
                           errors=list(s.errors))

    def replace_state(self, state: ViewerState) -> None:
        """Show `state` as it is (a recorded run's view at one tilt)."""
        with self._lock:
            self._state = state
            self.version += 1

    def apply_message(self, topic: str, msg: Message) -> bool:
        return self.apply(topic, msg.header)

    def apply(self, topic: str, header: Mapping[str, Any]) -> bool:
        """Fold one message in; False (and the reason in `errors`) when it cannot be shown.
        Unknown topics and fields are ignored (receivers tolerate additions)."""
        with self._lock:
            s = self._state
            s.received[topic] = s.received.get(topic, 0) + 1
            try:
                if topic == "status":
                    self._status(s, header)
                elif topic == "slices":
                    self._slices(s, header)
                elif topic == "advice":
                    self._advice(s, header)
                elif topic == "alignment":
                    s.alignment = decode_alignment(header.get("alignment"),
                                                   ViewerDataError)
                elif topic == "event":
                    ev = _str(header.get("event"))
                    s.last_event = ev
                    if ev == "series_start":  # a new series: forget the last one's history
                        self._reset_series(s, header)
                    elif ev == "idle_stopped":
                        self._idle_stopped(s, header)
                else:
                    return False
            except ViewerDataError as e:
                s.errors = [*s.errors[-19:], str(e)]
                self.version += 1
                return False
            series = _str(header.get("series"))
            if series and series != "*":
                s.series = series
            self.version += 1
            return True

    # -- per topic --------------------------------------------------------------------------
    @staticmethod
    def _reset_series(s: ViewerState, header: Mapping[str, Any]) -> None:
        series = _str(header.get("series"))
        if series is not None and series != s.series:
            s.cost_iterations, s.costs = [], {t: [] for t in COST_TERMS}
            s.tilt_marks, s.idle_stops, s.seen_tilts = [], [], None
            s.slices, s.std_slices, s.advice, s.alignment = {}, {}, None, None
            s.slices_iteration = s.std_iteration = None

    def _status(self, s: ViewerState, h: Mapping[str, Any]) -> None:
        it = _int(h.get("iteration"))
        # Validate everything first, so that a bad message changes nothing.
        angles = {k: _angles(h[k], k) for k in ("haadf_angles", "chem_angles")
                  if h.get(k) is not None}
        dose = h.get("dose_e_per_A2")
        if dose is not None and not isinstance(dose, Mapping):
            raise ViewerDataError(f"status: dose_e_per_A2 must be an object, got {dose!r:.80}")
        costs = h.get("costs")
        if costs is not None and not isinstance(costs, Mapping):
            raise ViewerDataError(f"status: costs must be an object, got {costs!r:.80}")
        weights = h.get("cost_weights")
        if weights is not None and not isinstance(weights, Mapping):
            raise ViewerDataError(f"status: cost_weights must be an object, got "
                                  f"{weights!r:.80}")
        s.state = _str(h.get("state")) or s.state
        if it is not None:
            s.iteration = it
            if costs:
                self._add_costs(s, it, costs)
            self._tilts_joined(s, it, _int(h.get("haadf_tilts")), _int(h.get("chem_tilts")))
        if weights is not None:
            w = {t: _num(weights.get(t)) for t in COST_TERMS}
            s.cost_weights = ({t: float(v) for t, v in w.items() if v is not None}
                              if any(v is not None for v in w.values()) else None)
        for name in ("haadf_tilts", "chem_tilts"):
            v = _int(h.get(name))
            if v is not None:
                setattr(s, name, v)
        for name in ("planned_haadf", "planned_chem", "chem_maps_budget"):
            if name in h:
                setattr(s, name, _int(h.get(name)))
        if dose is not None:
            s.dose = {k: float(v) for k, v in dose.items() if _num(v) is not None}
        if "dose_budget_e_per_A2" in h:
            s.dose_budget = _num(h.get("dose_budget_e_per_A2"))
        for k, v in angles.items():
            setattr(s, k, v)
        for name in ("latency_s", "processing_s", "lag_s"):
            if name in h:
                setattr(s, name, _num(h.get(name)))
        if "lag_tilts" in h:
            s.lag_tilts = _int(h.get("lag_tilts"))
        if "advice_mode" in h:
            s.advice_mode = _str(h.get("advice_mode"))
        if "operator_endpoint" in h:
            s.operator_endpoint = _str(h.get("operator_endpoint"))

    @staticmethod
    def _add_costs(s: ViewerState, it: int, costs: Mapping[str, Any]) -> None:
        values = {t: _num(costs.get(t)) for t in COST_TERMS}
        row = {t: math.nan if v is None else v for t, v in values.items()}
        its = s.cost_iterations
        if its and it < its[-1]:
            # The controller restarted (resume) from an earlier iteration: drop what follows.
            keep = int(np.searchsorted(np.asarray(its), it, side="left"))
            del its[keep:]
            for t in COST_TERMS:
                del s.costs[t][keep:]
        if its and its[-1] == it:  # several status messages of one iteration: keep the last
            for t in COST_TERMS:
                s.costs[t][-1] = row[t]
            return
        its.append(it)
        for t in COST_TERMS:
            s.costs[t].append(row[t])
        if len(its) > MAX_COST_ROWS:
            del its[0]
            for t in COST_TERMS:
                del s.costs[t][0]

    @staticmethod
    def _tilts_joined(s: ViewerState, it: int, n_haadf: int | None,
                      n_chem: int | None) -> None:
        """A status counting more tilts than the last one: each new tilt joined after
        iteration `it` (the controller publishes a status as each tilt is added), so its
        data first shows in the costs of iteration it + 1. The first status seen is the
        baseline (a viewer connecting mid-run marks only what arrives after)."""
        if n_haadf is None or n_chem is None:
            return
        if s.tilt_marks and s.tilt_marks[-1].iteration > it + 1:  # resumed earlier
            s.tilt_marks = [m for m in s.tilt_marks if m.iteration <= it + 1]
        if s.seen_tilts is not None:
            for modality, now, before in (("haadf", n_haadf, s.seen_tilts[0]),
                                          ("chem", n_chem, s.seen_tilts[1])):
                s.tilt_marks.extend(TiltMark(it + 1, modality)
                                    for _ in range(max(now - before, 0)))
            del s.tilt_marks[:-MAX_MARKS]
        s.seen_tilts = (n_haadf, n_chem)

    @staticmethod
    def _idle_stopped(s: ViewerState, h: Mapping[str, Any]) -> None:
        it = _int(h.get("iteration"))
        if it is None:
            raise ViewerDataError(f"event idle_stopped: iteration must be an integer, got "
                                  f"{h.get('iteration')!r}")
        s.idle_stops = [*(m for m in s.idle_stops if m.iteration < it),
                        IdleStop(it, _str(h.get("reason")) or "")][-MAX_MARKS:]

    @staticmethod
    def _slices(s: ViewerState, h: Mapping[str, Any]) -> None:
        new = (decode_slices(h.get("slices"), "slices", error=ViewerDataError)
               if h.get("slices") is not None else None)
        std = (decode_slices(h.get("std_slices"), "std_slices", error=ViewerDataError)
               if h.get("std_slices") is not None else None)
        cal = (decode_calibration(h.get("calibration"), "calibration", ViewerDataError)
               if h.get("calibration") is not None else None)
        if new is not None:
            s.slices = new
            s.calibration = cal
            s.slices_iteration = _int(h.get("iteration"))
            if not s.elements or set(s.elements) != set(new):
                s.elements = tuple(new)
        if std is not None:
            s.std_slices = std
            s.std_iteration = _int(h.get("std_iteration"))

    @staticmethod
    def _advice(s: ViewerState, h: Mapping[str, Any]) -> None:
        adv = decode_advice(h.get("advice"))
        # Messages may arrive out of order only across reconnects; never go back to an
        # older advice.
        if s.advice is None or adv.id >= s.advice.id:
            s.advice = adv
        if adv.chem_maps_budget is not None:
            s.chem_maps_budget = adv.chem_maps_budget
