"""The instrument session's worker thread: acquisitions block (seconds to minutes at a
microscope), so they run here, one job at a time; each result goes back through a queue,
and a byte on an inproc PAIR socket wakes the session's loop at once."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from fusetomo.adapters.instrument.commands import Job
from fusetomo.adapters.instrument.microscope import (
    AcquisitionAbortedError,
    HaadfScan,
    Microscope,
    SpectrumImage,
)

log = logging.getLogger("fusetomo.instrument")


@dataclass
class Result:
    """What one job produced (or its error), handed from the worker to the session."""

    job: Job
    angle: float | None = None  # stage tilt (planned or commanded), degrees
    readback: float | None = None
    haadf: HaadfScan | None = None
    spectrum: SpectrumImage | None = None
    maps: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class Acquirer:
    """Runs the session's jobs on `microscope` in a thread of its own."""

    def __init__(self, microscope: Microscope, config: Any, elements: list[str],
                 maps_of: Callable[[SpectrumImage], dict[str, np.ndarray]] | None,
                 error_type: type[Exception]) -> None:
        self.microscope, self.config, self.elements = microscope, config, elements
        self.plan = config.plan
        self._maps_of, self._error = maps_of, error_type
        self.abort = threading.Event()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.results: queue.Queue[Result] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._wake = ""

    def start(self, ctx: zmq.Context, wake: str) -> None:
        self._ctx, self._wake = ctx, wake
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name="fusetomo-acquire")
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.abort.clear()
        self.jobs.put(job)

    def stop(self, busy: bool) -> None:
        """Abort the acquisition in progress (if `busy`) and end the thread."""
        if busy:
            self.abort.set()
            self.microscope.abort()
        self.jobs.put(None)
        if self._thread is not None:
            self._thread.join(30)

    def _work(self) -> None:
        assert self._ctx is not None
        tx = self._ctx.socket(zmq.PAIR)
        tx.linger = 0
        tx.connect(self._wake)
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                res = Result(job)
                try:
                    self._run(job, res)
                except AcquisitionAbortedError as e:
                    res.error = e
                except Exception as e:  # reported through the result, never lost
                    if self.abort.is_set():
                        res.error = AcquisitionAbortedError(str(e))
                    else:
                        log.exception("%s failed", job.kind)
                        res.error = e
                self.results.put(res)
                tx.send(b"", zmq.NOBLOCK)
        finally:
            tx.close(0)

    def _run(self, job: Job, res: Result) -> None:
        c, m = self.config, self.microscope
        if job.kind == "step":
            assert job.step is not None
            step = self.plan[job.step]
            res.angle = step.angle
            res.readback = m.set_tilt(step.angle)
            if c.settle_s > 0:
                self.abort.wait(c.settle_s)
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

    def _spectrum(self, res: Result, exposure_ms: float) -> None:
        sp = self.microscope.acquire_spectrum_image(exposure_ms)
        self._check_abort()
        res.spectrum = sp
        if sp.maps is not None:
            res.maps = {e: np.asarray(sp.maps[e], dtype=np.float32) for e in self.elements}
        elif self._maps_of is not None:
            res.maps = self._maps_of(sp)
        else:
            raise self._error("the spectrum image has no element maps and the session "
                                  "no way to make them")

    def _check_abort(self) -> None:
        if self.abort.is_set():
            raise AcquisitionAbortedError("aborted")
