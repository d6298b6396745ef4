"""What the Nion Swift panel shows, as plain Python: `PanelState.apply(topic, header)` takes a
decoded status message (docs/protocol.md §2: topics `status`, `slices`, `advice`, `event`,
and `alignment` from a controller run with `--align`) and the `*_text` methods give the
panel's lines. No Nion import here, so it is tested by itself; the panel (panel.py) calls it
on the UI thread only.

Every field a message may lack is optional: an older controller, or a panel that connects
mid-run, leaves it at its default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fusetomo.core.errors import FusetomoError
from fusetomo.ui.alignment import Alignment, decode_alignment
from fusetomo.ui.slices import (
    PLANES,
    OrthoSlices,
    SliceCalibration,
    decode_calibration,
    decode_slices,
)

COST_TERMS = ("haadf", "chem", "tv")
DASH = "—"
DOSE_UNIT = "e⁻/Å²"
MAX_TIMING_ROWS = 10_000  # per-tilt timing history kept for the timing plot


class PanelDataError(FusetomoError, ValueError):
    """A status message whose content cannot be shown; names the field and the value."""


@dataclass(frozen=True)
class Advice:
    """One advice of the controller (operator_spec: topic `advice`)."""

    id: int
    angle: float | None
    action: str
    reason: str
    gain_per_dose: float | None
    best_angle: float | None
    mode: str | None
    answer: str | None
    decision: str | None

    @property
    def open(self) -> bool:
        """Still waiting for the operator (neither answered nor decided)."""
        return self.answer is None and self.decision is None


@dataclass
class PanelState:
    series: str | None = None
    state: str | None = None
    iteration: int | None = None
    haadf_tilts: int | None = None
    planned_haadf: int | None = None
    chem_tilts: int | None = None
    planned_chem: int | None = None
    current_tilt_deg: float | None = None
    dose: dict[str, float] = field(default_factory=dict)  # haadf, chem, total (e/Å²)
    dose_budget: float | None = None
    chem_maps_budget: int | None = None
    chem_dose_budget: float | None = None
    costs: dict[str, float] = field(default_factory=dict)
    processing_s: float | None = None  # the solver's time on the last settled tilt
    lag_s: float | None = None  # how long the oldest tilt not yet shown has waited
    lag_tilts: int | None = None  # tilts received but not yet in the reconstruction
    advice_mode: str | None = None
    operator_endpoint: str | None = None
    advice: Advice | None = None
    slices: dict[str, OrthoSlices] = field(default_factory=dict)
    slices_iteration: int | None = None
    std_slices: dict[str, OrthoSlices] = field(default_factory=dict)
    std_iteration: int | None = None
    calibration: SliceCalibration = field(default_factory=SliceCalibration)
    # per settled tilt, from `reconstruction_updated` events: (processing s, lag s)
    timing_rows: list[tuple[float, float]] = field(default_factory=list)
    alignment: Alignment | None = None
    last_event: str | None = None

    # -- messages -----------------------------------------------------------------------
    def apply(self, topic: str, header: Mapping[str, Any]) -> set[str]:
        """Apply one message; return what changed among {'labels', 'slices', 'std_slices',
        'timing', 'alignment'}. Raises PanelDataError for content that cannot be shown (nothing is
        applied then)."""
        # Work on a shallow copy (every field is replaced, never mutated in place) and keep
        # it only if the whole message was understood.
        trial = replace(self)
        series = header.get("series")
        if isinstance(series, str) and series != "*" and series != self.series:
            trial = PanelState(series=series, operator_endpoint=self.operator_endpoint)
        changed: set[str] = {"labels"}
        if topic == "status":
            trial._status(header)
        elif topic == "advice":
            trial._advice(header.get("advice"))
        elif topic == "event":
            trial._event(header)
            if header.get("event") == "reconstruction_updated":
                changed.add("timing")
        elif topic == "slices":
            changed = trial._slices(header)
        elif topic == "alignment":
            trial.alignment = decode_alignment(header.get("alignment"), PanelDataError)
            changed.add("alignment")
        else:
            return set()  # a topic this panel does not know: ignored (protocol §5)
        self.__dict__.update(trial.__dict__)
        return changed

    def _status(self, h: Mapping[str, Any]) -> None:
        self.state = _str(h.get("state"), "state") or self.state
        for name in ("iteration", "haadf_tilts", "planned_haadf", "chem_tilts",
                     "planned_chem", "chem_maps_budget"):
            if name in h:
                setattr(self, name, _int(h[name], name))
        if "dose_budget_e_per_A2" in h:
            self.dose_budget = _num(h["dose_budget_e_per_A2"], "dose_budget_e_per_A2")
        for name in ("processing_s", "lag_s"):
            if name in h:
                setattr(self, name, _num(h[name], name))
        if "lag_tilts" in h:
            self.lag_tilts = _int(h["lag_tilts"], "lag_tilts")
        if isinstance(h.get("dose_e_per_A2"), Mapping):
            self.dose = _numbers(h["dose_e_per_A2"], "dose_e_per_A2")
        if isinstance(h.get("costs"), Mapping):
            self.costs = _numbers(h["costs"], "costs")
        if "advice_mode" in h:
            self.advice_mode = _str(h["advice_mode"], "advice_mode")
        if "operator_endpoint" in h:
            self.operator_endpoint = _str(h["operator_endpoint"], "operator_endpoint")
        angles = h.get("haadf_angles")
        if isinstance(angles, list) and angles:
            self.current_tilt_deg = _num(angles[-1], "haadf_angles[-1]")

    def _advice(self, a: Any) -> None:
        if not isinstance(a, Mapping):
            raise PanelDataError(f"advice: expected an object, got {a!r}")
        aid = _int(a.get("id"), "advice.id")
        action = _str(a.get("action"), "advice.action")
        if aid is None or action is None:
            raise PanelDataError(f"advice: needs an integer 'id' and an 'action', got "
                                 f"id {a.get('id')!r}, action {a.get('action')!r}")
        self.advice = Advice(
            id=aid, angle=_num(a.get("angle"), "advice.angle"), action=action,
            reason=_str(a.get("reason"), "advice.reason") or "",
            gain_per_dose=_num(a.get("gain_per_dose"), "advice.gain_per_dose"),
            best_angle=_num(a.get("best_angle"), "advice.best_angle"),
            mode=_str(a.get("mode"), "advice.mode"),
            answer=_str(a.get("answer"), "advice.answer"),
            decision=_str(a.get("decision"), "advice.decision"))
        if self.advice.angle is not None:
            self.current_tilt_deg = self.advice.angle
        if "chem_maps_used" in a:
            self.chem_tilts = _int(a["chem_maps_used"], "advice.chem_maps_used")
        if "chem_maps_budget" in a:
            self.chem_maps_budget = _int(a["chem_maps_budget"], "advice.chem_maps_budget")
        if "chem_dose_budget" in a:
            self.chem_dose_budget = _num(a["chem_dose_budget"], "advice.chem_dose_budget")
        if "mode" in a and self.advice.mode is not None:
            self.advice_mode = self.advice.mode

    def _event(self, h: Mapping[str, Any]) -> None:
        name = _str(h.get("event"), "event") or "?"
        if name == "reconstruction_updated":
            self._timing(h)
        if name == "tilt_received":
            angle = _num(h.get("angle"), "angle")
            if angle is not None:
                self.current_tilt_deg = angle
            self.last_event = (f"tilt {h.get('tilt_seq')} ({h.get('modality')}) at "
                               f"{_deg(angle)}")
        elif name == "rejected":
            self.last_event = f"rejected seq {h.get('bad_seq')}: [{h.get('code')}] " \
                              f"{h.get('message')}"
        else:
            self.last_event = name.replace("_", " ")

    def _timing(self, h: Mapping[str, Any]) -> None:
        proc = h.get("processing_s")
        if not isinstance(proc, list):
            raise PanelDataError(f"processing_s: expected a list of seconds, got {proc!r:.80}")
        lag = _num(h.get("lag_s"), "lag_s") or 0.0
        rows = [(_num(p, "processing_s[]") or 0.0, lag) for p in proc]
        self.timing_rows = (self.timing_rows + rows)[-MAX_TIMING_ROWS:]
        if rows:
            self.processing_s = rows[-1][0]
        self.lag_s = lag
        if "lag_tilts" in h:
            self.lag_tilts = _int(h["lag_tilts"], "lag_tilts")

    def _slices(self, h: Mapping[str, Any]) -> set[str]:
        changed = set()
        if "calibration" in h:
            self.calibration = decode_calibration(h["calibration"], "calibration",
                                                  PanelDataError)
        if "slices" in h:
            decoded = decode_slices(h["slices"], "slices", error=PanelDataError)
            self.slices, self.slices_iteration = decoded, _int(h.get("iteration"), "iteration")
            changed.add("slices")
        if "std_slices" in h:
            decoded = decode_slices(h["std_slices"], "std_slices", error=PanelDataError)
            self.std_slices = decoded
            self.std_iteration = _int(h.get("std_iteration"), "std_iteration")
            changed.add("std_slices")
        return changed

    # -- what the panel shows -------------------------------------------------------------
    def series_text(self) -> str:
        if self.series is None and self.state is None:
            return "no status received yet"
        it = DASH if self.iteration is None else str(self.iteration)
        return f"{self.series or DASH}: {self.state or DASH}, iteration {it}"

    def tilts_text(self) -> str:
        chem_of = self.planned_chem if self.chem_maps_budget is None else self.chem_maps_budget
        return (f"tilts: HAADF {_of(self.haadf_tilts, self.planned_haadf)}, "
                f"spectrum images {_of(self.chem_tilts, chem_of)}")

    def tilt_text(self) -> str:
        return f"current tilt {_deg(self.current_tilt_deg)}"

    def dose_text(self) -> str:
        total = self.dose.get("total")
        used = DASH if total is None else f"{total:.4g}"
        budget = "no budget" if self.dose_budget is None else f"budget {self.dose_budget:.4g}"
        parts = ", ".join(f"{k} {self.dose[k]:.4g}" for k in ("haadf", "chem") if k in self.dose)
        return f"dose {used} {DOSE_UNIT} ({budget})" + (f": {parts}" if parts else "")

    def timing_text(self) -> str:
        """The solver's time per tilt and how far the reconstruction is behind the newest
        tilt (controller/live/timing.py)."""
        proc = DASH if self.processing_s is None else f"{self.processing_s:.2f} s"
        if self.lag_tilts is None:
            lag = DASH
        elif self.lag_tilts == 0:
            lag = "up to date"
        else:
            lag = f"{self.lag_tilts} tilt{'s' if self.lag_tilts != 1 else ''} behind" + (
                "" if self.lag_s is None else f" ({self.lag_s:.1f} s)")
        return f"processing per tilt: {proc}; reconstruction: {lag}"

    def costs_text(self) -> str:
        if not self.costs:
            return f"costs: {DASH}"
        terms = ", ".join(f"{k} {self.costs[k]:.4g}" for k in COST_TERMS if k in self.costs)
        return f"costs: {terms}"

    def alignment_text(self) -> str:
        a = self.alignment
        return f"alignment: {DASH}" if a is None else f"alignment: {a.summary()}"

    def advice_text(self) -> str:
        a = self.advice
        if a is None:
            return f"advice: none (mode {self.advice_mode or DASH})"
        gain = ("" if a.gain_per_dose is None
                else f", gain {a.gain_per_dose:.3g} nats per {DOSE_UNIT}")
        best = "" if a.best_angle is None else f", best remaining {_deg(a.best_angle)}"
        state = "waiting for the operator" if a.open else ", ".join(
            x for x in (a.answer and f"answered {a.answer}", a.decision and
                        f"decided {a.decision}") if x)
        return (f"advice #{a.id} ({a.mode or self.advice_mode or DASH}): {a.action} at "
                f"{_deg(a.angle)}{gain}{best} [{state}]: {a.reason}")

    def haadf_progress(self) -> int:
        """HAADF tilts taken, in percent of those planned (0 when unknown)."""
        return _percent(self.haadf_tilts, self.planned_haadf)

    def dose_progress(self) -> int:
        """Dose used, in percent of the budget (0 without a budget)."""
        return _percent(self.dose.get("total"), self.dose_budget)

    def can_answer(self) -> bool:
        """Accept / Skip make sense: an open advice and somewhere to send the answer."""
        return self.operator_endpoint is not None and self.advice is not None \
            and self.advice.open

    def can_command(self) -> bool:
        """Force / Pause / Resume make sense: somewhere to send them, a series not over."""
        return self.operator_endpoint is not None and self.state != "complete"


# -- decoding helpers -------------------------------------------------------------------------
def montage(o: OrthoSlices, gap: int = 1) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The three slices side by side (s | u | v), top-aligned, `gap` columns of zeros
    between them; also where each lies: [{plane, row, col, shape}]."""
    planes = o.planes()
    height = max(p.shape[0] for p in planes)
    width = sum(p.shape[1] for p in planes) + gap * (len(planes) - 1)
    out = np.zeros((height, width), np.float32)
    where, col = [], 0
    for name, p in zip(PLANES, planes, strict=True):
        out[:p.shape[0], col:col + p.shape[1]] = p
        where.append({"plane": name, "row": 0, "col": col, "shape": list(p.shape)})
        col += p.shape[1] + gap
    return out, where


def _num(v: Any, name: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise PanelDataError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


def _int(v: Any, name: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise PanelDataError(f"{name}: expected an integer, got {v!r}")
    return v


def _str(v: Any, name: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise PanelDataError(f"{name}: expected a string, got {v!r}")
    return v


def _numbers(d: Mapping[str, Any], name: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        x = _num(v, f"{name}.{k}")
        if x is not None:
            out[str(k)] = x
    return out


def _percent(n: float | None, total: float | None) -> int:
    if n is None or not total or total <= 0:
        return 0
    return round(min(max(100.0 * n / total, 0.0), 100.0))


def _of(n: int | None, total: int | None) -> str:
    return f"{DASH if n is None else n}" + ("" if total is None else f" of {total}")


def _deg(a: float | None) -> str:
    return DASH if a is None else f"{a:+.1f}°"
