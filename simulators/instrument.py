"""A simulated microscope that serves a tilt series over the fusetomo wire protocol.

`SimulatedInstrument` precomputes every projection of its plan (one `forward.simulate` call,
or a series/run file read for replay), binds an `InstrumentServer` (ROUTER) and, after the
controller's first `hello`, walks the plan step by step, sleeping the step's time divided by
the speed factor: at each step a `haadf_tilt`, and at chemical steps also a `chem_tilt` with
one float32 count frame per element (series order). `series_start` is seq 0; `series_end`
is last.

Delivery (at-least-once): every data message stays in the outbox until the controller acks
it (`ack` {ack_seq, status}); at most `window` sent messages are unacknowledged at a time. A
`hello` {last_seq} from the controller (first contact, reconnect or heartbeat) drops what
it has recorded (seq <= last_seq) and resends every unacked message with seq > last_seq, in
order. `error` messages from the controller are logged and counted. A malformed message gets
an `error` reply {code, message, bad_seq} and the instrument carries on.

Commands (`command` {cmd, id, ...arguments}, arguments at the top level of the header or in
an `args` object) are answered with `ack` {ack_seq: id, status 'done'|'rejected', reason}:
- pause / resume: stop before the next plan step (the step in progress completes) / go on.
- abort: drop what is in progress and send `series_end` with reason 'aborted'.
- go_to_tilt {angle}, acquire_haadf {dose | dwell_ms}, acquire_spectrum {dose | dwell_ms}:
  manual moves and acquisitions at the current tilt, accepted while the plan is not running
  (paused, `auto` off, or finished); they run in the order received and are acked 'done'
  when finished (acquisitions list the `seqs` of the tilts they produced). Simulated
  acquisitions are projected on demand at the commanded dose; replayed ones take the file's
  frame at the current tilt.
- continue: releases an instrument that holds for advice (below).

Holding for advice (`hold_for_advice`): the plan is HAADF-only and a spectrum image can be
had at every planned tilt (all are simulated up front, one noise draw). After each plan
step the instrument holds at that tilt until the controller decides: `acquire_spectrum`
(the spectrum image at this tilt: a `chem_tilt` whose `haadf_seq` is the step's HAADF
image, which is not repeated) or `continue`. With no decision within `hold_timeout_s` it
goes on by itself (logged). series_start says `holds_for_advice: true`.

Replies (ack, error) carry the seq of the message they answer and are not kept for resending;
only data messages use the data sequence numbers.

Dose accounting: every tilt header carries its own dose (`dose_e_per_A2`) and the cumulative
dose per modality so far (`dose_total_e_per_A2` {haadf, chem}); series_end carries the
totals. Optional drift moves each acquisition (HAADF and its simultaneous spectrum image
alike) by a random sub-pixel offset N(0, sigma) px per axis, plus a constant tilt-axis
offset along the detector axis; the applied offsets are in the header (`drift_px` [ds, dd],
`axis_offset_px`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from scipy.ndimage import shift as nd_shift

from fusetomo.adapters.commands import CommandDispatch
from fusetomo.adapters.delivery import Outbox
from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    COMMAND,
    ERROR,
    HAADF_TILT,
    HELLO,
    SERIES_END,
    SERIES_START,
    Message,
    make,
)
from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import read_series, total_dose
from fusetomo.adapters.transport import DEFAULT_BIND, CurveKeys, InstrumentServer
from fusetomo.simulators.forward import (
    AcquisitionParams,
    TiltScheme,
    bin_projections,
    haadf_signal,
    simulate,
)
from fusetomo.simulators.schemes import ORDERS, SEQUENTIAL, TiltPlan, from_angles, make_plan
from fusetomo.simulators.specimens import check_size, make_specimen, resample
from fusetomo.solver.projector import ParallelProjector

log = logging.getLogger("fusetomo.instrument")

SERIES_ID_MAX = 200


class InstrumentError(ValueError):
    """Bad instrument parameters or replay source; the message names the value."""


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

    def __post_init__(self) -> None:
        if self.source is None:
            try:
                check_size(self.size)
            except ValueError as e:
                raise InstrumentError(str(e)) from None
        if self.scheme not in ORDERS:
            raise InstrumentError(f"tilt scheme {self.scheme!r} is not one of {list(ORDERS)}")
        _positive("speed", self.speed)
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


def apply_shift(image: np.ndarray, shift_px: tuple[float, float] | list[float],
                *, counts: bool = False) -> np.ndarray:
    """An image moved by shift_px = (ds, dd) pixels (linear interpolation, edges repeated;
    counts stay >= 0). The instrument's drift uses exactly this."""
    out = nd_shift(np.asarray(image, dtype=np.float32), tuple(float(s) for s in shift_px),
                   order=1, mode="nearest")
    return np.clip(out, 0, None) if counts else out


@dataclass
class InstrumentStats:
    """What happened in one `serve`."""

    reason: str | None = None  # 'completed' | 'aborted' once series_end was made
    end_acked: bool = False
    n_haadf: int = 0
    n_chem: int = 0
    dose_haadf: float = 0.0
    dose_chem: float = 0.0
    steps_done: int = 0
    sent: int = 0  # data messages sent, resends included
    resent: int = 0
    hellos: int = 0
    errors_received: int = 0  # error messages from the controller
    errors_sent: int = 0  # error replies to malformed or unexpected messages
    commands: int = 0


@dataclass
class _Activity:
    kind: str  # 'step' or one of MANUAL_COMMANDS
    deadline: float
    step: int | None = None
    cmd: dict[str, Any] | None = None  # the command: peer, seq, id, and parsed arguments


class SimulatedInstrument(CommandDispatch):
    """A simulated (or replaying) microscope behind an `InstrumentServer`."""

    _arg_error = InstrumentError

    def __init__(self, params: InstrumentParams, *, ctx: zmq.Context | None = None) -> None:
        self.params = params
        self.series_id = params.series_id or f"sim-{uuid.uuid4().hex[:12]}"
        self._ctx = ctx
        self._acq = params.acquisition
        self._fine: np.ndarray | None = None  # fine specimen volumes (simulated source)
        self._hsig: np.ndarray | None = None
        self._Z = np.zeros(0)
        if params.source is not None:
            self.plan, self.series = self._load_source(Path(params.source))
        else:
            self.plan, self.series = self._simulate()
        self.elements = self.series.elements
        self._h_index = {_akey(a): i for i, a in enumerate(self.series.haadf_angles)}
        self._c_index = {_akey(a): i for i, a in enumerate(self.series.common_chem_angles)}
        for s in self.plan:
            if _akey(s.angle) not in self._h_index:
                raise InstrumentError(f"no HAADF image at planned tilt {s.angle}")
            if s.with_spectrum and _akey(s.angle) not in self._c_index:
                raise InstrumentError(f"no chemical maps at planned tilt {s.angle}")
        attrs = self.series.attrs
        self.haadf_dose = _number(attrs.get("haadf_dose_e_per_A2"))
        self.chem_dose = _number(attrs.get("chem_dose_e_per_A2"))
        budget = params.dose_budget
        if budget is None:
            # Holding for advice, the plan has no spectrum image: the budget still counts
            # those the plain plan would take (chem_step), so that it means the same.
            budget = total_dose(attrs, len(self.plan),
                                getattr(self, "_budget_chem", self.plan.n_chem))
        self.dose_budget = budget
        self._drift_rng = np.random.default_rng([params.seed, 0x0D71F7])
        self._demand_rng = np.random.default_rng([params.seed, 0xDE3A4D])

        self.server: InstrumentServer | None = None
        self.ready = threading.Event()
        self.stats = InstrumentStats()
        self.outbox = Outbox(self.series_id, params.window)
        self._started = False
        self._paused = not params.auto
        self._next_step = 0
        self._activity: _Activity | None = None
        self._queue: deque[dict[str, Any]] = deque()
        self._end_seq: int | None = None
        self.angle = 0.0  # current stage tilt
        self._holding: int | None = None  # plan step held for the controller's decision
        self._last_shift = np.zeros(2)
        self._hold_deadline = 0.0
        self._step_seq: dict[int, int] = {}  # plan step -> seq of its HAADF image
        self._emit(SERIES_START, **self._start_fields())

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
        elif plan.n_chem == 0:
            raise InstrumentError("the tilt plan has no chemical tilt; the simulated series "
                                  "needs at least one spectrum image")
        o = self._acq.oversample
        spec = make_specimen(p.specimen, p.size * o, seed=p.seed)
        if spec.size != p.size * o:
            spec = resample(spec, p.size * o)
        sim = simulate(spec, p.size, scheme, self._acq, seed=p.seed)
        self._fine = spec.volumes
        self._Z = np.asarray(spec.Z)
        log.info("simulated %s at size %d: %d HAADF + %d chemical tilts (%s)", spec.name,
                 p.size, len(plan), plan.n_chem, plan.order)
        return plan, sim.series

    def _load_source(self, path: Path) -> tuple[TiltPlan, TiltSeries]:
        series = read_series(path)
        haadf = {_akey(a) for a in series.haadf_angles}
        for a in series.common_chem_angles:
            if _akey(a) not in haadf:
                raise InstrumentError(f"{path}: chemical tilt {float(a)} has no HAADF image, "
                                      "so it cannot be replayed (a spectrum image always "
                                      "comes with its HAADF)")
        plan = from_angles(series.haadf_angles.tolist(), series.common_chem_angles.tolist(),
                           self.params.scheme)
        log.info("replaying %s: %d HAADF + %d chemical tilts (%s)", path, len(plan),
                 plan.n_chem, plan.order)
        return plan, series

    def _start_fields(self) -> dict[str, Any]:
        s, p = self.series, self.params
        return {
            "elements": list(self.elements),
            "Z": {e: int(s.Z[e]) for e in self.elements},
            "shape": list(s.shape),
            "scheme": self.plan.as_header(),
            "dose_budget_e_per_A2": self.dose_budget,
            "pixel_size_nm": s.pixel_size_nm,
            "gamma": s.gamma,
            "background": {e: float(s.background.get(e, 0.0)) for e in self.elements},
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
        }

    # -- serving ------------------------------------------------------------------------
    @property
    def endpoint(self) -> str | None:
        return None if self.server is None else self.server.endpoint

    def bind(self) -> str:
        """Bind the server (once) and return the endpoint actually bound."""
        return self._bind_server(self.params.bind, self.params.curve, self._ctx)

    def serve(self, stop_event: threading.Event | None = None) -> InstrumentStats:
        """Run until series_end is acknowledged (or `stop_event` is set); close the socket."""
        self.bind()
        self.ready.set()
        try:
            while not self.stats.end_acked:
                if stop_event is not None and stop_event.is_set():
                    log.info("stop requested")
                    break
                self._advance()
                self._flush()
                self._receive(self._poll_ms())
        finally:
            assert self.server is not None
            self.server.close()
            self.server = None
        log.info("instrument done: %s", self.stats)
        return self.stats

    def _poll_ms(self) -> int:
        wait = 0.1
        if self._activity is not None:
            wait = min(wait, max(0.0, self._activity.deadline - time.monotonic()))
        return max(0, math.ceil(wait * 1000))

    def _handle(self, peer: bytes, msg: Message) -> None:
        h = msg.header
        if msg.type == HELLO:
            self._on_hello(peer, int(h["last_seq"]))
        elif msg.type == ACK:
            self._on_ack(int(h["ack_seq"]), str(h["status"]))
        elif msg.type == ERROR:
            self.stats.errors_received += 1
            log.warning("controller reports error %s on seq %s: %s", h["code"],
                        h.get("seq"), h["message"])
        elif msg.type == COMMAND:
            self._on_command(peer, h)
        else:
            self._reply_error(peer, "unexpected_type",
                              f"the instrument does not accept {msg.type!r} messages", msg.seq)

    def _on_hello(self, peer: bytes, last_seq: int) -> None:
        self.stats.hellos += 1
        resend = self.outbox.on_hello(peer, last_seq)  # drops what the controller recorded
        self.stats.resent += resend
        self.stats.end_acked = self.outbox.end_acked
        log.info("hello from %r, last_seq %d: %d message(s) to resend, %d unacked", peer,
                 last_seq, resend, len(self.outbox.unacked))
        if not self._started:
            self._started = True
            log.info("series %s started (%s)", self.series_id,
                     "paused" if self._paused else "running")

    def _on_ack(self, seq: int, status: str) -> None:
        if self.outbox.on_ack(seq):
            log.debug("seq %d acked (%s)", seq, status)
            self.stats.end_acked = self.outbox.end_acked
        else:
            log.debug("ack for seq %d, which is not outstanding (%s)", seq, status)

    def _flush(self) -> None:
        if self.server is not None:
            self.stats.sent += self.outbox.flush(self.server.send)

    def _emit(self, mtype: str, arrays: tuple[np.ndarray, ...] | list[np.ndarray] = (),
              **fields: Any) -> int:
        return self.outbox.emit(mtype, arrays, **fields)

    def _reply(self, peer: bytes, msg: Message) -> None:
        if self.server is not None:
            self.server.send(peer, msg)

    # -- the plan and manual activities ---------------------------------------------------
    @property
    def plan_running(self) -> bool:
        return (self._started and not self._paused and self._end_seq is None
                and self._holding is None and self._next_step < len(self.plan))

    def _advance(self) -> None:
        while self._end_seq is None:
            act = self._activity
            if act is not None:
                if time.monotonic() < act.deadline:
                    return
                self._activity = None
                self._complete(act)
                continue
            if not self._start_next():
                return

    def _start_next(self) -> bool:
        """Begin the next activity; False when there is nothing to do now."""
        p = self.params
        now = time.monotonic()
        if self._queue:
            cmd = self._queue.popleft()
            kind = cmd["cmd"]
            if kind == "go_to_tilt":
                t = p.t_tilt + p.t_track
            elif kind == "acquire_haadf":
                t = p.t_haadf_scan * cmd["ratio"]
            else:
                t = p.t_spectrum_image * cmd["ratio"]
            self._activity = _Activity(kind, now + t / p.speed, cmd=cmd)
            return True
        if not (self._started and not self._paused):
            return False
        if self._holding is not None:
            if now < self._hold_deadline:
                return False
            log.warning("no decision at %+.2f deg within %.0f s: going on without a spectrum "
                        "image", self.angle, p.hold_timeout_s)
            self._holding = None
        if self._next_step < len(self.plan):
            step = self.plan[self._next_step]
            t = p.t_tilt + p.t_track + (p.t_spectrum_image if step.with_spectrum
                                        else p.t_haadf_scan)
            self._activity = _Activity("step", now + t / p.speed, step=self._next_step)
            return True
        self._end("completed")
        return False

    def _complete(self, act: _Activity) -> None:
        if act.kind == "step":
            assert act.step is not None
            step = self.plan[act.step]
            self.angle = step.angle
            seqs = self._acquire(step.angle, spectrum=step.with_spectrum, step=act.step)
            self._step_seq[act.step] = seqs[0]
            if self.params.hold_for_advice:
                self._holding = act.step
                self._hold_deadline = time.monotonic() + self.params.hold_timeout_s
            self._next_step = act.step + 1
            self.stats.steps_done = self._next_step
            log.debug("step %d/%d at %+.2f deg: seq %s", self._next_step, len(self.plan),
                      step.angle, seqs)
            return
        cmd = act.cmd
        assert cmd is not None
        if act.kind == "go_to_tilt":
            self.angle = cmd["angle"]
            log.info("stage at %+.2f deg", self.angle)
            self._ack_command(cmd, "done", angle=self.angle)
            return
        spectrum = act.kind == "acquire_spectrum"
        held = self._holding
        if spectrum and held is not None and _akey(self.plan[held].angle) == _akey(self.angle) \
                and math.isclose(cmd["ratio"], 1.0, rel_tol=1e-9):
            seqs = [self._held_spectrum(held, cmd)]
            self._holding = None
            self._ack_command(cmd, "done", angle=self.angle, seqs=seqs)
            return
        try:
            seqs = self._acquire(self.angle, spectrum=spectrum, step=None, cmd=cmd)
        except InstrumentError as e:
            self._ack_command(cmd, "rejected", str(e))
            return
        self._ack_command(cmd, "done", angle=self.angle, seqs=seqs)

    def _end(self, reason: str) -> None:
        if self._end_seq is not None:
            return
        s = self.stats
        s.reason = reason
        self._end_seq = self._emit(
            SERIES_END, n_haadf=s.n_haadf, n_chem=s.n_chem, reason=reason,
            steps_done=self._next_step, steps_planned=len(self.plan),
            dose_total_e_per_A2=self._dose_totals())
        self.outbox.mark_end(self._end_seq)
        log.info("series %s %s: %d HAADF + %d chemical tilts", self.series_id, reason,
                 s.n_haadf, s.n_chem)

    def _dose_totals(self) -> dict[str, float]:
        return {"haadf": self.stats.dose_haadf, "chem": self.stats.dose_chem}

    # -- acquisition -------------------------------------------------------------------
    def _acquire(self, angle: float, *, spectrum: bool, step: int | None,
                 cmd: dict[str, Any] | None = None) -> list[int]:
        """Make the tilt message(s) at `angle`; return their seqs."""
        h_dose = self.haadf_dose
        c_dose = self.chem_dose
        background = {e: float(self.series.background.get(e, 0.0)) for e in self.elements}
        if cmd is None:
            hi = self._h_index[_akey(angle)]
            haadf = self.series.haadf[hi]
            chem = None
            if spectrum:
                ci = self._c_index[_akey(angle)]
                chem = np.stack([self.series.chem[e][ci] for e in self.elements])
        else:
            ratio = float(cmd["ratio"])
            if spectrum:
                c_dose = self.chem_dose * ratio
                background = {e: b * ratio for e, b in background.items()}
            else:
                h_dose = self.haadf_dose * ratio
            haadf, chem = self._on_demand(angle, spectrum, ratio)
        shift_fields: dict[str, Any] = {}
        shift = np.zeros(2)
        if self.params.drift_sigma_px > 0:
            drift = self._drift_rng.normal(0.0, self.params.drift_sigma_px, 2)
            shift += drift
            shift_fields["drift_px"] = [float(drift[0]), float(drift[1])]
        if self.params.axis_offset_px != 0:
            shift[1] += self.params.axis_offset_px
            shift_fields["axis_offset_px"] = float(self.params.axis_offset_px)
        self._last_shift = shift
        if shift_fields:
            haadf = apply_shift(haadf, shift)
            if chem is not None:
                chem = np.stack([apply_shift(c, shift, counts=True) for c in chem])
        common = {"step": step, "on_demand": cmd is not None,
                  "cmd_id": None if cmd is None else cmd["id"], **shift_fields}
        now = time.time()
        s = self.stats
        s.n_haadf += 1
        s.dose_haadf += h_dose
        seqs = [self._emit(HAADF_TILT, [np.asarray(haadf, dtype=np.float32)], angle=angle,
                           dose_e_per_A2=h_dose, dose_total_e_per_A2=self._dose_totals(),
                           t_acquired=now, with_spectrum=spectrum, **common)]
        if chem is not None:
            s.n_chem += 1
            s.dose_chem += c_dose
            seqs.append(self._emit(
                CHEM_TILT, [np.asarray(c, dtype=np.float32) for c in chem], angle=angle,
                elements=list(self.elements), dose_e_per_A2=c_dose,
                dose_total_e_per_A2=self._dose_totals(), t_acquired=now,
                haadf_seq=seqs[0], background=background, **common))
        return seqs

    def _held_spectrum(self, step: int, cmd: dict[str, Any]) -> int:
        """The spectrum image of the held plan step (simulated with the series): only the
        chem_tilt is sent; its simultaneous HAADF image is the step's, already sent."""
        angle = self.plan[step].angle
        ci = self._c_index[_akey(angle)]
        chem = np.stack([self.series.chem[e][ci] for e in self.elements])
        shift = self._last_shift
        if np.any(shift != 0):
            chem = np.stack([apply_shift(c, shift, counts=True) for c in chem])
        s = self.stats
        s.n_chem += 1
        s.dose_chem += self.chem_dose
        background = {e: float(self.series.background.get(e, 0.0)) for e in self.elements}
        return self._emit(CHEM_TILT, [np.asarray(c, dtype=np.float32) for c in chem],
                          angle=angle, elements=list(self.elements),
                          dose_e_per_A2=self.chem_dose,
                          dose_total_e_per_A2=self._dose_totals(), t_acquired=time.time(),
                          haadf_seq=self._step_seq.get(step), background=background,
                          step=step, on_demand=True, cmd_id=cmd["id"])

    def _on_demand(self, angle: float, spectrum: bool,
                   ratio: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Frames at `angle`: the replay file's, or projected now at dose ratio `ratio`
        (of the nominal spectrum dose for spectra, of the HAADF dose for HAADF images)."""
        key = _akey(angle)
        if self._fine is None:  # replay
            if key not in self._h_index:
                raise InstrumentError(f"the replay source has no HAADF image at {angle} deg")
            if spectrum and key not in self._c_index:
                raise InstrumentError(f"the replay source has no chemical maps at {angle} deg")
            chem = None
            if spectrum:
                ci = self._c_index[key]
                chem = np.stack([self.series.chem[e][ci] for e in self.elements])
            return self.series.haadf[self._h_index[key]], chem
        acq, o, n = self._acq, self._acq.oversample, self.params.size
        proj = ParallelProjector(n * o, [angle])
        if self._hsig is None:
            self._hsig = haadf_signal(self._fine, self._Z, acq.gamma)
        rng = self._demand_rng
        clean_h = bin_projections(proj.forward(self._hsig), o)[0]
        support = clean_h > 0.1 * clean_h.max()
        mu = float(clean_h[support].mean()) if support.any() else 1.0
        h_ratio = 1.0 if spectrum else ratio  # a spectrum's HAADF is at the nominal dose
        sigma = mu / acq.haadf_snr / math.sqrt(h_ratio)
        haadf = (clean_h + rng.normal(0.0, sigma, clean_h.shape)).astype(np.float32)
        chem = None
        if spectrum:
            kappa = float(self.series.attrs["counts_per_unit"]) * ratio
            clean_c = bin_projections(proj.forward(self._fine), o)[:, 0]
            base = float(self.series.attrs["counts_per_unit"])
            bg = np.array([self.series.background[e] / base for e in self.elements])
            chem = rng.poisson(kappa * (clean_c + bg[:, None, None])).astype(np.float32)
        return haadf, chem

    # -- commands -----------------------------------------------------------------------
    def _on_command(self, peer: bytes, h: dict[str, Any]) -> None:
        self.stats.commands += 1
        name, cid = str(h["cmd"]), int(h["id"])
        args = dict(h["args"]) if isinstance(h.get("args"), dict) else {}
        for k in ("angle", "dose", "dwell_ms"):
            if k in h:
                args[k] = h[k]
        cmd: dict[str, Any] = {"cmd": name, "id": cid, "seq": int(h["seq"]), "peer": peer}
        log.info("command %s (id %d) %s", name, cid, args or "")
        self.dispatch_command(cmd, args)

    def _reply_command(self, cmd: dict[str, Any], status: str, reason: str | None = None,
                       **extra: Any) -> None:
        self._ack_command(cmd, status, reason, **extra)

    def _stop_series(self) -> None:
        self._abort()

    def _command_args(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "go_to_tilt":
            a = args.get("angle")
            if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a) \
                    or abs(a) > 90:
                raise InstrumentError(f"go_to_tilt: angle {a!r} must be a number within "
                                      "[-90, 90] degrees")
            return {"angle": float(a)}
        dose, dwell = args.get("dose"), args.get("dwell_ms")
        if dose is not None and dwell is not None:
            raise InstrumentError(f"{name}: give dose or dwell_ms, not both (dose {dose!r}, "
                                  f"dwell_ms {dwell!r})")
        spectrum = name == "acquire_spectrum"
        nominal = self.chem_dose if spectrum else self.haadf_dose
        ratio = 1.0
        if dose is not None:
            if isinstance(dose, bool) or not isinstance(dose, int | float) \
                    or not math.isfinite(dose) or dose <= 0:
                raise InstrumentError(f"{name}: dose {dose!r} must be a number > 0 e/A^2")
            if nominal <= 0:
                raise InstrumentError(f"{name}: dose {dose!r} cannot be set, the source has "
                                      "no nominal dose")
            ratio = float(dose) / nominal
        elif dwell is not None:
            if isinstance(dwell, bool) or not isinstance(dwell, int | float) \
                    or not math.isfinite(dwell) or dwell <= 0:
                raise InstrumentError(f"{name}: dwell_ms {dwell!r} must be a number > 0")
            nominal_dwell = self.nominal_dwell_ms(spectrum)
            if nominal_dwell <= 0:
                raise InstrumentError(f"{name}: dwell_ms {dwell!r} cannot be set, the nominal "
                                      "scan time is 0")
            ratio = float(dwell) / nominal_dwell
        if self._fine is None and not math.isclose(ratio, 1.0, rel_tol=1e-9):
            raise InstrumentError(f"{name}: a replayed series has one dose per image; "
                                  f"cannot acquire at {ratio:.3g} times the nominal dose")
        return {"ratio": ratio}

    def nominal_dwell_ms(self, spectrum: bool) -> float:
        """Per-pixel dwell (ms) of a plan acquisition: scan time over the pixels."""
        ns, nd = self.series.shape
        t = self.params.t_spectrum_image if spectrum else self.params.t_haadf_scan
        return 1000.0 * t / (ns * nd)

    def _abort(self) -> None:
        act, self._activity = self._activity, None
        if act is not None and act.cmd is not None:
            self._ack_command(act.cmd, "rejected", "aborted")
        while self._queue:
            self._ack_command(self._queue.popleft(), "rejected", "aborted")
        self._end("aborted")

    def _ack_command(self, cmd: dict[str, Any], status: str, reason: str | None = None,
                     **extra: Any) -> None:
        self._flush()  # data a command produced goes out before its ack (window permitting)
        if status == "rejected":
            log.warning("command %s (id %d) rejected: %s", cmd["cmd"], cmd["id"], reason)
        self._reply(cmd["peer"], make(ACK, self.series_id, cmd["seq"], ack_seq=cmd["id"],
                                      status=status, reason=reason, cmd=cmd["cmd"], **extra))

    # -- introspection (tests, logs) -----------------------------------------------------
    @property
    def unacked(self) -> list[int]:
        return self.outbox.unacked

    @property
    def paused(self) -> bool:
        return self._paused


def _akey(angle: float) -> float:
    return round(float(angle) * 1e6) / 1e6


def _number(value: Any) -> float:
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        v = float(value)
        if math.isfinite(v) and v >= 0:
            return v
    return 0.0
