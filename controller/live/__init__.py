"""The live controller: receive tilts, record them, then acknowledge, and keep the fused
reconstruction up to date while the series is acquired.

- `session.LiveSession`: the controller without sockets: messages in (`receive`,
  `on_message`, `on_operator`), `Outputs` out (replies and commands for the instrument,
  events for viewers), `step()` for the next iteration; it owns the run file (`recorder`)
  and the reconstruction (`reconstruction.LiveReconstruction`, a step object with
  `update()`/`done()`, and `rebuild_solver` for `--resume`).
- `hooks`: alignment (`alignment.AlignmentHook`, on `aligner.LiveAligner`), advice
  (`advice.AdviceHook`, on `AdviceDesk`) and standard errors (`uncertainty.UncertaintyHook`)
  receive small typed objects from the session.
- `loop.LiveController`: the session behind its ZeroMQ sockets (the thin loop).
- `params.LiveParams`, `LiveError`; `publish.orthoslices`, `Outputs`; `timing`: the
  per-tilt processing time and the lag behind the newest tilt.

docs/architecture.md follows one tilt from the socket to the published slices.
"""

from fusetomo.controller.live.alignment import final_refinement_due, realign
from fusetomo.controller.live.loop import LiveController
from fusetomo.controller.live.params import (
    HEALTHY,
    INTERRUPTED,
    PHASE_FINAL,
    PHASE_IDLE,
    PHASE_TILT,
    RUN_COST_TERMS,
    LiveError,
    LiveParams,
)
from fusetomo.controller.live.publish import Outputs, orthoslices
from fusetomo.controller.live.reconstruction import (
    LiveReconstruction,
    arrival_order,
    json_header,
    rebuild_solver,
    schedule_of,
    solver_for,
)
from fusetomo.controller.live.session import LiveSession

__all__ = [
    "HEALTHY", "INTERRUPTED", "PHASE_FINAL", "PHASE_IDLE", "PHASE_TILT", "RUN_COST_TERMS",
    "LiveController", "LiveError", "LiveParams", "LiveReconstruction", "LiveSession",
    "Outputs", "arrival_order", "final_refinement_due", "json_header", "orthoslices",
    "realign", "rebuild_solver", "schedule_of", "solver_for",
]
