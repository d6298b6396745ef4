"""The fused solver's steps (solver/fusion.py, `FusedSolver`): the SIRT preconditioners,
the HAADF step (split among the elements), the chemical least-squares step and step
fractions, the TV prox and its scale, the level pin, the momentum restart, the HAADF
phase's SIRT step, and the reductions a slab overrides (solver/slabs.py).

`FusionSteps` is one of `FusedSolver`'s parts (mixins); `FusedSolver.step` puts them
together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import sigpy as sp

from fusetomo.solver.backend import to_numpy
from fusetomo.solver.iterative import sirt_weights
from fusetomo.solver.linop import sirt_lipschitz
from fusetomo.solver.projector import ParallelProjector
from fusetomo.solver.tv import prox_tv, tv_value

if TYPE_CHECKING:
    from fusetomo.solver.fusion import CostHistory, FusionParams

__all__ = ["FusionSteps"]

NEWTON_STEPS = 4  # of the level factor's 1-D Poisson likelihood (convex): ~1e-6 by 4
# The least fraction of lambda_chem_dark that low-SNR maps scale it to (see
# FusionParams.dark_snr_ref).
DARK_SCALE_MIN = 0.4


class FusionSteps:
    """The pieces of one iteration, and the reductions and prox a slab overrides.

    Part of `FusedSolver`, whose `__init__` sets the fields below; uses `_b_chem`,
    `_b_haadf`, `_fit_scale_offsets`, `haadf_data_less_offsets`, `n_chem`, `n_haadf` of its
    other parts."""

    _bg: Any
    _chem_cinv: Any
    chem_proj: ParallelProjector
    device: sp.Device
    elements: list[str]
    gamma: float
    _haadf_off: np.ndarray
    haadf_proj: ParallelProjector
    _haadf_volume: Any
    _haadf_weights: tuple[Any, Any] | None
    history: CostHistory
    iteration: int
    _momentum_k: int
    chem_snr: np.ndarray | None
    x: Any
    n: int
    n_slices: int
    params: FusionParams
    _w: Any
    _x_prev: Any
    Z: np.ndarray

    def _restart_momentum(self) -> None:
        self._x_prev = None
        self._momentum_k = 1

    def chem_preconditioner(self) -> Any:
        """1 / (A_c^T 1) per voxel of one slice, the chemical step's preconditioner."""
        return self._weights()[1][1]

    def chem_step_fraction(self, x: Any) -> Any:
        """The chemical step fraction per element and voxel at volumes x (see step())."""
        return self._chem_step_fraction(x)

    def _weights(self) -> tuple[tuple[Any, Any], Any]:
        if self._haadf_weights is None and self.n_haadf:
            self._haadf_weights = sirt_weights(self.haadf_proj)
        if self._chem_cinv is None and self.n_chem:
            self._chem_cinv = sirt_weights(self.chem_proj)  # (1/row sums, 1/col sums)
        return self._haadf_weights, self._chem_cinv

    def lipschitz(self) -> dict[str, float]:
        """Power-method Lipschitz constants of the SIRT-preconditioned HAADF and chemical
        least-squares gradients (each should be <= 1, which makes 1 a safe full step)."""
        out = {}
        if self.n_haadf:
            out["haadf"] = sirt_lipschitz(self.haadf_proj)
        if self.n_chem:
            out["chem"] = sirt_lipschitz(self.chem_proj)
        return out

    # -- reductions and the prox: hooks a slab of a larger volume overrides to make them
    # -- global (solver/slabs.py); here the solver holds the whole volume ------------------
    @property
    def _n_slices_total(self) -> int:
        return self.n_slices

    def _allreduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """Combine per-slab values over all slabs (`op` 'sum' or 'max')."""
        return values

    def _tv_scale(self, xn: np.ndarray) -> np.ndarray:
        """Each element's 99.9th percentile of its positive voxels (1 if none)."""
        return np.array([np.percentile(v[v > 0], 99.9) if np.any(v > 0) else 1.0 for v in xn])

    def _prox(self, x: Any, weights: Any) -> Any:
        p = self.params
        return prox_tv(x, weights, iterations=p.tv_iterations, backend=p.tv_backend)

    def _tv_terms(self, x: Any) -> np.ndarray:
        """Total variation of each element volume (this slab's share)."""
        return np.asarray(to_numpy(tv_value(x)), dtype=np.float64)

    def _chem_lsq_step(self, x: Any, relax: float) -> Any:
        _, (r_inv, c_inv) = self._weights()
        resid = (self._b_chem - self._bg - self.chem_proj.forward(x)) * r_inv
        return x + relax * c_inv * self.chem_proj.adjoint(resid)

    def _haadf_update(self, x: Any) -> tuple[Any, float, float]:
        """The HAADF step at x: (dx, Psi1 at x, fitted intensity scale)."""
        p = self.params
        xp = self.device.xp
        (hr_inv, hc_inv), _ = self._weights()
        xg1 = x ** (self.gamma - 1)
        s = xp.sum(self._w * xg1 * x, axis=0)
        As = self.haadf_proj.forward(s)
        c = self._fit_scale_offsets(As)
        b = self._b_haadf - xp.asarray(self._haadf_off, dtype=xp.float32)[:, None, None]
        resid = b - c * As
        cost_h = 0.5 * float(xp.vdot(resid, resid))
        # A few SIRT iterations on the summed signal alone (one volume, cheap), then
        # the change they ask for is split among the elements.
        target = c * s
        for k in range(p.haadf_inner_iterations):
            r_k = resid if k == 0 else b - self.haadf_proj.forward(target)
            target = xp.maximum(target + hc_inv * self.haadf_proj.adjoint(r_k * hr_inv), 0)
        # Split the change of the summed signal among the elements in proportion to
        # x_i Z_i^beta: beta = 0 keeps each voxel's element ratios (its stoichiometry,
        # decided by the chemical maps and TV) and scales the amount of material; larger
        # beta gives more of the change to heavy elements, which dominate HAADF. Normalised
        # so that, to first order, sum_i ds/dx_i dx_i = ds, except where the voxel's HAADF
        # sensitivity gu is small against the volume's largest (split_damping): there the
        # HAADF signal is most likely a heavy element's that the estimate has blurred away,
        # and handing it to the light elements present made hot spots of them (measured: a
        # Pt-decorated film, <NRMSE> 0.35 -> 0.21 with 1e-3 instead of 1e-6; a ZnO rod
        # with Au caps 0.48 -> 0.45; the demo's nanocubes 0.218 -> 0.221).
        ds = (target - c * s) / c
        g = self.gamma * self._w * xg1
        u = x * xp.asarray((self.Z ** p.split_bias)[:, None, None, None], dtype=xp.float32)
        gu = xp.sum(g * u, axis=0)
        damp = p.split_damping * float(
            self._allreduce(np.array([float(gu.max())]), "max")[0]) + 1e-30
        dx_h = u * (ds / (gu + damp))
        # At most a fourfold change of the material in a voxel per iteration.
        dx_h = xp.clip(dx_h, -x, 3.0 * x)
        return dx_h, cost_h, c

    def _pin_level(self, x: Any) -> Any:
        """The volumes with their level pinned as params.pin_level says: "ml",
        `_pin_level_ml`; "global" or "element", `_pin_level_totals`."""
        if self.params.pin_level == "ml":
            return self._pin_level_ml(x)
        return self._pin_level_totals(x)

    def _pin_level_totals(self, x: Any) -> Any:
        """Scale the volumes so that their model counts add up to the data's, as every ML-EM
        step leaves them (one factor, or one per element). The HAADF term alone does not fix
        the volumes' level (the scale c it refits absorbs it), and under a strong TV weight
        its shrinkage drifted the level down and c up over the iterations (measured: a
        Pt-decorated film with lambda_tv 0.01 lost 90 % of its material between iterations
        5 and 60, <NRMSE> 0.27 -> 0.93)."""
        xp = self.device.xp
        cols = self.chem_proj.col_sums()  # A^T 1 over all chemical tilts, one slice [n, n]
        model = to_numpy(xp.sum(x * cols, axis=(1, 2, 3), dtype=xp.float64))
        data = to_numpy(xp.sum(self._b_chem - self._bg, axis=(1, 2, 3), dtype=xp.float64))
        both = self._allreduce(np.concatenate([np.asarray(model, np.float64),
                                               np.asarray(data, np.float64)]))
        n_el = len(self.elements)
        model, data = both[:n_el], both[n_el:]
        if self.params.pin_level == "global":
            # One factor for all elements: only the direction the HAADF term cannot see
            # (all of x scaled, c the other way) is fixed; the elements' ratios stay.
            m, d = float(model.sum()), float(data.sum())
            ratio = np.full(n_el, d / m if m > 0 and d > 0 else 1.0)
        else:
            ratio = np.where((model > 0) & (data > 0), data / np.maximum(model, 1e-300), 1.0)
        return x * xp.asarray(ratio.astype(np.float32))[:, None, None, None]

    def _pin_level_ml(self, x: Any) -> Any:
        """Scale all element volumes by the one factor a that maximises the chemical
        likelihood, sum_i Psi2(a x_i): the direction the HAADF term cannot see (c absorbs
        it), set by the chemical maps at full strength instead of the chemical step's
        fraction. Unlike matching the map totals (`_pin_level_totals`), pixels the volumes do not
        reach (the vacuum, where a background error would add up) carry no weight."""
        xp = self.device.xp
        mu = self.chem_proj.forward(x)
        b, bg = self._b_chem, self._bg
        mu_total = float(self._allreduce(np.array([float(xp.sum(mu, dtype=xp.float64))]))[0])
        a = 1.0
        for _ in range(NEWTON_STEPS):
            m = xp.maximum(a * mu + bg, 1e-12)
            q = b * mu / m
            sums = self._allreduce(np.array([float(xp.sum(q, dtype=xp.float64)),
                                             float(xp.sum(q * mu / m, dtype=xp.float64))]))
            grad, curv = mu_total - sums[0], sums[1]
            if not curv > 0:
                break
            a = float(np.clip(a - grad / curv, 0.5 * a, 2.0 * a))
        return x * xp.float32(a)

    def _chem_step_fraction(self, x: Any) -> Any:
        """Per element and voxel: lambda_chem where the element carries the HAADF signal,
        up to lambda_chem_dark where HAADF cannot see it (light elements next to heavy ones),
        so that each element is driven by the modality that sees it."""
        p = self.params
        if self.n_haadf == 0:
            return p.lambda_chem_dark  # nothing is seen by HAADF
        dark = p.lambda_chem + (p.lambda_chem_dark - p.lambda_chem) * self.dark_scale
        if dark == p.lambda_chem:
            return p.lambda_chem
        xp = self.device.xp
        contrib = self._w * x**self.gamma
        share = contrib / xp.maximum(xp.sum(contrib, axis=0), 1e-30)
        return p.lambda_chem + (dark - p.lambda_chem) * (1.0 - share)

    @property
    def dark_scale(self) -> float:
        """The factor on lambda_chem_dark: the maps' mean estimated SNR over
        params.dark_snr_ref, within [DARK_SCALE_MIN, 1] (1 before the initialisation or
        with dark_snr_ref None)."""
        ref = self.params.dark_snr_ref
        if ref is None or self.chem_snr is None:
            return 1.0
        return float(np.clip(np.mean(self.chem_snr) / ref, DARK_SCALE_MIN, 1.0))

    def _estimate_chem_snr(self) -> np.ndarray:
        """Each element's chemical SNR from the current model: over the map pixels where its
        modelled signal A x_i exceeds a tenth of its peak, mean signal / sqrt(mean expected
        counts) (background included), as a microscopist would read it off a map."""
        xp = self.device.xp
        sig = self.chem_proj.forward(self.x)
        n_el = len(self.elements)
        peaks = self._allreduce(np.array([float(sig[i].max()) for i in range(n_el)]), "max")
        sums = []
        for i in range(n_el):
            mask = sig[i] > 0.1 * peaks[i]
            sums += [float(xp.sum(sig[i][mask], dtype=xp.float64)),
                     float(xp.sum((sig[i] + self._bg[i])[mask], dtype=xp.float64)),
                     float(mask.sum())]
        tot = self._allreduce(np.asarray(sums, dtype=np.float64)).reshape(n_el, 3)
        n = np.maximum(tot[:, 2], 1.0)
        return tot[:, 0] / n / np.sqrt(np.maximum(tot[:, 1] / n, 1e-30))

    def _haadf_phase_step(self) -> dict[str, float]:
        """One non-negative SIRT iteration of the HAADF images (less their offsets) alone:
        the volume of what HAADF sees, in the images' units, until the first spectrum
        image seeds the element volumes with it (see initialize)."""
        xp = self.device.xp
        (r_inv, c_inv), _ = self._weights()
        with self.device:
            if self._haadf_volume is None:
                self._haadf_volume = xp.zeros((self.n_slices, self.n, self.n), xp.float32)
            v = self._haadf_volume
            r = self.haadf_data_less_offsets() - self.haadf_proj.forward(v)
            cost = 0.5 * float(self._allreduce(np.array([float(xp.vdot(r, r))]))[0])
            v_new = xp.maximum(v + c_inv * self.haadf_proj.adjoint(r * r_inv), 0)
            d = v_new - v
            norms = self._allreduce(np.array([float(xp.vdot(d, d)),
                                              float(xp.vdot(v_new, v_new))]))
            self._haadf_volume = v_new
        self.iteration += 1
        h = self.history
        for name, value in (("haadf", cost), ("chem", 0.0), ("tv", 0.0),
                            ("haadf_scale", 1.0), ("n_haadf_tilts", self.n_haadf),
                            ("n_chem_tilts", 0),
                            ("change", float(np.sqrt(norms[0] / max(norms[1], 1e-300))))):
            getattr(h, name).append(value)
        return {"haadf": cost, "chem": 0.0, "tv": 0.0}
