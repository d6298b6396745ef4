"""`fusetomo import FILES... --out SERIES.h5`: vendor files (EMD, DM3/DM4, HyperSpy, TIFF,
SER, MRC) to a fusetomo tilt-series file, through RosettaSciIO/ncempy readers; spectrum
images become element maps (EELS edges after a power-law background, EDX line windows)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fusetomo.adapters.importers import ImportParams, VendorFileError, import_to_file


def _angle_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got "
                                         f"{text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one angle")
    return values


def _elements(text: str) -> tuple[str, ...]:
    return tuple(e.strip() for e in text.replace(",", " ").split() if e.strip())


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import", help="build a tilt-series file from vendor files",
        description="Read HAADF images and spectrum images (EMD, DM3/DM4, HSPY, TIFF, SER, "
                    "MRC) and write a fusetomo tilt-series file. Tilt angles come from "
                    "--angles/--chem-angles, a navigation axis in degrees, the stage tilt in "
                    "the metadata, or --angle-regex on the file names, in that order.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out", required=True, metavar="SERIES.h5")
    p.add_argument("--elements", type=_elements, default=(),
                   help="elements to map from the spectrum images, e.g. Co,O,Au")
    p.add_argument("--angles", type=_angle_list, default=None, metavar="LIST",
                   help="HAADF tilt angles in file order (degrees, comma-separated; write "
                        "--angles=-60,-57,... when the list starts with a minus sign)")
    p.add_argument("--chem-angles", type=_angle_list, default=None, metavar="LIST",
                   help="spectrum-image tilt angles in file order")
    p.add_argument("--angle-regex", default=None, metavar="REGEX",
                   help="angle from the file name: group 'angle' or the first group, e.g. "
                        r"'(?P<angle>[-+]?\d+(\.\d+)?)deg'")
    p.add_argument("--spectrum", choices=("auto", "eels", "edx"), default="auto",
                   help="how spectrum images are mapped (auto: signal type or energy unit)")
    p.add_argument("--tilt-axis", type=int, choices=(0, 1), default=0,
                   help="image axis parallel to the tilt axis (1: transpose on import)")
    p.add_argument("--pixel-size-nm", type=float, default=None)
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    try:
        params = ImportParams(angles=args.angles, chem_angles=args.chem_angles,
                              angle_regex=args.angle_regex, elements=args.elements,
                              spectrum=args.spectrum, tilt_axis=args.tilt_axis,
                              pixel_size_nm=args.pixel_size_nm)
        path, series = import_to_file(args.files, args.out, params)
    except VendorFileError as e:
        print(f"fusetomo: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}: {series.haadf.shape[0]} HAADF images "
          f"[{series.shape[0]} x {series.shape[1]}], {series.common_chem_angles.size} "
          f"spectrum images -> {', '.join(series.elements)} maps; angles "
          f"{series.haadf_angles.min():g}..{series.haadf_angles.max():g} deg")
    return 0
