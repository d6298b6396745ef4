"""No MPI unless the slab solver asks for it. sigpy imports `mpi4py.MPI` when mpi4py is
installed, and importing it starts MPI, whose library (MPICH, Open MPI) may open listening
sockets on every interface: a controller or viewer that never uses MPI would then listen
where the user asked for nothing. `defer_mpi_init()` (called by the packages that import
sigpy, before it) tells mpi4py not to start MPI on import; `start_mpi()` (the slab solver)
starts it when a communicator is really needed."""

from __future__ import annotations

import atexit
import sys
from typing import Any


def defer_mpi_init() -> None:
    """Make a later `from mpi4py import MPI` not start MPI (no-op without mpi4py, or once
    MPI was imported)."""
    if "mpi4py.MPI" in sys.modules:
        return
    try:
        import mpi4py
    except ImportError:
        return
    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False


def start_mpi() -> Any:
    """The `mpi4py.MPI` module with MPI started (and finalised at exit)."""
    from mpi4py import MPI

    if not MPI.Is_initialized():
        MPI.Init()
        atexit.register(lambda: MPI.Is_finalized() or MPI.Finalize())
    return MPI
