"""The fused solver's HAADF exponent gamma (solver/fusion.py, `FusedSolver`): setting it,
the HAADF misfit at a gamma, and its estimate (the consistency search of solver/gamma.py,
or the HAADF misfit).

`FusionGamma` is one of `FusedSolver`'s parts (mixins)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import sigpy as sp
from scipy.optimize import minimize_scalar

from fusetomo.solver import nuisance as nz
from fusetomo.solver.fusion_errors import SolverNotReadyError
from fusetomo.solver.gamma import GammaSearch, search_gamma
from fusetomo.solver.projector import ParallelProjector

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusionParams

__all__ = ["GAMMA_TOL", "FusionGamma"]

# The precision of gamma's estimate (far below what the data decide).
GAMMA_TOL = 0.005


class FusionGamma:
    """gamma: set, the HAADF misfit at a gamma, estimated.

    Part of `FusedSolver`, whose `__init__` sets the fields below; uses `_allreduce`,
    `_b_haadf`, `_n_slices_total`, `_restart_momentum`, `n_chem`, `n_haadf` of its other
    parts."""

    device: sp.Device
    gamma: float
    _gamma_due: bool
    gamma_estimated: bool
    _gamma_n_chem: int
    gamma_search: GammaSearch | None
    _haadf_fit: np.ndarray
    _haadf_off: np.ndarray
    haadf_proj: ParallelProjector
    _haadf_weights: tuple[Any, Any] | None
    n: int
    params: FusionParams
    _w: Any
    x: Any
    Z: np.ndarray

    def set_gamma(self, gamma: float) -> None:
        """Use `gamma` in the HAADF model from now on (1 <= gamma <= 2.5)."""
        if not 1.0 <= float(gamma) <= 2.5:
            raise ValueError(f"gamma must lie in [1, 2.5], got {gamma}")
        self.gamma = float(gamma)
        xp = self.device.xp
        with self.device:
            self._w = xp.asarray((self.Z**self.gamma)[:, None, None, None], dtype=xp.float32)
        self._haadf_weights = None
        self._restart_momentum()

    @property
    def element_weights(self) -> Any:
        """Z_i^gamma per element, [n_el, 1, 1, 1] on the device (the HAADF model's weights)."""
        return self._w

    def haadf_misfit(self, gamma: float, x: Any | None = None) -> float:
        """The HAADF least-squares misfit at `gamma` (volumes x, default the current ones),
        with the scale and offsets refitted in closed form for it."""
        xp = self.device.xp
        x = self.x if x is None else x
        with self.device:
            w = xp.asarray((self.Z**gamma)[:, None, None, None], dtype=xp.float32)
            As = self.haadf_proj.forward(xp.sum(w * xp.maximum(x, 0) ** gamma, axis=0))
            b = self._b_haadf
            sums = self._allreduce(nz.image_sums(As, b).ravel()).reshape(4, -1)
            npx = self._n_slices_total * self.n
            c, off = nz.scale_offsets(sums, npx, self._haadf_off, self._haadf_fit)
            r = b - c * As - xp.asarray(off, dtype=xp.float32)[:, None, None]
            return float(self._allreduce(np.array([float(xp.vdot(r, r))]))[0])

    def estimate_gamma(self) -> float:
        """Estimate gamma within params.gamma_bounds (params.gamma_method: the gamma whose
        short fused run fits the chemical maps best, solver/gamma.py; or the HAADF misfit at
        the current volumes) and use it from now on. Returns it."""
        if self.x is None or self.n_haadf == 0 or self.n_chem == 0:
            raise SolverNotReadyError("gamma needs HAADF and chemical tilts and volumes")
        if self.params.gamma_method == "consistency":
            self.gamma_search = search_gamma(self)
            gamma = self.gamma_search.gamma
        else:
            lo, hi = self.params.gamma_bounds
            gamma = float(minimize_scalar(self.haadf_misfit, bounds=(lo, hi),
                                          method="bounded", options={"xatol": GAMMA_TOL}).x)
        self.set_gamma(gamma)
        self.gamma_estimated = True
        self._gamma_due = False
        self._gamma_n_chem = self.n_chem
        return self.gamma
