"""Wiring: what turns data into reconstructions, live and offline.

- `live`: the live controller (a socket-free session, its hooks, and the socket loop);
- `advisor`, `policyrun`: spectroscopy advice policies and their offline runs (`policies`,
  the fixed ones; `adaptive`, with `coverage` of the tilt range and its `stoprule`);
- `reconstruct`, `series_model`, `offline_align`: offline reconstruction of a series;
- `report`: figures and an index.html for a run, reconstruction or series file;
- `sweep`: parameter sweeps on Dask.

The command line that drives them is `fusetomo.cli`.
"""

from fusetomo.core.mpi import defer_mpi_init

defer_mpi_init()  # before any module of this package imports sigpy (core/mpi.py)

__all__ = ["adaptive", "advisor", "coverage", "live", "offline_align", "policies", "policyrun",
           "reconstruct", "report", "series_model", "stoprule", "sweep"]
