"""The live reconstruction as a step object: tilts go in (`add`), `update()` runs the next
iteration that is due (a tilt's k warm-start iterations first, then idle iterations while
waiting, then, once `finish()` was called, the final iterations) and says which tilts it
settled; `done()` says when nothing is due. No sockets, no files: the session records what
`update` returns.

`rebuild` makes the solver a run file's recorded iteration schedule describes: this is how
`--resume` continues after a crash, and how tests check the live result offline.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusetomo.adapters.protocol import (
    ChemTilt,
    HaadfTilt,
    Message,
    ProtocolError,
    SeriesStart,
    Tilt,
    typed,
)
from fusetomo.adapters.runfile import RunRecord
from fusetomo.controller.live.params import (
    PHASE_FINAL,
    PHASE_IDLE,
    PHASE_TILT,
    LiveError,
    LiveParams,
)
from fusetomo.controller.live.timing import TiltTiming
from fusetomo.solver.backend import resolve_device
from fusetomo.solver.fusion import FusedSolver


@dataclass(frozen=True)
class TiltIn:
    """A recorded tilt on its way into the solver: float32 data in the solver's element
    order, and the fractional shifts its projector takes (alignment), if any."""

    seq: int
    modality: str  # 'haadf' | 'chem'
    angle: float
    image: np.ndarray | None = None
    maps: dict[str, np.ndarray] | None = None
    shifts: np.ndarray | None = None
    advise: bool = False  # a HAADF tilt without a spectrum image: ask the advisor


def tilt_in(tilt: Tilt, elements: list[str]) -> TiltIn:
    """A received tilt as the solver takes it (float32; maps in the solver's order)."""
    if isinstance(tilt, HaadfTilt):
        return TiltIn(tilt.seq, "haadf", tilt.angle,
                      image=np.asarray(tilt.image, dtype=np.float32),
                      advise=not bool(tilt.header.get("with_spectrum", False)))
    assert isinstance(tilt, ChemTilt)
    maps = {e: np.asarray(tilt.maps[e], dtype=np.float32) for e in elements}
    return TiltIn(tilt.seq, "chem", tilt.angle, maps=maps)


@dataclass
class Pending:
    """A tilt whose k iterations are not done yet (for latency and snapshots)."""

    seq: int
    t_arrival: float
    target_iteration: int
    chem: bool
    advise_angle: float | None = None  # a HAADF tilt to advise on once its k are done


@dataclass(frozen=True)
class Step:
    """One iteration: its costs (with the tilt counts and phase, as recorded) and the tilts
    it settled."""

    iteration: int
    phase: int
    costs: dict[str, float]
    settled: tuple[Pending, ...] = ()
    idle_stopped: str | None = None  # this idle iteration ended the idle ones: why


@dataclass
class LiveReconstruction:
    """The warm-started fused solver of a live series and its iteration schedule."""

    solver: FusedSolver
    params: LiveParams
    owed: int = 0  # per-tilt iterations not run yet
    idle_done: int = 0  # idle iterations since the last tilt
    idle_stopped: str | None = None  # why idle iterations stopped before the cap (or None)
    final_left: int | None = None  # final iterations still to run (None: not finishing)
    pending: list[Pending] = field(default_factory=list)
    last_costs: dict[str, float] = field(default_factory=dict)
    timing: TiltTiming = field(default_factory=TiltTiming)  # processing time and lag

    @property
    def iteration(self) -> int:
        return self.solver.iteration

    @property
    def ready(self) -> bool:
        return self.solver.ready

    def add(self, tilt: TiltIn, t_arrival: float) -> None:
        """Add a recorded tilt; once the solver is ready it owes k iterations."""
        frac = None if tilt.shifts is None else tilt.shifts[None]
        if tilt.modality == "haadf":
            self.solver.add_haadf(tilt.angle, tilt.image, shifts=frac)
        else:
            assert tilt.maps is not None
            self.solver.add_chem(tilt.angle, {e: tilt.maps[e][None]
                                              for e in self.solver.elements}, shifts=frac)
        self.idle_done = 0
        self.idle_stopped = None
        if self.solver.ready:
            self.owed += self.params.iterations_per_tilt
            self.pending.append(Pending(tilt.seq, t_arrival, self.iteration + self.owed,
                                        tilt.modality == "chem",
                                        tilt.angle if tilt.advise else None))

    def finish(self) -> None:
        """The series ended: after the owed iterations, the final ones."""
        if self.final_left is None:
            self.final_left = self.params.final_iterations if self.ready else 0

    def due(self) -> int | None:
        """The phase of the next iteration that is due, or None."""
        if not self.ready:
            return None
        if self.owed > 0:
            return PHASE_TILT
        if self.final_left is not None:
            return PHASE_FINAL if self.final_left > 0 else None
        p = self.params
        if (p.idle_iterations and self.idle_done < p.max_idle_iterations
                and self.idle_stopped is None):
            return PHASE_IDLE
        return None

    def _check_idle_stop(self) -> None:
        """After an idle iteration: whether the stopping rule ends the idle iterations (on
        the iterations since the last tilt only: min_iterations > patience)."""
        rule = self.params.idle_stop
        if rule is None:
            return
        h = self.solver.history
        reason = rule.check(h.change, h.haadf, h.chem, self.idle_done)
        if reason is not None and reason != "max_iterations":
            self.idle_stopped = reason

    def done(self) -> bool:
        return self.due() is None

    def update(self, phase: int | None = None) -> Step | None:
        """Run the next due iteration (or one of `phase`); None when none is due."""
        phase = self.due() if phase is None else phase
        if phase is None:
            return None
        s = self.solver
        costs = s.step()
        self.last_costs = costs
        stopped = None
        if phase == PHASE_IDLE:
            self.idle_done += 1
            self._check_idle_stop()
            stopped = self.idle_stopped
        elif phase == PHASE_TILT:
            self.owed = max(self.owed - 1, 0)
        elif self.final_left:
            self.final_left -= 1
        row = {**costs, "haadf_scale": s.haadf_scale, "n_haadf": s.n_haadf,
               "n_chem": s.n_chem, "idle": int(phase == PHASE_IDLE), "phase": phase,
               "change": s.history.change[-1] if s.history.change else float("nan")}
        return Step(s.iteration, phase, row, self.take_settled(), stopped)

    def take_settled(self) -> tuple[Pending, ...]:
        """The pending tilts whose k iterations are done (removed)."""
        done = tuple(q for q in self.pending if self.iteration >= q.target_iteration)
        if done:
            self.pending = [q for q in self.pending if q not in done]
        return done


# -- the solver of a series, and its exact rebuild from a run file ---------------------------
def solver_for(start: SeriesStart, params: LiveParams) -> FusedSolver:
    """A FusedSolver for the series announced by `start`. Live, it iterates on the HAADF
    images from the first one (the HAADF phase) and switches to the fused model at the
    first spectrum image, seeded with the HAADF volume."""
    ns, nd = start.shape
    els = list(start.elements)
    fusion = dataclasses.replace(params.fusion, haadf_phase=True)
    if start.gamma is not None:
        fusion = dataclasses.replace(fusion, gamma=float(start.gamma))
    bg = [start.background.get(e) for e in els] if start.background else None
    return FusedSolver(nd, ns, els, [float(start.Z[e]) for e in els], fusion,
                       device=resolve_device(params.device), background=bg)


def schedule_of(record: RunRecord) -> list[tuple[int, int, int]]:
    """(HAADF tilts, chemical tilts, phase) of every recorded iteration, in order."""
    c = record.costs
    for kh, kc in (("n_haadf", "n_chem"), ("n_haadf_tilts", "n_chem_tilts")):
        if kh in c and kc in c:
            break
    else:
        raise LiveError("the run file's cost rows hold no tilt counts (n_haadf, n_chem)")
    phase = c.get("phase", np.zeros(len(c["iteration"])))
    return [(int(h), int(n), int(ph) if np.isfinite(ph) else PHASE_TILT)
            for h, n, ph in zip(c[kh], c[kc], phase, strict=True)]


def arrival_order(record: RunRecord) -> list[str]:
    """The modality ('haadf' or 'chem') of every recorded tilt, in order of seq."""
    tagged = [(int(q), "haadf") for q in record.seq["haadf"]]
    tagged += [(int(q), "chem") for q in record.seq["chem"]]
    return [m for _, m in sorted(tagged)]


def rebuild_solver(record: RunRecord, params: LiveParams) -> FusedSolver:
    """The solver as the live controller left it after its last recorded iteration: the
    recorded tilts are added in recorded order, and each recorded iteration is taken with
    the HAADF and chemical tilt counts it was recorded with; tilts recorded after the last
    iteration are added at the end. Adding a tilt only appends its data and restarts the
    momentum, so the order of HAADF and chemical adds between two iterations does not
    matter, and on the CPU this reproduces the live volumes bit for bit (a GPU's atomic
    reductions may differ in the last bits)."""
    series = record.series
    solver = solver_for(start_of(record), params)
    nh = nc = 0

    def add_until(h: int, c: int) -> tuple[int, int]:
        if h > series.haadf.shape[0] or c > series.common_chem_angles.size:
            raise LiveError(f"iteration schedule needs {h} HAADF and {c} chemical tilts, "
                            f"the run holds {series.haadf.shape[0]} and "
                            f"{series.common_chem_angles.size}")
        # One tilt at a time, as live: extending the projectors tilt by tilt orders their
        # sums as the live solver did, which makes the replay bit-identical on the CPU.
        for i in range(nh, h):
            solver.add_haadf(series.haadf_angles[i], series.haadf[i])
        for i in range(nc, c):
            solver.add_chem(series.common_chem_angles[i],
                            {e: series.chem[e][i][None] for e in solver.elements})
        return max(h, nh), max(c, nc)

    for h, c, _ in schedule_of(record):
        nh, nc = add_until(h, c)
        solver.step()
    add_until(series.haadf.shape[0], series.common_chem_angles.size)
    return solver


def owed_after_crash(record: RunRecord, params: LiveParams) -> int:
    """The per-tilt iterations (k per tilt since the solver became ready) not yet recorded:
    those the crash interrupted."""
    order = arrival_order(record)
    nh = nc = 0
    ready_at = len(order)
    for i, m in enumerate(order):
        nh, nc = nh + (m == "haadf"), nc + (m == "chem")
        if nh > 0 or (nc > 0 and params.fusion.lambda_haadf == 0):  # the HAADF phase
            ready_at = i
            break
    done = sum(1 for *_, ph in schedule_of(record) if ph == PHASE_TILT)
    return max(params.iterations_per_tilt * (len(order) - ready_at) - done, 0)


def start_of(record: RunRecord) -> SeriesStart:
    """The series_start a run file was created from (typed, as when it arrived)."""
    h = json_header(record)
    try:
        start = typed(Message(h))
    except ProtocolError as e:
        raise LiveError(f"the run file's start_header is not a valid series_start: {e}") \
            from None
    if not isinstance(start, SeriesStart):
        raise LiveError("the run file's start_header is not a series_start")
    return start


def json_header(record: RunRecord) -> dict[str, Any]:
    """The series_start header a run file was created from."""
    raw = record.attrs.get("start_header", "{}")
    try:
        h = json.loads(raw)
    except ValueError:
        raise LiveError("the run file's start_header is not JSON") from None
    if not isinstance(h, dict):
        raise LiveError("the run file's start_header is not a JSON object")
    return h
