"""The fused solver's model and results (solver/fusion.py, `FusedSolver`), read-only: the
data the model is fitted to, the model's images and counts, the volume HAADF sees, the
element volumes, the fitted nuisance model (`model_summary`) and the fit check.

`FusionModel` is one of `FusedSolver`'s parts (mixins)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import sigpy as sp

from fusetomo.solver import nuisance as nz
from fusetomo.solver.backend import to_numpy
from fusetomo.solver.fitcheck import FitCheck
from fusetomo.solver.fusion_errors import SolverNotReadyError
from fusetomo.solver.gamma import GammaSearch
from fusetomo.solver.projector import ParallelProjector

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusionParams

__all__ = ["FusionModel"]


class FusionModel:
    """Read-only: the data, the model's images and counts, the volumes, the fit summary.

    Part of `FusedSolver`, whose `__init__` sets the fields below; uses `_allreduce`,
    `_b_chem`, `_b_haadf`, `_n_slices_total`, `background`, `background_estimated`,
    `haadf_offsets`, `n_chem`, `n_haadf`, `subtracted_level` of its other parts."""

    _bg: Any
    chem_kind: Literal["counts", "subtracted"]
    chem_snr: np.ndarray | None
    dark_scale: float
    chem_proj: ParallelProjector
    device: sp.Device
    elements: list[str]
    gamma: float
    gamma_estimated: bool
    gamma_search: GammaSearch | None
    _haadf_off: np.ndarray
    haadf_proj: ParallelProjector
    haadf_scale: float
    _haadf_sigma: float | None
    _haadf_volume: Any
    n: int
    params: FusionParams
    _sub_stated: np.ndarray
    _w: Any
    x: Any

    def haadf_data(self) -> Any:
        """The HAADF images the model is fitted to, [n_haadf, n_slices, n] on the device."""
        return self._b_haadf

    def haadf_data_less_offsets(self) -> Any:
        """The HAADF images less their (fitted) offsets: what c A s models."""
        xp = self.device.xp
        with self.device:
            return self._b_haadf - xp.asarray(self._haadf_off, dtype=xp.float32)[:, None, None]

    def chem_data(self) -> Any:
        """The chemical counts the model is fitted to, [n_el, n_chem, n_slices, n]."""
        return self._b_chem

    def model_chem(self) -> Any:
        """The model's expected counts A x_i + background at the chemical tilts, with their
        shifts ([n_el, n_chem, n_slices, n], on the solver's device)."""
        if self.x is None or self.n_chem == 0:
            raise ValueError("no chemical model yet: add chemical tilts and run the solver")
        with self.device:
            return self.chem_proj.forward(self.x) + self._bg

    def model_haadf(self) -> Any:
        """The model's HAADF images at the solver's tilts, c A sum_i (Z_i x_i)^gamma + o_t,
        with their shifts and offsets: what the measured images are fitted with
        ([n_haadf, n_slices, n], on the solver's device)."""
        if (self.x is None and self._haadf_volume is None) or self.n_haadf == 0:
            raise ValueError("no HAADF model yet: add HAADF tilts and run the solver first")
        xp = self.device.xp
        with self.device:
            off = xp.asarray(self._haadf_off, dtype=xp.float32)[:, None, None]
            return self.haadf_scale * self.haadf_proj.forward(self.haadf_signal()) + off

    def haadf_signal(self) -> Any:
        """The volume HAADF sees, sum_i (Z_i x_i)^gamma (before the fitted scale c); in the
        HAADF phase, its SIRT volume (the scale is then 1)."""
        if self.x is None and self._haadf_volume is not None:
            return self._haadf_volume
        if self.x is None:
            raise ValueError("no volumes yet: run the solver first")
        xp = self.device.xp
        with self.device:
            return xp.sum(self._w * xp.maximum(self.x, 0) ** self.gamma, axis=0)

    def model_summary(self) -> dict[str, Any]:
        """The nuisance model as fitted, for a reconstruction file's attributes: gamma (and
        whether estimated), each element's background (and which were estimated), the
        subtracted level of background-subtracted maps, the HAADF offsets and scale."""
        out: dict[str, Any] = {
            "model_elements": list(self.elements),
            "model_gamma": self.gamma,
            "model_gamma_estimated": self.gamma_estimated,
            "model_chem_kind": self.chem_kind,
            "model_background": self.background.astype(np.float64),
            "model_background_estimated": self.background_estimated,
            "model_haadf_scale": self.haadf_scale,
        }
        if self.chem_snr is not None:
            # each element's chemical SNR as read at the initialisation, and the factor it
            # put on lambda_chem_dark (FusionParams.dark_snr_ref)
            out["model_chem_snr"] = np.asarray(self.chem_snr, dtype=np.float64)
            out["model_chem_dark_scale"] = self.dark_scale
        if self.chem_kind == "subtracted":
            out["model_subtracted_level"] = self.subtracted_level
            out["model_subtracted_estimated"] = np.isnan(self._sub_stated)
        if self.n_haadf:
            out["model_haadf_offsets"] = self.haadf_offsets
        if self.gamma_search is not None:
            g = self.gamma_search
            out["model_gamma_search_s"] = g.seconds
            out["model_gamma_search_bin"] = g.bin
            out["model_gamma_search_curve"] = np.asarray(g.curve, dtype=np.float64)
        return out

    def fit_check(self) -> FitCheck:
        """chi^2 per measurement of each modality at the current volumes, what is unexplained
        of the HAADF contrast, and the warnings they give (solver/fitcheck.py)."""
        if self.x is None:
            raise SolverNotReadyError("no reconstruction yet: nothing to check")
        xp = self.device.xp
        h_chi2 = h_unexpl = None
        with self.device:
            if self.n_haadf:
                b = self.haadf_data_less_offsets()
                r = b - self.haadf_scale * self.haadf_proj.forward(self.haadf_signal())
                sums = self._allreduce(np.array([float(xp.vdot(r, r)), float(b.sum()),
                                                 float(xp.vdot(b, b)), float(b.size)]))
                rr, sb, sbb, n = sums
                if self._haadf_sigma is None:
                    self._haadf_sigma = nz.haadf_noise(to_numpy(self._b_haadf))
                var_b = max(sbb - sb * sb / n, 1e-300)
                h_unexpl = float(rr / var_b)
                h_chi2 = (float(rr / n / self._haadf_sigma**2) if self._haadf_sigma > 0
                          else None)
            mu = self.chem_proj.forward(self.x) + self._bg
            pearson = to_numpy(xp.sum((self._b_chem - mu) ** 2 / mu, axis=(1, 2, 3),
                                      dtype=xp.float64))
        pearson = self._allreduce(np.asarray(pearson, dtype=np.float64))
        n_px = float(self.n_chem * self._n_slices_total * self.n)
        chem = {e: float(v / n_px) for e, v in zip(self.elements, pearson, strict=True)}
        return FitCheck.build(h_chi2, h_unexpl, chem, self.gamma,
                              self.gamma_estimated, self.params.gamma_bounds)

    def haadf_volume(self) -> np.ndarray:
        """The volume HAADF sees, NumPy float32 [n_slices, n, n]: in the HAADF phase the
        SIRT volume (the images' units per voxel), after it c sum_i (Z_i x_i)^gamma."""
        if self._haadf_volume is not None:
            return to_numpy(self._haadf_volume).astype(np.float32)
        if self.x is None:
            raise SolverNotReadyError("no reconstruction yet")
        with self.device:
            return to_numpy(self.haadf_scale * self.haadf_signal()).astype(np.float32)

    def volumes(self) -> dict[str, np.ndarray]:
        """Current element volumes as NumPy float32 [n_slices, n, n] (chemical-map units)."""
        if self.x is None:
            raise SolverNotReadyError("no reconstruction yet")
        xn = to_numpy(self.x).astype(np.float32)
        return {e: xn[i] for i, e in enumerate(self.elements)}
