"""`fusetomo report FILE.h5 --out DIR`: figures, report.json and
index.html for a run, reconstruction or series file (controller/report.py).

Prints one line per figure written or skipped, then `wrote DIR/index.html` and, when the
truth is known, the final <NRMSE>. Exit status 0, or 2 with `fusetomo: error: <file>: ...`
for input that cannot be read (not HDF5, truncated, a dataset missing or damaged).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.adapters.reconfile import ReconFileError
from fusetomo.adapters.runfile import RunFileError
from fusetomo.adapters.series import SeriesError
from fusetomo.cli.argtypes import positive_int
from fusetomo.controller.report import ReportError, ReportParams, make_report

# Input errors that end the command with status 2 (each names the file and dataset).
_INPUT_ERRORS = (ReportError, RunFileError, SeriesError, ReconFileError, OSError)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return v


def cmd_report(args: argparse.Namespace) -> int:
    try:
        params = ReportParams(support_fraction=args.support_fraction,
                              presence_fraction=args.presence_fraction, bins=args.bins,
                              dpi=args.dpi, max_snapshots=args.max_snapshots,
                              truth=Path(args.truth) if args.truth else None)
        doc = make_report(args.file, args.out, params)
    except _INPUT_ERRORS as e:
        print(f"fusetomo: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for name, file in doc["figures"].items():
        print(f"  {name:<22} {out / file}")
    for name, why in doc["skipped"].items():
        print(f"  {name:<22} skipped: {why}")
    print(f"wrote {out / 'index.html'} ({len(doc['figures'])} figures, "
          f"{len(doc['skipped'])} skipped) and {out / 'report.json'}")
    if "nrmse_mean" in doc:
        per = ", ".join(f"{e} {v:.3f}" for e, v in doc["nrmse"].items())
        print(f"<NRMSE> = {doc['nrmse_mean']:.3f}  ({per})  truth: {doc['truth']}")
    if "stoichiometry" in doc:
        st = ", ".join(f"{e} {s['mean']:.2f}±{s['std']:.2f}"
                       for e, s in doc["stoichiometry"].items())
        print(f"stoichiometry (fraction where present): {st}")
    if doc.get("regions"):
        from fusetomo.controller.report.stoichiometry import RegionRow, table_lines

        print("atomic fraction per region, mean ± standard error (spread):")
        rows = [RegionRow(**r) for r in doc["regions"]]
        for line in table_lines(rows, list(doc["elements"])):
            print("  " + line)
    if "convergence" in doc:
        print(f"convergence: {doc['convergence']['state']} ({doc['convergence']['detail']})")
    if "mean_std_error" in doc:
        se = ", ".join(f"{e} {v:.3g}" for e, v in doc["mean_std_error"].items())
        print(f"mean standard error in the specimen (counts per voxel): {se} (mean "
              f"{np.mean(list(doc['mean_std_error'].values())):.3g})")
    return 0


def register(subparsers: Any) -> None:
    defaults = ReportParams()
    p = subparsers.add_parser(
        "report", help="figures and an index.html for a run or reconstruction file",
        description="Write PNG figures (orthoslices, colour overlay, standard error, "
                    "convergence, progress per tilt, dose, stoichiometry), report.json and "
                    "index.html for a run, reconstruction or series file. A figure whose "
                    "input is absent is skipped, and index.html says why.")
    p.add_argument("file", metavar="FILE.h5", help="run, reconstruction or series file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--truth", default=None, metavar="SERIES.h5",
                   help="series file whose /truth to compare with (default: found from "
                        "the run's start header or the reconstruction's source file)")
    p.add_argument("--support-fraction", type=_fraction, default=defaults.support_fraction,
                   help="specimen support: summed volumes above this fraction of their max "
                        f"(default {defaults.support_fraction})")
    p.add_argument("--presence-fraction", type=_fraction,
                   default=defaults.presence_fraction,
                   help="an element is present above this fraction of its max in the "
                        f"support (default {defaults.presence_fraction})")
    p.add_argument("--bins", type=positive_int, default=defaults.bins,
                   help=f"stoichiometry histogram bins (default {defaults.bins})")
    p.add_argument("--dpi", type=positive_int, default=defaults.dpi)
    p.add_argument("--max-snapshots", type=positive_int, default=defaults.max_snapshots,
                   help="snapshots read for the per-tilt curves, evenly spread (default "
                        f"{defaults.max_snapshots})")
    p.set_defaults(func=cmd_report)
