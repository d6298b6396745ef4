"""The projector as a sigpy Linop, so that sigpy's power method and operator algebra apply.

All slices share one 2D geometry, so spectral quantities (Lipschitz constants) are computed
on a single slice: they equal those of the full 3D operator and cost n_slices times less.
"""

from __future__ import annotations

from typing import Any

import sigpy as sp

from fusetomo.solver.projector import ParallelProjector


class ProjectorLinop(sp.linop.Linop):
    """x [n_slices, n, n] -> A x [n_tilts, n_slices, n_det]."""

    def __init__(self, projector: ParallelProjector, n_slices: int = 1) -> None:
        self.projector = projector
        n, nd, nt = projector.n, projector.n_det, projector.n_tilts
        super().__init__((nt, n_slices, nd), (n_slices, n, n))

    def _apply(self, input: Any) -> Any:
        return self.projector.forward(input)

    def _adjoint_linop(self) -> sp.linop.Linop:
        return _ProjectorAdjoint(self)


class _ProjectorAdjoint(sp.linop.Linop):
    def __init__(self, fwd: ProjectorLinop) -> None:
        self.fwd = fwd
        super().__init__(fwd.ishape, fwd.oshape)

    def _apply(self, input: Any) -> Any:
        return self.fwd.projector.adjoint(input)

    def _adjoint_linop(self) -> sp.linop.Linop:
        return self.fwd


def max_eigenvalue(op: sp.linop.Linop, iterations: int = 30, seed: int = 0) -> float:
    """Largest eigenvalue of the self-adjoint positive operator `op` by sigpy's power method."""
    dev = getattr(op, "device", sp.cpu_device)
    xp = dev.xp
    with dev:
        rng = xp.random.default_rng(seed) if hasattr(xp.random, "default_rng") else xp.random
        x = rng.standard_normal(tuple(op.ishape)).astype(xp.float32)
        alg = sp.alg.PowerMethod(op, x, max_iter=iterations)
        while not alg.done():
            alg.update()
        return float(alg.max_eig)


def sirt_lipschitz(projector: ParallelProjector, iterations: int = 30) -> float:
    """||C^-1/2 A^T R^-1 A C^-1/2|| for one slice: the Lipschitz constant of the
    SIRT-preconditioned least-squares gradient (<= 1 in theory)."""
    xp = projector.device.xp
    A = ProjectorLinop(projector, 1)
    with projector.device:
        c = projector.col_sums()[None]
        r = projector.row_sums()
        c_inv_sqrt = xp.where(c > 0, 1.0 / xp.sqrt(xp.maximum(c, 1e-12)), 0).astype(xp.float32)
        r_inv = xp.where(r > 0, 1.0 / xp.maximum(r, 1e-12), 0).astype(xp.float32)
    Cm = sp.linop.Multiply(A.ishape, c_inv_sqrt)
    Rm = sp.linop.Multiply(A.oshape, r_inv)
    op = Cm.H * A.H * Rm * A * Cm
    op.device = projector.device  # type: ignore[attr-defined]
    return max_eigenvalue(op, iterations)
