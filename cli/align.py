"""`fusetomo align SERIES.h5 --out ALIGNED.h5`: the series aligned and resampled
(controller/stack_align.py) for other tools.

The aligned series is a fusetomo series file (docs/file-format.md §1) whose HAADF images
have their offsets subtracted, the tilt axis de-rotated onto image axis 0 and centred, with
the alignment as root attributes (`align_shifts_px`, `align_rotation_deg`,
`align_axis_offset_px`, `align_haadf_offsets`, ...); `--mrc ALIGNED.mrc` also writes the
aligned HAADF stack as an MRC file with its IMOD `.tlt` beside it. Exit status 0, or 2 with
`fusetomo: error: ...` for input the commands cannot use.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from fusetomo.adapters.series import SeriesError
from fusetomo.adapters.seriesfile import read_series, write_series
from fusetomo.cli.argtypes import add_threads_option
from fusetomo.solver.alignment import AlignmentError, AlignmentParams


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "align", help="align a series and write the aligned (resampled) series",
        description="Align a tilt series (HAADF offsets subtracted, tilt-axis rotation, "
                    "drift, axis offset; docs/alignment.md) and write it resampled, with the "
                    "shifts and rotation as attributes, for IMOD, tomviz or etspy.")
    p.add_argument("series", metavar="SERIES.h5")
    p.add_argument("--out", required=True, metavar="ALIGNED.h5")
    p.add_argument("--rotation", type=float, default=None, metavar="DEG",
                   help="the tilt axis' in-plane rotation if known (default: estimated)")
    p.add_argument("--mrc", default=None, metavar="ALIGNED.mrc",
                   help="also write the aligned HAADF stack as MRC (+ IMOD .tlt beside it)")
    add_threads_option(p)
    p.set_defaults(func=cmd_align)


def _error(text: str) -> int:
    print(f"fusetomo: error: {text}", file=sys.stderr)
    return 2


def cmd_align(args: argparse.Namespace) -> int:
    from fusetomo.controller.stack_align import StackAlignParams, align_stack, aligned_series
    from fusetomo.solver.rotation import RotationWarning

    try:
        series = read_series(args.series)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RotationWarning)
            a = align_stack(series, StackAlignParams(args.rotation, AlignmentParams()))
        out = aligned_series(series, a)
        write_series(args.out, out)
        if args.mrc:
            from fusetomo.controller.export_volume import write_stack_mrc

            write_stack_mrc(args.mrc, out)
    except (SeriesError, AlignmentError, OSError) as e:
        return _error(str(e))
    for w in caught:
        print(f"fusetomo: warning: {w.message}", file=sys.stderr)
    how = "given" if args.rotation is not None else "estimated"
    print(f"wrote {args.out}: {out.haadf.shape[0]} HAADF images aligned; rotation "
          f"{a.rotation_deg:.3f} deg ({how}), axis offset {a.axis_offset_px:.2f} px, shifts "
          f"{abs(a.shifts).max():.1f} px at most"
          + (f", {len(out.elements)} element maps moved alike" if out.elements else ""))
    if args.mrc:
        print(f"wrote {args.mrc} and {Path(args.mrc).with_suffix('.tlt')}")
    return 0
