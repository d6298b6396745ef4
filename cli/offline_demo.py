"""`fusetomo offline-demo`: simulate, reconstruct offline (fused and conventional), score."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.adapters.seriesfile import read_series, write_series
from fusetomo.cli.argtypes import positive_int
from fusetomo.cli.common import eprint, nrmse_line, nrmse_scores, series_dose
from fusetomo.cli.simulate import add_simulation_options, simulation
from fusetomo.controller.reconstruct import reconstruct


def cmd_offline_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log: Callable[..., None] = eprint if args.json else print
    sim = simulation(args)
    write_series(out / "series.h5", sim.series, sim.truth)
    series = read_series(out / "series.h5")
    log(f"simulated {args.specimen} {args.size}^3: {series.haadf.shape[0]} HAADF, "
        f"{series.common_chem_angles.size} chemical tilts")
    fused = reconstruct(series, "fused", iterations=args.iterations, device=args.device)
    fused.save(out / "recon.h5", source=out / "series.h5")
    conv = reconstruct(series, "conventional", iterations=args.iterations,
                       device=args.device)
    scores = nrmse_scores(sim.truth, fused.volumes)
    scores_c = nrmse_scores(sim.truth, conv.volumes)
    summary = {
        "specimen": args.specimen,
        "size": args.size,
        "nrmse_mean": float(np.mean(list(scores.values()))),
        "nrmse": scores,
        "nrmse_conventional_mean": float(np.mean(list(scores_c.values()))),
        "nrmse_conventional": scores_c,
        "chem_snr": sim.chem_snr,
        "haadf_tilts": int(series.haadf.shape[0]),
        "chem_tilts": int(series.common_chem_angles.size),
        "dose_e_per_A2": series_dose(series),
        "device": fused.params["device"],
        "elapsed_s": time.perf_counter() - t0,
        "files": {k: str(out / f"{k}.h5") for k in ("series", "recon")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        print("fused        " + nrmse_line(scores))
        print("conventional " + nrmse_line(scores_c))
        print(f"wrote {out}/series.h5, recon.h5, summary.json in {summary['elapsed_s']:.1f} s")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("offline-demo",
                       help="simulate, reconstruct offline (fused and conventional), score")
    add_simulation_options(p, size=64)
    p.add_argument("--out", default="fusetomo-offline-demo", help="folder for the files")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--iterations", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_offline_demo)
