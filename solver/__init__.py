"""The mathematics, on NumPy or CuPy arrays alone (no sockets, no files): the projector
(`projector`, `linop`), the fused solver as a step object (`fusion`), TV (`tv`), baselines,
2D fusion, per-voxel standard errors (`uncertainty`: Laplace; `resample`: re-solved data,
with a bias estimate), experimental design (`design`),
alignment (`alignment`, `joint_align`), nuisance parameters, the slab-split solver over MPI
(`slabs`), metrics, and the device choice (`backend`). It imports nothing of fusetomo above
`fusetomo.core`."""

from fusetomo.core.mpi import defer_mpi_init

defer_mpi_init()  # before any module of this package imports sigpy (core/mpi.py)

__all__ = ["alignment", "backend", "baselines", "design", "fusion", "fusion2d", "iterative",
           "joint_align", "linop", "metrics", "nuisance", "projector", "resample", "slabs",
           "tv", "uncertainty"]
