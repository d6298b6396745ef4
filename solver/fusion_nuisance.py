"""The fused solver's nuisances (solver/fusion.py, `FusedSolver`; docs/model.md): the
chemical maps' backgrounds (stated, from the vacuum, or refined jointly), the subtracted
level of background-subtracted maps, and the HAADF images' offsets and intensity scale.

`FusionNuisance` is one of `FusedSolver`'s parts (mixins); the estimators themselves are in
solver/nuisance.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import sigpy as sp

from fusetomo.solver import nuisance as nz
from fusetomo.solver.backend import to_numpy

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusionParams

__all__ = ["FusionNuisance"]


class FusionNuisance:
    """The backgrounds, subtracted levels, HAADF offsets and scale: stated, estimated, fitted.

    Part of `FusedSolver`, whose `__init__` sets the fields below; uses `_allreduce`,
    `_b_chem`, `_b_haadf`, `_n_slices_total`, `_vacuum` of its other parts."""

    _bg: Any
    _bg_maps: np.ndarray
    _bg_stated: np.ndarray
    chem_kind: Literal["counts", "subtracted"]
    device: sp.Device
    _haadf_fit: np.ndarray
    _haadf_off: np.ndarray
    haadf_scale: float
    n: int
    params: FusionParams
    _shift: np.ndarray
    _sub_stated: np.ndarray
    _vac_n: np.ndarray
    _vac_sum: np.ndarray

    @property
    def background(self) -> np.ndarray:
        """Each element's background, counts per pixel of its maps as given (for
        background-subtracted maps: what remains after the subtraction), stated or
        estimated; the mean over the maps when estimated per map."""
        if self._bg_maps.shape[1] == 0:
            return np.nan_to_num(self._bg_stated, nan=0.0)
        return self._bg_maps.mean(axis=1) - self._shift

    @property
    def background_maps(self) -> np.ndarray:
        """The background of every map [n_el, n_chem], counts per pixel as given."""
        return self._bg_maps - self._shift[:, None]

    @property
    def background_estimated(self) -> np.ndarray:
        """Which elements' backgrounds are estimated (not stated) [n_el] bool."""
        return np.isnan(self._bg_stated) & (self.params.background != "zero")

    @property
    def subtracted_level(self) -> np.ndarray:
        """For background-subtracted maps, the level added back to them per element (stated
        or estimated); zeros for raw counts."""
        return self._shift.copy()

    def stated_model(self) -> dict[str, Any]:
        """What the caller stated about the data model, as the constructor's keyword
        arguments (`background`, `chem_kind`, `subtracted`; None where not stated and so
        estimated): a twin solver built with them estimates the same nuisances."""
        def opt(v: np.ndarray) -> list[float | None]:
            return [None if np.isnan(x) else float(x) for x in v]
        return {"background": opt(self._bg_stated), "chem_kind": self.chem_kind,
                "subtracted": opt(self._sub_stated) if self.chem_kind == "subtracted"
                else None}

    @property
    def haadf_offsets(self) -> np.ndarray:
        """The HAADF offset of every image [n_haadf], in the images' units."""
        return self._haadf_off.copy()

    def haadf_vacuum(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each HAADF image's starting offset and whether it is fitted, by
        params.haadf_offset: (levels [k], fitted [k] bool)."""
        mode = self.params.haadf_offset
        k = images.shape[0]
        start = np.zeros(k) if mode == "none" else nz.haadf_offsets(images)
        fit = nz.edge_touching(images) if mode == "auto" else np.full(k, mode == "fit")
        return start, fit

    def _background_start(self) -> np.ndarray:
        """The background of every map [n_el, n_chem] of the shifted data: stated (plus the
        shift), else the mean over the vacuum (per map, or pooled over the element's maps),
        or the shift alone for params.background 'zero'."""
        stated = (self._bg_stated + self._shift)[:, None]
        n_el, m = self._vac_sum.shape
        both = self._allreduce(np.concatenate([self._vac_sum.ravel(), self._vac_n]))
        vac_sum, vac_n = both[:n_el * m].reshape(n_el, m), both[n_el * m:]
        if self.params.background_per_map:
            vac = vac_sum / np.maximum(vac_n, 1.0)
        else:
            vac = (vac_sum.sum(axis=1, keepdims=True)
                   / max(float(vac_n.sum()), 1.0)) * np.ones_like(vac_sum)
        unknown = vac if self.params.background != "zero" else self._shift[:, None] * 1.0
        return np.where(np.isnan(stated), unknown, stated) * np.ones_like(self._vac_sum)

    def _set_background(self, bg_maps: np.ndarray) -> None:
        """Store the per-map background [n_el, n_chem] (floored at eps, the Poisson mean's
        floor) and its device copy [n_el, n_chem, 1, 1]."""
        self._bg_maps = np.maximum(np.asarray(bg_maps, dtype=np.float64), self.params.eps)
        xp = self.device.xp
        with self.device:
            self._bg = xp.asarray(self._bg_maps[:, :, None, None], dtype=xp.float32)

    def chem_background(self) -> Any:
        """The model's background of every map, [n_el, n_chem, 1, 1] on the device (the
        counts A x_i is added to)."""
        if self._bg is None:
            raise ValueError("no chemical tilt yet: no background")
        return self._bg

    def chem_background_per_element(self) -> Any:
        """Each element's mean background over its maps, [n_el, 1, 1, 1] on the device: the
        level a new map is expected to have."""
        xp = self.device.xp
        with self.device:
            return xp.asarray(self._bg_maps.mean(axis=1)[:, None, None, None],
                              dtype=xp.float32)

    def _update_background(self, Ax: Any) -> None:
        if self.params.background == "joint":
            self._joint_background(Ax)

    def _joint_background(self, Ax: Any) -> None:
        """One ML-EM step of the estimated backgrounds at the model counts Ax (background
        included), over the vacuum pixels: b <- b * mean over the vacuum of the map (or of
        all maps) of data / Ax. Over the whole map, the volumes' faint haze and the
        background trade off (measured: 8-35 % low); the vacuum anchors the level while
        the model's own counts there still count."""
        est = self.background_estimated
        if not est.any():
            return
        xp = self.device.xp
        with self.device:
            ratio = xp.sum(self._b_chem / Ax * self._vacuum, axis=(2, 3), dtype=xp.float64)
            both = np.concatenate([np.asarray(to_numpy(ratio), np.float64).ravel(),
                                   np.asarray(to_numpy(self._vacuum.sum(axis=(1, 2))),
                                              np.float64)])
        both = self._allreduce(both)
        n_el, m = self._bg_maps.shape
        ratio, npx = both[:n_el * m].reshape(n_el, m), both[n_el * m:]
        if self.params.background_per_map:
            factor = ratio / np.maximum(npx, 1.0)
        else:
            factor = np.repeat(ratio.sum(axis=1, keepdims=True) / max(npx.sum(), 1.0),
                               m, axis=1)
        bg = np.where(est[:, None], self._bg_maps * factor, self._bg_maps)
        self._set_background(bg)

    def _fit_scale_offsets(self, As: Any) -> float:
        """Refit the HAADF intensity scale c (params.refit_scale) and the offsets of the
        images whose offset is fitted (params.haadf_offset) to the model images As = A s, in
        closed form; returns c. The other offsets stay as they are (vacuum level, or 0)."""
        p = self.params
        if not (p.refit_scale or self._haadf_fit.any()):
            return self.haadf_scale
        sums = self._allreduce(nz.image_sums(As, self._b_haadf).ravel()).reshape(4, -1)
        npx = self._n_slices_total * self.n
        c, off = nz.scale_offsets(sums, npx, self._haadf_off, self._haadf_fit)
        if p.refit_scale and c > 0:
            self.haadf_scale = c
        self._haadf_off = np.where(self._haadf_fit,
                                   (sums[1] - self.haadf_scale * sums[0]) / npx, off)
        return self.haadf_scale
