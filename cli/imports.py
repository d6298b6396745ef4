"""`fusetomo import FILES... --out SERIES.h5`: vendor files (MRC/ALI/ST with IMOD angle
files, DM3/DM4 files or folders of them, Velox EMD, Bruker BCF, TIFF, HSPY/ZSPY, SER) to a
fusetomo tilt-series file, through RosettaSciIO/ncempy readers (adapters/importers.py);
spectrum images become element maps (EELS edges after a power-law background, EDX line
windows); HAADF images alone make a HAADF-only series."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fusetomo.adapters.importers import ImportParams, VendorFileError, import_to_file
from fusetomo.cli.argtypes import positive_int


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


def _line(text: str) -> tuple[str, str]:
    el, sep, name = text.partition("=")
    if not sep or not el.strip() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected ELEMENT=LINE (e.g. Nb=Ka or Co=L2,3), got "
                                         f"{text!r}")
    return el.strip(), name.strip()


def _crop(text: str) -> tuple[int, int, int, int]:
    try:
        ys, xs = text.split(",")
        y0, y1 = (int(v) for v in ys.split(":"))
        x0, x1 = (int(v) for v in xs.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Y0:Y1,X0:X1 in pixels, got {text!r}") \
            from None
    return y0, y1, x0, x1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import", help="build a tilt-series file from vendor files",
        description="Read HAADF images and spectrum images (MRC/ALI/ST, DM3/DM4 files or "
                    "folders of them, Velox EMD, Bruker BCF, TIFF, HSPY/ZSPY, SER) and write a "
                    "fusetomo tilt-series file; HAADF images alone make a HAADF-only series. "
                    "Tilt angles come from --angles/--chem-angles, --angle-file, an IMOD "
                    ".tlt/.rawtlt beside a stack, a navigation axis in degrees, the stage "
                    "tilt in the metadata, or --angle-regex on the file names, in that order.")
    p.add_argument("files", nargs="+", metavar="FILE|FOLDER")
    p.add_argument("--out", required=True, metavar="SERIES.h5")
    p.add_argument("--elements", type=_elements, default=(),
                   help="elements to map from the spectrum images, e.g. Co,O,Au")
    p.add_argument("--line", type=_line, action="append", default=[], metavar="EL=NAME",
                   help="the X-ray line (EDX, e.g. Nb=Ka) or edge (EELS, e.g. Co=L2,3) to map "
                        "for an element instead of its default (repeat for several)")
    p.add_argument("--angles", type=_angle_list, default=None, metavar="LIST",
                   help="HAADF tilt angles in file order (degrees, comma-separated; write "
                        "--angles=-60,-57,... when the list starts with a minus sign)")
    p.add_argument("--chem-angles", type=_angle_list, default=None, metavar="LIST",
                   help="spectrum-image tilt angles in file order")
    p.add_argument("--angle-file", default=None, metavar="FILE",
                   help="HAADF tilt angles in file order, one per line (IMOD .rawtlt/.tlt)")
    p.add_argument("--no-sidecar", dest="sidecar", action="store_false",
                   help="do not take angles from a .tlt/.rawtlt beside a stack")
    p.add_argument("--angle-regex", default=None, metavar="REGEX",
                   help="angle from the file name: group 'angle' or the first group, e.g. "
                        r"'(?P<angle>[-+]?\d+(\.\d+)?)deg'")
    p.add_argument("--spectrum", choices=("auto", "eels", "edx"), default="auto",
                   help="how spectrum images are mapped (auto: signal type or energy unit)")
    p.add_argument("--tilt-axis", type=int, choices=(0, 1), default=0,
                   help="image axis parallel to the tilt axis (1: transpose on import)")
    p.add_argument("--bin", type=positive_int, default=1, metavar="N",
                   help="bin N x N pixels (HAADF: mean; spectrum images: sum of counts)")
    p.add_argument("--crop", type=_crop, default=None, metavar="Y0:Y1,X0:X1",
                   help="keep these pixels of the files' images (before binning)")
    p.add_argument("--pixel-size-nm", type=float, default=None)
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    lines = dict(args.line)
    try:
        params = ImportParams(angles=args.angles, chem_angles=args.chem_angles,
                              angle_file=args.angle_file, sidecar=args.sidecar,
                              angle_regex=args.angle_regex, elements=args.elements,
                              lines=lines, spectrum=args.spectrum, tilt_axis=args.tilt_axis,
                              pixel_size_nm=args.pixel_size_nm, binning=args.bin,
                              crop=args.crop)
        path, series = import_to_file(args.files, args.out, params)
    except VendorFileError as e:
        print(f"fusetomo: error: {e}", file=sys.stderr)
        return 2
    maps = (f"{series.common_chem_angles.size} spectrum images -> "
            f"{', '.join(series.elements)} maps (background subtracted)"
            if series.elements else "no spectrum image (a HAADF-only series)")
    px = f", {series.pixel_size_nm:.4g} nm/px" if series.pixel_size_nm else ""
    print(f"wrote {path}: {series.haadf.shape[0]} HAADF images "
          f"[{series.shape[0]} x {series.shape[1]}]{px}, {maps}; angles "
          f"{series.haadf_angles.min():g}..{series.haadf_angles.max():g} deg")
    for key in ("angle_source", "import_skipped", "subtracted_level_unknown"):
        if key in series.attrs:
            print(f"  {key.replace('_', ' ')}: {series.attrs[key]}")
    return 0
