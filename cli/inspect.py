"""`fusetomo inspect FILE.h5 [--json] [--verify]`: a summary of a series, run or
reconstruction file. `--verify` also checks every checksum of a run file (each tilt's
frames, seq, angle and doses; each snapshot and standard-error volume; the commit record;
the events) or reads a series or reconstruction file whole, and exits 2 naming the first
damaged dataset."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fusetomo.adapters.reconfile import FORMAT as RECON_FORMAT
from fusetomo.adapters.reconfile import describe_recon, read_recon
from fusetomo.adapters.runfile import describe_run, verify_run
from fusetomo.adapters.seriesfile import (
    RUN_FORMAT,
    describe_series,
    file_format,
    read_series,
    read_truth,
)


def cmd_inspect(args: argparse.Namespace) -> int:
    fmt = file_format(args.file)
    if fmt == RECON_FORMAT:
        info = describe_recon(args.file)
    elif fmt == RUN_FORMAT:
        info = describe_run(args.file)
    else:
        info = describe_series(args.file)
    if args.verify:
        info["verified"] = _verify(args.file, fmt)
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0


def _verify(path: str, fmt: str) -> str:
    """What was verified; a FusetomoError (exit 2) naming the damage otherwise."""
    if fmt == RUN_FORMAT:
        n = verify_run(path)
        return (f"all checksums match: {n['haadf_tilts']} HAADF + {n['chem_tilts']} "
                f"chemical tilts, {n['snapshots']} snapshots, {n['std_errors']} standard "
                f"errors, {n['events']} events")
    if fmt == RECON_FORMAT:
        read_recon(path)
    else:
        read_series(path)
        read_truth(path)
    return "read whole (this format carries no checksums)"


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="summarise a series or reconstruction file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true",
                   help="check every checksum (run files) or read the file whole; exit 2 "
                        "naming the first damaged dataset")
    p.set_defaults(func=cmd_inspect)
