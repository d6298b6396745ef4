"""`fusetomo view`: the live viewer.

    fusetomo view --connect tcp://HOST:PORT [--operator tcp://HOST:PORT] [--element El ...]
    fusetomo view --run RUN.h5 [--tilt N] [--element El ...]
    fusetomo view --series SERIES.h5 [--tilt N]
    ... [--std-error] [--screenshot FILE.png [--wait S] [--size WxH]]

`--connect` subscribes to a controller's status PUB (the address `fusetomo control` prints
first); `--run` shows a recorded run with a slider over its tilts; `--series` a series
file's raw HAADF images and maps (ui/series_view.py), also a HAADF-only one. `--screenshot` renders
offscreen into a PNG and exits (live: once orthoslices arrived, or after `--wait` seconds).
Qt (the `viewer` extra: pyqtgraph, PySide6) is imported only when the command runs, so the
rest of the command line works without it. Exit status: 0; 1 when a live screenshot was
written before any orthoslices arrived; 2 for a bad value, a missing extra or an unreadable
run file (`fusetomo: error: ...`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
from typing import Any

from fusetomo.cli.argtypes import non_negative_int, positive_float, positive_int
from fusetomo.core.errors import FusetomoError

ENDPOINT = re.compile(r"^(tcp|ipc|inproc)://\S+$")
DEFAULT_SIZE = (1280, 800)
QT_MODULES = ("PySide6.QtWidgets", "pyqtgraph")


class ViewerUnavailableError(FusetomoError, RuntimeError):
    """The viewer extra is not installed, or Qt cannot open a display."""


def _endpoint(text: str) -> str:
    if not ENDPOINT.match(text):
        raise argparse.ArgumentTypeError(f"not a ZeroMQ address (tcp://HOST:PORT): {text!r}")
    return text


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if not (200 <= w <= 8192 and 200 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"size sides must lie in 200..8192, got {w}x{h}")
    return w, h


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "view", help="live viewer of a controller's status, or of a recorded run",
        description="Orthoslices of each element (or their standard error), an RGB chemical "
                    "overlay, the cost terms, dose against budget, the tilt angles taken and "
                    "the advisor's advice with Accept / Skip / Force.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--connect", type=_endpoint, metavar="tcp://HOST:PORT",
                     help="a controller's status address (printed by `fusetomo control`)")
    src.add_argument("--run", metavar="RUN.h5", help="a recorded run file")
    src.add_argument("--series", metavar="SERIES.h5",
                     help="a series file's raw tilts: HAADF image and maps, slider over tilts")
    p.add_argument("--element", action="append", metavar="EL",
                   help="show only these elements (repeat, or comma-separate)")
    p.add_argument("--std-error", action="store_true",
                   help="start showing the standard error instead of the reconstruction")
    p.add_argument("--tilt", type=non_negative_int, default=None,
                   help="--run: start at this tilt (default: the last)")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="the folder `fusetomo keys DIR` made: connect as its viewer (an "
                        "authenticated controller, `fusetomo control --keys DIR`)")
    p.add_argument("--operator", type=_endpoint, default=None, metavar="tcp://HOST:PORT",
                   help="where operator commands go (default: the endpoint the controller "
                        "publishes)")
    p.add_argument("--screenshot", metavar="FILE.png",
                   help="render offscreen into this PNG and exit")
    p.add_argument("--wait", type=positive_float, default=15.0, metavar="S",
                   help="--connect --screenshot: wait at most S seconds for orthoslices "
                        "(default 15)")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, metavar="WxH",
                   help=f"window size (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    p.add_argument("--refresh-ms", type=positive_int, default=200, metavar="MS",
                   help="redraw at most this often (default 200 ms)")
    p.set_defaults(func=cmd_view)


def _error(text: str) -> int:
    print(f"fusetomo: error: {text}", file=sys.stderr)
    return 2


def _elements(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [e.strip() for v in values for e in v.split(",") if e.strip()]
    return out or None


def require_qt() -> None:
    """Import Qt and pyqtgraph, or say which extra is missing."""
    for name in QT_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ViewerUnavailableError(
                f"fusetomo view needs the 'viewer' extra (pyqtgraph, PySide6): "
                f"pip install 'fusetomo[viewer]' ({name}: {e})") from None


def _check_display(screenshot: bool) -> None:
    if screenshot:
        # Render without a display unless the caller chose a platform.
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        return
    if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
        raise ViewerUnavailableError("no display (DISPLAY and WAYLAND_DISPLAY are unset): run it "
                                "on a desktop, or render a PNG with --screenshot FILE.png")


def cmd_view(args: argparse.Namespace) -> int:
    if args.tilt is not None and args.run is None and args.series is None:
        return _error("--tilt applies to --run and --series only")
    elements = _elements(args.element)
    try:
        _check_display(bool(args.screenshot))
        require_qt()
    except ViewerUnavailableError as e:
        return _error(str(e))

    import pyqtgraph as pg

    from fusetomo.adapters.runfile import RunFileError
    from fusetomo.ui.viewer.model import ViewerModel
    from fusetomo.ui.viewer.runsource import RecordedRun

    run = None
    if args.run is not None:
        try:
            run = RecordedRun(args.run)
        except (RunFileError, OSError) as e:
            return _error(str(e))
        unknown = [e for e in elements or () if e not in run.elements]
        if unknown:
            return _error(f"{args.run}: no element {unknown[0]!r} in this run (it has "
                          f"{', '.join(run.elements)})")
        if args.tilt is not None and args.tilt > run.n_tilts:
            return _error(f"--tilt {args.tilt}: {args.run} holds {run.n_tilts} tilts")

    pg.setConfigOptions(imageAxisOrder="row-major")
    app = pg.mkQApp("fusetomo view")
    if args.series is not None:
        return _view_series(app, args)
    from fusetomo.ui.viewer.subscriber import SubscriberThread
    from fusetomo.ui.viewer.window import ViewerWindow

    model = ViewerModel()
    source = args.connect or args.run
    curve = None
    if args.keys is not None:
        from fusetomo.adapters.keys import KeysError, keys_for

        try:
            curve = keys_for(args.keys, "viewer")
        except KeysError as e:
            return _error(str(e))
    window = ViewerWindow(model, elements=elements, show_std=args.std_error,
                          refresh_ms=args.refresh_ms, run=run,
                          operator_endpoint=args.operator, title=f"fusetomo view — {source}",
                          curve=curve)
    window.resize(*args.size)
    sub = None
    try:
        if run is not None:
            window.show_tilt_now(run.n_tilts if args.tilt is None else args.tilt)
        else:
            sub = SubscriberThread(args.connect, model, curve=curve)
            sub.failed.connect(_report)
            sub.start()
        window.show()
        if args.screenshot:
            return _screenshot(app, window, model, args)
        return int(app.exec())
    finally:
        if sub is not None:
            sub.stop()
        _dispose(app, window)


def _view_series(app: Any, args: argparse.Namespace) -> int:
    """`--series`: ui/series_view.py's window (a slider over the raw tilts)."""
    from fusetomo.adapters.series import SeriesError
    from fusetomo.adapters.seriesfile import read_series
    from fusetomo.ui.series_view import SeriesWindow

    try:
        series = read_series(args.series)
    except (SeriesError, OSError) as e:
        return _error(str(e))
    window = SeriesWindow(series, title=f"fusetomo view — {args.series}")
    window.resize(*args.size)
    if args.tilt is not None:
        if args.tilt >= series.haadf.shape[0]:
            return _error(f"--tilt {args.tilt}: {args.series} holds "
                          f"{series.haadf.shape[0]} tilts (0..{series.haadf.shape[0] - 1})")
        window.slider.setValue(args.tilt)
    window.show()
    try:
        if args.screenshot:
            try:
                w, h = window.save_screenshot(args.screenshot)
            except OSError as e:
                return _error(str(e))
            print(f"wrote {args.screenshot} ({w}x{h}): {window.caption.text()}", flush=True)
            return 0
        return int(app.exec())
    finally:
        window.close()
        window.deleteLater()
        app.processEvents()


def _report(text: str) -> None:
    print(f"fusetomo view: {text}", file=sys.stderr)


def _dispose(app: Any, window: Any) -> None:
    """Destroy the window's Qt objects now, while the application lives: left to the
    interpreter's exit, their teardown order can crash the process (segfault)."""
    from PySide6 import QtCore

    window.shutdown()
    window.close()
    window.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    app.processEvents()


def _screenshot(app: Any, window: Any, model: Any, args: argparse.Namespace) -> int:
    code = 0
    if args.connect:
        deadline = time.monotonic() + args.wait
        while not model.view().slices and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.02)
        if not model.view().slices:
            print(f"fusetomo view: no orthoslices from {args.connect} within {args.wait:g} s; "
                  "the screenshot shows what arrived", file=sys.stderr)
            code = 1
    try:
        w, h = window.save_screenshot(args.screenshot)
    except OSError as e:
        return _error(str(e))
    state = model.view()
    print(f"wrote {args.screenshot} ({w}x{h}): {state.caption or ''}"
          f"{'' if state.caption else f'iteration {state.iteration}'}", flush=True)
    return code
