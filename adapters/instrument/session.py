"""The instrument side of the fusetomo protocol, for any `Microscope`.

`InstrumentSession` binds an `InstrumentServer` (ROUTER), says nothing until the
controller's first `hello`, then walks its tilt plan: at each step it tilts the stage
(`Microscope.set_tilt`, which confirms), takes a HAADF-only scan, or at chemical steps a
spectrum image with its simultaneous HAADF image, and sends `haadf_tilt` (and `chem_tilt`
with one float32 count map per element). Delivery is at least once (`Outbox`: window,
hello/ack, resend); commands are answered by `CommandDispatch` (commands.py). The
simulated instrument (`fusetomo.simulators.instrument`) and the Nion adapter
(`fusetomo.adapters.nion`) are this session over their microscopes, so the controller cannot
tell them apart.

Threads: `serve` owns the socket and all protocol state; acquisitions block (seconds to
minutes at a microscope), so they run on one worker thread, one job at a time, and hand
their result back through a queue and a wake-up on an inproc socket. Commands are therefore
answered while a scan is running: pause and resume act before the next plan step, abort
stops the acquisition in progress (`Microscope.abort`) and ends the series at once. A
failed plan step (stage not confirming, device error) pauses the plan and is kept in
`last_error`; `resume` retries the step. The same commands can be given locally (a Swift
panel) with `command(...)`, which is thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from fusetomo.adapters.instrument.commands import CommandDispatch, InstrumentStats, Job
from fusetomo.adapters.instrument.delivery import Outbox
from fusetomo.adapters.instrument.microscope import (
    Microscope,
    SpectrumImage,
)
from fusetomo.adapters.instrument.plans import TiltPlan
from fusetomo.adapters.instrument.tilts import emit_tilts
from fusetomo.adapters.instrument.worker import Acquirer, Result
from fusetomo.adapters.protocol import COMMANDS, SERIES_START
from fusetomo.adapters.transport import DEFAULT_BIND, CurveKeys
from fusetomo.core.angles import same_angle

log = logging.getLogger("fusetomo.instrument")

POLL_MS = 50
_WAKE_IDS = itertools.count()


@dataclass(frozen=True)
class SessionConfig:
    """What a session acquires, and how it serves it. Dwell times are the nominal ones of
    the plan's acquisitions (per pixel); doses (e/A^2 of one image) 0 when unknown."""

    series_id: str
    plan: TiltPlan
    elements: tuple[str, ...]
    start_fields: Mapping[str, Any]  # series_start fields besides the protocol's own
    haadf_dwell_us: float
    exposure_ms: float
    haadf_dose: float = 0.0
    chem_dose: float = 0.0
    beam_current_pa: float | None = None
    chem_fields: Mapping[str, Any] = field(default_factory=dict)  # on every chem_tilt
    bind: str = DEFAULT_BIND
    curve: CurveKeys | None = None
    window: int = 64
    auto: bool = True  # follow the plan once a controller says hello (False: wait)
    hold_for_advice: bool = False
    hold_timeout_s: float = 120.0
    settle_s: float = 0.0  # wait after the tilt is confirmed


class InstrumentSession(CommandDispatch):
    """A microscope behind an `InstrumentServer`, speaking the fusetomo protocol."""

    def __init__(self, config: SessionConfig, microscope: Microscope, *,
                 ctx: zmq.Context | None = None,
                 maps_of: Callable[[SpectrumImage], dict[str, np.ndarray]] | None = None,
                 error_type: type[Exception] = ValueError) -> None:
        super().__init__(config.series_id, error_type)
        self.config = config
        self.microscope = microscope
        self.plan = config.plan
        self.elements = list(config.elements)
        self._maps_of = maps_of
        self._ctx = ctx
        self.ready = threading.Event()
        self.stats = InstrumentStats()
        self.outbox = Outbox(config.series_id, config.window)
        self.last_error: str | None = None
        self._paused = not config.auto
        self.acquirer = Acquirer(microscope, config, self.elements, maps_of, error_type)
        self._wake_rx: zmq.Socket | None = None
        self.angle: float = microscope.tilt_deg()  # the current stage tilt
        self.outbox.emit(SERIES_START, **config.start_fields)

    # -- state, for a panel and tests ---------------------------------------------------
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
    def paused(self) -> bool:
        return self._paused

    @property
    def next_step(self) -> int:
        return self._next_step

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def holding(self) -> bool:
        """Waiting at a tilt for the controller's decision (hold_for_advice)."""
        return self._holding is not None

    @property
    def unacked(self) -> list[int]:
        return self.outbox.unacked

    def command(self, cmd: str, **args: Any) -> None:
        """Give a command in-process (thread-safe): the same seven as over the socket."""
        if cmd not in COMMANDS:
            raise self._arg_error(f"unknown command {cmd!r}; one of {list(COMMANDS)}")
        self._local.put({"cmd": cmd, "id": next(self._local_ids), "seq": 0, "args": args})

    # -- serving --------------------------------------------------------------------------
    def bind(self) -> str:
        """Bind the server (once) and return the endpoint actually bound."""
        return self._bind_server(self.config.bind, self.config.curve, self._ctx)

    def serve(self, stop_event: threading.Event | None = None) -> InstrumentStats:
        """Run until series_end is acknowledged (or `stop_event` is set); close the socket
        and stop the worker."""
        self.bind()
        assert self.server is not None
        wake = f"inproc://fusetomo-wake-{id(self)}-{next(_WAKE_IDS)}"
        self._wake_rx = self.server.ctx.socket(zmq.PAIR)
        self._wake_rx.bind(wake)
        self.acquirer.start(self.server.ctx, wake)
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
                self._receive(self._poll_ms(), self._wake_rx)
        finally:
            self.acquirer.stop(busy=self._job is not None)
            self._wake_rx.close(0)
            self.server.close()
            self.server = None
        self.stats.end_acked = self.outbox.end_acked
        log.info("instrument done: %s", self.stats)
        return self.stats

    def _poll_ms(self) -> int:
        if self._holding is not None and self._job is None:
            return max(0, min(POLL_MS, int((self._hold_deadline - time.monotonic()) * 1000)))
        return POLL_MS

    # -- scheduling (serve thread) ----------------------------------------------------------
    def _schedule(self) -> None:
        if self._job is not None or self._end_seq is not None:
            return
        if self._queue:
            cmd = self._queue.popleft()
            self._start(Job(cmd["cmd"], cmd=cmd))
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
            self._start(Job("step", step=self._next_step))
            return
        self._end("completed")

    def _start(self, job: Job) -> None:
        self._job = job
        self.acquirer.submit(job)

    def _collect(self) -> None:
        while True:
            try:
                res = self.acquirer.results.get_nowait()
            except queue.Empty:
                return
            if res.job is not self._job:
                continue
            self._job = None
            if self._end_seq is not None:  # aborted while it ran
                continue
            self._complete(res)

    def _complete(self, res: Result) -> None:
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
                self._reply_command(job.cmd, "rejected", text)
            return
        if job.kind == "go_to_tilt":
            assert job.cmd is not None
            self._reply_command(job.cmd, "done", angle=self.angle, readback=res.readback)
            return
        held = self._holding
        chem_only = (job.kind == "acquire_spectrum" and held is not None
                     and same_angle(self.plan[held].angle, self.angle))
        seqs = emit_tilts(self, res, haadf_seq=self._step_seq.get(held) if chem_only
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
            self._reply_command(job.cmd, "done", angle=self.angle, seqs=seqs)

    def _stop_series(self) -> None:
        if self._job is not None:
            self.acquirer.abort.set()
            self.microscope.abort()
            if self._job.cmd is not None:
                self._reply_command(self._job.cmd, "rejected", "aborted")
        while self._queue:
            self._reply_command(self._queue.popleft(), "rejected", "aborted")
        self._end("aborted")

    def _on_resume(self) -> None:
        self.last_error = None
