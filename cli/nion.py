"""`fusetomo nion-usim`: the Nion Swift adapter on a headless nionswift-usim microscope.

A demo and a rehearsal of the real thing without a microscope: nionswift-usim with a fusetomo
specimen (simulators/usim_tomo.py) behind the same `NionTomoAdapter` that runs at a Nion
microscope. Connect a controller to the printed endpoint:

    fusetomo nion-usim --size 32 &           # prints: instrument listening on tcp://...
    fusetomo control --instrument tcp://127.0.0.1:PORT --record run.h5

The first stdout line is `instrument listening on <endpoint>`; the last summarises the run.
Exit status 0 when the series end was acknowledged, 1 when stopped first, 2 on bad values.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from fusetomo.adapters.instrument.plans import ORDERS, SEQUENTIAL
from fusetomo.adapters.transport import DEFAULT_BIND
from fusetomo.cli.argtypes import positive_float as _positive_float
from fusetomo.cli.argtypes import positive_int as _positive_int


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "nion-usim", help="the Nion Swift adapter on a simulated (usim) Nion microscope",
        description="Runs nionswift-usim headless with a fusetomo specimen and serves its "
                    "tilt series through the Nion Swift adapter (stage tilt control, HAADF "
                    "scans, synchronized EELS spectrum images, element maps).")
    p.add_argument("--bind", default=DEFAULT_BIND,
                   help=f"ZeroMQ address to bind (default {DEFAULT_BIND}: a free port)")
    p.add_argument("--specimen", default="nanocubes",
                   help="built-in specimen (nanocubes, core-shell) or an HDF5 specimen file")
    p.add_argument("--size", type=_positive_int, default=32,
                   help="scan size in pixels a side (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheme", choices=ORDERS, default=SEQUENTIAL, help="acquisition order")
    p.add_argument("--tilt-range", type=float, nargs=2, default=(-60.0, 60.0),
                   metavar=("LO", "HI"), help="degrees (default -60 60)")
    p.add_argument("--haadf-step", type=float, default=5.0, help="degrees (default 5)")
    p.add_argument("--chem-step", type=float, default=30.0, help="degrees (default 30)")
    p.add_argument("--dwell-us", type=_positive_float, default=4.0,
                   help="HAADF scan pixel time, us (default 4)")
    p.add_argument("--exposure-ms", type=_positive_float, default=1.0,
                   help="EELS exposure per spectrum-image pixel, ms (default 1)")
    p.add_argument("--tilt-control", default="StageOutA",
                   help="name of the stage tilt control (radians)")
    p.add_argument("--manual", action="store_true",
                   help="do not follow the plan until the controller sends 'resume'")
    p.add_argument("--series-id", default=None, help="series id (default: a fresh one)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr log level")
    p.set_defaults(func=cmd_nion_usim)


def cmd_nion_usim(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from fusetomo.adapters.nion import NionAdapterError, NionTomoConfig, open_adapter
        from fusetomo.simulators.usim_tomo import UsimTomo, UsimTomoError, UsimTomoParams
    except ImportError as e:
        print(f"fusetomo: error: {e}; install nionswift-instrumentation and nionswift-usim "
              "(pip install 'fusetomo[nion]' nionswift-usim)", file=sys.stderr)
        return 2
    try:
        sim_params = UsimTomoParams(specimen=args.specimen, size=args.size, seed=args.seed,
                                    tilt_control=args.tilt_control)
        sim = UsimTomo(sim_params).start()
    except (UsimTomoError, ValueError) as e:
        print(f"fusetomo: error: {e}", file=sys.stderr)
        return 2
    try:
        try:
            config = NionTomoConfig(
                elements=tuple(sim.elements), Z=sim.Z, scheme=args.scheme,
                tilt_range=tuple(args.tilt_range), haadf_step=args.haadf_step,
                chem_step=args.chem_step, tilt_control=args.tilt_control, size=args.size,
                haadf_dwell_us=args.dwell_us, exposure_ms=args.exposure_ms,
                fov_nm=sim_params.fov_nm, bind=args.bind, series_id=args.series_id,
                auto=not args.manual, extra={"specimen": args.specimen, "seed": args.seed,
                                             "simulator": "nionswift-usim"})
            adapter = open_adapter(config)
            endpoint = adapter.bind()
        except NionAdapterError as e:
            print(f"fusetomo: error: {e}", file=sys.stderr)
            return 2
        print(f"instrument listening on {endpoint}", flush=True)
        stop = threading.Event()
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None
        try:
            stats = adapter.serve(stop)
        except KeyboardInterrupt:
            stats = adapter.stats
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
    finally:
        sim.close()
    state = "acknowledged" if stats.end_acked else "not acknowledged (stopped)"
    print(f"series {adapter.series_id} {stats.reason or 'unfinished'}: {stats.n_haadf} HAADF "
          f"+ {stats.n_chem} chemical tilts, end {state}", flush=True)
    return 0 if stats.end_acked else 1
