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

The matrices are scipy.sparse (CPU) or cupyx.scipy.sparse (GPU) CSR matrices. On the CPU
the products run in the multithreaded numba kernels of solver/cpu_kernels.py (scipy's are
single-threaded), which also keep the transpose as a CSR matrix for the adjoint, built on
first use after the tilts change; with FUSETOMO_CPU_KERNELS=numpy, scipy does them. Building the
weights is ours because no well-kept library offers this exact geometry as a sparse matrix
that we can grow tilt by tilt (ASTRA's matrices need its own build and a GPU for speed).
Appending tilts computes weights for the new angles only and stacks them under the rest.

Detector shifts (alignment in the model, not in the data): a tilt may carry a shift (ds, dd)
in pixels, meaning that the measured image is the projection moved by ds along s and dd along
d. dd enters the weights (each pixel centre lands at d + dd), so it is as exact as the
unshifted geometry. ds moves whole rows: row s of the measurement sees the projection at
s - ds, split linearly between the two nearest rows -- the area overlap of a voxel row with a
detector row displaced by a fraction of a pixel, so again the pixel model, not a resampling
of the data. Shifting the model instead of interpolating the measured images keeps the data
as measured: resampling the HAADF images by a spline cost 6-10 % of the fused <NRMSE>
at 64^3, the model route 1-7 % (bench/alignment_resampling.py, docs/alignment.md). The
column and row sums used as SIRT preconditioners ignore ds (it only moves weight between rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sigpy as sp

from fusetomo.core.errors import FusetomoError
from fusetomo.solver import cpu_kernels
from fusetomo.solver.backend import sparse_module, to_device


class GeometryError(FusetomoError, ValueError):
    """A volume or projection stack whose shape does not fit the projector."""


def tilt_weights(n: int, angle_deg: float, n_det: int | None = None,
                 offset: float = 0.0) -> Any:
    """Sparse CSR matrix [n_det, n*n] (scipy) projecting one slice at one angle onto a
    detector moved by `offset` pixels along d."""
    n_det = n if n_det is None else n_det
    t = np.deg2rad(float(angle_deg))
    c = (n - 1) / 2.0
    cd = (n_det - 1) / 2.0
    u = np.arange(n, dtype=np.float64) - c
    # Round cos/sin so that 0 and 90 degrees land exactly on bins.
    cos_t, sin_t = np.round(np.cos(t), 15), np.round(np.sin(t), 15)
    d = (u[:, None] * cos_t + u[None, :] * sin_t).ravel() + cd + float(offset)
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


def _column_sums(matrix: Any, device: sp.Device) -> Any:
    """Column sums of a sparse matrix as a flat float32 array on `device`."""
    xp = device.xp
    with device:
        return xp.asarray(matrix.sum(axis=0), dtype=xp.float32).ravel()


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
        self._shifts: list[tuple[float, float]] = []
        # (floor, fraction) of -ds per tilt on the device, and the padding they need
        self._row_shift: tuple[Any, Any, int] | None = None
        self._matrix: Any = None
        self._pending: list[Any] = []  # blocks of new tilts, stacked when the matrix is used
        self._matrix_t: tuple[Any, Any] | None = None  # (matrix, its transpose as CSR)
        self._col_sums: Any = None
        self._squared: ParallelProjector | None = None
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
        if self._pending:
            # Tilts added one at a time are stacked once, when the matrix is used: a
            # stack per tilt would copy the whole matrix each time (solver/growing.py).
            with self.device:
                self._matrix = sparse_module(self.device).vstack(
                    [self._matrix, *self._pending], format="csr")
            self._pending = []
        return self._matrix

    @property
    def shifts(self) -> np.ndarray:
        """Per-tilt detector shifts (ds, dd) in pixels, [n_tilts, 2]."""
        return np.asarray(self._shifts, dtype=np.float64).reshape(-1, 2)

    def extend(self, angles_deg: Sequence[float] | float,
               shifts: Any | None = None) -> None:
        """Append tilts, optionally with their detector shifts [k, 2] (ds, dd) in pixels.
        Only the new angles' weights are computed."""
        new = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
        if new.size == 0:
            return
        if not np.all(np.isfinite(new)):
            raise GeometryError(f"tilt angles must be finite, got {new.tolist()}")
        sh = self.check_shifts(shifts, new.size)
        block, col = self._weights_block(new, sh)
        with self.device:
            if self._matrix is None:
                self._matrix, self._col_sums = block, col
            else:
                self._pending.append(block)
                self._col_sums = self._col_sums + col
        self._angles.extend(float(a) for a in new)
        self._shifts.extend((float(a), float(b)) for a, b in sh)
        self._update_row_shift()
        self._squared = None

    def set_shifts(self, shifts: Any) -> None:
        """Replace every tilt's detector shifts [n_tilts, 2] (the weights are rebuilt)."""
        sh = self.check_shifts(shifts, self.n_tilts)
        if self.n_tilts == 0:
            return
        self._matrix, self._col_sums = self._weights_block(self.angles, sh)
        self._pending = []
        self._shifts = [(float(a), float(b)) for a, b in sh]
        self._update_row_shift()
        self._squared = None

    def check_shifts(self, shifts: Any | None, k: int) -> np.ndarray:
        """`shifts` as a float [k, 2] array (zeros for None); GeometryError naming the shape
        or the non-finite values otherwise."""
        if shifts is None:
            return np.zeros((k, 2))
        sh = np.asarray(shifts, dtype=np.float64)
        if sh.shape != (k, 2):
            raise GeometryError(f"shifts: shape {sh.shape} != ({k}, 2) for {k} tilts")
        if not np.all(np.isfinite(sh)):
            raise GeometryError(f"shifts must be finite, got {sh.tolist()}")
        return sh

    def _weights_block(self, angles: np.ndarray, shifts: np.ndarray) -> tuple[Any, Any]:
        import scipy.sparse

        block = scipy.sparse.vstack(
            [tilt_weights(self.n, a, self.n_det, dd) for a, (_, dd) in zip(angles, shifts,
                                                                            strict=True)],
            format="csr",
        )
        spmod = sparse_module(self.device)
        with self.device:
            block_dev = block if self.device == sp.cpu_device else spmod.csr_matrix(block)
            col = to_device(np.asarray(block.sum(axis=0)).ravel().astype(np.float32), self.device)
        return block_dev, col

    def _update_row_shift(self) -> None:
        ds = self.shifts[:, 0]
        if not np.any(ds):
            self._row_shift = None
            return
        q = -ds  # row s of the measurement sees the projection at s + q
        lo = np.floor(q)
        with self.device:
            self._row_shift = (to_device(lo.astype(np.int64), self.device),
                               to_device((q - lo).astype(np.float32), self.device),
                               int(np.max(np.abs(lo))) + 2)

    def _move_rows(self, p: Any, adjoint: bool) -> Any:
        """The ds part of the model on [..., n_tilts, n_slices, n_det]: forward, out[s] =
        (1-w) p[s+lo] + w p[s+lo+1]; adjoint, out[s] = (1-w) p[s-lo] + w p[s-lo-1]; zero
        beyond the edges. Both are gathers (no scatter), so they run alike on CuPy."""
        if self._row_shift is None:
            return p
        xp = self.device.xp
        lo, w, pad = self._row_shift
        ns = p.shape[-2]
        with self.device:
            padded = xp.pad(p, [(0, 0)] * (p.ndim - 2) + [(pad, pad), (0, 0)])
            s = xp.arange(ns)[None, :] + pad
            t = xp.arange(p.shape[-3])[:, None]
            step = -1 if adjoint else 1
            i0 = s + step * lo[:, None]
            w1 = w[:, None, None]
            return ((1 - w1) * padded[..., t, i0, :] + w1 * padded[..., t, i0 + step, :]
                    ).astype(p.dtype)

    # -- operators ------------------------------------------------------------------------
    def forward(self, vol: Any) -> Any:
        """Project volumes [..., n_slices, n, n] to [..., n_tilts, n_slices, n_det]."""
        xp = self.device.xp
        if vol.ndim < 3 or vol.shape[-2:] != (self.n, self.n):
            raise GeometryError(
                f"volume shape {tuple(vol.shape)} does not end in (n_slices, {self.n}, {self.n})"
            )
        if self._use_kernels(vol):
            try:
                out = cpu_kernels.forward(self.matrix, vol, self.n_tilts, self.n_det)
                return self._move_rows(out, adjoint=False)
            except cpu_kernels.KernelUnavailableError:
                pass  # scipy below
        lead, ns = vol.shape[:-3], vol.shape[-3]
        cols = xp.ascontiguousarray(vol.reshape(-1, self.n * self.n).T)
        out = self.matrix @ cols  # [n_tilts*n_det, batch*ns]
        out = out.reshape(self.n_tilts, self.n_det, -1, ns)
        out = xp.ascontiguousarray(xp.moveaxis(out, (0, 1), (-3, -1))).reshape(
            *lead, self.n_tilts, ns, self.n_det
        )
        return self._move_rows(out, adjoint=False)

    def adjoint(self, proj: Any) -> Any:
        """Back-project [..., n_tilts, n_slices, n_det] to volumes [..., n_slices, n, n]."""
        xp = self.device.xp
        if proj.ndim < 3 or proj.shape[-3] != self.n_tilts or proj.shape[-1] != self.n_det:
            raise GeometryError(
                f"projection shape {tuple(proj.shape)} does not end in "
                f"({self.n_tilts}, n_slices, {self.n_det})"
            )
        lead, ns = proj.shape[:-3], proj.shape[-2]
        proj = self._move_rows(proj, adjoint=True)
        if self._use_kernels(proj):
            try:
                return cpu_kernels.adjoint(self._transpose(), proj, self.n)
            except cpu_kernels.KernelUnavailableError:
                pass  # scipy below
        rows = xp.ascontiguousarray(xp.moveaxis(proj.reshape(-1, self.n_tilts, ns, self.n_det),
                                                (1, 3), (0, 1)))
        rows = rows.reshape(self.n_tilts * self.n_det, -1)  # [rows, batch*ns]
        out = self.matrix.T @ rows  # [n*n, batch*ns]
        return xp.ascontiguousarray(out.T).reshape(*lead, ns, self.n, self.n)

    def _use_kernels(self, a: Any) -> bool:
        return self.device == sp.cpu_device and cpu_kernels.takes(a)

    def _transpose(self) -> Any:
        """The matrix's transpose as a CSR matrix (the adjoint kernel's rows are pixels),
        rebuilt when the matrix changed."""
        A = self.matrix
        if self._matrix_t is None or self._matrix_t[0] is not A:
            self._matrix_t = (A, A.T.tocsr())
        return self._matrix_t[1]

    def squared(self) -> ParallelProjector:
        """The projector with the elementwise squares of this one's weights, (A o A), at the
        same tilts (what diag(A^T W A) = (A o A)^T w and the ray variances of the
        uncertainty and design code need); built once per set of tilts and shifts. The
        sub-pixel row move (ds) is applied linearly, as in `forward`: exact for whole-pixel
        moves, an approximation of the squares between them."""
        if self._squared is None:
            sq = ParallelProjector(self.n, n_det=self.n_det, device=self.device)
            sq._angles, sq._shifts = list(self._angles), list(self._shifts)
            sq._row_shift = self._row_shift
            with self.device:
                A = self.matrix
                sq._matrix = A.multiply(A).tocsr()
                sq._col_sums = _column_sums(sq._matrix, self.device)
            self._squared = sq
        return self._squared

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
