"""`fusetomo inspect FILE.h5 [--json]`: a summary of a series, run or reconstruction file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fusetomo.adapters.reconfile import FORMAT as RECON_FORMAT
from fusetomo.adapters.reconfile import describe_recon
from fusetomo.adapters.runfile import describe_run
from fusetomo.adapters.seriesfile import RUN_FORMAT, describe_series, file_format


def cmd_inspect(args: argparse.Namespace) -> int:
    fmt = file_format(args.file)
    if fmt == RECON_FORMAT:
        info = describe_recon(args.file)
    elif fmt == RUN_FORMAT:
        info = describe_run(args.file)
    else:
        info = describe_series(args.file)
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="summarise a series or reconstruction file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
