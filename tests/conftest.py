"""Test-session set-up: no MPI started by importing sigpy (core/mpi.py), as in the package;
the slab tests start it themselves."""

from fusetomo.core.mpi import defer_mpi_init

defer_mpi_init()
