"""`fusetomo export RECON.h5 --emd OUT.emd`: a reconstruction as a Berkeley EMD file (for
tomviz; docs/file-format.md §4)."""

from __future__ import annotations

import argparse
from typing import Any

from fusetomo.adapters.reconfile import export_emd


def cmd_export(args: argparse.Namespace) -> int:
    export_emd(args.recon, args.emd)
    print(f"wrote {args.emd}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="export a reconstruction to Berkeley EMD")
    p.add_argument("recon", help="reconstruction file (.h5)")
    p.add_argument("--emd", required=True, help="EMD file to write (.emd)")
    p.set_defaults(func=cmd_export)
