"""A recorded run (`fusetomo-run` file, docs/file-format.md §3) seen as the live viewer would
have seen it after each tilt: `RecordedRun.state_at(k)` is the ViewerState after the first k
tilts in arrival order (both modalities counted), with the latest snapshot (and standard
error) recorded at or before that tilt, the angles taken so far, the dose so far, the
cost history of the iterations that had at most those tilts and the latest alignment
recorded before the next tilt arrived. No Qt here."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.adapters.runfile import (
    RunFileError,
    RunRecord,
    describe_run,
    read_run,
    read_snapshot,
)
from fusetomo.adapters.seriesfile import open_h5
from fusetomo.ui.alignment import Alignment, decode_alignment
from fusetomo.ui.slices import OrthoSlices, SliceCalibration
from fusetomo.ui.viewer.model import (
    ANSWERS,
    COST_TERMS,
    Advice,
    IdleStop,
    TiltMark,
    ViewerDataError,
    ViewerState,
    decode_advice,
)
from fusetomo.ui.viewer.render import central_slices
from fusetomo.ui.viewer.units import angle_text


@dataclass(frozen=True)
class Tilt:
    seq: int
    modality: str  # "haadf" or "chem"
    angle: float
    dose: float  # e/A^2 of this image
    t_received: float = math.nan  # Unix s, the clock of the run's events


@dataclass(frozen=True)
class _Volumes:
    """Where one volume group's records sit in the run: tilt counts and iterations."""

    n_tilts: np.ndarray  # [k, 2]: HAADF, chemical tilts recorded
    iteration: np.ndarray  # [k]

    def latest(self, n_haadf: int, n_chem: int) -> int | None:
        ok = np.flatnonzero((self.n_tilts[:, 0] <= n_haadf) & (self.n_tilts[:, 1] <= n_chem))
        return int(ok[-1]) if ok.size else None


def _volume_index(path: Path, group: str, count: int) -> _Volumes:
    """The committed rows of /run/<group>/{n_tilts, iteration}: read here because read_run
    returns only the snapshot iterations (file-format §3 documents both datasets)."""
    if count == 0:
        return _Volumes(np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    with open_h5(path, RunFileError, swmr=True) as f:
        try:
            n_tilts = np.asarray(f[f"run/{group}/n_tilts"][:count], dtype=np.int64)
            its = np.asarray(f[f"run/{group}/iteration"][:count], dtype=np.int64)
        except KeyError as e:
            raise RunFileError(f"{path}: /run/{group} is incomplete ({e})") from None
    if n_tilts.shape != (count, 2) or its.shape != (count,):
        raise RunFileError(f"{path}: /run/{group}/n_tilts has shape {n_tilts.shape}, expected "
                           f"({count}, 2)")
    return _Volumes(n_tilts, its)


class RecordedRun:
    """A run file opened for viewing. Volumes are read when first shown (a few cached)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        summary = describe_run(self.path)
        if summary.get("problem"):
            raise RunFileError(str(summary["problem"]))
        self.record: RunRecord = read_run(self.path)
        rec = self.record
        self.elements: tuple[str, ...] = rec.volume_names  # the elements, or HAADF
        angles = {"haadf": rec.series.haadf_angles, "chem": rec.series.common_chem_angles}
        tilts = [Tilt(int(q), m, float(a), float(d), float(t))
                 for m in ("haadf", "chem")
                 for q, a, d, t in zip(rec.seq[m], angles[m], rec.dose_e_per_A2[m],
                                       rec.t_received[m], strict=True)]
        self.tilts: list[Tilt] = sorted(tilts, key=lambda t: t.seq)
        self.snapshots = _volume_index(self.path, "snapshots", int(summary["snapshots"]))
        self.std_errors = _volume_index(self.path, "std_error", int(summary["std_errors"]))
        self.dose_budget = _finite(rec.attrs.get("dose_budget_e_per_A2"))
        self.start = _start_header(rec.attrs.get("start_header"))
        self.advice = _advice_events(rec.events)
        self.alignments = _alignment_events(rec.events)
        self.cost_weights = _cost_weights(rec.events)
        self.idle_stops = [IdleStop(int(ev["iteration"]), str(ev.get("reason") or ""))
                           for ev in rec.events if ev.get("kind") == "idle_stopped"
                           and isinstance(ev.get("iteration"), int)]
        ns, nd = (int(v) for v in rec.series.shape)
        px = _finite(rec.series.pixel_size_nm)
        # central_slices' planes of the full volumes: one voxel a pixel.
        self.calibration = SliceCalibration(
            pixel_nm=px, voxel_nm=px, volume_shape=(ns, nd, nd),
            central=(("s", ns // 2), ("u", nd // 2), ("v", nd // 2)))

    @property
    def n_tilts(self) -> int:
        return len(self.tilts)

    def state_at(self, k: int | None = None) -> ViewerState:
        """The view after the first `k` tilts (default: all of them)."""
        n = self.n_tilts
        k = n if k is None else k
        if not 0 <= k <= n:
            raise ValueError(f"tilt {k} outside 0..{n} (the run holds {n} tilts)")
        taken = self.tilts[:k]
        h_ang = [t.angle for t in taken if t.modality == "haadf"]
        c_ang = [t.angle for t in taken if t.modality == "chem"]
        dose = {m: float(sum(t.dose for t in taken if t.modality == m))
                for m in ("haadf", "chem")}
        dose["total"] = dose["haadf"] + dose["chem"]
        its, costs, marks = self._costs_upto(len(h_ang), len(c_ang))
        state = ViewerState(
            series=str(self.record.attrs.get("series_id") or "") or None,
            state="complete" if k == n and self.record.complete else "recorded",
            iteration=its[-1] if its else 0,
            cost_iterations=its, costs=costs, cost_weights=self.cost_weights,
            tilt_marks=marks, idle_stops=[m for m in self.idle_stops
                                          if its and m.iteration <= its[-1]],
            haadf_tilts=len(h_ang), chem_tilts=len(c_ang),
            planned_haadf=_count(self.start.get("scheme"), "haadf_angles"),
            planned_chem=_count(self.start.get("scheme"), "chem_angles"),
            dose=dose, dose_budget=self.dose_budget,
            haadf_angles=h_ang, chem_angles=c_ang, elements=self.elements)
        i = self.snapshots.latest(len(h_ang), len(c_ang))
        if i is not None:
            state.calibration = self.calibration
            state.slices = self._slices("snapshots", i)
            state.slices_iteration = int(self.snapshots.iteration[i])
        j = self.std_errors.latest(len(h_ang), len(c_ang))
        if j is not None:
            state.std_slices = self._slices("std_error", j)
            state.std_iteration = int(self.std_errors.iteration[j])
        if state.slices_iteration is not None:  # a snapshot may follow the last cost row
            state.iteration = max(state.iteration, state.slices_iteration)
        last_seq = taken[-1].seq if taken else -1
        state.advice = _latest_advice(self.advice, last_seq)
        state.alignment = self._alignment_before(k)
        last = f", last {taken[-1].modality} at {angle_text(taken[-1].angle)}" if taken else ""
        snap = (f"snapshot of iteration {state.slices_iteration}" if i is not None
                else "no snapshot yet")
        state.caption = f"tilt {k}/{n}{last}; {snap}"
        return state

    def _costs_upto(self, n_haadf: int, n_chem: int
                    ) -> tuple[list[int], dict[str, list[float]], list[TiltMark]]:
        """The cost rows of the iterations that had at most these tilts, and where tilts
        joined: the rows whose tilt counts grew (each new tilt's first iteration)."""
        c = self.record.costs
        its = np.asarray(c.get("iteration", np.zeros(0)), dtype=np.int64)
        ok = np.ones(its.shape, bool)
        marks: list[TiltMark] = []
        if "n_haadf" in c and "n_chem" in c:
            nh, nc = np.asarray(c["n_haadf"]), np.asarray(c["n_chem"])
            ok = (nh <= n_haadf) & (nc <= n_chem)
            marks = _tilt_marks(its[ok], nh[ok], nc[ok])
        costs = {t: [float(v) for v in np.asarray(c[t])[ok]] if t in c else
                 [math.nan] * int(ok.sum()) for t in COST_TERMS}
        return [int(i) for i in its[ok]], costs, marks

    def _alignment_before(self, k: int) -> Alignment | None:
        """The alignment the live viewer showed before tilt k + 1 arrived: the newest
        `alignment` event recorded by then. An event holds the shifts (and angles) of the
        last (at most 64) HAADF tilts in arrival order; an event without angles (older run
        files) is paired with the HAADF tilts received before it. Events that do not pair
        or decode are skipped, as the live viewer would have kept the last good one."""
        until = self.tilts[k].t_received if k < self.n_tilts else math.inf
        haadf = [t for t in self.tilts if t.modality == "haadf"]
        for ev in reversed(self.alignments):
            if not ev.time < until:
                continue
            n = len(ev.shifts_px)
            if isinstance(ev.angles, list) and len(ev.angles) == n:
                angles = ev.angles  # recorded with the shifts (controllers since issue 7)
            else:
                before = [t.angle for t in haadf if t.t_received <= ev.time]
                if n > len(before):
                    continue
                angles = before[len(before) - n:]
            doc = {"angles": angles, "shifts_px": ev.shifts_px,
                   "axis_offset_px": ev.axis_offset_px, "last_update_px": ev.update_px}
            try:
                return decode_alignment(doc, ViewerDataError)
            except ViewerDataError:
                continue
        return None

    @functools.lru_cache(maxsize=8)  # noqa: B019 (a few volumes, as long as the run is open)
    def _slices(self, group: str, index: int) -> dict[str, OrthoSlices]:
        _, volumes = read_snapshot(self.path, index, group=group)
        return {e: central_slices(volumes[e]) for e in self.elements if e in volumes}


def _tilt_marks(its: np.ndarray, n_haadf: np.ndarray, n_chem: np.ndarray) -> list[TiltMark]:
    """One mark per tilt at the first cost row that counts it (the rows before the first
    count from zero: a run's first iteration follows its first tilts)."""
    marks: list[TiltMark] = []
    for modality, n in (("haadf", n_haadf), ("chem", n_chem)):
        grew = np.diff(np.asarray(n, np.int64), prepend=0)
        for i, g in zip(its, grew, strict=True):
            marks.extend(TiltMark(int(i), modality) for _ in range(max(int(g), 0)))
    return sorted(marks, key=lambda m: (m.iteration, m.modality != "haadf"))


def _cost_weights(events: list[dict[str, Any]]) -> dict[str, float] | None:
    """The λ of each cost term, from the run's `controller` event (its fusion parameters);
    None when not recorded."""
    ev = next((e for e in events if e.get("kind") == "controller"), {})
    fusion = ev.get("fusion")
    if not isinstance(fusion, dict):
        return None
    w = {t: _finite(fusion.get(f"lambda_{t}")) for t in COST_TERMS}
    return {t: v for t, v in w.items() if v is not None} if all(
        v is not None for v in w.values()) else None


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _count(scheme: Any, key: str) -> int | None:
    if isinstance(scheme, dict) and isinstance(scheme.get(key), list):
        return len(scheme[key])
    return None


def _start_header(text: Any) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if not isinstance(text, str):
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _advice_events(events: list[dict[str, Any]]) -> list[Advice]:
    """Advice recorded as run events: kind `advice` (its fields at the top level, or under
    `advice`), answered by a later `advice_decision` {advice_id, answer, decision}. The
    decision is taken at the tilt the advice was made at, so it is shown with it. Events
    that do not decode are skipped."""
    out: dict[int, Advice] = {}
    for ev in events:
        kind = ev.get("kind")
        if kind == "advice":
            try:
                adv = decode_advice(ev.get("advice", ev))
            except ViewerDataError:
                continue
            out[adv.id] = adv
        elif kind == "advice_decision" and ev.get("advice_id") in out:
            adv = out[ev["advice_id"]]
            answer = ev.get("answer")
            decision = ev.get("decision")
            out[adv.id] = replace(
                adv, answer=answer if answer in ANSWERS else None,
                decision=decision if isinstance(decision, str) else None)
    return list(out.values())


@dataclass(frozen=True)
class _AlignmentEvent:
    """One recorded `alignment` event (controller/live.py `_refine_alignment`), undecoded."""

    time: float  # Unix s, as the tilts' t_received
    shifts_px: list[Any]
    axis_offset_px: Any
    update_px: Any
    angles: Any = None  # recorded with the shifts; older run files lack them


def _alignment_events(events: list[dict[str, Any]]) -> list[_AlignmentEvent]:
    """The `alignment` events in recording order; those without a time or a list of
    shifts are skipped (their fields are checked when one is shown)."""
    return [_AlignmentEvent(float(ev["time"]), ev["shifts_px"], ev.get("axis_offset_px"),
                            ev.get("update_px"), ev.get("angles"))
            for ev in events if ev.get("kind") == "alignment"
            and _finite(ev.get("time")) is not None and isinstance(ev.get("shifts_px"), list)]


def _latest_advice(advice: list[Advice], last_seq: int) -> Advice | None:
    """The newest advice made after a tilt already taken (its last recorded state)."""
    best: Advice | None = None
    for a in advice:
        if a.tilt_seq is not None and a.tilt_seq > last_seq:
            continue
        if best is None or a.id >= best.id:
            best = a
    return best
