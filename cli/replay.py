"""`fusetomo replay FILE.h5 [--speed X] [--record RUN.h5]`: start an instrument that
replays a series or run file and a controller that records it anew."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from fusetomo.adapters.runfile import FORMAT as RUN_FORMAT
from fusetomo.adapters.runfile import RunFileError, read_run
from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import SeriesFileError, file_format, write_series
from fusetomo.cli.argtypes import positive_float as _positive_float
from fusetomo.cli.children import start_instrument
from fusetomo.cli.common import error, setup_logging
from fusetomo.cli.control import run_controller
from fusetomo.cli.live_options import LiveCommandError, add_control_options, live_params


# -- replay ---------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    source = Path(args.file)
    if not source.is_file():
        return error(f"{source}: no such file")
    record = Path(args.record) if args.record else source.with_name(
        f"{source.stem}-replay.h5")
    if record.exists():
        return error(f"{record} exists: choose another file with --record")
    with tempfile.TemporaryDirectory(prefix="fusetomo-replay-") as tmp:
        try:
            params = live_params(args)
            src = _series_source(source, Path(tmp))
            inst = start_instrument(["--source", str(src), "--speed", str(args.speed)])
        except LiveCommandError as e:
            return error(str(e))
        try:
            code = run_controller(inst.endpoint, record, params, resume=False,
                                   publish=args.publish)
        finally:
            inst.wait(timeout=10)  # it exits once its series_end is acknowledged
            inst.close()
    return code


def _series_source(path: Path, tmp: Path) -> Path:
    """`path` itself for a series file; for a run file, its recorded tilts (in arrival
    order) and per-image doses written as a series file in `tmp`."""
    try:
        fmt = file_format(path)
    except SeriesFileError as e:
        raise LiveCommandError(str(e)) from None
    if fmt != RUN_FORMAT:
        return path
    try:
        rec = read_run(path)
    except RunFileError as e:
        raise LiveCommandError(str(e)) from None
    s = rec.series
    header = _start_header(rec.attrs)
    attrs = {k: header[k] for k in ("haadf_dose_e_per_A2", "chem_dose_e_per_A2", "specimen",
                                    "seed") if isinstance(header.get(k), int | float | str)}
    attrs["replayed_from"] = str(path)
    out = tmp / "series.h5"
    write_series(out, TiltSeries(s.haadf, s.haadf_angles, s.chem, s.chem_angles, Z=s.Z,
                                 background=s.background, gamma=s.gamma,
                                 chem_kind=s.chem_kind, subtracted_level=s.subtracted_level,
                                 pixel_size_nm=s.pixel_size_nm, attrs=attrs))
    return out


def _start_header(attrs: dict[str, Any]) -> dict[str, Any]:
    try:
        h = json.loads(attrs.get("start_header", "{}"))
    except (TypeError, ValueError):
        return {}
    return h if isinstance(h, dict) else {}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay", help="stream a series or run file through the live controller",
        description="Start an instrument that replays FILE and a controller that records "
                    "it anew.")
    p.add_argument("file", metavar="FILE.h5", help="series or run file")
    p.add_argument("--speed", type=_positive_float, default=100.0,
                   help="speed-up over real acquisition times (default 100)")
    p.add_argument("--record", default=None, metavar="RUN.h5",
                   help="run file to write (default FILE-replay.h5 beside FILE)")
    add_control_options(p)
    p.set_defaults(func=cmd_replay)
