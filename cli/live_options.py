"""Options shared by the live commands (control, replay, demo): the solver's schedule,
advice, alignment, sockets, CURVE."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusetomo.adapters.keys import KeysError, keys_for
from fusetomo.adapters.transport import DEFAULT_BIND, CurveKeys
from fusetomo.cli.argtypes import add_threads_option
from fusetomo.cli.argtypes import non_negative_int as _non_negative_int
from fusetomo.cli.argtypes import positive_float as _positive_float
from fusetomo.cli.argtypes import positive_int as _positive_int
from fusetomo.controller.advisor import POLICIES, AdvisorError, AdvisorParams
from fusetomo.controller.live import (
    LiveParams,
)
from fusetomo.controller.live.advice import MODES, AdviceParams
from fusetomo.controller.live.aligner import LiveAlignParams
from fusetomo.core.errors import FusetomoError
from fusetomo.solver.fusion import FusionParams

READY_PREFIX = "controller publishing status on "
INSTRUMENT_PREFIX = "instrument listening on "
STARTUP_TIMEOUT_S = 120.0


class LiveCommandError(FusetomoError, RuntimeError):
    """A live command that cannot do its job; the message says why."""


# -- shared option parsing ------------------------------------------------------------------






def add_solver_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iterations-per-tilt", type=_non_negative_int, default=3,
                   help="warm-start iterations after each tilt (k, default 3)")
    p.add_argument("--final-iterations", type=_non_negative_int, default=20,
                   help="iterations after the series end (default 20)")
    p.add_argument("--max-idle-iterations", type=_non_negative_int, default=50,
                   help="iterations while waiting, at most this many after each tilt "
                        "(default 50; 0: none)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    add_threads_option(p)
    p.add_argument("--align", action="store_true",
                   help="align each tilt on arrival (against the previous tilt and the "
                        "reprojection) and refine the alignment while waiting")
    p.add_argument("--align-rotation", type=float, default=0.0, metavar="DEG",
                   help="with --align: the in-plane rotation of the tilt axis (calibration)")
    p.add_argument("--strict-schedule", action="store_true",
                   help="run each tilt's k iterations before reading the next message, so "
                        "that the iteration schedule does not depend on timing (with "
                        "--max-idle-iterations 0 the result is reproducible)")


def add_advice_options(p: argparse.ArgumentParser, *, mode_default: str = "off") -> None:
    g = p.add_argument_group("spectroscopy advice (controller/advisor.py)")
    if mode_default == "off":
        g.add_argument("--advice", choices=MODES, default="off",
                       help="off; auto: follow the advice (an instrument that holds for "
                            "advice then acquires as advised); manual: the operator answers "
                            "each advice (viewer, Nion Swift panel)")
        g.add_argument("--seed", type=int, default=0, help="the random policy's draw")
    g.add_argument("--policy", choices=POLICIES, default=None,
                   help="adaptive (predicted information gain, default), uniform or random")
    g.add_argument("--chem-maps", type=_positive_int, default=None, metavar="K",
                   help="spectrum-image budget (for uniform and random: the count)")
    g.add_argument("--chem-dose-budget", type=_positive_float, default=None, metavar="E",
                   help="spectroscopy dose budget, e/A^2")
    g.add_argument("--min-spacing", type=float, default=None, metavar="DEG",
                   help="minimum angle between spectrum images (default: half the even "
                        "spacing of the maps the advisor plans)")
    g.add_argument("--stop-gain", type=float, default=100 * AdvisorParams.stop_gain,
                   metavar="PCT",
                   help="adaptive: stop spectroscopy once the next map would lower the "
                        "predicted <NRMSE> by less than PCT %% (default "
                        f"{100 * AdvisorParams.stop_gain:g}; 0: take every allowed map)")


def advice_params(args: argparse.Namespace, mode: str) -> AdviceParams:
    try:
        return AdviceParams(mode=mode, policy=args.policy or "adaptive",
                            advisor=AdvisorParams(chem_maps=args.chem_maps,
                                                  chem_dose_budget=args.chem_dose_budget,
                                                  min_spacing_deg=args.min_spacing,
                                                  stop_gain=args.stop_gain / 100.0,
                                                  seed=getattr(args, "seed", 0) or 0))
    except (ValueError, AdvisorError) as e:
        raise LiveCommandError(str(e)) from None


def add_control_options(p: argparse.ArgumentParser) -> None:
    add_solver_options(p)
    add_advice_options(p)
    p.add_argument("--operator", default=DEFAULT_BIND, metavar="tcp://HOST:PORT",
                   help=f"operator-command ROUTER to bind (default {DEFAULT_BIND}: a free "
                        "port; 'none': no operator commands)")
    p.add_argument("--publish", default=DEFAULT_BIND,
                   help=f"status PUB address to bind (default {DEFAULT_BIND}: a free port)")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                   help="give up (exit 2) when nothing arrives from the instrument for S "
                        "seconds (default: wait for ever)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr log level")


def add_curve_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CURVE encryption and authentication (docs/protocol.md)")
    g.add_argument("--keys", default=None, metavar="DIR",
                   help="the folder `fusetomo keys DIR` made: every socket authenticated")
    g.add_argument("--curve-secret", default=None, metavar="FILE",
                   help="this controller's secret key file (instead of --keys)")
    g.add_argument("--curve-server-key", default=None, metavar="FILE",
                   help="the instrument's public key file")
    g.add_argument("--curve-clients", default=None, metavar="DIR",
                   help="the folder of the viewers' public keys that the status and "
                        "operator sockets accept")


def curve_keys(args: argparse.Namespace) -> tuple[CurveKeys | None, CurveKeys | None]:
    """(the instrument link's client keys, the status and operator sockets' server keys)."""
    if getattr(args, "keys", None):
        try:
            return (keys_for(args.keys, "controller"),
                    keys_for(args.keys, "controller-server"))
        except KeysError as e:
            raise LiveCommandError(str(e)) from None
    secret, server = getattr(args, "curve_secret", None), getattr(args, "curve_server_key",
                                                                  None)
    clients = getattr(args, "curve_clients", None)
    if secret is None and server is None and clients is None:
        return None, None
    if secret is None:
        raise LiveCommandError("CURVE needs --curve-secret (or --keys DIR)")
    for f in (secret, server):
        if f is not None and not Path(f).is_file():
            raise LiveCommandError(f"{f}: no such key file")
    if clients is not None and not Path(clients).is_dir():
        raise LiveCommandError(f"{clients}: no such folder of public keys")
    client = None if server is None else CurveKeys(Path(secret),
                                                   server_public_file=Path(server))
    srv = None if clients is None else CurveKeys(Path(secret),
                                                 authorized_clients_dir=Path(clients))
    if client is None and srv is None:
        raise LiveCommandError("CURVE needs --curve-server-key and/or --curve-clients")
    return client, srv


def live_params(args: argparse.Namespace) -> LiveParams:
    try:
        return LiveParams(
            iterations_per_tilt=args.iterations_per_tilt,
            final_iterations=args.final_iterations,
            max_idle_iterations=args.max_idle_iterations,
            idle_iterations=args.max_idle_iterations > 0,
            interleave=not args.strict_schedule,
            device=args.device, timeout_s=getattr(args, "timeout", None),
            fusion=FusionParams(),
            advice=advice_params(args, getattr(args, "advice", "off")),
            align=(LiveAlignParams(rotation_deg=args.align_rotation) if args.align
                   else None),
            operator_bind=(None if getattr(args, "operator", DEFAULT_BIND) == "none"
                           else getattr(args, "operator", DEFAULT_BIND)))
    except ValueError as e:
        raise LiveCommandError(str(e)) from None
