"""The error the fused solver (solver/fusion.py) raises when asked to iterate, estimate or
report before it has the data for it; importable from solver/fusion.py as before."""

from __future__ import annotations

from fusetomo.core.errors import FusetomoError

__all__ = ["SolverNotReadyError"]


class SolverNotReadyError(FusetomoError, RuntimeError):
    """The solver needs at least one HAADF and one chemical tilt before it can iterate."""
