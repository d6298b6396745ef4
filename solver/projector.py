"""Parallel-beam projector for a single tilt axis, as a sparse matrix per tilt.

Geometry (science.md §5, a contract): a volume is V[s, u, v] with s along the tilt axis and
(u, v) in the slice plane centred at (n-1)/2; the projection at angle t is
P_t[s, d] = sum over the ray of V with d = u cos t + v sin t. So P_0[s, d] = sum_v V[s, d, v]
and P_90[s, d] = sum_u V[s, u, d].

Every slice sees the same 2D geometry, so one sparse matrix W (rows: tilt x detector bin,
columns: the n*n pixels of a slice) projects all slices, and all elements, in one sparse x
dense product whose dense columns are the slices. The weights are pixel-driven linear
interpolation: each pixel centre lands at detector coordinate d and is split between the two
nearest bins. That gives an exact adjoint (the transpose), conserves mass, and reproduces the
0 and 90 degree sums above exactly.

The matrices are scipy.sparse (CPU) or cupyx.scipy.sparse (GPU) CSR matrices; building the
weights is ours because no well-kept library offers this exact geometry as a sparse matrix
that we can grow tilt by tilt (ASTRA's matrices need its own build and a GPU for speed).
Appending tilts computes weights for the new angles only and stacks them under the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sigpy as sp

from fusetomo.solver.backend import sparse_module, to_device


class GeometryError(ValueError):
    """A volume or projection stack whose shape does not fit the projector."""


def tilt_weights(n: int, angle_deg: float, n_det: int | None = None) -> Any:
    """Sparse CSR matrix [n_det, n*n] (scipy) projecting one slice at one angle."""
    n_det = n if n_det is None else n_det
    t = np.deg2rad(float(angle_deg))
    c = (n - 1) / 2.0
    cd = (n_det - 1) / 2.0
    u = np.arange(n, dtype=np.float64) - c
    # Round cos/sin so that 0 and 90 degrees land exactly on bins.
    cos_t, sin_t = np.round(np.cos(t), 15), np.round(np.sin(t), 15)
    d = (u[:, None] * cos_t + u[None, :] * sin_t).ravel() + cd
    lo = np.floor(d)
    frac = d - lo
    lo = lo.astype(np.int64)
    pix = np.arange(n * n, dtype=np.int64)
    rows = np.concatenate([lo, lo + 1])
    cols = np.concatenate([pix, pix])
    vals = np.concatenate([1.0 - frac, frac])
    keep = (rows >= 0) & (rows < n_det) & (vals > 1e-12)
    import scipy.sparse

    return scipy.sparse.csr_matrix(
        (vals[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(n_det, n * n)
    )


class ParallelProjector:
    """Forward and back projection for a growing set of tilt angles.

    Volumes are [..., n_slices, n, n]; projections are [..., n_tilts, n_slices, n_det]. Any
    leading axes (elements) are projected in the same sparse product.
    """

    def __init__(
        self,
        n: int,
        angles_deg: Sequence[float] = (),
        *,
        n_det: int | None = None,
        device: sp.Device | int = -1,
    ) -> None:
        if n < 2:
            raise GeometryError(f"slice size must be at least 2 pixels, got {n}")
        self.n = int(n)
        self.n_det = int(n if n_det is None else n_det)
        self.device = sp.Device(device)
        self._angles: list[float] = []
        self._matrix: Any = None
        self._col_sums: Any = None
        self.extend(angles_deg)

    # -- geometry -------------------------------------------------------------------------
    @property
    def angles(self) -> np.ndarray:
        return np.asarray(self._angles, dtype=np.float64)

    @property
    def n_tilts(self) -> int:
        return len(self._angles)

    @property
    def matrix(self) -> Any:
        """The stacked CSR matrix [n_tilts*n_det, n*n] on the projector's device."""
        if self._matrix is None:
            raise GeometryError("projector has no tilt angles yet")
        return self._matrix

    def extend(self, angles_deg: Sequence[float] | float) -> None:
        """Append tilts. Only the new angles' weights are computed."""
        new = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
        if new.size == 0:
            return
        if not np.all(np.isfinite(new)):
            raise GeometryError(f"tilt angles must be finite, got {new.tolist()}")
        spmod = sparse_module(self.device)
        import scipy.sparse

        block = scipy.sparse.vstack(
            [tilt_weights(self.n, a, self.n_det) for a in new], format="csr"
        )
        with self.device:
            block_dev = block if self.device == sp.cpu_device else spmod.csr_matrix(block)
            col = to_device(np.asarray(block.sum(axis=0)).ravel().astype(np.float32), self.device)
            if self._matrix is None:
                self._matrix, self._col_sums = block_dev, col
            else:
                self._matrix = spmod.vstack([self._matrix, block_dev], format="csr")
                self._col_sums = self._col_sums + col
        self._angles.extend(float(a) for a in new)

    # -- operators ------------------------------------------------------------------------
    def forward(self, vol: Any) -> Any:
        """Project volumes [..., n_slices, n, n] to [..., n_tilts, n_slices, n_det]."""
        xp = self.device.xp
        if vol.ndim < 3 or vol.shape[-2:] != (self.n, self.n):
            raise GeometryError(
                f"volume shape {tuple(vol.shape)} does not end in (n_slices, {self.n}, {self.n})"
            )
        lead, ns = vol.shape[:-3], vol.shape[-3]
        cols = xp.ascontiguousarray(vol.reshape(-1, self.n * self.n).T)
        out = self.matrix @ cols  # [n_tilts*n_det, batch*ns]
        out = out.reshape(self.n_tilts, self.n_det, -1, ns)
        return xp.ascontiguousarray(xp.moveaxis(out, (0, 1), (-3, -1))).reshape(
            *lead, self.n_tilts, ns, self.n_det
        )

    def adjoint(self, proj: Any) -> Any:
        """Back-project [..., n_tilts, n_slices, n_det] to volumes [..., n_slices, n, n]."""
        xp = self.device.xp
        if proj.ndim < 3 or proj.shape[-3] != self.n_tilts or proj.shape[-1] != self.n_det:
            raise GeometryError(
                f"projection shape {tuple(proj.shape)} does not end in "
                f"({self.n_tilts}, n_slices, {self.n_det})"
            )
        lead, ns = proj.shape[:-3], proj.shape[-2]
        rows = xp.ascontiguousarray(xp.moveaxis(proj.reshape(-1, self.n_tilts, ns, self.n_det),
                                                (1, 3), (0, 1)))
        rows = rows.reshape(self.n_tilts * self.n_det, -1)  # [rows, batch*ns]
        out = self.matrix.T @ rows  # [n*n, batch*ns]
        return xp.ascontiguousarray(out.T).reshape(*lead, ns, self.n, self.n)

    # -- SIRT weights ---------------------------------------------------------------------
    def col_sums(self) -> Any:
        """A^T 1 for one slice, shape [n, n] (what each pixel receives from all rays)."""
        return self._col_sums.reshape(self.n, self.n)

    def row_sums(self) -> Any:
        """A 1 for one slice, shape [n_tilts, 1, n_det] (ray lengths inside the slice)."""
        xp = self.device.xp
        with self.device:
            ones = xp.ones((self.n * self.n, 1), dtype=xp.float32)
            return (self.matrix @ ones).reshape(self.n_tilts, 1, self.n_det)
