"""`fusetomo stoichiometry FILE.h5`: the mean atomic fraction of each element per region
(each connected region of the specimen, or masks given with --mask) ± its standard error
where the file holds standard errors (controller/report/stoichiometry.py).

    fusetomo stoichiometry RECON.h5|RUN.h5 [--mask NAME=MASK.npy ...] [--sensitivity El=S,...]
                           [--support-fraction F] [--min-voxels N] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.adapters.reconfile import FORMAT as RECON_FORMAT
from fusetomo.adapters.reconfile import read_recon
from fusetomo.adapters.runfile import FORMAT as RUN_FORMAT
from fusetomo.adapters.runfile import describe_run, read_snapshot
from fusetomo.adapters.seriesfile import file_format
from fusetomo.cli.argtypes import positive_int
from fusetomo.controller.report.stoichiometry import (
    StoichiometryError,
    StoichiometryParams,
    region_table,
    table_lines,
)


def _volumes(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, str]:
    """Element volumes, their standard errors (or None) and what they are."""
    if not path.is_file():
        raise StoichiometryError(f"{path}: no such file")
    fmt = file_format(path)
    if fmt == RECON_FORMAT:
        rec = read_recon(path)
        return rec.volumes, rec.std_error or None, f"{rec.attrs.get('method', '?')} " \
            "reconstruction"
    if fmt == RUN_FORMAT:
        info = describe_run(path)
        if not info.get("snapshots"):
            raise StoichiometryError(f"{path}: the run file holds no reconstruction snapshot")
        it, vols = read_snapshot(path, -1)
        std = read_snapshot(path, -1, group="std_error")[1] if info.get("std_errors") else None
        return vols, std, f"the run's latest snapshot (iteration {it})"
    raise StoichiometryError(f"{path}: format {fmt!r} holds no reconstruction (give a "
                             f"reconstruction or run file)")


def _masks(items: list[str], shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise StoichiometryError(f"--mask takes NAME=FILE.npy, got {item!r}")
        try:
            m = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoichiometryError(f"--mask {name}: {file}: cannot be read ({e})") from None
        if m.shape != shape:
            raise StoichiometryError(f"--mask {name}: {file} has shape {m.shape}, the volumes "
                                     f"{shape}")
        out[name] = m.astype(bool)
    return out


def _sensitivity(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item:
            continue
        e, sep, v = item.partition("=")
        try:
            out[e.strip()] = float(v)
        except ValueError:
            raise StoichiometryError(f"--sensitivity takes El=NUMBER,..., got {item!r}") \
                from None
        if not sep:
            raise StoichiometryError(f"--sensitivity takes El=NUMBER,..., got {item!r}")
    return out


def cmd_stoichiometry(args: argparse.Namespace) -> int:
    path = Path(args.file)
    vols, std, what = _volumes(path)
    params = StoichiometryParams(args.support_fraction, args.min_voxels,
                                 _sensitivity(args.sensitivity))
    shape = np.shape(next(iter(vols.values())))
    rows = region_table(vols, std, _masks(args.mask, shape), params)
    if args.json:
        print(json.dumps({"file": str(path), "volumes": what, "elements": list(vols),
                          "params": {**asdict(params), "sensitivity": dict(params.sensitivity)},
                          "regions": [asdict(r) for r in rows]}))
        return 0
    sens = ("equal counts per atom for every element (--sensitivity to change)"
            if not params.sensitivity else f"sensitivity {dict(params.sensitivity)}")
    print(f"{path}: {what}; atomic fraction per region, mean"
          f"{' ± standard error' if std is not None else ''} (spread over its voxels); "
          f"{sens}")
    for line in table_lines(rows, list(vols)):
        print(line)
    if not rows:
        print(f"no region of at least {args.min_voxels} voxels where the summed volumes "
              f"exceed {args.support_fraction} of their maximum")
    return 0


def register(subparsers: Any) -> None:
    d = StoichiometryParams()
    p = subparsers.add_parser(
        "stoichiometry", help="atomic fraction of each element per region, with standard "
                              "errors",
        description="Mean atomic fraction of each element in each connected region of the "
                    "specimen (or in masks you give), ± its standard error when the file "
                    "holds standard errors, and its spread over the region's voxels.")
    p.add_argument("file", metavar="FILE.h5", help="reconstruction or run file")
    p.add_argument("--mask", action="append", default=[], metavar="NAME=MASK.npy",
                   help="a boolean NumPy array of the volumes' shape (repeatable); "
                        "default: the connected regions of the specimen")
    p.add_argument("--sensitivity", default=None, metavar="El=S,...",
                   help="relative counts per atom of each element (default 1 for each)")
    p.add_argument("--support-fraction", type=float, default=d.support_fraction,
                   help="fractions are defined where the summed volumes exceed this "
                        f"fraction of their maximum (default {d.support_fraction})")
    p.add_argument("--min-voxels", type=positive_int, default=d.min_voxels,
                   help=f"smallest region listed (default {d.min_voxels})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_stoichiometry)
