"""The fused solver split in slabs along the tilt axis, one slab per MPI rank (GPU).

The projector acts slice by slice (the tilt axis is the volume's first axis, s), so each
rank holds the slices [a, b) of every element volume and the matching rows of every
projection, and runs the projector on them alone. What couples the slabs:

- global reductions, made by `Comm.allreduce` on a handful of host numbers: the ML-EM
  start level (total counts), the TV scale (each element's 99.9th percentile after the
  initialisation: an exact distributed percentile, each rank contributing its largest
  values), the HAADF intensity scale refit (two dot products), the damping of the
  HAADF split (a maximum) and the three cost terms of the history;
- the TV proximal step (FGP), whose finite differences along s cross slab borders: a
  one-slice halo is exchanged twice in every inner FGP iteration (the left neighbour's
  last slice of the dual variable's s-component before the divergence, the right
  neighbour's first slice of the primal before the gradient), once more for the final
  primal step and once for the TV value of the history. With these halos every voxel sees
  the same numbers as in the single-device solver: the prox is bit-identical, and the
  whole solver differs only by the summation order of the reductions.

Engine: mpi4py (`MPIComm`) with buffer-based collectives (nothing is pickled), halos either
staged through host memory (`transport="host"`, the default) or sent GPU to GPU with NCCL
(`transport="nccl"`, CuPy's `cupy.cuda.nccl`). Why MPI and not Dask: this is a
bulk-synchronous loop with 2K + 2 neighbour exchanges (12 at the default K = 5 FGP
iterations) and 3 small all-reduces per iteration,
each waited on by every rank; MPI does each in microseconds, a Dask task graph would add
a scheduler round trip (milliseconds) to each. Dask serves the sweep, whose tasks are
independent (docs/scaling.md). `ThreadComm` runs the same ranks as threads of one process
(tests, and a single node without MPI).

Composition over the single-device solver: each rank holds an `_SlabSolver`, a FusedSolver
on its slab whose private fields (read by solver/uncertainty.py) keep their meaning; it
overrides only the three methods that contain global reductions or the TV prox
(`initialize`, `_haadf_update`, `step`), which repeat FusedSolver's code with the
reductions and the halo-exchanging prox injected. The hook that would remove this copy is
described in docs/scaling.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol

import numpy as np
import sigpy as sp

from fusetomo.core.errors import FusetomoError
from fusetomo.core.mpi import start_mpi
from fusetomo.solver import nuisance as nz
from fusetomo.solver.backend import DeviceChoice, array_module, resolve_device, to_numpy
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.tv import Halo, fgp, gradient

Op = Literal["sum", "max"]


class SlabError(FusetomoError, ValueError):
    """A decomposition that cannot work (more ranks than slices, mismatched ranks)."""


# -- communicators -----------------------------------------------------------------------------
class Comm(Protocol):
    """What the slab solver needs from its ranks."""

    rank: int
    size: int

    def allreduce(self, values: np.ndarray, op: Op = "sum") -> np.ndarray:
        """Element-wise sum or max over ranks of a small float64 host array."""

    def exchange(self, to_left: Any | None, to_right: Any | None) -> tuple[Any, Any]:
        """Send `to_left` to rank-1 and `to_right` to rank+1 (arrays on the solver's
        device); return (from_left, from_right), None at the ends or where the
        neighbours sent None. Every rank passes None in the same places."""

    def allgatherv(self, values: np.ndarray) -> np.ndarray:
        """Concatenation over ranks of 1D float32 host arrays of any lengths."""

    def gatherv(self, values: np.ndarray, root: int = 0) -> np.ndarray | None:
        """Concatenation over ranks (in rank order) on `root`, None elsewhere."""


def slab_bounds(n_slices: int, size: int) -> list[tuple[int, int]]:
    """Contiguous slabs [a, b) of nearly equal thickness (the first ones one thicker)."""
    if size < 1 or n_slices < size:
        raise SlabError(f"cannot split {n_slices} slices among {size} ranks (need at least "
                        "one slice per rank)")
    q, r = divmod(n_slices, size)
    edges = np.cumsum([0] + [q + (i < r) for i in range(size)])
    return [(int(edges[i]), int(edges[i + 1])) for i in range(size)]


class _ThreadHub:
    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots: list[Any] = [None] * size


class ThreadComm:
    """Ranks as threads of one process (each thread owns one rank's solver)."""

    def __init__(self, hub: _ThreadHub, rank: int) -> None:
        self._hub, self.rank, self.size = hub, rank, hub.size

    @staticmethod
    def group(size: int) -> list[ThreadComm]:
        hub = _ThreadHub(size)
        return [ThreadComm(hub, r) for r in range(size)]

    def _allgather(self, obj: Any) -> list[Any]:
        hub = self._hub
        hub.slots[self.rank] = obj
        hub.barrier.wait()
        out = list(hub.slots)
        hub.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out

    def allreduce(self, values: np.ndarray, op: Op = "sum") -> np.ndarray:
        parts = np.stack([np.asarray(v, np.float64) for v in
                          self._allgather(np.asarray(values, np.float64))])
        return parts.sum(axis=0) if op == "sum" else parts.max(axis=0)

    def exchange(self, to_left: Any | None, to_right: Any | None) -> tuple[Any, Any]:
        slots = self._allgather(tuple(None if a is None else a.copy()
                                      for a in (to_left, to_right)))
        left = slots[self.rank - 1][1] if self.rank > 0 else None
        right = slots[self.rank + 1][0] if self.rank < self.size - 1 else None
        return left, right

    def allgatherv(self, values: np.ndarray) -> np.ndarray:
        return np.concatenate(self._allgather(np.asarray(values, np.float32).ravel()))

    def gatherv(self, values: np.ndarray, root: int = 0) -> np.ndarray | None:
        parts = self._allgather(np.ascontiguousarray(values))
        return np.concatenate(parts) if self.rank == root else None


class MPIComm:
    """mpi4py communicator; uppercase (buffer) calls only, so nothing is pickled.

    transport "host" stages halos through host memory (works with any MPI and device);
    "nccl" sends CuPy arrays GPU to GPU with NCCL (one NCCL communicator, set up from a
    unique id broadcast over MPI)."""

    def __init__(self, comm: Any = None, transport: Literal["host", "nccl"] = "host") -> None:
        MPI = start_mpi()  # MPI starts here, not when sigpy is imported (core/mpi.py)
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = int(self.comm.Get_rank()), int(self.comm.Get_size())
        if transport not in ("host", "nccl"):
            raise ValueError(f"transport must be 'host' or 'nccl', got {transport!r}")
        self.transport = transport
        self._nccl: Any = None
        if transport == "nccl":
            from cupy.cuda import nccl

            uid = np.zeros(128, dtype=np.int64)
            if self.rank == 0:
                uid[:] = nccl.get_unique_id()
            self.comm.Bcast(uid, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid),
                                               self.rank)

    def allreduce(self, values: np.ndarray, op: Op = "sum") -> np.ndarray:
        send = np.ascontiguousarray(values, dtype=np.float64)
        recv = np.empty_like(send)
        self.comm.Allreduce(send, recv, op=self._MPI.SUM if op == "sum" else self._MPI.MAX)
        return recv

    def _neighbours(self) -> tuple[int, int]:
        null = self._MPI.PROC_NULL
        return (self.rank - 1 if self.rank > 0 else null,
                self.rank + 1 if self.rank < self.size - 1 else null)

    def exchange(self, to_left: Any | None, to_right: Any | None) -> tuple[Any, Any]:
        sample = to_left if to_left is not None else to_right
        if self._nccl is not None and sample is not None and not isinstance(sample, np.ndarray):
            return self._exchange_nccl(to_left, to_right)
        left, right = self._neighbours()
        out: list[Any] = [None, None]
        # Rightward first (what we send right arrives as our right neighbour's from_left),
        # then leftward; PROC_NULL makes the ends no-ops.
        for k, (send, dest, src) in enumerate(((to_right, right, left),
                                               (to_left, left, right))):
            if send is None:
                continue
            host = np.ascontiguousarray(to_numpy(send))
            recv = np.empty_like(host)
            self.comm.Sendrecv(host, dest=dest, sendtag=k, recvbuf=recv, source=src,
                               recvtag=k)
            has = src != self._MPI.PROC_NULL
            out[k] = (sp.to_device(recv, sp.get_device(send)) if has else None)
        return out[0], out[1]

    def _exchange_nccl(self, to_left: Any | None, to_right: Any | None) -> tuple[Any, Any]:
        import cupy
        from cupy.cuda import nccl

        left, right = self.rank - 1, self.rank + 1
        stream = cupy.cuda.get_current_stream().ptr
        out: list[Any] = [None, None]
        nccl.groupStart()
        for k, (send, dest, src) in enumerate(((to_right, right, left),
                                               (to_left, left, right))):
            if send is None:
                continue
            send = cupy.ascontiguousarray(send, dtype=cupy.float32)
            if 0 <= dest < self.size:
                self._nccl.send(send.data.ptr, send.size, nccl.NCCL_FLOAT32, dest, stream)
            if 0 <= src < self.size:
                out[k] = cupy.empty_like(send)
                self._nccl.recv(out[k].data.ptr, send.size, nccl.NCCL_FLOAT32, src, stream)
        nccl.groupEnd()
        return out[0], out[1]

    def _counts(self, n: int) -> np.ndarray:
        counts = np.zeros(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([n], dtype=np.int64), counts)
        return counts

    def allgatherv(self, values: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(values, dtype=np.float32).ravel()
        counts = self._counts(v.size)
        out = np.empty(int(counts.sum()), dtype=np.float32)
        self.comm.Allgatherv(v, [out, counts, self._MPI.FLOAT])
        return out

    def gatherv(self, values: np.ndarray, root: int = 0) -> np.ndarray | None:
        v = np.ascontiguousarray(values, dtype=np.float32)
        flat = v.ravel()
        counts = self._counts(flat.size)
        if self.rank != root:
            self.comm.Gatherv(flat, None, root=root)
            return None
        out = np.empty(int(counts.sum()), dtype=np.float32)
        self.comm.Gatherv(flat, [out, counts, self._MPI.FLOAT], root=root)
        return out.reshape(-1, *v.shape[1:])


def mpi_comm(transport: Literal["host", "nccl"] = "host") -> MPIComm:
    """COMM_WORLD, with a clear message when mpi4py is missing."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise SlabError("the slab solver across processes needs mpi4py and an MPI library: "
                        "pip install mpi4py mpich (or your cluster's MPI)") from None
    return MPIComm(transport=transport)


def rank_device(comm: Any, choice: DeviceChoice | str = "auto") -> sp.Device:
    """The device of this rank: the CPU, or GPU (node-local rank mod GPUs per node)."""
    dev = resolve_device(choice)
    if dev == sp.cpu_device:
        return dev
    import cupy

    local = comm.rank
    if isinstance(comm, MPIComm):
        local = comm.comm.Split_type(comm._MPI.COMM_TYPE_SHARED).Get_rank()
    return sp.Device(int(local) % int(cupy.cuda.runtime.getDeviceCount()))


# -- distributed pieces ---------------------------------------------------------------------
def global_percentile(comm: Comm, values: np.ndarray, q: float) -> float:
    """np.percentile(concatenation over ranks of `values`, q) ('linear' method), exact,
    without gathering everything: the two order statistics it needs are among the
    N - k largest values (k = floor((N - 1) q / 100)), so each rank sends at most that many
    of its largest values."""
    v = np.asarray(values, dtype=np.float32).ravel()
    n = int(comm.allreduce(np.array([v.size], dtype=np.float64))[0])
    if n == 0:
        raise ValueError("percentile of an empty set")
    g = (n - 1) * (q / 100.0)
    k = int(np.floor(g))
    m = n - k  # we need the ascending order statistics k and k+1: the m largest values
    top = np.partition(v, v.size - m)[v.size - m:] if v.size > m else v
    allv = np.sort(comm.allgatherv(top))
    lo = allv[allv.size - m]
    hi = allv[allv.size - m + 1] if m > 1 else lo
    t = g - k
    return float(np.percentile(np.array([lo, hi], dtype=np.float32), 100.0 * t))


def _along_s(x: Any, i: int | slice) -> Any:
    return x[..., i, :, :]


def prox_tv_slab(
    b: Any,
    weight: Any,
    comm: Comm,
    *,
    iterations: int = 5,
    nonnegative: bool = True,
) -> Any:
    """tv.prox_tv (FGP, 'slices' back end) of the global volume, on this rank's slab
    [..., L, U, V]: tv.fgp on arrays with one ghost slice on each side along s, filled from
    the neighbours before every divergence (left ghost of the dual's s-component) and every
    gradient (right ghost of the primal), so the arithmetic per voxel is identical."""
    xp = array_module(b)
    w = xp.asarray(weight, dtype=b.dtype).reshape(*xp.shape(weight), *([1] * 3))
    if xp.all(w <= 0) or iterations <= 0:
        return xp.maximum(b, 0) if nonnegative else b.copy()
    first, last = comm.rank == 0, comm.rank == comm.size - 1
    L = b.shape[-3]
    ext = (*b.shape[:-3], L + 2, *b.shape[-2:])  # [..., left ghost, L slices, right ghost]
    bx = xp.zeros(ext, dtype=b.dtype)
    _along_s(bx, slice(1, L + 1))[...] = b

    def fill_left_ghost(q: Any) -> None:
        # Globally the divergence at the first slice has no q_s term from slice -1.
        from_left, _ = comm.exchange(None, _along_s(q[0], L))
        _along_s(q[0], 0)[...] = 0 if first else from_left

    def fill_right_ghost(v: Any) -> None:
        # Globally the gradient along s is zero at the last slice: a copy of it.
        _, from_right = comm.exchange(_along_s(v, 1), None)
        _along_s(v, L + 1)[...] = _along_s(v, L) if last else from_right

    x = fgp(bx, w, iterations=iterations, nonnegative=nonnegative,
            halo=Halo(dual=fill_left_ghost, primal=fill_right_ghost))
    return _along_s(x, slice(1, L + 1)).copy()


def tv_value_slab(x: Any, comm: Comm) -> np.ndarray:
    """This slab's share of tv.tv_value of the global volume (one value per leading
    index): the differences across the right border use the neighbour's first slice."""
    xp = array_module(x)
    L = x.shape[-3]
    _, from_right = comm.exchange(_along_s(x, 0), None)
    ext = xp.concatenate([x, _along_s(x, slice(L - 1, L)) if from_right is None
                          else from_right[..., None, :, :]], axis=-3)
    g = gradient(ext)
    mag = xp.sqrt(xp.sum(g * g, axis=0))[..., :L, :, :]
    return to_numpy(mag.reshape(*x.shape[:-3], -1).sum(axis=-1)).astype(np.float64)


# -- the slab solver ----------------------------------------------------------------------------
class _SlabSolver(FusedSolver):
    """FusedSolver on one slab: its reduction and prox hooks made global over the ranks
    (the iteration itself is FusedSolver's, unchanged)."""

    def __init__(self, *args: Any, comm: Comm, n_slices_total: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.comm = comm
        self._total_slices = int(n_slices_total)

    @property
    def n_slices_total(self) -> int:
        return self._total_slices

    @property
    def _n_slices_total(self) -> int:
        return self._total_slices

    def _allreduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        return np.asarray(self.comm.allreduce(np.asarray(values, dtype=np.float64), op))

    def _tv_scale(self, xn: np.ndarray) -> np.ndarray:
        scale = []
        for v in xn:
            pos = v[v > 0]
            has = self.comm.allreduce(np.array([pos.size], dtype=np.float64))[0] > 0
            scale.append(global_percentile(self.comm, pos, 99.9) if has else 1.0)
        return np.asarray(scale)

    def _prox(self, x: Any, weights: Any) -> Any:
        return prox_tv_slab(x, weights, self.comm, iterations=self.params.tv_iterations)

    def _tv_terms(self, x: Any) -> np.ndarray:
        return tv_value_slab(x, self.comm)


class SlabFusedSolver:
    """The fused solver on this rank's slab of a volume split along the tilt axis.

    Every rank constructs it with the full geometry and passes full projections; each
    keeps its own rows. Call the same methods on every rank (they communicate).

    >>> comm = mpi_comm()                                  # under mpiexec -n 4
    >>> s = SlabFusedSolver(n, n_slices, els, Z, comm=comm, device=rank_device(comm))
    >>> s.add_haadf(angles, haadf); s.add_chem(angles_c, maps); s.run(60)
    >>> vols = s.gather_volumes(root=0)                   # full volumes on rank 0
    """

    def __init__(
        self,
        n: int,
        n_slices: int,
        elements: Sequence[str],
        Z: Sequence[float],
        params: FusionParams | None = None,
        *,
        comm: Comm,
        device: DeviceChoice | sp.Device | int = "auto",
        **model: Any,
    ) -> None:
        """`model`: FusedSolver's keyword arguments for the data model (background,
        chem_kind, subtracted)."""
        if params is not None and params.tv_backend != "slices":
            raise SlabError(f"the slab solver implements the 'slices' TV back end, got "
                            f"{params.tv_backend!r}")
        if params is not None and params.gamma is None and params.gamma_method != "haadf":
            # The consistency search runs a whole solver on the binned series; a slab has a
            # part of it, so slabs estimate gamma from the HAADF misfit (docs/model.md).
            params = replace(params, gamma_method="haadf")
        elif params is None:
            params = FusionParams(gamma_method="haadf")
        self.comm = comm
        self.n_slices = int(n_slices)
        self.bounds = slab_bounds(self.n_slices, comm.size)
        self.start, self.stop = self.bounds[comm.rank]
        self._haadf_full: list[np.ndarray] = []  # whole HAADF images, to judge the vacuum
        self._haadf_angles: list[float] = []
        self._haadf_levels = np.zeros(0)
        self.local = _SlabSolver(n, self.stop - self.start, elements, Z, params,
                                 device=device, comm=comm, **model,
                                 n_slices_total=self.n_slices)

    @property
    def history(self) -> Any:
        return self.local.history

    @property
    def elements(self) -> list[str]:
        return self.local.elements

    def _rows(self, data: Any, what: str) -> np.ndarray:
        a = np.asarray(data, dtype=np.float32)
        if a.ndim < 2 or a.shape[-2] != self.n_slices:
            raise SlabError(f"{what}: shape {a.shape} has not {self.n_slices} slices on its "
                            "second-to-last axis")
        return np.ascontiguousarray(a[..., self.start:self.stop, :])

    def add_haadf(self, angles: Sequence[float] | float, images: np.ndarray) -> None:
        # The vacuum (offsets, and later the maps' vacuum masks) is judged on the whole
        # images, as the single-device solver does, and each rank keeps its rows.
        full = np.asarray(images, dtype=np.float32)
        full = full[None] if full.ndim == 2 else full
        levels, fit = self.local.haadf_vacuum(full)
        self.local.add_haadf(angles, self._rows(full, "HAADF"), vacuum=(levels, fit))
        self._haadf_full.append(full)
        self._haadf_angles.extend(np.atleast_1d(np.asarray(angles, np.float64)).tolist())
        self._haadf_levels = np.concatenate([self._haadf_levels, levels])

    def add_chem(self, angles: Sequence[float] | float,
                 maps: dict[str, np.ndarray] | np.ndarray) -> None:
        if isinstance(maps, dict):
            rows: Any = {e: self._rows(m, f"chemical map {e}") for e, m in maps.items()}
        else:
            rows = self._rows(maps, "chemical maps")
        ang = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        if self._haadf_full:
            h = np.concatenate(self._haadf_full)
            masks = nz.nearest_masks(h, self._haadf_angles, ang, self._haadf_levels,
                                     nz.haadf_noise(h))
        else:
            masks = np.stack([nz.border_columns((self.n_slices, self.local.n))] * ang.size)
        self.local.add_chem(angles, rows, vacuum_masks=masks[:, self.start:self.stop])

    def initialize(self, iterations: int | None = None) -> None:
        self.local.initialize(iterations)

    def step(self) -> dict[str, float]:
        return self.local.step()

    def run(self, iterations: int, callback: Callable[[int, dict], None] | None = None) -> None:
        self.local.run(iterations, callback)

    def volumes(self) -> dict[str, np.ndarray]:
        """This rank's slab of each element volume [stop - start, n, n]."""
        return self.local.volumes()

    def gather_volumes(self, root: int = 0) -> dict[str, np.ndarray] | None:
        """The full volumes on `root` (None on the other ranks)."""
        v = self.local.volumes()
        slab = np.stack([v[e] for e in self.elements], axis=1)  # [L, n_el, n, n]
        full = self.comm.gatherv(slab, root=root)
        if full is None:
            return None
        return {e: np.ascontiguousarray(full[:, i]) for i, e in enumerate(self.elements)}
