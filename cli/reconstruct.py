"""`fusetomo reconstruct`: offline reconstruction of a series (or run) file, with a
progress bar; prints <NRMSE> when the series has a truth.

    fusetomo reconstruct SERIES.h5 --out RECON.h5 [--method M] [--align] [--uncertainty U]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fusetomo.adapters.reconfile import model_lines
from fusetomo.adapters.seriesfile import read_series, read_truth
from fusetomo.cli.argtypes import add_threads_option, positive_int
from fusetomo.cli.common import nrmse_line, nrmse_scores
from fusetomo.controller.reconstruct import METHODS, reconstruct
from fusetomo.solver.stopping import StopRule


def _tolerance(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"the tolerance must be in (0, 1), got {v}")
    return v


def cmd_reconstruct(args: argparse.Namespace) -> int:
    series = read_series(args.series)
    truth = read_truth(args.series)
    align = None
    if args.align:
        from fusetomo.controller.offline_align import OfflineAlignParams

        align = OfflineAlignParams(rotation_deg=args.align_rotation)
    res = reconstruct(series, method=args.method, iterations=args.iterations,
                      device=args.device, progress=not args.quiet,
                      uncertainty=args.uncertainty, align=align,
                      stop=StopRule(tol=args.stop_tol))
    res.save(args.out, source=args.series)
    stop = res.params.get("stop_reason")
    print(f"wrote {args.out}: {args.method}, {res.params['iterations']} iterations"
          f"{f' ({stop})' if stop else ''} on {res.params['device']} in "
          f"{res.elapsed:.1f} s")
    model = model_lines(res.params)
    if model:
        print("\n".join(model))
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.align:
        pr = res.params
        joint = (f", joint refinement {pr['align_joint_rounds']} rounds (last update "
                 f"{pr['align_joint_last_update_px']:.4f} px RMS)"
                 if "align_joint_rounds" in pr else ", images resampled")
        print(f"aligned: rotation {pr['align_rotation_deg']:.3f} deg, axis offset "
              f"{pr['align_axis_offset_px']:.2f} px{joint}")
    scores = nrmse_scores(truth, res.volumes)
    if scores:
        print(nrmse_line(scores))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct a series file")
    p.add_argument("series", help="series file (.h5)")
    p.add_argument("--out", required=True, help="reconstruction file to write (.h5)")
    p.add_argument("--method", choices=METHODS, default="fused")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="fixed number of iterations (fused default: until the stopping rule "
                        "says the volumes have converged, docs/model.md)")
    p.add_argument("--stop-tol", type=_tolerance, default=StopRule.tol, metavar="TOL",
                   help="fused: the stopping rule's tolerance on the volumes' relative "
                        "change per iteration (default %(default)g; 1e-3 runs up to a third "
                        "longer for an answer about 1 %% better, docs/benchmarks.md)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--align", action="store_true",
                   help="align the series first (drift, tilt-axis offset and rotation; "
                        "docs/alignment.md) and record the shifts: fused keeps them in the "
                        "model, haadf and sirt reconstruct the resampled images")
    p.add_argument("--align-rotation", type=float, default=None, metavar="DEG",
                   help="with --align: the tilt axis' in-plane rotation if known "
                        "(default: estimated)")
    p.add_argument("--uncertainty", choices=("cheap", "accurate", "resample"), default=None,
                   help="also write per-voxel standard errors /std_error/<Symbol> (fused): "
                        "cheap or accurate (Laplace, fast, not calibrated where nuisances "
                        "are estimated), or resample (32 re-solves of the data with added "
                        "noise: closer to Monte Carlo, docs/benchmarks.md; and a per-voxel "
                        "bias estimate /bias/<Symbol>, a lower bound)")
    add_threads_option(p)
    p.set_defaults(func=cmd_reconstruct)
