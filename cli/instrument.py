"""`fusetomo instrument-sim`: serve a simulated (or replayed) tilt series to a controller.

The first line on stdout is `instrument listening on <endpoint>` (flushed), with the real
port when binding to port 0; the last one summarises the run. Log lines go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fusetomo.adapters.instrument.plans import ORDERS, SEQUENTIAL, SchemeError
from fusetomo.adapters.transport import DEFAULT_BIND, CurveKeys
from fusetomo.cli.argtypes import add_threads_option
from fusetomo.cli.argtypes import positive_float as _positive_float
from fusetomo.cli.argtypes import positive_int as _positive_int
from fusetomo.simulators.forward import AcquisitionParams
from fusetomo.simulators.instrument import InstrumentError, InstrumentParams, SimulatedInstrument


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "instrument-sim", help="serve a simulated or replayed tilt series to a controller",
        description="A simulated microscope: follows a tilt plan and sends each tilt over "
                    "the fusetomo wire protocol as it is 'acquired'.")
    p.add_argument("--bind", default=DEFAULT_BIND,
                   help=f"ZeroMQ address to bind (default {DEFAULT_BIND}: a free port)")
    p.add_argument("--specimen", default="nanocubes",
                   help="built-in specimen (nanocubes, core-shell) or an HDF5 specimen file")
    p.add_argument("--size", type=_positive_int, default=64, help="reconstruction size n")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=_positive_float, default=1.0,
                   help="speed factor: step times are divided by it")
    p.add_argument("--scheme", choices=ORDERS, default=SEQUENTIAL, help="acquisition order")
    add_threads_option(p)
    p.add_argument("--tilt-range", type=float, nargs=2, default=(-70.0, 70.0),
                   metavar=("LO", "HI"), help="degrees")
    p.add_argument("--haadf-step", type=float, default=3.0, help="degrees")
    p.add_argument("--chem-step", type=float, default=15.0, help="degrees")
    p.add_argument("--chem-snr", type=float, default=2.5, help="mean chemical-map SNR")
    p.add_argument("--drift", type=float, default=0.0, metavar="SIGMA",
                   help="random drift per acquisition, sigma in pixels (0: off)")
    p.add_argument("--axis-offset", type=float, default=0.0, metavar="PX",
                   help="tilt-axis offset along the detector axis in pixels (0: off)")
    p.add_argument("--window", type=_positive_int, default=64,
                   help="max unacknowledged data messages in flight")
    p.add_argument("--manual", action="store_true",
                   help="do not follow the plan until the controller sends 'resume'")
    p.add_argument("--hold-for-advice", action="store_true",
                   help="HAADF-only plan; hold at each tilt until the controller sends "
                        "acquire_spectrum or continue (spectrum images possible at every tilt)")
    p.add_argument("--hold-timeout", type=_positive_float, default=120.0, metavar="S",
                   help="with --hold-for-advice: go on after this long without a decision")
    p.add_argument("--haadf-only", action="store_true",
                   help="a HAADF-only series: no element announced, no spectrum image")
    p.add_argument("--source", default=None, metavar="FILE.h5",
                   help="replay this series or run file instead of simulating")
    p.add_argument("--series-id", default=None, help="series id (default: a fresh one)")
    g = p.add_argument_group("CURVE encryption and authentication (docs/protocol.md)")
    g.add_argument("--keys", default=None, metavar="DIR",
                   help="the folder `fusetomo keys DIR` made: accept only its controller")
    g.add_argument("--curve-secret", default=None, metavar="FILE",
                   help="this instrument's secret key file (zmq.auth.create_certificates)")
    g.add_argument("--curve-clients", default=None, metavar="DIR",
                   help="folder of the public keys of the controllers allowed to connect")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr log level")
    p.set_defaults(func=cmd_instrument_sim)


def params_from_args(args: argparse.Namespace) -> InstrumentParams:
    try:
        acq = AcquisitionParams(chem_snr=args.chem_snr)
    except ValueError as e:
        raise InstrumentError(str(e)) from None
    return InstrumentParams(
        specimen=args.specimen, size=args.size, seed=args.seed, scheme=args.scheme,
        tilt_range=tuple(args.tilt_range), haadf_step=args.haadf_step,
        chem_step=args.chem_step, speed=args.speed, drift_sigma_px=args.drift,
        axis_offset_px=args.axis_offset, auto=not args.manual, window=args.window,
        source=args.source, bind=args.bind, series_id=args.series_id, acquisition=acq,
        curve=_curve(args), hold_for_advice=args.hold_for_advice,
        hold_timeout_s=args.hold_timeout, haadf_only=args.haadf_only)


def _curve(args: argparse.Namespace) -> CurveKeys | None:
    if args.keys is not None:
        from fusetomo.adapters.keys import KeysError, keys_for

        try:
            return keys_for(args.keys, "instrument")
        except KeysError as e:
            raise InstrumentError(str(e)) from None
    secret, clients = args.curve_secret, args.curve_clients
    if secret is None and clients is None:
        return None
    if secret is None or clients is None:
        raise InstrumentError("CURVE needs both --curve-secret and --curve-clients")
    return CurveKeys(secret_file=Path(secret), authorized_clients_dir=Path(clients))


def cmd_instrument_sim(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        inst = SimulatedInstrument(params_from_args(args))
        endpoint = inst.bind()
    except (InstrumentError, SchemeError) as e:
        print(f"fusetomo: error: {e}", file=sys.stderr)
        return 2
    print(f"instrument listening on {endpoint}", flush=True)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_signal) if in_main else None
    try:
        stats = inst.serve(stop)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    state = "acknowledged" if stats.end_acked else "not acknowledged (stopped)"
    print(f"series {inst.series_id}: {stats.reason or 'unfinished'}, {stats.n_haadf} HAADF + "
          f"{stats.n_chem} chemical tilts, dose {stats.dose_haadf:.4g} + "
          f"{stats.dose_chem:.4g} e/A^2; series_end {state}; {stats.resent} resent, "
          f"{stats.errors_sent} error replies, {stats.errors_received} errors received",
          flush=True)
    return 0
