"""What the live session tells its hooks (alignment, advice, standard errors) and what a hook
may do in return. A hook is a `LiveHook` whose methods receive small typed objects (a
`TiltIn` on its way into the solver, the `Pending` tilts an iteration settled) and act
through a `HookContext`: read the solver and the run, publish, command the instrument,
record events. The session calls every hook at the same points, in order, so a new feature
is a new hook rather than a new branch in the session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fusetomo.adapters.runfile import RunFile, RunRecord
from fusetomo.controller.live.reconstruction import Pending, TiltIn
from fusetomo.solver.fusion import FusedSolver


@dataclass
class ErrorMaps:
    """The latest per-voxel standard errors (shared: the adaptive advisor computes them
    too), published with the orthoslices and recorded with the snapshots."""

    maps: dict[str, np.ndarray] | None = None
    iteration: int = -1


class HookContext(Protocol):
    """What the session offers its hooks."""

    solver: FusedSolver | None  # None while no series, or when only recording
    run: RunFile | None
    std: ErrorMaps

    def publish(self, topic: str, mtype: str, **fields: Any) -> None: ...

    def command(self, cmd: str, **args: Any) -> int: ...

    def status(self, state: str) -> None: ...

    def state(self) -> str: ...


class LiveHook:
    """A feature of the live session; every method may be left as it is (does nothing)."""

    def prepare(self, tilt: TiltIn, ctx: HookContext) -> TiltIn:
        """The tilt as the solver takes it (e.g. aligned, with fractional shifts)."""
        return tilt

    def added(self, tilt: TiltIn, ready: bool, ctx: HookContext) -> None:
        """`tilt` was added to the solver (`ready`: the solver owes it k iterations)."""

    def settled(self, tilts: tuple[Pending, ...], ctx: HookContext) -> None:
        """These tilts' k iterations are done (their reconstruction is published)."""

    def idle(self, ctx: HookContext) -> bool:
        """Work instead of an idle iteration; True if some was done."""
        return False

    def final_iteration(self, i: int, n: int, ctx: HookContext) -> None:
        """Before final iteration i of n (after the series end)."""

    def snapshot(self, iteration: int, ctx: HookContext) -> None:
        """A snapshot of the volumes was recorded at `iteration`."""

    def finished(self, ctx: HookContext) -> None:
        """The final snapshot was recorded (after the series end)."""

    def tick(self, ctx: HookContext) -> None:
        """About once a second while nothing happens."""

    def operate(self, action: str, advice_id: int | None, ctx: HookContext) -> str | None:
        """Carry out an operator action this hook owns (its reply's reason), None if it
        owns none; ValueError when it cannot be carried out."""
        return None

    def resume(self, record: RunRecord, ctx: HookContext) -> None:
        """The session resumed `record` (the solver, if any, is rebuilt)."""

    def status_fields(self) -> dict[str, Any]:
        """Fields this hook adds to every status message."""
        return {}
