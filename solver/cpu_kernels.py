"""Multithreaded CPU kernels (numba, `prange`) for the projector's sparse products and TV's FGP.

Why hand-written: on the CPU the fused iteration is the projector's sparse x dense products
and the TV proximal step, and neither NumPy's ufuncs nor scipy.sparse's products use more
than one core. Measured before writing these (W @ X at 128^3, 47 tilts, 2 shared cores):
splitting scipy's product by rows over a thread pool ran no faster (0.024 s against
0.025 s); MKL's threaded sparse product through sparse-dot-mkl 0.9.10 (MKL 2026.2, a 220 MB
dependency) took 0.116 s on 1 thread against scipy's 0.118 s and 0.069 s for this module's
whole forward projection, transposes included (load 9). So the two products are numba
kernels here, fused with the layout changes around them; FGP's steps are fused into two
passes per iteration (the NumPy version makes about 25 passes over the volumes), which also
makes one thread faster than the NumPy path. Figures: bench/speed.py and docs/benchmarks.md
(issue 20).

Every kernel does the arithmetic of the NumPy/scipy path it replaces, in the same order per
output value (float32 stays float32), so results agree to float32 rounding (tests compare the
two paths, tests/test_cpu_kernels.py). The NumPy path stays: on a GPU (CuPy), where numba is
missing, and with FUSETOMO_CPU_KERNELS=numpy. The number of threads is
solver.backend.threads() (--threads, FUSETOMO_THREADS), set before every kernel call
because numba's setting belongs to the calling thread.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fusetomo.solver.backend import threads

try:  # numba is a base dependency; the NumPy path remains if it cannot be imported
    import numba
    from numba import njit, prange

    # GNU OpenMP's threads spin while they wait for work by default; on a machine whose
    # cores are busy with other processes a spinning or descheduled thread stalls every
    # parallel region: one forward + adjoint projection at 32^3 took 0.028 s on 2 threads
    # against 0.001 s on 1 (2 cores, load average 2.4); passive waiting: 0.001 s on both.
    # Set before libgomp starts (numba loads it at the first parallel call); a value the
    # user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # The slab solver's in-process ranks (solver/slabs.py, ThreadComm) call the kernels
        # from several Python threads at once: only the OpenMP and TBB layers allow that
        # (numba's own 'workqueue' layer aborts the process).
        numba.config.THREADING_LAYER = "threadsafe"
    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is installed with fusetomo
    _HAVE_NUMBA = False

_disabled_reason: str | None = None


def enabled() -> bool:
    """True when the CPU kernels are to be used for NumPy arrays: numba imports, no earlier
    call failed (e.g. no thread-safe threading layer), and FUSETOMO_CPU_KERNELS is not
    'numpy'."""
    if not _HAVE_NUMBA or _disabled_reason is not None:
        return False
    return os.environ.get("FUSETOMO_CPU_KERNELS", "numba").strip().lower() != "numpy"


def disabled_reason() -> str | None:
    """Why the kernels were switched off after a failed call (None while they run)."""
    return _disabled_reason


def _run(kernel: Any, *args: Any) -> None:
    """Call a kernel with the wanted thread count (capped at numba's NUMBA_NUM_THREADS, the
    machine's cores unless set). If numba cannot run it, raise KernelUnavailableError so
    that the caller takes the NumPy path; when no thread-safe threading layer loads, the
    kernels are switched off for the process."""
    global _disabled_reason
    try:
        numba.set_num_threads(max(1, min(threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel(*args)
    except ValueError as e:
        if "threading layer" not in str(e):
            raise
        _disabled_reason = f"{type(e).__name__}: {e}"
        raise KernelUnavailableError(_disabled_reason) from e
    except numba.core.errors.NumbaError as e:  # e.g. a type the kernels were not written for
        raise KernelUnavailableError(f"{type(e).__name__}: {e}") from e


def takes(a: Any, *, floats_only: bool = False) -> bool:
    """True when the kernels are on and `a` is a NumPy array they handle: real numbers (the
    projector casts them as scipy would), or with `floats_only` float32 and float64 (TV)."""
    if not isinstance(a, np.ndarray):
        return False
    ok = a.dtype in (np.float32, np.float64) if floats_only else a.dtype.kind in "fiub"
    return ok and enabled()


class KernelUnavailableError(RuntimeError):
    """The numba kernels cannot run here; the NumPy path is used instead."""


if _HAVE_NUMBA:
    _jit = njit(parallel=True, cache=True, nogil=True, boundscheck=False)

    # -- projector ----------------------------------------------------------------------
    @_jit
    def _transpose(a: Any, out: Any) -> None:  # pragma: no cover - compiled
        """out[c, r] = a[r, c] for a [R, C], in 32 x 32 tiles (one tile row per task)."""
        R, C = a.shape
        tile = 32
        for tr in prange((R + tile - 1) // tile):
            r0 = tr * tile
            r1 = min(r0 + tile, R)
            for c0 in range(0, C, tile):
                c1 = min(c0 + tile, C)
                for c in range(c0, c1):
                    for r in range(r0, r1):
                        out[c, r] = a[r, c]

    @_jit
    def _gather_rows(proj: Any, out: Any) -> None:  # pragma: no cover - compiled
        """proj [B, T, S, D] -> out [T * D, B * S]: out[t*D + d, b*S + s] = proj[b, t, s, d]
        (the adjoint's right-hand side, one dense column per slice)."""
        B, T, S, D = proj.shape
        for bt in prange(B * T):
            b = bt // T
            t = bt - b * T
            for s in range(S):
                col = b * S + s
                for d in range(D):
                    out[t * D + d, col] = proj[b, t, s, d]

    @_jit
    def _spmm_scatter(indptr: Any, indices: Any, data: Any, X: Any, out: Any,
                      row_off: Any, col_off: Any) -> None:  # pragma: no cover - compiled
        """out.flat[row_off[r] + col_off[c]] = sum_k data[k] X[indices[k], c] over the
        nonzeros k of CSR row r: the product A @ X (scipy's csr_matvecs, same order of the
        sums), written straight into the caller's layout. One task per block of rows."""
        R = indptr.size - 1
        M = X.shape[1]
        block = 16
        for rb in prange((R + block - 1) // block):
            acc = np.zeros(M, dtype=out.dtype)
            for r in range(rb * block, min(rb * block + block, R)):
                acc[:] = 0
                for k in range(indptr[r], indptr[r + 1]):
                    w = data[k]
                    j = indices[k]
                    for c in range(M):
                        acc[c] += w * X[j, c]
                base = row_off[r]
                for c in range(M):
                    out[base + col_off[c]] = acc[c]

    # -- TV (FGP) -------------------------------------------------------------------------
    @_jit
    def _fgp_primal(q: Any, b: Any, w: Any, nonnegative: bool, zero: Any,
                    x: Any) -> None:  # pragma: no cover - compiled
        """x = max(b + w * div q, 0), div as tv.divergence (same order of the sums)."""
        M, S, U, V = b.shape
        for ms in prange(M * S):
            m = ms // S
            s = ms - m * S
            wm = w[m]
            for u in range(U):
                for v in range(V):
                    d = zero
                    if S > 1:
                        if s < S - 1:
                            d += q[0, m, s, u, v]
                        if s > 0:
                            d -= q[0, m, s - 1, u, v]
                    if U > 1:
                        if u < U - 1:
                            d += q[1, m, s, u, v]
                        if u > 0:
                            d -= q[1, m, s, u - 1, v]
                    if V > 1:
                        if v < V - 1:
                            d += q[2, m, s, u, v]
                        if v > 0:
                            d -= q[2, m, s, u, v - 1]
                    val = d * wm + b[m, s, u, v]
                    if nonnegative and val < 0:  # np.maximum(val, 0): NaN stays NaN
                        val = zero
                    x[m, s, u, v] = val

    @_jit
    def _fgp_dual(x: Any, step: Any, coef: Any, zero: Any, one: Any, p: Any,
                  r: Any) -> None:  # pragma: no cover - compiled
        """p_new = proj_{|.|<=1}(r + step * grad x); r = p_new + coef (p_new - p); p = p_new,
        in place (the NumPy path's separate p_new buffer is not needed: each voxel's old p is
        read before it is overwritten). grad as tv.gradient (zero at the far boundary)."""
        M, S, U, V = x.shape
        for ms in prange(M * S):
            m = ms // S
            s = ms - m * S
            st = step[m]
            for u in range(U):
                for v in range(V):
                    xc = x[m, s, u, v]
                    g0 = x[m, s + 1, u, v] - xc if s < S - 1 else zero
                    g1 = x[m, s, u + 1, v] - xc if u < U - 1 else zero
                    g2 = x[m, s, u, v + 1] - xc if v < V - 1 else zero
                    a0 = g0 * st + r[0, m, s, u, v]
                    a1 = g1 * st + r[1, m, s, u, v]
                    a2 = g2 * st + r[2, m, s, u, v]
                    nrm = a0 * a0
                    nrm += a1 * a1
                    nrm += a2 * a2
                    nrm = np.sqrt(nrm)
                    if nrm < one:  # np.maximum(nrm, 1): NaN stays NaN
                        nrm = one
                    a0 /= nrm
                    a1 /= nrm
                    a2 /= nrm
                    r[0, m, s, u, v] = (a0 - p[0, m, s, u, v]) * coef + a0
                    r[1, m, s, u, v] = (a1 - p[1, m, s, u, v]) * coef + a1
                    r[2, m, s, u, v] = (a2 - p[2, m, s, u, v]) * coef + a2
                    p[0, m, s, u, v] = a0
                    p[1, m, s, u, v] = a1
                    p[2, m, s, u, v] = a2

    @_jit
    def _tv_partial(x: Any, zero: Any, out: Any) -> None:  # pragma: no cover - compiled
        """out[m, s] = sum over (u, v) of |grad x| at slice s of volume m (float64 sums)."""
        M, S, U, V = x.shape
        for ms in prange(M * S):
            m = ms // S
            s = ms - m * S
            acc = 0.0
            for u in range(U):
                for v in range(V):
                    xc = x[m, s, u, v]
                    g0 = x[m, s + 1, u, v] - xc if s < S - 1 else zero
                    g1 = x[m, s, u + 1, v] - xc if u < U - 1 else zero
                    g2 = x[m, s, u, v + 1] - xc if v < V - 1 else zero
                    acc += np.sqrt(g0 * g0 + g1 * g1 + g2 * g2)
            out[m, s] = acc


# -- projector entry points -------------------------------------------------------------------
def _float(a: np.ndarray) -> np.ndarray:
    """float32 or float64, as scipy's product with the float32 matrix would give."""
    dt = np.result_type(a.dtype, np.float32)
    return a if a.dtype == dt else a.astype(dt)


def forward(matrix: Any, vol: np.ndarray, n_tilts: int, n_det: int) -> np.ndarray:
    """What ParallelProjector.forward computes before the row shifts: volumes [..., S, n, n]
    to [..., n_tilts, S, n_det] with `matrix` [n_tilts * n_det, n * n] (scipy CSR)."""
    vol = _float(vol)
    lead, S = vol.shape[:-3], vol.shape[-3]
    npix = vol.shape[-1] * vol.shape[-2]
    flat = np.ascontiguousarray(vol).reshape(-1, npix)  # [B * S, n * n]
    B = flat.shape[0] // S
    cols = np.empty((npix, flat.shape[0]), dtype=flat.dtype)
    _run(_transpose, flat, cols)
    dtype = np.result_type(matrix.dtype, flat.dtype)
    out = np.empty((B, n_tilts, S, n_det), dtype=dtype)
    # row r = t * n_det + d goes to out[b, t, s, d]; column c = b * S + s
    r = np.arange(n_tilts * n_det, dtype=np.int64)
    row_off = (r // n_det) * (S * n_det) + (r % n_det)
    c = np.arange(B * S, dtype=np.int64)
    col_off = (c // S) * (n_tilts * S * n_det) + (c % S) * n_det
    _run(_spmm_scatter, matrix.indptr, matrix.indices, matrix.data.astype(dtype, copy=False),
         cols if cols.dtype == dtype else cols.astype(dtype), out.reshape(-1), row_off,
         col_off)
    return out.reshape(*lead, n_tilts, S, n_det)


def adjoint(matrix_t: Any, proj: np.ndarray, n: int) -> np.ndarray:
    """What ParallelProjector.adjoint computes after the row shifts: [..., T, S, D] to
    volumes [..., S, n, n], with `matrix_t` the transpose [n * n, T * D] as scipy CSR."""
    proj = _float(proj)
    lead, T, S, D = proj.shape[:-3], proj.shape[-3], proj.shape[-2], proj.shape[-1]
    p4 = np.ascontiguousarray(proj).reshape(-1, T, S, D)
    B = p4.shape[0]
    rows = np.empty((T * D, B * S), dtype=p4.dtype)
    _run(_gather_rows, p4, rows)
    dtype = np.result_type(matrix_t.dtype, p4.dtype)
    out = np.empty((B * S, n * n), dtype=dtype)
    row_off = np.arange(n * n, dtype=np.int64)  # pixel j of column c = b * S + s
    col_off = np.arange(B * S, dtype=np.int64) * (n * n)
    _run(_spmm_scatter, matrix_t.indptr, matrix_t.indices,
         matrix_t.data.astype(dtype, copy=False),
         rows if rows.dtype == dtype else rows.astype(dtype), out.reshape(-1), row_off,
         col_off)
    return out.reshape(*lead, S, n, n)


# -- TV entry points --------------------------------------------------------------------------
def _per_volume(w: Any, b: np.ndarray) -> np.ndarray:
    """A weight that broadcasts against b [..., S, U, V] as one value per volume [M]."""
    lead = b.shape[:-3]
    wa = np.asarray(w, dtype=b.dtype)
    wa = wa.reshape(wa.shape[:-3]) if wa.ndim >= 3 else wa.reshape(())
    return np.ascontiguousarray(np.broadcast_to(wa, lead)).reshape(-1)


def fgp(b: np.ndarray, w: Any, step: Any, *, iterations: int, nonnegative: bool,
        halo: Any = None) -> np.ndarray:
    """tv.fgp on NumPy arrays: the same iterations, two fused passes each. The Halo hooks
    see arrays of the caller's shape (views of the work arrays)."""
    shape = b.shape
    b4 = np.ascontiguousarray(b).reshape(-1, *shape[-3:])
    dt = b4.dtype
    zero, one = dt.type(0), dt.type(1)
    w1, s1 = _per_volume(w, b), _per_volume(step, b)
    p = np.zeros((3, *shape), dtype=dt)  # caller's shape; the kernels take 5D views
    r = np.zeros_like(p)
    x = np.empty(shape, dtype=dt)

    def k5(a: np.ndarray) -> np.ndarray:
        return a.reshape(3, *b4.shape)

    x4 = x.reshape(b4.shape)
    t = 1.0
    for _ in range(iterations):
        if halo is not None:
            halo.dual(r)
        _run(_fgp_primal, k5(r), b4, w1, nonnegative, zero, x4)
        if halo is not None:
            halo.primal(x)
        t_new = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        _run(_fgp_dual, x4, s1, dt.type((t - 1.0) / t_new), zero, one, k5(p), k5(r))
        t = t_new
    if halo is not None:
        halo.dual(p)
    out = np.empty_like(b4)
    _run(_fgp_primal, k5(p), b4, w1, nonnegative, zero, out)
    return out.reshape(shape)


def tv_value(x: np.ndarray) -> np.ndarray:
    """tv.tv_value on NumPy arrays (sums in float64, returned in x's dtype)."""
    shape = x.shape
    x4 = np.ascontiguousarray(_float(x)).reshape(-1, *shape[-3:])
    part = np.empty((x4.shape[0], x4.shape[1]), dtype=np.float64)
    _run(_tv_partial, x4, x4.dtype.type(0), part)
    return part.sum(axis=1).astype(x4.dtype).reshape(shape[:-3])
