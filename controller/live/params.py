"""How the live controller iterates, records and publishes, and its error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fusetomo.controller.live.aligner import LiveAlignParams
from fusetomo.controller.live.desk import AdviceParams
from fusetomo.core.errors import FusetomoError
from fusetomo.solver.fusion import FusionParams
from fusetomo.solver.stopping import StopRule

HEALTHY, INTERRUPTED = 0, 1  # LiveController.run()'s return values
# What an iteration was run for (the `phase` cost column).
PHASE_TILT, PHASE_IDLE, PHASE_FINAL = 0, 1, 2
# Cost rows recorded per iteration: the solver's terms, the tilt counts it held (to replay
# the schedule), and the phase.
# "change": the volumes' relative change in the iteration, the quantity of the stopping rule
# (solver/stopping.py) that the report applies; a run file made before it lacks the column.
RUN_COST_TERMS = ("haadf", "chem", "tv", "haadf_scale", "n_haadf", "n_chem", "idle", "phase",
                  "change")


class LiveError(FusetomoError, RuntimeError):
    """The series cannot be completed (no instrument, run file unusable, ...)."""


@dataclass(frozen=True)
class LiveParams:
    """How the controller iterates, records and publishes."""

    iterations_per_tilt: int = 3  # k: warm-start iterations after each tilt
    idle_iterations: bool = True  # keep iterating while waiting for tilts
    max_idle_iterations: int = 50  # at most this many idle iterations after each tilt
    # Idle iterations also stop when the offline stopping rule (solver/stopping.py) fires on
    # the iterations since the last tilt: the volumes have converged, or the HAADF and
    # chemical terms both rose for `patience` iterations (going on would fit the data worse
    # until the next tilt brings new data). None: only max_idle_iterations stops them.
    idle_stop: StopRule | None = field(
        default_factory=lambda: StopRule(min_iterations=4, max_iterations=10**9))
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
    memory_limit_bytes: int | None = None  # refuse a series that needs more (None: the
    #                                        memory available when it starts)

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
        if self.memory_limit_bytes is not None and (
                isinstance(self.memory_limit_bytes, bool)
                or not isinstance(self.memory_limit_bytes, int) or self.memory_limit_bytes < 1):
            raise ValueError(f"memory_limit_bytes must be an integer > 0 (or None), got "
                             f"{self.memory_limit_bytes!r}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be auto, cpu or gpu, got {self.device!r}")
