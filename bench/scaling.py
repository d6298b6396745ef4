"""Per-slab costs of the slab-decomposed fused solver, and the projection to large volumes.

    python bench/scaling.py slab --n 256 512 --slabs 4 8 16 [--device auto|cpu|gpu]
    mpiexec -n 2 python bench/scaling.py halo --n 256 512 1024
    python bench/scaling.py project --n 512 1024 --gpus 1 2 4 8

`slab` times fused iterations of one rank's slab (L slices of n x n, 4 elements, 47 HAADF +
10 chemical tilts, default parameters) for several L, with its peak memory (tracemalloc on
the CPU, the CuPy memory pool on a GPU), and fits t(L) = t0 + L t_slice and
mem(L) = m0 + L m_slice: the solver is separable per slice apart from the halos and a few
scalar all-reduces, so these two lines give any slab's cost. `halo` (under MPI, >= 2 ranks)
times one halo exchange (one slice of all elements, float32, to a neighbour) and one
scalar all-reduce. `project` combines them into the time per iteration and memory per
device of an n^3 volume on G devices:

    t(G) = t0 + ceil(n / G) t_slice + (2K + 2) t_halo + 3 t_allreduce,  K = FGP iterations
    mem(G) = m0 + ceil(n / G) m_slice

using t_slice and m_slice measured at the largest n on this device, scaled by n^2 (every
per-slice cost is proportional to the n^2 pixels of a slice: the projector has 2 n^2
non-zeros per tilt). Results: bench/results/scaling-<device>.json (merged across modes).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.solver.backend import resolve_device
from fusetomo.solver.fusion import FusionParams
from fusetomo.solver.slabs import SlabFusedSolver, ThreadComm

RESULTS = Path(__file__).resolve().parent / "results"
ELEMENTS, Z = ["Co", "Cu", "O", "Au"], [27, 29, 8, 79]


def _data(n: int, L: int, haadf_tilts: int, chem_tilts: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "haadf_angles": np.linspace(-70, 70, haadf_tilts),
        "haadf": rng.random((haadf_tilts, L, n), dtype=np.float32) * 100 + 1,
        "chem_angles": np.linspace(-70, 70, chem_tilts),
        "chem": rng.poisson(3.0, (len(ELEMENTS), chem_tilts, L, n)).astype(np.float32),
    }


def _solver(n: int, L: int, device: Any, data: dict) -> SlabFusedSolver:
    s = SlabFusedSolver(n, L, ELEMENTS, Z, FusionParams(), comm=ThreadComm.group(1)[0],
                        device=device, background=[1.0] * len(ELEMENTS))
    s.add_haadf(data["haadf_angles"], data["haadf"])
    s.add_chem(data["chem_angles"], data["chem"])
    return s


def _sync(device: Any) -> None:
    if device.id >= 0:
        import cupy

        cupy.cuda.Device(device.id).synchronize()


def measure_slab(n: int, L: int, device: Any, iterations: int, haadf_tilts: int,
                 chem_tilts: int) -> dict[str, float]:
    data = _data(n, L, haadf_tilts, chem_tilts)
    if device.id >= 0:
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
    t0 = time.perf_counter()
    s = _solver(n, L, device, data)
    setup = time.perf_counter() - t0
    s.step()  # includes the initialisation
    _sync(device)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        s.step()
        _sync(device)
        times.append(time.perf_counter() - t)
    if device.id >= 0:
        mem = float(pool.total_bytes())
    else:
        # A fresh solver, one iteration under tracemalloc (NumPy reports its buffers).
        del s
        tracemalloc.start()
        s2 = _solver(n, L, device, data)
        s2.step()
        s2.step()
        mem = float(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return {"n": n, "slices": L, "iteration_s": float(np.median(times)),
            "setup_s": setup, "peak_bytes": mem}


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    slope, icpt = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(icpt), float(slope)


def cmd_slab(args: argparse.Namespace, out: dict) -> None:
    device = resolve_device(args.device)
    rows = []
    for n in args.n:
        for L in args.slabs:
            r = measure_slab(n, L, device, args.iterations, args.haadf_tilts, args.chem_tilts)
            rows.append(r)
            print(f"n {n:5d}  slab {L:4d} slices: {r['iteration_s'] * 1e3:9.1f} ms/iteration, "
                  f"peak {r['peak_bytes'] / 2**20:8.1f} MiB (setup {r['setup_s']:.1f} s)",
                  flush=True)
    fits = {}
    for n in args.n:
        rs = [r for r in rows if r["n"] == n]
        if len(rs) >= 2:
            t0, ts = _fit([r["slices"] for r in rs], [r["iteration_s"] for r in rs])
            m0, ms = _fit([r["slices"] for r in rs], [r["peak_bytes"] for r in rs])
            fits[str(n)] = {"t0_s": t0, "t_slice_s": ts, "m0_bytes": m0, "m_slice_bytes": ms}
            print(f"n {n}: t = {t0 * 1e3:.1f} ms + L x {ts * 1e3:.2f} ms;  "
                  f"mem = {m0 / 2**20:.0f} MiB + L x {ms / 2**20:.2f} MiB", flush=True)
    out["slab"] = {"rows": rows, "fits": fits, "iterations": args.iterations,
                   "haadf_tilts": args.haadf_tilts, "chem_tilts": args.chem_tilts,
                   "elements": len(ELEMENTS)}


def cmd_halo(args: argparse.Namespace, out: dict) -> None:
    from fusetomo.solver.slabs import mpi_comm

    comm = mpi_comm(args.transport)
    if comm.size < 2:
        raise SystemExit("halo: run under mpiexec with at least 2 ranks")
    device = resolve_device(args.device)
    xp = device.xp
    rows = []
    for n in args.n:
        with device:
            sl = xp.ones((len(ELEMENTS), n, n), dtype=xp.float32)
        for _ in range(2):
            comm.exchange(None, sl)
        comm.comm.Barrier()
        reps = args.repeats
        t = time.perf_counter()
        for _ in range(reps):
            comm.exchange(None, sl)  # rightward
            comm.exchange(sl, None)  # leftward
        _sync(device)
        dt = (time.perf_counter() - t) / (2 * reps)
        t = time.perf_counter()
        for _ in range(reps):
            comm.allreduce(np.ones(6), "sum")
        da = (time.perf_counter() - t) / reps
        rows.append({"n": n, "halo_bytes": sl.nbytes, "halo_s": dt, "allreduce_s": da})
        if comm.rank == 0:
            print(f"n {n:5d}: halo {sl.nbytes / 2**20:6.1f} MiB in {dt * 1e3:8.2f} ms "
                  f"({sl.nbytes / dt / 1e9:.2f} GB/s); all-reduce {da * 1e6:.0f} us", flush=True)
    if comm.rank != 0:
        raise SystemExit(0)
    out["halo"] = {"rows": rows, "ranks": comm.size, "transport": args.transport}


def project(out: dict, sizes: list[int], gpus: list[int], tv_iterations: int) -> dict:
    fits = out.get("slab", {}).get("fits", {})
    if not fits:
        raise SystemExit("project: run `slab` first")
    ref_n = max(int(k) for k in fits)
    f = fits[str(ref_n)]
    halo = {int(r["n"]): r for r in out.get("halo", {}).get("rows", [])}
    rows = []
    for n in sizes:
        s2 = (n / ref_n) ** 2
        t_slice, m_slice = f["t_slice_s"] * s2, f["m_slice_bytes"] * s2
        h = halo.get(n)
        if h is None and halo:  # bandwidth-bound: scale the nearest measured halo by bytes
            near = min(halo, key=lambda k: abs(k - n))
            h = {"halo_s": halo[near]["halo_s"] * (n / near) ** 2,
                 "allreduce_s": halo[near]["allreduce_s"]}
        for g in gpus:
            L = math.ceil(n / g)
            comm_s = 0.0 if g == 1 or h is None else (
                (2 * tv_iterations + 2) * h["halo_s"] + 3 * h["allreduce_s"])
            t = f["t0_s"] + L * t_slice + comm_s
            rows.append({"n": n, "devices": g, "slices_per_device": L,
                         "iteration_s": t, "communication_s": comm_s,
                         "memory_per_device_bytes": f["m0_bytes"] + L * m_slice})
            print(f"n {n:5d} on {g} device(s): {t * 1e3:9.1f} ms/iteration "
                  f"(communication {comm_s * 1e3:.1f} ms), "
                  f"{(f['m0_bytes'] + L * m_slice) / 2**30:6.2f} GiB per device", flush=True)
    return {"reference_n": ref_n, "rows": rows,
            "halo_measured": bool(halo), "tv_iterations": tv_iterations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("slab", "halo", "project"))
    ap.add_argument("--n", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--slabs", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--transport", choices=("host", "nccl"), default="host")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--haadf-tilts", type=int, default=47)
    ap.add_argument("--chem-tilts", type=int, default=10)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    name = "cpu" if dev.id < 0 else "gpu"
    path = args.output or RESULTS / f"scaling-{name}.json"
    out: dict = json.loads(path.read_text()) if path.exists() else {}
    out["hardware"] = {"machine": platform.processor() or platform.machine(), "device": name}
    if dev.id >= 0:
        import cupy

        out["hardware"]["gpu"] = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    if args.mode == "slab":
        cmd_slab(args, out)
    elif args.mode == "halo":
        cmd_halo(args, out)
    else:
        out["projection"] = project(out, args.n, args.gpus, FusionParams().tv_iterations)
    out.setdefault("commands", {})[args.mode] = " ".join(
        ["python bench/scaling.py", args.mode, "--n", *map(str, args.n)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
