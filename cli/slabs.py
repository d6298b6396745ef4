"""`fusetomo reconstruct-slabs`: one volume split in slabs across MPI ranks / GPUs (run under
mpiexec; MPI is imported only here, when the command runs).

    mpiexec -n 4 fusetomo reconstruct-slabs SERIES.h5 --out RECON.h5 [--iterations N]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from fusetomo.cli.argtypes import add_threads_option, positive_int


def cmd_reconstruct_slabs(args: argparse.Namespace) -> int:
    from fusetomo.adapters.seriesfile import read_series, read_truth
    from fusetomo.controller.reconstruct import ReconResult
    from fusetomo.controller.series_model import fusion_params_for, model_kwargs
    from fusetomo.solver.fusion import DEFAULT_ITERATIONS
    from fusetomo.solver.metrics import nrmse_per_element
    from fusetomo.solver.slabs import SlabFusedSolver, mpi_comm, rank_device

    comm = mpi_comm()
    series = read_series(args.series)
    params = fusion_params_for(series)
    device: Any = rank_device(comm, args.device)
    els = series.elements
    solver = SlabFusedSolver(series.shape[1], series.shape[0], els,
                             [series.Z[e] for e in els], params, comm=comm, device=device,
                             **model_kwargs(series))
    solver.add_haadf(series.haadf_angles, series.haadf)
    solver.add_chem(series.common_chem_angles, series.chem)
    k = args.iterations or DEFAULT_ITERATIONS
    t0 = time.perf_counter()
    solver.run(k)
    vols = solver.gather_volumes(root=0)
    elapsed = time.perf_counter() - t0
    if comm.rank != 0:
        return 0
    assert vols is not None
    res = ReconResult(vols, solver.local.history,
                      {"method": "fused-slabs", "ranks": comm.size, "iterations": k,
                       "device": str(device)}, elapsed)
    res.save(args.out, source=args.series)
    print(f"wrote {args.out}: fused in {comm.size} slabs, {k} iterations in {elapsed:.1f} s")
    truth = read_truth(args.series)
    if truth:
        scores = nrmse_per_element({e: truth[e] for e in els if e in truth}, vols)
        mean = sum(scores.values()) / len(scores)
        print(f"<NRMSE> = {mean:.3f}  ("
              + ", ".join(f"{e} {v:.3f}" for e, v in scores.items()) + ")")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconstruct-slabs",
        help="fused reconstruction split in slabs across MPI ranks (run under mpiexec)")
    p.add_argument("series", help="series file (.h5)")
    p.add_argument("--out", required=True, help="reconstruction file to write (.h5)")
    p.add_argument("--iterations", type=positive_int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="gpu: rank r uses GPU (local rank mod GPUs on its node)")
    add_threads_option(p)  # per rank: with N ranks on one machine, cores / N
    p.set_defaults(func=cmd_reconstruct_slabs)
