"""The fused solver's data (solver/fusion.py, `FusedSolver`): the tilts it holds, the
checks they pass, the growing data stores and the chemical maps' vacuum masks.

`FusionData` is one of `FusedSolver`'s parts (mixins): adding HAADF and chemical tilts,
replacing their data or their shifts, and the stores `_b_haadf`, `_b_chem` and `_vacuum`
that grow by appending (solver/growing.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import sigpy as sp

from fusetomo.solver import nuisance as nz
from fusetomo.solver.backend import to_device, to_numpy
from fusetomo.solver.growing import Growing
from fusetomo.solver.projector import GeometryError, ParallelProjector

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusionParams

__all__ = ["FusionData"]


class FusionData:
    """What HAADF and chemical tilts the solver holds, and how they are added or replaced.

    Part of `FusedSolver`, whose `__init__` sets the fields below; uses `_allreduce`,
    `_background_start`, `_restart_momentum`, `_set_background`, `haadf_vacuum` of its other
    parts."""

    _chem_cinv: Any
    chem_kind: Literal["counts", "subtracted"]
    chem_proj: ParallelProjector
    _chem_rows: Growing
    device: sp.Device
    elements: list[str]
    _haadf_fit: np.ndarray
    _haadf_off: np.ndarray
    haadf_proj: ParallelProjector
    _haadf_rows: Growing
    _haadf_sigma: float | None
    _haadf_weights: tuple[Any, Any] | None
    n: int
    n_slices: int
    params: FusionParams
    _reseed: bool
    _shift: np.ndarray
    _sub_stated: np.ndarray
    _vac_n: np.ndarray
    _vac_sum: np.ndarray
    _vacuum_rows: Growing
    x: Any

    @property
    def n_haadf(self) -> int:
        return self.haadf_proj.n_tilts

    @property
    def n_chem(self) -> int:
        return self.chem_proj.n_tilts

    @property
    def ready(self) -> bool:
        """Chemical tilts are needed; HAADF ones too unless lambda_haadf is 0 (which makes
        this the chemical-only reconstruction with the same TV regulariser). With
        params.haadf_phase, HAADF tilts alone make it ready (the HAADF phase)."""
        if self.n_chem == 0:
            return self.params.haadf_phase and self.n_haadf > 0
        return self.n_haadf > 0 or self.params.lambda_haadf == 0

    @property
    def in_haadf_phase(self) -> bool:
        """Iterating on the HAADF images alone: no spectrum image yet (params.haadf_phase)."""
        return self.n_chem == 0 and self.ready

    def _check_stack(self, what: str, data: np.ndarray, n_angles: int) -> np.ndarray:
        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 2:
            data = data[None]
        if data.shape != (n_angles, self.n_slices, self.n):
            raise GeometryError(
                f"{what}: shape {data.shape} != ({n_angles}, {self.n_slices}, {self.n})"
            )
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{what}: contains NaN or inf")
        return data

    # The data stacks grow by appending (solver/growing.py: no copy of the stack per tilt);
    # assigning one replaces it.
    @property
    def _b_haadf(self) -> Any:
        return self._haadf_rows.view

    @_b_haadf.setter
    def _b_haadf(self, value: Any) -> None:
        self._haadf_rows = Growing(value, axis=0)

    @property
    def _b_chem(self) -> Any:
        return self._chem_rows.view

    @_b_chem.setter
    def _b_chem(self, value: Any) -> None:
        self._chem_rows = Growing(value, axis=1)

    @property
    def _vacuum(self) -> Any:
        return self._vacuum_rows.view

    @_vacuum.setter
    def _vacuum(self, value: Any) -> None:
        self._vacuum_rows = Growing(value, axis=0)

    def add_haadf(self, angles: Sequence[float] | float, images: np.ndarray,
                  shifts: Any | None = None, *,
                  vacuum: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Append HAADF projections [k, n_slices, n] (any intensity units, any offset).
        `shifts` [k, 2]: where each image sits, (ds, dd) px, relative to the projection of
        the volume (the alignment, modelled by the projector instead of resampling the
        image). `vacuum`: `haadf_vacuum` of the whole images, from a caller that passes a
        part of them (a slab)."""
        ang = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        data = self._check_stack("HAADF", images, ang.size)
        xp = self.device.xp
        self.haadf_proj.extend(ang, shifts)
        with self.device:
            self._haadf_rows.append(to_device(data, self.device), xp)  # no copy of the stack
        start, fit = self.haadf_vacuum(data) if vacuum is None else vacuum
        self._haadf_off = np.concatenate([self._haadf_off, start])
        self._haadf_fit = np.concatenate([self._haadf_fit, fit])
        self._haadf_sigma = None
        self._haadf_weights = None
        self._restart_momentum()

    def _chem_stack(self, maps: dict[str, np.ndarray] | np.ndarray, k: int) -> np.ndarray:
        """Maps as [n_el, k, n_slices, n] float32 in the solver's element order, checked."""
        if isinstance(maps, dict):
            unknown = sorted(set(maps) - set(self.elements))
            missing = [e for e in self.elements if e not in maps]
            if unknown or missing:
                raise KeyError(f"chemical maps: unknown elements {unknown}, missing {missing}")
            stack = [self._check_stack(f"chemical map {e}", maps[e], k)
                     for e in self.elements]
        else:
            arr = np.asarray(maps)
            if arr.ndim == 3:
                arr = arr[:, None]
            if arr.shape[0] != len(self.elements):
                raise GeometryError(
                    f"chemical maps: {arr.shape[0]} maps for {len(self.elements)} elements"
                )
            stack = [self._check_stack(f"chemical map {e}", arr[i], k)
                     for i, e in enumerate(self.elements)]
        if self.chem_kind == "counts":
            for e, m in zip(self.elements, stack, strict=True):
                if np.any(m < 0):
                    raise ValueError(f"chemical map {e}: negative counts (min "
                                     f"{float(m.min())}); background-subtracted maps need "
                                     "chem_kind='subtracted'")
        return np.stack(stack)

    def _vacuum_masks(self, angles: np.ndarray) -> np.ndarray:
        """Vacuum masks for chemical maps at `angles`, from the nearest HAADF images."""
        h = to_numpy(self._b_haadf)
        if h.shape[0] == 0:
            return np.stack([nz.border_columns((self.n_slices, self.n))] * angles.size)
        if self._haadf_sigma is None:
            self._haadf_sigma = nz.haadf_noise(h)
        return nz.nearest_masks(h, self.haadf_proj.angles, angles, self._haadf_off,
                                self._haadf_sigma)

    def add_chem(
        self, angles: Sequence[float] | float, maps: dict[str, np.ndarray] | np.ndarray,
        shifts: Any | None = None, *, vacuum_masks: np.ndarray | None = None,
    ) -> None:
        """Append chemical maps at `angles`: a dict element -> [k, n_slices, n] or an
        array [n_elements, k, n_slices, n] in the solver's element order (counts >= 0, or
        signed for background-subtracted maps). `shifts` [k, 2] as for `add_haadf`.
        `vacuum_masks` [k, n_slices, n]: where the maps see vacuum, from a caller that
        passes a part of the images (a slab); by default from the nearest HAADF images."""
        if not self.elements:
            raise ValueError("this solver has no element (a HAADF-only series): it takes "
                             "no spectrum image")
        ang = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        raw = self._chem_stack(maps, ang.size)
        masks = self._vacuum_masks(ang) if vacuum_masks is None else np.asarray(
            vacuum_masks, dtype=bool)
        unknown_shift = np.isnan(self._sub_stated)
        if unknown_shift.any() and self.n_chem == 0:
            # The subtracted level, from the vacuum of the first maps (then kept).
            moments = self._allreduce(nz.vacuum_moments(raw, masks).ravel()).reshape(3, -1)
            self._shift = np.where(unknown_shift, nz.subtracted_level(moments), self._shift)
        data = raw + self._shift.astype(np.float32)[:, None, None, None]
        self._vac_sum = np.concatenate(
            [self._vac_sum, nz.chem_background_start(data, masks) * masks.sum(axis=(1, 2))],
            axis=1)
        self._vac_n = np.concatenate([self._vac_n, masks.sum(axis=(1, 2)).astype(float)])
        xp = self.device.xp
        self.chem_proj.extend(ang, shifts)
        with self.device:
            self._chem_rows.append(to_device(data, self.device), xp)  # (growing.py)
            self._vacuum_rows.append(to_device(masks.astype(np.float32), self.device), xp)
        self._set_background(self._background_start())
        self._chem_cinv = None
        self._restart_momentum()
        # New chemical data re-seeds the element split at the next step (see step()).
        self._reseed = self.x is not None and self.params.reseed_on_chem

    def replace_haadf(self, images: np.ndarray) -> None:
        """New data for the HAADF tilts already added (same angles, same order), e.g.
        after the alignment was refined: [n_haadf, n_slices, n]."""
        data = self._check_stack("HAADF images", images, self.n_haadf)
        with self.device:
            self._b_haadf = to_device(data, self.device)
        mode = self.params.haadf_offset
        if mode != "none":
            self._haadf_off = nz.haadf_offsets(data)
        if mode == "auto":
            self._haadf_fit = nz.edge_touching(data)
        self._restart_momentum()

    def replace_chem(self, maps: dict[str, np.ndarray]) -> None:
        """New maps for the chemical tilts already added (same angles, same order):
        element -> [n_chem, n_slices, n]."""
        missing = [e for e in self.elements if e not in maps]
        if missing:
            raise KeyError(f"chemical maps: missing {missing}")
        data = self._chem_stack(maps, self.n_chem) \
            + self._shift.astype(np.float32)[:, None, None, None]
        with self.device:
            self._b_chem = to_device(data, self.device)
        self._restart_momentum()

    def set_shifts(self, haadf: Any | None = None, chem: Any | None = None) -> None:
        """New detector shifts [n, 2] (ds, dd) for the HAADF and/or chemical tilts already
        added (same order), e.g. after the alignment was refined; the data stay as they are.
        Both are checked before either is set."""
        if haadf is not None:
            haadf = self.haadf_proj.check_shifts(haadf, self.n_haadf)
        if chem is not None:
            chem = self.chem_proj.check_shifts(chem, self.n_chem)
        if haadf is not None:
            self.haadf_proj.set_shifts(haadf)
            self._haadf_weights = None
        if chem is not None:
            self.chem_proj.set_shifts(chem)
            self._chem_cinv = None
        self._restart_momentum()
