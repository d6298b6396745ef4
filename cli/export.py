"""`fusetomo export RECON.h5 --emd OUT.emd | --mrc OUT.mrc | --tiff OUT.tif`: a
reconstruction as a Berkeley EMD file (tomviz; docs/file-format.md §4), or MRC files or TIFF
stacks with the voxel size set (IMOD, tomviz, Avizo, Fiji)."""

from __future__ import annotations

import argparse
from typing import Any

from fusetomo.adapters.reconfile import export_emd


def cmd_export(args: argparse.Namespace) -> int:
    if args.emd:
        export_emd(args.recon, args.emd)
        print(f"wrote {args.emd}")
        return 0
    from fusetomo.controller.export_volume import export_mrc, export_tiff

    for path in (export_mrc(args.recon, args.mrc) if args.mrc
                 else export_tiff(args.recon, args.tiff)):
        print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="export a reconstruction to EMD, MRC or TIFF stacks")
    p.add_argument("recon", help="reconstruction file (.h5)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--emd", help="Berkeley EMD file to write (.emd; tomviz)")
    g.add_argument("--mrc", help="MRC file(s) to write, voxel size set (IMOD, tomviz, "
                   "Avizo); OUT_<name>.mrc per volume when there are several")
    g.add_argument("--tiff", help="TIFF stack(s) to write, voxel size set (Fiji)")
    p.set_defaults(func=cmd_export)
