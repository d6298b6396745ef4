"""The instrument side of the fusetomo protocol for a Nion microscope.

`NionTomoAdapter` binds an `InstrumentServer` (ROUTER), says nothing until the controller's
first `hello`, then walks its tilt plan: at each step it tilts the stage (`Microscope.set_tilt`,
which confirms), takes a HAADF-only scan, or at chemical steps a spectrum image with its
simultaneous HAADF image, and sends `haadf_tilt` (and `chem_tilt` with one float32 count map
per element, from `fusetomo.adapters.spectra`) — the same messages, delivery rules
(`Outbox`: at-least-once, window, hello/ack) and command handling as the simulated
instrument (`simulators/instrument.py`), so the controller cannot tell them apart.

Threads: `serve` owns the socket and all protocol state; acquisitions block for seconds to
minutes, so they run on one worker thread, one job at a time, and hand their result back
through a queue. Commands are therefore answered while a scan is running: pause and resume
act before the next plan step, abort stops the acquisition in progress
(`Microscope.abort`) and ends the series at once. Manual moves and acquisitions
(go_to_tilt, acquire_haadf, acquire_spectrum) are accepted while the plan is not running
(paused, `auto` off) and acknowledged when done, with the seqs of the tilts they produced.
A failed plan step (stage not confirming, device error) pauses the plan and is kept in
`last_error`; `resume` retries the step. The same commands can be given locally (a Swift
panel) with `command(...)`, which is thread-safe.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from fusetomo.adapters.commands import CommandDispatch
from fusetomo.adapters.delivery import Outbox
from fusetomo.adapters.nion.config import EELS, NionAdapterError, NionTomoConfig
from fusetomo.adapters.nion.microscope import (
    AcquisitionAbortedError,
    HaadfScan,
    Microscope,
    SpectrumImage,
    pixel_dose,
)
from fusetomo.adapters.protocol import (
    ACK,
    CHEM_TILT,
    COMMAND,
    COMMANDS,
    ERROR,
    HAADF_TILT,
    HELLO,
    SERIES_END,
    SERIES_START,
    Message,
    make,
)
from fusetomo.adapters.spectra import (
    DEFAULT_EDX_LINES,
    DEFAULT_EELS_EDGES,
    SpectrumError,
    edx_maps,
    eels_maps,
)
from fusetomo.adapters.transport import InstrumentServer

log = logging.getLogger("fusetomo.nion")

LOCAL_PEER = b""  # commands given in-process: their acks go nowhere
POLL_MS = 50


@dataclass
class AdapterStats:
    """What happened in one `serve`."""

    reason: str | None = None  # 'completed' | 'aborted' once series_end was made
    end_acked: bool = False
    n_haadf: int = 0
    n_chem: int = 0
    dose_haadf: float = 0.0
    dose_chem: float = 0.0
    steps_done: int = 0
    hellos: int = 0
    errors_received: int = 0
    errors_sent: int = 0
    commands: int = 0
    failures: int = 0  # plan steps or manual acquisitions that raised


@dataclass
class _Job:
    kind: str  # 'step' or one of MANUAL_COMMANDS
    step: int | None = None
    cmd: dict[str, Any] | None = None


@dataclass
class _Result:
    job: _Job
    angle: float | None = None  # stage tilt (planned or commanded), degrees
    readback: float | None = None
    haadf: HaadfScan | None = None
    spectrum: SpectrumImage | None = None
    maps: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class NionTomoAdapter(CommandDispatch):
    """A Nion microscope (or anything that is a `Microscope`) behind an `InstrumentServer`."""

    _arg_error = NionAdapterError

    def __init__(self, config: NionTomoConfig, microscope: Microscope, *,
                 ctx: zmq.Context | None = None) -> None:
        self.config = config
        self.microscope = microscope
        self.plan = config.acquisition_plan()
        self._planned_chem = config.plan().n_chem  # for the dose budget
        self.series_id = config.series_id or f"nion-{uuid.uuid4().hex[:12]}"
        self.elements = list(config.elements)
        self._ctx = ctx
        self.server: InstrumentServer | None = None
        self.ready = threading.Event()
        self.stats = AdapterStats()
        self.outbox = Outbox(self.series_id, config.window)
        self.last_error: str | None = None
        self._started = False
        self._paused = not config.auto
        self._next_step = 0
        self._queue: deque[dict[str, Any]] = deque()  # manual commands waiting
        self._job: _Job | None = None  # the job the worker is on
        self._abort = threading.Event()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._results: queue.Queue[_Result] = queue.Queue()
        self._local: queue.Queue[dict[str, Any]] = queue.Queue()
        self._local_ids = iter(range(1_000_000_000, 2**62))
        self._worker: threading.Thread | None = None
        self.angle: float = microscope.tilt_deg()  # the current stage tilt
        current = microscope.beam_current_pa()
        self.beam_current_pa = current
        fov = microscope.field_of_view_nm()
        self.pixel_nm = None if fov is None else fov / config.size
        # nominal doses per image (e/A^2): every pixel gets the beam for one dwell
        self.haadf_dose = pixel_dose(current, config.haadf_dwell_us * 1e-6, self.pixel_nm)
        self.chem_dose = pixel_dose(current, config.exposure_ms * 1e-3, self.pixel_nm)
        budget = config.dose_budget
        if budget is None and self.haadf_dose > 0:
            budget = (len(self.plan) - self._planned_chem) * self.haadf_dose \
                + self._planned_chem * self.chem_dose
        self.dose_budget = budget
        self._end_seq: int | None = None
        self._holding: int | None = None  # plan step held for the controller's decision
        self._hold_deadline = 0.0
        self._step_seq: dict[int, int] = {}  # plan step -> seq of its HAADF image
        self.outbox.emit(SERIES_START, **self._start_fields())

    # -- the series header ----------------------------------------------------------------
    def _windows(self) -> dict[str, Any]:
        c = self.config
        if c.spectra == EELS:
            table = {**DEFAULT_EELS_EDGES, **(c.edge_windows or {})}
            return {e: {"edge": table[e].edge, "pre_edge_ev": list(table[e].pre_edge_ev),
                        "signal_ev": list(table[e].signal_ev)} for e in self.elements}
        table = {**DEFAULT_EDX_LINES, **(c.edx_windows or {})}
        return {e: {"line": table[e].line, "window_kev": list(table[e].window_kev),
                    "background_kev": [list(b) for b in table[e].background_kev]}
                for e in self.elements}

    def _start_fields(self) -> dict[str, Any]:
        c = self.config
        fields: dict[str, Any] = {
            "elements": self.elements,
            "Z": {e: c.z_of(e) for e in self.elements},
            "shape": [c.size, c.size],
            "scheme": self.plan.as_header(),
            "dose_budget_e_per_A2": self.dose_budget,
            "pixel_size_nm": self.pixel_nm,
            "haadf_dose_e_per_A2": self.haadf_dose,
            "chem_dose_e_per_A2": self.chem_dose,
            "instrument": "nion",
            "tilt_control": c.tilt_control,
            "spectra": c.spectra,
            "windows": self._windows(),
            "haadf_dwell_us": c.haadf_dwell_us,
            "exposure_ms": c.exposure_ms,
            "beam_current_pa": self.beam_current_pa,
            "auto": c.auto,
            "window": c.window,
            "holds_for_advice": c.hold_for_advice,
            **dict(c.extra),
        }
        if c.gamma is not None:
            fields["gamma"] = c.gamma
        return fields

    # -- state, for a panel ---------------------------------------------------------------
    @property
    def endpoint(self) -> str | None:
        return None if self.server is None else self.server.endpoint

    @property
    def state(self) -> str:
        """'waiting' (no controller yet), 'running', 'paused', 'ended'."""
        if self._end_seq is not None:
            return "ended"
        if not self._started:
            return "waiting"
        return "paused" if self._paused else "running"

    @property
    def next_step(self) -> int:
        return self._next_step

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def plan_running(self) -> bool:
        return (self._started and not self._paused and self._end_seq is None
                and self._holding is None and self._next_step < len(self.plan))

    @property
    def holding(self) -> bool:
        """Waiting at a tilt for the controller's decision (hold_for_advice)."""
        return self._holding is not None

    def command(self, cmd: str, **args: Any) -> None:
        """Give a command in-process (thread-safe): the same six as over the socket."""
        if cmd not in COMMANDS:
            raise NionAdapterError(f"unknown command {cmd!r}; one of {list(COMMANDS)}")
        self._local.put({"cmd": cmd, "id": next(self._local_ids), "seq": 0, **args})

    # -- serving --------------------------------------------------------------------------
    def bind(self) -> str:
        """Bind the server (once) and return the endpoint actually bound."""
        return self._bind_server(self.config.bind, self.config.curve, self._ctx)

    def serve(self, stop_event: threading.Event | None = None) -> AdapterStats:
        """Run until series_end is acknowledged (or `stop_event` is set); close the socket
        and stop the worker."""
        self.bind()
        self._worker = threading.Thread(target=self._work, name="fusetomo-nion-acquire",
                                        daemon=True)
        self._worker.start()
        self.ready.set()
        try:
            while not self.outbox.end_acked:
                if stop_event is not None and stop_event.is_set():
                    log.info("stop requested")
                    break
                self._drain_local()
                self._collect()
                self._schedule()
                self._flush()
                self._receive(POLL_MS)
        finally:
            if self._job is not None:
                self._abort.set()
                self.microscope.abort()
            self._jobs.put(None)
            self._worker.join(30)
            assert self.server is not None
            self.server.close()
            self.server = None
        self.stats.end_acked = self.outbox.end_acked
        log.info("adapter done: %s", self.stats)
        return self.stats

    def _flush(self) -> None:
        if self.server is not None:
            self.outbox.flush(self.server.send)

    def _handle(self, peer: bytes, msg: Message) -> None:
        h = msg.header
        if msg.type == HELLO:
            self.stats.hellos += 1
            n = self.outbox.on_hello(peer, int(h["last_seq"]))
            log.info("hello from %r, last_seq %d: %d to resend", peer, h["last_seq"], n)
            if not self._started:
                self._started = True
                log.info("series %s started (%s)", self.series_id,
                         "paused" if self._paused else "running")
        elif msg.type == ACK:
            self.outbox.on_ack(int(h["ack_seq"]))
        elif msg.type == ERROR:
            self.stats.errors_received += 1
            log.warning("controller reports error %s on seq %s: %s", h["code"], h.get("seq"),
                        h["message"])
        elif msg.type == COMMAND:
            cmd = {"cmd": str(h["cmd"]), "id": int(h["id"]), "seq": int(h["seq"]),
                   **(dict(h["args"]) if isinstance(h.get("args"), dict) else {})}
            for k in ("angle", "dose", "dwell_ms"):
                if k in h:
                    cmd[k] = h[k]
            self._on_command(peer, cmd)
        else:
            self._reply_error(peer, "unexpected_type",
                              f"the instrument does not accept {msg.type!r} messages", msg.seq)

    def _reply(self, peer: bytes, msg: Message) -> None:
        if self.server is not None and peer != LOCAL_PEER:
            self.server.send(peer, msg)

    def _ack(self, cmd: dict[str, Any], status: str, reason: str | None = None,
             **extra: Any) -> None:
        self._flush()  # data a command produced goes out before its ack (window permitting)
        if status == "rejected":
            log.warning("command %s (id %d) rejected: %s", cmd["cmd"], cmd["id"], reason)
        self._reply(cmd["peer"], make(ACK, self.series_id, cmd["seq"], ack_seq=cmd["id"],
                                      status=status, reason=reason, cmd=cmd["cmd"], **extra))

    # -- commands -------------------------------------------------------------------------
    def _drain_local(self) -> None:
        while True:
            try:
                cmd = self._local.get_nowait()
            except queue.Empty:
                return
            self._on_command(LOCAL_PEER, cmd)

    def _on_command(self, peer: bytes, cmd: dict[str, Any]) -> None:
        self.stats.commands += 1
        cmd["peer"] = peer
        name = cmd["cmd"]
        log.info("command %s (id %d)", name, cmd["id"])
        self.dispatch_command(cmd, cmd)

    def _reply_command(self, cmd: dict[str, Any], status: str, reason: str | None = None,
                       **extra: Any) -> None:
        self._ack(cmd, status, reason, **extra)

    def _stop_series(self) -> None:
        self._do_abort()

    def _on_resume(self) -> None:
        self.last_error = None

    def _command_args(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        if name == "go_to_tilt":
            a = args.get("angle")
            if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a) \
                    or abs(a) > 90:
                raise NionAdapterError(f"go_to_tilt: angle {a!r} must be a number within "
                                       "[-90, 90] degrees")
            return {"angle": float(a)}
        dose, dwell = args.get("dose"), args.get("dwell_ms")
        if dose is not None and dwell is not None:
            raise NionAdapterError(f"{name}: give dose or dwell_ms, not both (dose {dose!r}, "
                                   f"dwell_ms {dwell!r})")
        spectrum = name == "acquire_spectrum"
        nominal_ms = c.exposure_ms if spectrum else c.haadf_dwell_us / 1000.0
        nominal_dose = self.chem_dose if spectrum else self.haadf_dose
        ms = nominal_ms
        if dose is not None:
            if isinstance(dose, bool) or not isinstance(dose, int | float) \
                    or not math.isfinite(dose) or dose <= 0:
                raise NionAdapterError(f"{name}: dose {dose!r} must be a number > 0 e/A^2")
            if nominal_dose <= 0:
                raise NionAdapterError(f"{name}: dose {dose!r} cannot be set: the beam current "
                                       "is unknown (give beam_current_pa)")
            ms = nominal_ms * float(dose) / nominal_dose
        elif dwell is not None:
            if isinstance(dwell, bool) or not isinstance(dwell, int | float) \
                    or not math.isfinite(dwell) or dwell <= 0:
                raise NionAdapterError(f"{name}: dwell_ms {dwell!r} must be a number > 0")
            ms = float(dwell)
        return {"dwell_ms": ms}

    def _do_abort(self) -> None:
        if self._job is not None:
            self._abort.set()
            self.microscope.abort()
            if self._job.cmd is not None:
                self._ack(self._job.cmd, "rejected", "aborted")
        while self._queue:
            self._ack(self._queue.popleft(), "rejected", "aborted")
        self._end("aborted")

    def _end(self, reason: str) -> None:
        if self._end_seq is not None:
            return
        s = self.stats
        s.reason = reason
        self._end_seq = self.outbox.emit(
            SERIES_END, n_haadf=s.n_haadf, n_chem=s.n_chem, reason=reason,
            steps_done=self._next_step, steps_planned=len(self.plan),
            dose_total_e_per_A2={"haadf": s.dose_haadf, "chem": s.dose_chem})
        self.outbox.mark_end(self._end_seq)
        log.info("series %s %s: %d HAADF + %d chemical tilts", self.series_id, reason,
                 s.n_haadf, s.n_chem)

    # -- scheduling (serve thread) ----------------------------------------------------------
    def _schedule(self) -> None:
        if self._job is not None or self._end_seq is not None:
            return
        if self._queue:
            cmd = self._queue.popleft()
            self._start(_Job(cmd["cmd"], cmd=cmd))
            return
        if not (self._started and not self._paused):
            return
        if self._holding is not None:
            if time.monotonic() < self._hold_deadline:
                return
            log.warning("no decision at %+.2f deg within %.0f s: going on without a spectrum "
                        "image", self.angle, self.config.hold_timeout_s)
            self._holding = None
        if self._next_step < len(self.plan):
            self._start(_Job("step", step=self._next_step))
            return
        self._end("completed")

    def _start(self, job: _Job) -> None:
        self._job = job
        self._abort.clear()
        self._jobs.put(job)

    def _collect(self) -> None:
        while True:
            try:
                res = self._results.get_nowait()
            except queue.Empty:
                return
            if res.job is not self._job:
                continue
            self._job = None
            if self._end_seq is not None:  # aborted while it ran
                continue
            self._complete(res)

    def _complete(self, res: _Result) -> None:
        job = res.job
        if res.angle is not None:
            self.angle = res.angle
        if res.error is not None:
            self.stats.failures += 1
            text = f"{type(res.error).__name__}: {res.error}"
            if job.kind == "step":
                self._paused = True
                self.last_error = f"step {job.step} at {self.plan[job.step].angle:+.2f} deg " \
                                  f"failed, plan paused: {text}"
                log.error("%s", self.last_error)
            else:
                assert job.cmd is not None
                self.last_error = f"{job.kind} failed: {text}"
                self._ack(job.cmd, "rejected", text)
            return
        if job.kind == "go_to_tilt":
            assert job.cmd is not None
            self._ack(job.cmd, "done", angle=self.angle, readback=res.readback)
            return
        held = self._holding
        chem_only = (job.kind == "acquire_spectrum" and held is not None
                     and abs(self.plan[held].angle - self.angle) < 1e-6)
        seqs = self._emit_tilts(res, haadf_seq=self._step_seq.get(held) if chem_only
                                else None)
        if chem_only:
            self._holding = None  # the decision is carried out: go on
        if job.kind == "step":
            assert job.step is not None
            self._step_seq[job.step] = seqs[0]
            self._next_step = job.step + 1
            self.stats.steps_done = self._next_step
            if self.config.hold_for_advice:
                self._holding = job.step
                self._hold_deadline = time.monotonic() + self.config.hold_timeout_s
        else:
            assert job.cmd is not None
            self._ack(job.cmd, "done", angle=self.angle, seqs=seqs)

    def _emit_tilts(self, res: _Result, haadf_seq: int | None = None) -> list[int]:
        """The tilt messages of a finished acquisition. With `haadf_seq` (a spectrum image
        at a held tilt, whose HAADF image was sent already) only the chem_tilt is sent; its
        simultaneous HAADF image would repeat the tilt's angle."""
        c, s = self.config, self.stats
        job = res.job
        angle = float(res.angle if res.angle is not None else self.angle)
        common = {"step": job.step, "on_demand": job.cmd is not None,
                  "cmd_id": None if job.cmd is None else job.cmd["id"],
                  "stage_tilt_deg": res.readback, "t_acquired": time.time()}
        if res.spectrum is not None:
            sp = res.spectrum
            h_img = sp.haadf
            # one exposure gives both images: its dose is counted once, as chemical
            c_dose = pixel_dose(self.beam_current_pa, sp.exposure_ms * 1e-3, sp.pixel_nm)
            h_dose = 0.0
            dwell = {"exposure_ms": sp.exposure_ms, "simultaneous_dose_e_per_A2": c_dose}
        else:
            assert res.haadf is not None
            h_img = res.haadf.image
            h_dose = pixel_dose(self.beam_current_pa, res.haadf.dwell_us * 1e-6,
                                   res.haadf.pixel_nm)
            c_dose = 0.0
            dwell = {"dwell_us": res.haadf.dwell_us}
        if haadf_seq is None:
            s.n_haadf += 1
            s.dose_haadf += h_dose
            seqs = [self.outbox.emit(
                HAADF_TILT, [np.asarray(h_img, dtype=np.float32)], angle=angle,
                dose_e_per_A2=h_dose, dose_total_e_per_A2=self._totals(),
                with_spectrum=res.spectrum is not None, **dwell, **common)]
        else:
            seqs = [haadf_seq]
        if res.spectrum is not None:
            assert res.maps is not None
            s.n_chem += 1
            s.dose_chem += c_dose
            seqs.append(self.outbox.emit(
                CHEM_TILT, [res.maps[e] for e in self.elements], angle=angle,
                elements=self.elements, dose_e_per_A2=c_dose,
                dose_total_e_per_A2=self._totals(), haadf_seq=seqs[0], spectra=c.spectra,
                **dwell, **common))
        return seqs if haadf_seq is None else seqs[1:]

    def _totals(self) -> dict[str, float]:
        return {"haadf": self.stats.dose_haadf, "chem": self.stats.dose_chem}

    # -- the worker thread ----------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            res = _Result(job)
            try:
                self._run(job, res)
            except AcquisitionAbortedError as e:
                res.error = e
            except Exception as e:  # reported through the result, never lost
                if self._abort.is_set():
                    res.error = AcquisitionAbortedError(str(e))
                else:
                    log.exception("%s failed", job.kind)
                    res.error = e
            self._results.put(res)

    def _run(self, job: _Job, res: _Result) -> None:
        c, m = self.config, self.microscope
        if job.kind == "step":
            assert job.step is not None
            step = self.plan[job.step]
            res.angle = step.angle
            res.readback = m.set_tilt(step.angle)
            if c.settle_s > 0:
                self._abort.wait(c.settle_s)
            self._check_abort()
            if step.with_spectrum:
                self._spectrum(res, c.exposure_ms)
            else:
                res.haadf = m.acquire_haadf(c.haadf_dwell_us)
            return
        cmd = job.cmd
        assert cmd is not None
        if job.kind == "go_to_tilt":
            res.angle = cmd["angle"]
            res.readback = m.set_tilt(cmd["angle"])
        elif job.kind == "acquire_haadf":
            res.haadf = m.acquire_haadf(cmd["dwell_ms"] * 1000.0)
        else:
            self._spectrum(res, cmd["dwell_ms"])
        self._check_abort()

    def _spectrum(self, res: _Result, exposure_ms: float) -> None:
        sp = self.microscope.acquire_spectrum_image(exposure_ms)
        self._check_abort()
        res.spectrum = sp
        res.maps = element_maps(sp, self.config)

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise AcquisitionAbortedError("aborted")


def element_maps(sp: SpectrumImage, config: NionTomoConfig) -> dict[str, np.ndarray]:
    """One float32 count map per element from a spectrum image (EELS edges or EDX lines)."""
    units = sp.energy_units.strip()
    try:
        if config.spectra == EELS:
            scale = {"eV": 1.0, "keV": 1000.0}.get(units)
            if scale is None:
                raise NionAdapterError(f"the spectrum's energy axis is in {units!r}; EELS maps "
                                       "need 'eV' or 'keV'")
            maps = eels_maps(sp.si, sp.energy * scale, config.elements, config.edge_windows)
        else:
            scale = {"eV": 1e-3, "keV": 1.0}.get(units)
            if scale is None:
                raise NionAdapterError(f"the spectrum's energy axis is in {units!r}; EDX maps "
                                       "need 'eV' or 'keV'")
            maps = edx_maps(sp.si, sp.energy * scale, config.elements, config.edx_windows)
    except SpectrumError as e:
        raise NionAdapterError(f"element maps: {e}") from None
    return {e: np.ascontiguousarray(_counts_for_protocol(e, maps[e]), dtype=np.float32)
            for e in config.elements}


def _counts_for_protocol(element: str, m: np.ndarray) -> np.ndarray:
    """The wire protocol (adapters/protocol.py) carries maps as counts >= 0, while
    background-subtracted maps (adapters/spectra.py) scatter around 0 where the element is
    absent: until the protocol carries background-subtracted maps, the negative pixels are
    set to 0 here, and how many is logged (never silently)."""
    neg = int(np.count_nonzero(m < 0))
    if neg:
        log.warning(
            "%s map: %d of %d pixels negative after background subtraction (min %.3g) set "
            "to 0 for the protocol, which carries counts >= 0", element, neg, m.size,
            float(m.min()))
    return np.maximum(m, 0)

