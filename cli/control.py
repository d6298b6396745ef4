"""`fusetomo control`: the live controller.

    fusetomo control --instrument tcp://HOST:PORT --record RUN.h5 [--resume] ...

It prints `controller publishing status on <endpoint>` as its first stdout line and a
one-line summary as its last. Exit status: 0 once the series end is recorded (and the
final reconstruction saved), and also when stopped by SIGTERM/SIGINT at any moment (the
last iteration recorded, the run file closed; continue with --resume), 2 when the series
cannot be completed or a value is wrong
(`fusetomo: error: ...`).
"""
from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.adapters.runfile import RunFileError, read_run
from fusetomo.adapters.transport import CurveKeys
from fusetomo.cli.common import error, setup_logging, stop_on_signals
from fusetomo.cli.live_options import (
    READY_PREFIX,
    LiveCommandError,
    add_control_options,
    add_curve_options,
    curve_keys,
    live_params,
)
from fusetomo.controller.live import (
    HEALTHY,
    LiveController,
    LiveError,
    LiveParams,
)
from fusetomo.controller.live.timing import timing_summary


def run_controller(address: str, record: Path, params: LiveParams, *, resume: bool,
                    publish: str, curve: CurveKeys | None = None,
                    server_curve: CurveKeys | None = None) -> int:
    try:
        ctrl = LiveController(address, record, params, resume=resume, publish_bind=publish,
                              curve=curve, server_curve=server_curve)
    except (LiveError, ValueError) as e:
        return error(str(e))

    def ready(c: LiveController) -> None:
        print(f"{READY_PREFIX}{c.publish_endpoint}", flush=True)
        if c.operator_endpoint is not None:
            print(f"controller accepting operator commands on {c.operator_endpoint}",
                  flush=True)

    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            code = ctrl.run(stop, on_ready=ready)
    except LiveError as e:
        return error(str(e))
    if code != HEALTHY:
        # Stopped by SIGTERM/SIGINT (at any moment): the last iteration is recorded and the
        # file closed; a clean end.
        print(f"fusetomo: stopped; {record} keeps what was recorded (continue with "
              "--resume)", file=sys.stderr)
        return 0
    print(run_line(record, ctrl.latencies), flush=True)
    return 0


def run_line(record: Path, latencies: list[float]) -> str:
    try:
        rec = read_run(record)
    except RunFileError as e:
        return f"{record}: {e}"
    n_h, n_c = rec.series.haadf.shape[0], rec.series.common_chem_angles.size
    dose = sum(float(np.sum(v)) for v in rec.dose_e_per_A2.values())
    t = timing_summary(rec.events)
    if t["processing_s_median"] is not None:
        lat_text = (f", processing median {t['processing_s_median']:.2f} s per tilt, "
                    f"reconstruction at most {t['lag_s_max']:.2f} s behind the newest tilt")
    else:
        lat = latencies_of(rec.events) or latencies
        lat_text = f", latency median {np.median(lat):.2f} s" if lat else ""
    return (f"run complete: {record}: {n_h} HAADF + {n_c} chemical tilts, dose "
            f"{dose:.4g} e/A^2{lat_text}")


def latencies_of(events: Sequence[dict[str, Any]]) -> list[float]:
    return [float(e["latency_s"]) for e in events
            if e.get("kind") == "latency" and isinstance(e.get("latency_s"), int | float)]


# -- control --------------------------------------------------------------------------------
def cmd_control(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        params = live_params(args)
        curve, server_curve = curve_keys(args)
    except LiveCommandError as e:
        return error(str(e))
    return run_controller(args.instrument, Path(args.record), params, resume=args.resume,
                           publish=args.publish, curve=curve, server_curve=server_curve)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "control", help="receive, record and reconstruct a live tilt series",
        description="Connect to an instrument, record each tilt to the run file before "
                    "acknowledging it, and keep the fused reconstruction up to date.")
    p.add_argument("--instrument", required=True, metavar="tcp://HOST:PORT",
                   help="the instrument's address")
    p.add_argument("--record", required=True, metavar="RUN.h5", help="run file to write")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run file (rebuilds the reconstruction)")
    add_control_options(p)
    add_curve_options(p)
    p.set_defaults(func=cmd_control)
