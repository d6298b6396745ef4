"""The live controller: receive tilts, record them, then acknowledge, and keep the fused
reconstruction up to date while the series is acquired.

One loop in one thread, in this order for every message from the instrument:
    decode (protocol.py) -> check against the series' state -> record in the run file
    (flushed) -> ACK -> add to the solver -> k iterations (warm start) -> publish
Between iterations the data socket is polled, so a tilt waits at most one iteration before
it is recorded and acknowledged; while no tilt is owed iterations the solver keeps
iterating (up to `max_idle_iterations` per tilt) and the controller says `hello` whenever
nothing arrived for `heartbeat_s`, or the connection has just been (re)made, so that the
instrument resends what it has not had acknowledged. Duplicates (by sequence number) are
acknowledged as such and change nothing; every other problem gets an ERROR reply with a
specific code (`ERROR_CODES` plus protocol.py's) and a log line, and changes nothing.
With `interleave=False` each tilt's k iterations run before the next message is read, and
with `idle_iterations=False` none run in between: the schedule, hence the result, then does
not depend on timing.

Every iteration's costs and the tilt counts it saw are recorded, so that the solver's state
can be rebuilt exactly (`rebuild_solver`) by replaying the recorded schedule: this is how
`--resume` continues after a crash, and how tests check the live result offline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from fusetomo.adapters import protocol as proto
from fusetomo.adapters.protocol import Message, ProtocolError, decode, encode, make
from fusetomo.adapters.runfile import RunFile, RunFileError, RunRecord, read_run
from fusetomo.adapters.transport import (
    ControllerClient,
    CurveKeys,
    OperatorServer,
    StatusPublisher,
)
from fusetomo.controller.live_advice import AdviceDesk, AdviceParams
from fusetomo.controller.live_align import LiveAligner, LiveAlignParams
from fusetomo.solver.alignment import AlignmentError
from fusetomo.solver.backend import resolve_device, to_numpy
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.uncertainty import UncertaintyParams, estimate_std_error

log = logging.getLogger("fusetomo.live")

# Codes of the state-dependent checks made here (protocol.py's `decode` has the others).
ERROR_CODES: dict[str, str] = {
    "no_series": "data or series_end before any series_start",
    "wrong_series": "series id differs from the series being recorded",
    "series_in_progress": "series_start for another series while one is being recorded",
    "series_complete": "data after the series end was recorded",
    "out_of_order": "sequence number is not the next one (a gap, or below the series start)",
    "duplicate_tilt": "a tilt angle already recorded for that modality, under a new seq",
    "shape_mismatch": "image shape differs from the series' [n_slices, n_det]",
    "element_mismatch": "chemical tilt's elements differ from the series' elements",
    "count_mismatch": "series_end's tilt counts differ from the recorded ones",
    "bad_series": "series_start whose Z, gamma or background do not fit its elements",
    "unexpected_type": "a message type the instrument does not send",
    "record_failed": "the run file refused or failed to record the message",
}
HEALTHY, INTERRUPTED = 0, 1  # run()'s return values
# What an iteration was run for (the `phase` cost column).
PHASE_TILT, PHASE_IDLE, PHASE_FINAL = 0, 1, 2
# Cost rows recorded per iteration: the solver's terms, the tilt counts it held (to replay
# the schedule), and the phase.
RUN_COST_TERMS = ("haadf", "chem", "tv", "haadf_scale", "n_haadf", "n_chem", "idle", "phase")
ANGLE_TOL = 1e-6  # degrees: angles closer than this are the same tilt
HEADER_BUDGET = 48 * 1024  # bytes of orthoslice values in one published header


class LiveError(RuntimeError):
    """The series cannot be completed (no instrument, run file unusable, ...)."""


@dataclass(frozen=True)
class LiveParams:
    """How the controller iterates, records and publishes."""

    iterations_per_tilt: int = 3  # k: warm-start iterations after each tilt
    idle_iterations: bool = True  # keep iterating while waiting for tilts
    max_idle_iterations: int = 50  # at most this many idle iterations after each tilt
    final_iterations: int = 20  # after the series end
    interleave: bool = True  # False: run each tilt's k iterations before reading on
    snapshot_chem: bool = True  # record a snapshot once a chemical tilt's k are done
    snapshot_every: int = 0  # also every n iterations (0: never)
    publish_every: int = 1  # status every n iterations
    slices_every: int = 5  # orthoslices every n iterations (and after each tilt's k)
    slice_size: int = 32  # orthoslices are block-averaged down to at most this side
    device: str = "auto"
    fusion: FusionParams = field(default_factory=FusionParams)
    heartbeat_s: float = 1.0  # hello after this long without a message
    timeout_s: float | None = None  # give up after this long without a message
    poll_ms: int = 50  # socket wait while there is nothing to compute
    max_logged_rejections: int = 1000  # rejections recorded in the run file per session
    reconstruct: bool = True  # False: receive, record and acknowledge only (load tests)
    advice: AdviceParams = field(default_factory=AdviceParams)  # spectroscopy advisor
    uncertainty: bool = True  # cheap standard errors after each tilt (published, recorded
    #                           with the snapshots)
    operator_bind: str | None = "tcp://127.0.0.1:0"  # operator commands (None: none)
    # Align each tilt on arrival and refine in idle time (None: tilts go in as received).
    align: LiveAlignParams | None = None
    align_final_every: int = 2  # after the series end, a refinement every this many final
    #                             iterations (0: one, before them)

    def __post_init__(self) -> None:
        for name in ("iterations_per_tilt", "max_idle_iterations", "final_iterations",
                     "snapshot_every", "max_logged_rejections", "align_final_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("publish_every", "slices_every", "slice_size", "poll_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (math.isfinite(self.heartbeat_s) and self.heartbeat_s > 0):
            raise ValueError(f"heartbeat_s must be > 0, got {self.heartbeat_s!r}")
        if self.timeout_s is not None and not (math.isfinite(self.timeout_s)
                                               and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0 (or None), got {self.timeout_s!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be auto, cpu or gpu, got {self.device!r}")


@dataclass
class _Pending:
    """A tilt whose k iterations are not done yet (for latency and snapshots)."""

    seq: int
    t_arrival: float
    target_iteration: int
    chem: bool
    advise_angle: float | None = None  # a HAADF tilt to advise on once its k are done


def _angle_key(angle: float) -> int:
    return round(float(angle) / ANGLE_TOL)


# -- solver from a series header, and its exact rebuild from a run file ----------------------
def solver_for(header: dict[str, Any], params: LiveParams) -> FusedSolver:
    """A FusedSolver for the series announced by `header` (a series_start header)."""
    ns, nd = (int(s) for s in header["shape"])
    els = list(header["elements"])
    fusion = params.fusion
    if header.get("gamma") is not None:
        fusion = dataclasses.replace(fusion, gamma=float(header["gamma"]))
    bg = header.get("background")
    return FusedSolver(nd, ns, els, [float(header["Z"][e]) for e in els], fusion,
                       device=resolve_device(params.device),
                       background=None if bg is None else [float(bg[e]) for e in els])


def check_series_start(header: dict[str, Any]) -> None:
    """What decode leaves to the receiver: Z per element, optional gamma and background."""
    els, Z = header["elements"], header["Z"]
    if sorted(Z) != sorted(els):
        raise ProtocolError("bad_series", f"series_start: Z is given for {sorted(Z)}, the "
                            f"elements are {els}", seq=header.get("seq"))
    for e in els:
        z = Z[e]
        if isinstance(z, bool) or not isinstance(z, int | float) or not 0 < z <= 118:
            raise ProtocolError("bad_series", f"series_start: Z of {e} must be a number in "
                                f"(0, 118], got {z!r}", seq=header.get("seq"))
    g = header.get("gamma")
    if g is not None and (isinstance(g, bool) or not isinstance(g, int | float)
                          or not 1.0 <= g <= 2.5):
        raise ProtocolError("bad_series", f"series_start: gamma must lie in [1, 2.5], got "
                            f"{g!r}", seq=header.get("seq"))
    bg = header.get("background")
    if bg is not None:
        if not isinstance(bg, dict) or sorted(bg) != sorted(els):
            raise ProtocolError("bad_series", "series_start: background must map each "
                                f"element to counts per pixel, got {bg!r}",
                                seq=header.get("seq"))
        for e, v in bg.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ProtocolError("bad_series", f"series_start: background of {e} must be "
                                    f"a number >= 0, got {v!r}", seq=header.get("seq"))


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
    solver = solver_for(json_header(record), params)
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


def final_refinement_due(i: int, n_final: int, every: int, aligner: LiveAligner) -> bool:
    """Whether to refine the alignment before final iteration i (of n_final): at the first,
    then every `every` iterations until a step is below the aligner's tolerance (no step is
    applied then, so it stays converged). Refining on to the end instead was measured to cost
    10-20 % of the live <NRMSE> (bench/alignment.py): each applied step restarts the
    solver's momentum."""
    if i == 0:
        return n_final > 0
    return bool(every) and i % every == 0 and not aligner.converged


def realign(record: RunRecord, solver: FusedSolver | None,
            params: LiveAlignParams) -> LiveAligner:
    """For `--resume --align`: the recorded (raw) tilts aligned again, HAADF tilts in their
    recorded order (each against its nearest aligned neighbour), then each spectrum image
    against its HAADF image; the replayed solver (if any) takes the aligned data and their
    fractional shifts in place of the raw ones. Its volumes stay (a warm start); the idle
    refinements then refine the shifts against the model as live. The live run's own
    refinement history is not replayed."""
    series = record.series
    aligner = LiveAligner(params)
    try:
        for a, img in zip(series.haadf_angles, series.haadf, strict=True):
            aligner.align_haadf(float(a), img)
        els = list(series.elements)
        for j, a in enumerate(series.common_chem_angles):
            aligner.align_chem(float(a), {e: series.chem[e][j] for e in els},
                               Z=[series.Z[e] for e in els], gamma=series.gamma or 1.7,
                               background=[series.background[e] for e in els])
    except AlignmentError as e:
        raise LiveError(f"cannot align the recorded tilts of the run again: {e}") from None
    if solver is None or solver.n_haadf == 0:
        return aligner
    solver.replace_haadf(np.stack([aligner.solver_haadf(float(a))[0]
                                   for a in solver.haadf_proj.angles]))
    if solver.n_chem:
        c = [aligner.solver_chem(float(a))[0] for a in solver.chem_proj.angles]
        solver.replace_chem({e: np.stack([m[e] for m in c]) for e in solver.elements})
    aligner.set_solver_shifts(solver)
    return aligner


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


# -- published reconstruction previews ----------------------------------------------------
def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    if f <= 1:
        return img
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    if h == 0 or w == 0:
        return img
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def orthoslices(x: Any, elements: list[str], size: int) -> dict[str, dict[str, Any]]:
    """Central slices of each element volume x[i] ([n_slices, n, n], on any device),
    normal to each axis ('s' tilt axis, 'u', 'v'), block-averaged to at most `size` pixels
    a side and quantised to integers 0..255 of `vmax` (value = q * vmax / 255)."""
    ns, n = int(x.shape[1]), int(x.shape[2])
    # Keep the header small: 3 slices per element, about 4 characters per value.
    budget = max(int(math.sqrt(HEADER_BUDGET / (12 * max(len(elements), 1)))), 4)
    side = min(size, budget)
    f = max(math.ceil(max(ns, n) / side), 1)
    out: dict[str, dict[str, Any]] = {}
    for i, e in enumerate(elements):
        cuts = {"s": to_numpy(x[i, ns // 2, :, :]), "u": to_numpy(x[i, :, n // 2, :]),
                "v": to_numpy(x[i, :, :, n // 2])}
        small = {k: _block_mean(np.asarray(v, dtype=np.float64), f) for k, v in cuts.items()}
        vmax = max(float(v.max()) for v in small.values())
        vmax = vmax if vmax > 0 and math.isfinite(vmax) else 1.0
        out[e] = {"vmax": vmax, **{k: np.clip(np.rint(v / vmax * 255), 0, 255).astype(int)
                                  .tolist() for k, v in small.items()}}
    return out


# -- the controller -------------------------------------------------------------------------
class LiveController:
    """Connects to the instrument at `instrument_address`, records into `run_path`, and
    publishes status on `publish_bind`. `run()` returns 0 once the series end is recorded
    and the final reconstruction is saved, 1 if `stop_event` interrupted it (the run file
    can be resumed), and raises LiveError when the series cannot be completed."""

    def __init__(self, instrument_address: str, run_path: str | Path,
                 params: LiveParams | None = None, *, resume: bool = False,
                 publish_bind: str = "tcp://127.0.0.1:0", curve: CurveKeys | None = None,
                 identity: bytes = b"fusetomo-controller") -> None:
        self.address = instrument_address
        self.run_path = Path(run_path)
        self.params = params or LiveParams()
        self.resume = resume
        self.identity = identity
        self._curve = curve
        self._publish_bind = publish_bind
        self.run_file: RunFile | None = None
        self.solver: FusedSolver | None = None
        self.latencies: list[float] = []
        self.rejected: list[tuple[str, int | None]] = []  # (code, seq), for callers
        self._angles: dict[str, set[int]] = {"haadf": set(), "chem": set()}
        self._start_seq = -1
        self._consumed_seq = -1  # highest data seq refused for its content (see _on_tilt)
        self._end_seq: int | None = None
        self._pending: list[_Pending] = []
        self._owed = 0
        self._idle_done = 0
        self._out_seq = 0
        self._pub_seq = 0
        self._connected = False
        self._ended = False
        self._finished = False
        self._logged_rejections = 0
        self._last_rx = time.monotonic()
        self._last_hello = 0.0
        self._last_costs: dict[str, float] = {}
        self._ctx: zmq.Context | None = None
        self._client: ControllerClient | None = None
        self._monitor: zmq.Socket | None = None
        self.publisher: StatusPublisher | None = None
        self.operator: OperatorServer | None = None
        self.desk: AdviceDesk | None = None
        self.std: dict[str, np.ndarray] | None = None  # the last standard errors
        self._std_iteration = -1
        self._cmd_id = 0
        self._state = "waiting"
        self.aligner: LiveAligner | None = None
        self._refine_due = False
        self._last_status = 0.0
        if not resume and self.run_path.exists():
            raise LiveError(f"{self.run_path} exists: continue it with --resume, or record "
                            "to a new file (a run file is never overwritten)")
        if resume and not self.run_path.exists():
            raise LiveError(f"{self.run_path}: no such run file to resume")

    # -- public ---------------------------------------------------------------------------
    @property
    def operator_endpoint(self) -> str | None:
        return None if self.operator is None else self.operator.endpoint

    @property
    def publish_endpoint(self) -> str:
        if self.publisher is None:
            raise LiveError("the controller is not running")
        return self.publisher.endpoint

    def run(self, stop_event: threading.Event | None = None, *,
            on_ready: Callable[[LiveController], None] | None = None) -> int:
        """Serve until the series is complete. `on_ready(self)` is called once the sockets
        are up (the status endpoint is known) and the run file is open when resuming."""
        self._open()
        try:
            if self.resume:
                self._resume()
            if on_ready is not None:
                on_ready(self)
            if self._finished:
                return HEALTHY
            return self._loop(stop_event)
        except RunFileError as e:  # writing failed (disk full, file removed, ...)
            raise LiveError(f"cannot record to {self.run_path}: {e}") from None
        finally:
            self._close()

    # -- set-up ---------------------------------------------------------------------------
    def _open(self) -> None:
        self._ctx = zmq.Context()
        try:
            self.publisher = StatusPublisher(self._publish_bind, ctx=self._ctx)
            self._client = ControllerClient(self.address, identity=self.identity,
                                            ctx=self._ctx, curve=self._curve)
            if self.params.operator_bind is not None:
                self.operator = OperatorServer(self.params.operator_bind, ctx=self._ctx)
        except (zmq.ZMQError, ValueError, OSError) as e:  # bad address, port or key file
            self._close()
            raise LiveError(f"cannot open the sockets (instrument {self.address!r}, status "
                            f"{self._publish_bind!r}): {e}") from None
        self._monitor = self._client.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._last_rx = time.monotonic()

    def _close(self) -> None:
        if self.run_file is not None:
            with contextlib.suppress(RunFileError, OSError):
                self.run_file.close()
        if self._client is not None and self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._client.sock.disable_monitor()
        if self._monitor is not None:
            self._monitor.close(0)
        for ep in (self._client, self.publisher, self.operator):
            if ep is not None:
                ep.close()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _resume(self) -> None:
        try:
            record = read_run(self.run_path)
        except (RunFileError, OSError) as e:
            raise LiveError(f"cannot resume {self.run_path}: {e}") from None
        if record.complete:
            # Recorded to the end; a crash during the final iterations leaves no 'finished'
            # event, but the recorded data are complete either way.
            done = any(ev.get("kind") == "finished" for ev in record.events)
            log.warning("%s: the series end is already recorded%s; nothing to resume",
                        self.run_path, "" if done else " (its final reconstruction is "
                        "missing: reconstruct the run file offline)")
            self._finished = True
            return
        t0 = time.perf_counter()
        solver = rebuild_solver(record, self.params) if self.params.reconstruct else None
        try:
            run = RunFile.resume(self.run_path)
        except (RunFileError, OSError) as e:
            raise LiveError(f"cannot resume {self.run_path}: {e}") from None
        self.run_file, self.solver = run, solver
        if self.params.align is not None:
            self.aligner = realign(record, solver, self.params.align)
            self._refine_due = True
        elif any(ev.get("kind") == "alignment" for ev in record.events):
            log.warning("%s was aligned live: resume with --align to go on aligning",
                        self.run_path)
        self._start_seq = _int_or(run.start_header.get("seq"), -1)
        self._consumed_seq = max([-1] + [_int_or(ev.get("tilt_seq"), -1) for ev in record.events
                                         if ev.get("kind") == "seq_consumed"])
        series = record.series
        self._angles = {"haadf": {_angle_key(a) for a in series.haadf_angles},
                        "chem": {_angle_key(a) for a in series.common_chem_angles}}
        if solver is not None and solver.ready:
            self._owed = self._owed_after_crash(record)
        iteration = 0 if solver is None else solver.iteration
        log.info("resumed %s: %d HAADF + %d chemical tilts, last seq %d; %d iterations "
                 "replayed in %.1f s, %d owed", self.run_path, run.haadf_count,
                 run.chem_count, self._last_seq(), iteration, time.perf_counter() - t0,
                 self._owed)
        run.record_event("resumed", last_seq=self._last_seq(), iteration=iteration,
                         owed=self._owed)

    def _owed_after_crash(self, record: RunRecord) -> int:
        """The per-tilt iterations (k per tilt since the solver became ready) not yet
        recorded: those the crash interrupted."""
        order = arrival_order(record)
        nh = nc = 0
        ready_at = len(order)
        for i, m in enumerate(order):
            nh, nc = nh + (m == "haadf"), nc + (m == "chem")
            if nc > 0 and (nh > 0 or self.params.fusion.lambda_haadf == 0):
                ready_at = i
                break
        done = sum(1 for *_, ph in schedule_of(record) if ph == PHASE_TILT)
        return max(self.params.iterations_per_tilt * (len(order) - ready_at) - done, 0)

    # -- the loop -------------------------------------------------------------------------
    def _loop(self, stop_event: threading.Event | None) -> int:
        assert self._client is not None and self._monitor is not None
        poller = zmq.Poller()
        poller.register(self._client.sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        if self.operator is not None:
            poller.register(self.operator.sock, zmq.POLLIN)
        p = self.params
        self._status("waiting")
        while not self._ended:
            if stop_event is not None and stop_event.is_set():
                log.info("stopped before the series end; continue with --resume")
                return INTERRUPTED
            busy = self._owed > 0 or self._can_idle()
            events = dict(poller.poll(0 if busy else p.poll_ms))
            if self._monitor in events:
                self._on_monitor()
            if self.operator is not None and self.operator.sock in events:
                self._on_operator()
            if self._client.sock in events:
                frames = self._client.sock.recv_multipart(copy=True)
                self._last_rx = time.monotonic()
                self._handle(frames, time.time())
                continue
            if self._owed > 0:
                self._iterate(PHASE_TILT)
            elif self._refine_due and self.solver is not None and self.solver.ready:
                self._refine_alignment()
            elif self._can_idle():
                self._iterate(PHASE_IDLE)
            self._heartbeat()
        self._finish()
        return HEALTHY

    def _can_idle(self) -> bool:
        return (self.params.idle_iterations and self.solver is not None and self.solver.ready
                and self._idle_done < self.params.max_idle_iterations)

    def _on_monitor(self) -> None:
        assert self._monitor is not None
        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected = True
                log.info("connected to the instrument at %s", self.address)
                self._hello("connect")
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                self._connected = False
                log.warning("instrument at %s disconnected; waiting for it", self.address)
                self._event("disconnected")

    def _heartbeat(self) -> None:
        now = time.monotonic()
        silent = now - self._last_rx
        p = self.params
        if p.timeout_s is not None and silent > p.timeout_s:
            run = self.run_file
            what = "no instrument answered" if run is None else "the instrument went silent"
            where = "" if run is None else (
                f" ({run.haadf_count} HAADF + {run.chem_count} chemical tilts are recorded "
                f"in {self.run_path}; continue with --resume)")
            raise LiveError(f"{what} at {self.address} for {p.timeout_s:g} s; the series "
                            f"is not complete{where}")
        # Not gated on the monitor's connected flag: the handshake can complete before the
        # monitor is attached, and a hello sent with no peer is simply dropped.
        if silent > p.heartbeat_s and now - self._last_hello > p.heartbeat_s:
            self._hello("heartbeat")
        # A viewer or panel that connects while nothing happens (paused, holding for an
        # answer) still learns the state and the operator endpoint within a second.
        if now - self._last_status > 1.0:
            self._status(self._state)
            if self.desk is not None and self.desk.pending is not None:
                self._publish("advice", proto.STATUS, advice=self.desk.pending.as_dict())

    # -- sending --------------------------------------------------------------------------
    @property
    def _series(self) -> str:
        return self.run_file.series_id if self.run_file is not None else "*"

    def _last_seq(self) -> int:
        """The highest seq recorded (series_start and series_end included); -1 if none."""
        if self.run_file is None:
            return -1
        return max(self.run_file.last_seq, self._start_seq, self._consumed_seq,
                   -1 if self._end_seq is None else self._end_seq)

    def _send(self, mtype: str, seq: int | None = None, **fields: Any) -> None:
        """Replies (ack, error) carry the seq of the message they answer; other messages
        the controller's own counter."""
        assert self._client is not None
        if seq is None:
            seq = self._out_seq
            self._out_seq += 1
        msg = make(mtype, self._series, seq, **fields)
        try:
            self._client.sock.send_multipart(encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:  # nobody connected: the instrument resends on the next hello
            log.debug("could not send %s (no connection)", mtype)

    def _hello(self, why: str) -> None:
        log.debug("hello (%s), last_seq %d", why, self._last_seq())
        self._send(proto.HELLO, last_seq=self._last_seq())
        self._last_hello = time.monotonic()

    def _ack(self, seq: int, status: str) -> None:
        self._send(proto.ACK, seq, ack_seq=seq, status=status)

    def _publish(self, topic: str, mtype: str, **fields: Any) -> None:
        if self.publisher is None:
            return
        msg = make(mtype, self._series, self._pub_seq, **fields)
        self._pub_seq += 1
        self.publisher.publish(topic, msg)

    def _event(self, name: str, **fields: Any) -> None:
        self._publish("event", proto.EVENT, event=name, **fields)

    def _status(self, state: str, **extra: Any) -> None:
        self._state, self._last_status = state, time.monotonic()
        run, s = self.run_file, self.solver
        header = {} if run is None else run.start_header
        self._publish(
            "status", proto.STATUS, state=state,
            iteration=0 if s is None else s.iteration,
            costs=self._last_costs,
            haadf_tilts=0 if run is None else run.haadf_count,
            chem_tilts=0 if run is None else run.chem_count,
            planned_haadf=_planned(header, "haadf_angles"),
            planned_chem=_planned(header, "chem_angles"),
            dose_e_per_A2=None if run is None else run.dose_e_per_A2,
            last_seq=self._last_seq(),
            owed_iterations=self._owed,
            latency_s=self.latencies[-1] if self.latencies else None,
            haadf_angles=[] if run is None else run.angles("haadf"),
            chem_angles=[] if run is None else run.angles("chem"),
            dose_budget_e_per_A2=header.get("dose_budget_e_per_A2"),
            chem_maps_budget=(self.params.advice.advisor.chem_maps
                              if self.desk is not None else None),
            advice_mode="off" if self.desk is None else self.desk.mode,
            operator_endpoint=self.operator_endpoint,
            **extra)

    # -- receiving ------------------------------------------------------------------------
    def _handle(self, frames: list[bytes], t_arrival: float) -> None:
        try:
            msg = decode(frames)
        except ProtocolError as e:
            self._reject(e, None)
            return
        try:
            self._dispatch(msg, t_arrival)
        except ProtocolError as e:
            self._reject(e, msg)

    def _reject(self, e: ProtocolError, msg: Message | None) -> None:
        mtype = msg.type if msg is not None else "message"
        log.warning("rejected %s seq %s: [%s] %s", mtype, e.seq, e.code, e)
        self.rejected.append((e.code, e.seq))
        bad = e.seq if isinstance(e.seq, int) and e.seq >= 0 else None
        self._send(proto.ERROR, bad or 0, code=e.code, message=str(e), bad_seq=bad)
        self._event("rejected", code=e.code, bad_seq=bad, message=str(e)[:500])
        if (self.run_file is not None
                and self._logged_rejections < self.params.max_logged_rejections):
            self._logged_rejections += 1
            self.run_file.record_event("rejected", code=e.code, bad_seq=bad,
                                       message=str(e)[:500])

    def _dispatch(self, msg: Message, t_arrival: float) -> None:
        t = msg.type
        if t == proto.SERIES_START:
            self._on_start(msg)
        elif t in (proto.HAADF_TILT, proto.CHEM_TILT):
            self._on_tilt(msg, t_arrival)
        elif t == proto.SERIES_END:
            self._on_end(msg)
        elif t == proto.ERROR:  # logged, never answered (no error ping-pong)
            log.warning("instrument reports [%s] %s", msg.header["code"],
                        msg.header["message"])
            if self.run_file is not None:
                self.run_file.record_event("instrument_error", code=msg.header["code"],
                                           message=str(msg.header["message"])[:500])
        elif t == proto.ACK and self.run_file is not None and "cmd" in msg.header:
            # The instrument's answer to a command (commands are sent by other tools).
            self.run_file.record_event("command_ack", **{
                k: msg.header.get(k) for k in ("cmd", "ack_seq", "status", "reason")})
        else:
            raise ProtocolError("unexpected_type", f"{t}: not a message an instrument "
                                "sends to the controller", seq=msg.seq)

    def _on_start(self, msg: Message) -> None:
        h, run = msg.header, self.run_file
        if run is not None:
            if h["series"] == run.series_id and msg.seq == self._start_seq:
                self._ack(msg.seq, "duplicate")
                return
            raise ProtocolError("series_in_progress", f"series {run.series_id!r} is being "
                                f"recorded; series_start of {h['series']!r} (seq {msg.seq}) "
                                "refused", seq=msg.seq)
        check_series_start(h)
        try:
            solver = solver_for(h, self.params)
        except ValueError as e:
            raise ProtocolError("bad_series", f"series_start: {e}", seq=msg.seq) from None
        try:
            self.run_file = RunFile.create(self.run_path, msg, cost_terms=RUN_COST_TERMS)
        except RunFileError as e:
            if isinstance(e.__cause__, OSError) or self.run_path.exists():
                raise LiveError(f"cannot create {self.run_path}: {e}") from None
            raise ProtocolError("bad_series", f"series_start: {e}", seq=msg.seq) from None
        except OSError as e:
            raise LiveError(f"cannot create {self.run_path}: {e}") from None
        p = self.params
        self.solver = solver if p.reconstruct else None
        self._start_seq = msg.seq
        if p.align is not None:
            self.aligner = LiveAligner(p.align)
        if p.advice.mode == "off" and h.get("holds_for_advice"):
            log.warning("the instrument holds for advice but the advisor is off: every tilt "
                        "is released without a spectrum image (use --advice auto|manual)")
        if p.advice.mode != "off":
            try:
                self.desk = AdviceDesk(p.advice, h)
            except ValueError as e:
                log.warning("no advice for this series: %s", e)
                self.run_file.record_event("advice_off", reason=str(e))
        self.run_file.record_event(
            "controller", iterations_per_tilt=p.iterations_per_tilt,
            idle_iterations=p.idle_iterations, max_idle_iterations=p.max_idle_iterations,
            final_iterations=p.final_iterations, interleave=p.interleave,
            reconstruct=p.reconstruct,
            device="cpu" if solver.device.id < 0 else f"gpu:{solver.device.id}",
            fusion=dataclasses.asdict(solver.params))
        self._ack(msg.seq, "recorded")
        log.info("series %s started: %s, shape %s", h["series"], h["elements"], h["shape"])
        self._event("series_start", elements=h["elements"], shape=h["shape"])
        self._status("recording")

    def _require_run(self, msg: Message) -> RunFile:
        run = self.run_file
        if run is None:
            raise ProtocolError("no_series", f"{msg.type} seq {msg.seq} before any "
                                "series_start", seq=msg.seq)
        if msg.header["series"] != run.series_id:
            raise ProtocolError("wrong_series", f"{msg.type} seq {msg.seq} is for series "
                                f"{msg.header['series']!r}, recording {run.series_id!r}",
                                seq=msg.seq)
        return run

    def _check_seq(self, run: RunFile, msg: Message) -> bool:
        """True if new; a recorded seq is acknowledged as a duplicate (returns False)."""
        if run.has_seq(msg.seq) or msg.seq in (self._start_seq, self._end_seq):
            self._ack(msg.seq, "duplicate")
            return False
        if run.complete:
            raise ProtocolError("series_complete", f"{msg.type} seq {msg.seq} after the "
                                "series end was recorded", seq=msg.seq)
        expected = self._last_seq() + 1
        if msg.seq != expected:
            raise ProtocolError("out_of_order", f"{msg.type} seq {msg.seq}: expected seq "
                                f"{expected}", seq=msg.seq)
        return True

    def _on_tilt(self, msg: Message, t_arrival: float) -> None:
        run = self._require_run(msg)
        if not self._check_seq(run, msg):
            return
        try:
            self._record_tilt(run, msg)
        except ProtocolError:
            # The message was the next in sequence but cannot be recorded (its content is
            # wrong): its seq is consumed, persistently, so that the series goes on; the
            # error reply names the problem and the instrument drops the message on the
            # next hello. Nothing recorded changes.
            self._consumed_seq = msg.seq
            run.record_event("seq_consumed", tilt_seq=msg.seq)
            raise
        self._add_to_solver(msg, "haadf" if msg.type == proto.HAADF_TILT else "chem",
                            t_arrival)

    def _record_tilt(self, run: RunFile, msg: Message) -> None:
        """Check the tilt's content against the series, record it (flushed), then ACK."""
        h = msg.header
        shape = list(msg.arrays[0].shape)
        if shape != list(run.shape):
            raise ProtocolError("shape_mismatch", f"{msg.type} seq {msg.seq}: image shape "
                                f"{shape}, the series has {list(run.shape)}", seq=msg.seq)
        modality = "haadf" if msg.type == proto.HAADF_TILT else "chem"
        if modality == "chem":
            extra = [e for e in h["elements"] if e not in run.elements]
            missing = [e for e in run.elements if e not in h["elements"]]
            if extra or missing:
                raise ProtocolError("element_mismatch", f"chem_tilt seq {msg.seq}: elements "
                                    f"not in the series {extra}, missing {missing}",
                                    seq=msg.seq)
        key = _angle_key(h["angle"])
        if key in self._angles[modality]:
            raise ProtocolError("duplicate_tilt", f"{msg.type} seq {msg.seq}: a {modality} "
                                f"tilt at {h['angle']} degrees is already recorded",
                                seq=msg.seq)
        try:
            run.record_tilt(msg)
        except RunFileError as e:
            if isinstance(e.__cause__, OSError):
                self._send(proto.ERROR, msg.seq, code="record_failed", message=str(e),
                           bad_seq=msg.seq)
                raise
            raise ProtocolError("record_failed", f"{msg.type} seq {msg.seq}: {e}",
                                seq=msg.seq) from None
        self._angles[modality].add(key)
        self._ack(msg.seq, "recorded")

    def _add_to_solver(self, msg: Message, modality: str, t_arrival: float) -> None:
        solver = self.solver
        angle = float(msg.header["angle"])
        if solver is None:  # recording only
            self._event("tilt_received", tilt_seq=msg.seq, modality=modality, angle=angle)
            return
        if modality == "haadf":
            image = np.asarray(msg.arrays[0], dtype=np.float32)
            frac = None
            if self.aligner is not None:
                self.aligner.align_haadf(angle, image, solver if solver.ready else None)
                image, frac = self.aligner.solver_haadf(angle)
            solver.add_haadf(angle, image, shifts=None if frac is None else frac[None])
        else:
            raw = dict(zip(msg.header["elements"], msg.arrays, strict=True))
            maps = {e: np.asarray(raw[e], dtype=np.float32) for e in solver.elements}
            frac = None
            if self.aligner is not None:
                maps, frac = self._align_chem(angle, maps)
            solver.add_chem(angle, {e: maps[e][None] for e in solver.elements},
                            shifts=None if frac is None else frac[None])
        self._refine_due = self.aligner is not None
        self._idle_done = 0
        self._event("tilt_received", tilt_seq=msg.seq, modality=modality, angle=angle)
        advise = (self.desk is not None and modality == "haadf"
                  and not msg.header.get("with_spectrum", False))
        if solver.ready:
            self._owed += self.params.iterations_per_tilt
            self._pending.append(_Pending(msg.seq, t_arrival, solver.iteration + self._owed,
                                          modality == "chem", angle if advise else None))
        elif advise:
            self._advise(msg.seq, angle)
        if (self.desk is None and modality == "haadf" and self.run_file is not None
                and self.run_file.start_header.get("holds_for_advice")):
            # Nobody advises: an instrument that holds for advice goes on at once.
            self._command("continue")
        self._status("recording")
        if not self.params.interleave:
            while self._owed > 0:
                self._iterate(PHASE_TILT)
        self._settle()

    def _on_end(self, msg: Message) -> None:
        run = self._require_run(msg)
        if not self._check_seq(run, msg):
            return
        h = msg.header
        if (h["n_haadf"], h["n_chem"]) != (run.haadf_count, run.chem_count):
            raise ProtocolError("count_mismatch", f"series_end seq {msg.seq} announces "
                                f"{h['n_haadf']} HAADF + {h['n_chem']} chemical tilts, "
                                f"{run.haadf_count} + {run.chem_count} are recorded",
                                seq=msg.seq)
        run.mark_complete(msg)
        self._end_seq = msg.seq
        self._ack(msg.seq, "recorded")
        log.info("series end recorded: %d HAADF + %d chemical tilts", run.haadf_count,
                 run.chem_count)
        self._event("series_end", haadf_tilts=run.haadf_count, chem_tilts=run.chem_count)
        self._ended = True

    # -- iterating ------------------------------------------------------------------------
    def _iterate(self, phase: int) -> None:
        solver, run = self.solver, self.run_file
        assert solver is not None and run is not None
        costs = solver.step()
        self._last_costs = costs
        if phase == PHASE_IDLE:
            self._idle_done += 1
        elif phase == PHASE_TILT:
            self._owed = max(self._owed - 1, 0)
        run.record_costs(solver.iteration, {
            **costs, "haadf_scale": solver.haadf_scale, "n_haadf": solver.n_haadf,
            "n_chem": solver.n_chem, "idle": int(phase == PHASE_IDLE), "phase": phase})
        p = self.params
        if p.snapshot_every and solver.iteration % p.snapshot_every == 0:
            run.record_snapshot(solver.iteration, solver.volumes())
        if self._pending and solver.iteration >= self._pending[0].target_iteration:
            self._settle()
            return
        if solver.iteration % p.publish_every == 0:
            self._status("iterating")
        if solver.iteration % p.slices_every == 0:
            self._publish_slices()

    def _settle(self) -> None:
        """Publish the reconstruction for the tilts whose k iterations are done; record
        their latency (arrival -> published) and a snapshot after a chemical tilt."""
        solver, run = self.solver, self.run_file
        assert solver is not None and run is not None
        done = [q for q in self._pending if solver.iteration >= q.target_iteration]
        if not done:
            return
        self._pending = [q for q in self._pending if q not in done]
        self._status("iterating")
        self._publish_slices()
        t = time.time()
        lats = [t - q.t_arrival for q in done]
        self._event("reconstruction_updated", iteration=solver.iteration,
                    tilt_seqs=[q.seq for q in done], latency_s=lats)
        for q, lat in zip(done, lats, strict=True):
            self.latencies.append(lat)
            run.record_event("latency", seq=q.seq, latency_s=lat, iteration=solver.iteration)
        for q in done:
            if q.advise_angle is not None:
                self._advise(q.seq, q.advise_angle)
        if self.params.uncertainty and (self.desk is None or self.desk.std is None
                                        or self._std_iteration != solver.iteration):
            self._refresh_std()
        if self.params.snapshot_chem and any(q.chem for q in done):
            run.record_snapshot(solver.iteration, solver.volumes())
            self._record_std()

    def _publish_slices(self) -> None:
        solver = self.solver
        if solver is None or solver.x is None:
            return
        extra: dict[str, Any] = {}
        if self.std is not None:
            std = np.stack([self.std[e] for e in solver.elements])
            extra = {"std_slices": orthoslices(std, solver.elements, self.params.slice_size),
                     "std_iteration": self._std_iteration}
        self._publish("slices", proto.STATUS, iteration=solver.iteration,
                      slices=orthoslices(solver.x, solver.elements, self.params.slice_size),
                      **extra)

    # -- alignment ---------------------------------------------------------------------------
    def _align_chem(self, angle: float, maps: dict[str, np.ndarray]
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        solver, aligner = self.solver, self.aligner
        assert solver is not None and aligner is not None
        aligner.align_chem(angle, maps, Z=list(solver.Z), gamma=solver.gamma,
                           background=[float(b) for b in solver.background])
        return aligner.solver_chem(angle)

    def _refine_alignment(self) -> None:
        """Idle time after a tilt (and during the final iterations): one refinement of every
        tilt's shift against the fused model; the solver takes the new shifts (its images
        are not touched: the shifts are in its projectors)."""
        solver, aligner, run = self.solver, self.aligner, self.run_file
        assert solver is not None and aligner is not None and run is not None
        self._refine_due = False
        changed = aligner.refine(solver)  # the solver gets the new shifts
        status = aligner.status()
        run.record_event("alignment", moved=len(changed), iteration=solver.iteration,
                         axis_offset_px=status["axis_offset_px"],
                         update_px=status["last_update_px"],
                         angles=status["angles"][-64:], shifts_px=status["shifts_px"][-64:])
        self._publish("alignment", proto.STATUS, alignment=status)

    # -- uncertainty and advice -------------------------------------------------------------
    def _refresh_std(self) -> None:
        """Cheap standard errors at the current volumes (science.md §3)."""
        solver = self.solver
        if solver is None or not solver.ready or solver.x is None:
            return
        self.std, _ = estimate_std_error(solver, UncertaintyParams(mode="cheap"))
        self._std_iteration = solver.iteration

    def _record_std(self) -> None:
        if self.std is not None and self.run_file is not None:
            self.run_file.record_std_error(self._std_iteration, self.std)

    def _advise(self, seq: int, angle: float) -> None:
        desk, run = self.desk, self.run_file
        assert desk is not None and run is not None
        solver = self.solver
        adv = desk.advise(solver if solver is not None and solver.ready else None,
                          angle=angle, tilt_seq=seq, recorded_haadf=run.angles("haadf"),
                          chem_angles=run.angles("chem"),
                          chem_dose_used=float(run.dose_e_per_A2.get("chem", 0.0)))
        if desk.std is not None and solver is not None:
            self.std = desk.std
            self._std_iteration = solver.iteration
        log.info("advice %d at %+.1f deg: %s (%s)", adv.id, angle, adv.action, adv.reason)
        run.record_event("advice", **_advice_record(adv))
        self._publish("advice", proto.STATUS, advice=adv.as_dict())
        if desk.mode == "auto":
            self._decide(None)

    def _decide(self, answer: str | None) -> None:
        desk, run = self.desk, self.run_file
        assert desk is not None and run is not None
        adv = desk.decide(answer)
        run.record_event("advice_decision", advice_id=adv.id, answer=answer,
                         decision=adv.decision, angle=adv.angle)
        self._publish("advice", proto.STATUS, advice=adv.as_dict())
        if desk.holds:
            cmd = "acquire_spectrum" if adv.decision == "acquire" else "continue"
            self._command(cmd)
        log.info("advice %d: %s -> %s", adv.id, answer or "auto", adv.decision)

    def _command(self, cmd: str, **args: Any) -> int:
        self._cmd_id += 1
        self._send(proto.COMMAND, cmd=cmd, id=self._cmd_id, **args)
        if self.run_file is not None:
            self.run_file.record_event("command", cmd=cmd, id=self._cmd_id, **args)
        return self._cmd_id

    def _on_operator(self) -> None:
        assert self.operator is not None
        while True:
            try:
                got = self.operator.recv(0)
            except ProtocolError as e:
                peer = getattr(e, "peer", None)
                log.warning("malformed operator message: [%s] %s", e.code, e)
                if peer is not None:
                    self.operator.reply(peer, make(proto.ERROR, self._series, 0, code=e.code,
                                                   message=str(e), bad_seq=None))
                continue
            if got is None:
                return
            peer, msg = got
            h = msg.header
            status, reason = "done", None
            if msg.type != proto.OPERATOR:
                status, reason = "rejected", f"{msg.type}: not an operator message"
            else:
                try:
                    reason = self._operate(str(h["action"]), h.get("advice_id"))
                except ValueError as e:
                    status, reason = "rejected", str(e)
            if self.run_file is not None:
                self.run_file.record_event("operator", action=h.get("action"),
                                           advice_id=h.get("advice_id"), status=status,
                                           reason=reason)
            self.operator.reply(peer, make(proto.ACK, self._series, msg.seq,
                                           ack_seq=h.get("id", 0), status=status,
                                           reason=reason, action=h.get("action")))

    def _operate(self, action: str, advice_id: Any) -> str:
        """Carry out an operator action; ValueError when it cannot be."""
        desk = self.desk
        if action in ("pause", "resume", "abort"):
            if self.run_file is None:
                raise ValueError(f"{action}: no series is being recorded")
            return f"sent as command {self._command(action)}"
        if desk is None:
            raise ValueError(f"{action}: the advisor is off for this series")
        if action in ("auto", "manual"):
            desk.mode = action
            if action == "auto" and desk.pending is not None:
                self._decide(None)
            self._status("recording" if self._pending else "iterating")
            return f"advice mode {action}"
        if action == "force" and desk.pending is None:
            if not desk.holds:
                raise ValueError("force: no advice is waiting and the instrument does not "
                                 "hold for advice")
            return f"sent as command {self._command('acquire_spectrum')}"
        desk.check_answer(action, advice_id)
        self._decide(action)
        return f"advice {advice_id if advice_id is not None else ''} answered {action}".strip()

    def _finish(self) -> None:
        """After the series end: the owed and final iterations (answering resends between
        them), the final snapshot, and the closing event."""
        solver, run = self.solver, self.run_file
        assert run is not None
        if solver is not None and solver.ready:
            while self._owed > 0:
                self._drain()
                self._iterate(PHASE_TILT)
            n_final = self.params.final_iterations
            for i in range(n_final):
                if self.aligner is not None and final_refinement_due(
                        i, n_final, self.params.align_final_every, self.aligner):
                    self._refine_alignment()
                self._drain()
                self._iterate(PHASE_FINAL)
            self._settle()
            run.record_snapshot(solver.iteration, solver.volumes())
            if self.params.uncertainty:
                self._refresh_std()
                self._record_std()
        elif self.params.reconstruct:
            log.warning("the series ended without both HAADF and chemical tilts: no "
                        "reconstruction")
        run.record_event("finished", iteration=0 if solver is None else solver.iteration,
                         latency_s_median=_median(self.latencies))
        self._status("complete")
        self._event("complete", iteration=0 if solver is None else solver.iteration)
        self._finished = True
        log.info("run complete: %s", self.run_path)

    def _drain(self) -> None:
        assert self._client is not None
        while self._client.sock.poll(0):
            self._handle(self._client.sock.recv_multipart(copy=True), time.time())


def _advice_record(adv: Any) -> dict[str, Any]:
    """An advice as recorded in the run file (without the candidate list's bulk)."""
    d = adv.as_dict()
    cands = d.pop("candidates")
    d["n_candidates"] = len(cands)
    return d


def _planned(header: dict[str, Any], key: str) -> int | None:
    scheme = header.get("scheme")
    if isinstance(scheme, dict) and isinstance(scheme.get(key), list):
        return len(scheme[key])
    return None


def _int_or(v: Any, default: int) -> int:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else default


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None
