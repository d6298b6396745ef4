"""Live-loop commands: `control`, `replay` and `demo` (alias `live-demo`; registered by
cli.py).

    fusetomo control --instrument tcp://HOST:PORT --record RUN.h5 [--resume] ...
    fusetomo replay FILE.h5 [--speed X] [--record RUN.h5]
    fusetomo live-demo [--out DIR] [--specimen NAME|FILE] [--size N] [--json] [--speed X]

`control` prints `controller publishing status on <endpoint>` as its first stdout line and
a one-line summary as its last. Exit status: 0 once the series end is recorded (and the
final reconstruction saved), 1 when stopped by SIGTERM/SIGINT before that (continue with
--resume), 2 when the series cannot be completed or a value is wrong
(`fusetomo: error: ...`). `replay` and `live-demo` start `fusetomo instrument-sim` as a
separate process; `live-demo` also runs `fusetomo control` as one, watches its status and
writes DIR/run.h5 and DIR/summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import zmq
from tqdm.auto import tqdm

from fusetomo.adapters.runfile import FORMAT as RUN_FORMAT
from fusetomo.adapters.runfile import RunFileError, read_run, read_snapshot
from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import SeriesFileError, file_format, write_series
from fusetomo.adapters.transport import DEFAULT_BIND, CurveKeys, StatusSubscriber
from fusetomo.controller.advisor import POLICIES, AdvisorError, AdvisorParams
from fusetomo.controller.argtypes import add_threads_option
from fusetomo.controller.argtypes import non_negative_int as _non_negative_int
from fusetomo.controller.argtypes import positive_float as _positive_float
from fusetomo.controller.argtypes import positive_int as _positive_int
from fusetomo.controller.live import (
    HEALTHY,
    LiveController,
    LiveError,
    LiveParams,
)
from fusetomo.controller.live_advice import MODES, AdviceParams
from fusetomo.controller.live_align import LiveAlignParams
from fusetomo.solver.fusion import FusionParams

READY_PREFIX = "controller publishing status on "
INSTRUMENT_PREFIX = "instrument listening on "
STARTUP_TIMEOUT_S = 120.0


class LiveCommandError(RuntimeError):
    """A live command that cannot do its job; the message says why."""


# -- shared option parsing ------------------------------------------------------------------






def _add_solver_options(p: argparse.ArgumentParser) -> None:
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


def _add_advice_options(p: argparse.ArgumentParser, *, mode_default: str = "off") -> None:
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
                   help="minimum angle between spectrum images (default: 0.75 x the even "
                        "spacing of the budget)")
    g.add_argument("--stop-ratio", type=float, default=AdvisorParams.stop_ratio,
                   help="stop spectroscopy when the best remaining tilt's predicted map "
                        "variance is below this fraction of a map's noise variance")


def _advice_params(args: argparse.Namespace, mode: str) -> AdviceParams:
    try:
        return AdviceParams(mode=mode, policy=args.policy or "adaptive",
                            advisor=AdvisorParams(chem_maps=args.chem_maps,
                                                  chem_dose_budget=args.chem_dose_budget,
                                                  min_spacing_deg=args.min_spacing,
                                                  stop_ratio=args.stop_ratio,
                                                  seed=getattr(args, "seed", 0) or 0))
    except (ValueError, AdvisorError) as e:
        raise LiveCommandError(str(e)) from None


def _add_control_options(p: argparse.ArgumentParser) -> None:
    _add_solver_options(p)
    _add_advice_options(p)
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


def _add_curve_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CURVE encryption (an instrument PC on another host)")
    g.add_argument("--curve-secret", default=None, metavar="FILE",
                   help="this controller's secret key file (zmq.auth.create_certificates)")
    g.add_argument("--curve-server-key", default=None, metavar="FILE",
                   help="the instrument's public key file")


def _curve(args: argparse.Namespace) -> CurveKeys | None:
    secret, server = getattr(args, "curve_secret", None), getattr(args, "curve_server_key",
                                                                  None)
    if secret is None and server is None:
        return None
    if secret is None or server is None:
        raise LiveCommandError("CURVE needs both --curve-secret and --curve-server-key")
    for f in (secret, server):
        if not Path(f).is_file():
            raise LiveCommandError(f"{f}: no such key file")
    return CurveKeys(Path(secret), server_public_file=Path(server))


def _live_params(args: argparse.Namespace) -> LiveParams:
    try:
        return LiveParams(
            iterations_per_tilt=args.iterations_per_tilt,
            final_iterations=args.final_iterations,
            max_idle_iterations=args.max_idle_iterations,
            idle_iterations=args.max_idle_iterations > 0,
            interleave=not args.strict_schedule,
            device=args.device, timeout_s=getattr(args, "timeout", None),
            fusion=FusionParams(),
            advice=_advice_params(args, getattr(args, "advice", "off")),
            align=(LiveAlignParams(rotation_deg=args.align_rotation) if args.align
                   else None),
            operator_bind=(None if getattr(args, "operator", DEFAULT_BIND) == "none"
                           else getattr(args, "operator", DEFAULT_BIND)))
    except ValueError as e:
        raise LiveCommandError(str(e)) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _error(text: str) -> int:
    print(f"fusetomo: error: {text}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (the run file stays resumable)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_controller(address: str, record: Path, params: LiveParams, *, resume: bool,
                    publish: str, curve: CurveKeys | None = None) -> int:
    try:
        ctrl = LiveController(address, record, params, resume=resume, publish_bind=publish,
                              curve=curve)
    except (LiveError, ValueError) as e:
        return _error(str(e))

    def ready(c: LiveController) -> None:
        print(f"{READY_PREFIX}{c.publish_endpoint}", flush=True)
        if c.operator_endpoint is not None:
            print(f"controller accepting operator commands on {c.operator_endpoint}",
                  flush=True)

    stop = threading.Event()
    try:
        with _stop_on_signals(stop):
            code = ctrl.run(stop, on_ready=ready)
    except LiveError as e:
        return _error(str(e))
    if code != HEALTHY:
        print(f"fusetomo: stopped before the series end; {record} keeps what was recorded "
              "(continue with --resume)", file=sys.stderr)
        return code
    print(_run_line(record, ctrl.latencies), flush=True)
    return 0


def _run_line(record: Path, latencies: list[float]) -> str:
    try:
        rec = read_run(record)
    except RunFileError as e:
        return f"{record}: {e}"
    n_h, n_c = rec.series.haadf.shape[0], rec.series.common_chem_angles.size
    dose = sum(float(np.sum(v)) for v in rec.dose_e_per_A2.values())
    lat = _latencies(rec.events) or latencies
    lat_text = f", latency median {np.median(lat):.2f} s" if lat else ""
    return (f"run complete: {record}: {n_h} HAADF + {n_c} chemical tilts, dose "
            f"{dose:.4g} e/A^2{lat_text}")


def _latencies(events: Sequence[dict[str, Any]]) -> list[float]:
    return [float(e["latency_s"]) for e in events
            if e.get("kind") == "latency" and isinstance(e.get("latency_s"), int | float)]


# -- control --------------------------------------------------------------------------------
def cmd_control(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    try:
        params = _live_params(args)
        curve = _curve(args)
    except LiveCommandError as e:
        return _error(str(e))
    return _run_controller(args.instrument, Path(args.record), params, resume=args.resume,
                           publish=args.publish, curve=curve)


# -- child processes ------------------------------------------------------------------------
def fusetomo_argv(*args: str) -> list[str]:
    """A `fusetomo` command line run by this Python (no dependence on PATH)."""
    return [sys.executable, "-m", "fusetomo.controller.cli", *args]


class Child:
    """A child process whose first stdout line announces an endpoint; the rest of its
    stdout is collected by a thread (so that the pipe never fills), stderr goes to a file
    (or is inherited)."""

    def __init__(self, argv: list[str], prefix: str, log_file: Path | None = None,
                 timeout: float = STARTUP_TIMEOUT_S) -> None:
        self.argv = argv
        self.log_file = log_file
        self._log: IO[str] | None = None if log_file is None else open(log_file, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                     stderr=self._log if self._log is not None else None,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.endpoint = self._first_line(prefix, timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def _first_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.stop()
                raise LiveCommandError(f"{' '.join(self.argv[3:5])} did not start within "
                                       f"{timeout:g} s{self.log_tail()}") from None
            if line is None:
                self.proc.wait()
                raise LiveCommandError(f"{' '.join(self.argv[3:5])} exited with status "
                                       f"{self.proc.returncode} before it was ready"
                                       f"{self.log_tail()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            self.lines.append(line)

    def rest(self) -> list[str]:
        """Stdout lines after the first (call once the process has ended)."""
        self._reader.join(timeout=5)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return self.lines

    def log_tail(self, n: int = 12) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        if self._log is not None:
            self._log.flush()
        lines = self.log_file.read_text(errors="replace").splitlines()[-n:]
        return (f" ({self.log_file}:\n  " + "\n  ".join(lines) + ")") if lines else ""

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return self.proc.returncode

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()


def start_instrument(extra: list[str], log_file: Path | None = None) -> Child:
    return Child(fusetomo_argv("instrument-sim", "--bind", DEFAULT_BIND, "--log-level",
                               "WARNING", *extra), INSTRUMENT_PREFIX, log_file)


# -- replay ---------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    source = Path(args.file)
    if not source.is_file():
        return _error(f"{source}: no such file")
    record = Path(args.record) if args.record else source.with_name(
        f"{source.stem}-replay.h5")
    if record.exists():
        return _error(f"{record} exists: choose another file with --record")
    with tempfile.TemporaryDirectory(prefix="fusetomo-replay-") as tmp:
        try:
            params = _live_params(args)
            src = _series_source(source, Path(tmp))
            inst = start_instrument(["--source", str(src), "--speed", str(args.speed)])
        except LiveCommandError as e:
            return _error(str(e))
        try:
            code = _run_controller(inst.endpoint, record, params, resume=False,
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


# -- live demo ------------------------------------------------------------------------------
def add_demo_options(p: argparse.ArgumentParser) -> None:
    """Options of the live demo (a parser of their own: they include --size, --specimen,
    --seed and --speed, so they do not combine with cli.py's simulation options)."""
    p.add_argument("--out", default="fusetomo-demo", help="folder for run.h5, summary.json "
                   "and the processes' logs (run.h5 there is replaced)")
    p.add_argument("--specimen", default="nanocubes",
                   help="built-in specimen (nanocubes, core-shell) or an HDF5 specimen file")
    p.add_argument("--size", type=_positive_int, default=64, help="reconstruction size n")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=_positive_float, default=20.0,
                   help="instrument speed-up over real acquisition times (default 20)")
    p.add_argument("--scheme", choices=("sequential", "dose-symmetric"),
                   default="sequential", help="acquisition order")
    p.add_argument("--haadf-step", type=float, default=3.0, help="degrees")
    p.add_argument("--chem-step", type=float, default=15.0, help="degrees")
    p.add_argument("--tilt-range", type=float, nargs=2, default=(-70.0, 70.0),
                   metavar=("LO", "HI"), help="degrees")
    p.add_argument("--drift", type=float, default=0.0, metavar="SIGMA",
                   help="random specimen drift per tilt, px (the instrument's)")
    p.add_argument("--axis-offset", type=float, default=0.0, metavar="PX",
                   help="tilt-axis offset, px (the instrument's)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=_positive_float, default=60.0, metavar="S",
                   help="fail when the instrument is silent this long (default 60)")
    _add_solver_options(p)
    _add_advice_options(p, mode_default="auto")


def _progress(pub: str, ctrl: Child, total: int | None, quiet: bool) -> None:
    """A progress bar from the controller's status until it exits."""
    ctx = zmq.Context()
    sub = StatusSubscriber(pub, ("status",), ctx=ctx)
    bar = tqdm(total=total, desc="tilts", unit="tilt", file=sys.stderr, disable=quiet,
               mininterval=0.5, dynamic_ncols=True)
    try:
        while ctrl.proc.poll() is None:
            got = sub.recv(200)
            if got is None:
                continue
            h = got[1].header
            n = int(h.get("haadf_tilts", 0)) + int(h.get("chem_tilts", 0))
            planned = (h.get("planned_haadf") or 0) + (h.get("planned_chem") or 0)
            if planned and bar.total != planned:
                bar.total = planned
            if n > bar.n:
                bar.update(n - bar.n)
            costs = h.get("costs") or {}
            bar.set_postfix(it=h.get("iteration"), lat=_fmt(h.get("latency_s")),
                            chem=_fmt(costs.get("chem")), refresh=False)
    finally:
        bar.close()
        sub.close()
        ctx.term()


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, int | float) else "-"


def run_live_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_path = out / "run.h5"
    run_path.unlink(missing_ok=True)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    sim = ["--specimen", str(args.specimen), "--size", str(args.size), "--seed",
           str(args.seed), "--speed", str(args.speed), "--scheme", args.scheme,
           "--haadf-step", str(args.haadf_step), "--chem-step", str(args.chem_step),
           "--tilt-range", *(str(v) for v in args.tilt_range),
           "--drift", str(args.drift), "--axis-offset", str(args.axis_offset)]
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    sim += threads
    advice: list[str] = []
    if args.policy is not None:
        # The instrument holds at each tilt and the controller's policy decides.
        sim += ["--hold-for-advice"]
        advice = ["--advice", "auto", "--policy", args.policy, "--stop-ratio",
                  str(args.stop_ratio)]
        for flag, v in (("--chem-maps", args.chem_maps),
                        ("--chem-dose-budget", args.chem_dose_budget),
                        ("--min-spacing", args.min_spacing)):
            if v is not None:
                advice += [flag, str(v)]
        if args.policy in ("uniform", "random") and args.chem_maps is None:
            return _error(f"--policy {args.policy} needs --chem-maps K (the number of "
                          "spectrum images)")
    inst = ctrl = None
    try:
        inst = start_instrument(sim, out / "instrument.log")
        ctrl = Child(fusetomo_argv(
            "control", "--instrument", inst.endpoint, "--record", str(run_path),
            "--iterations-per-tilt", str(args.iterations_per_tilt), "--final-iterations",
            str(args.final_iterations), "--max-idle-iterations",
            str(args.max_idle_iterations), "--device", args.device, "--timeout",
            str(args.timeout), *(["--strict-schedule"] if args.strict_schedule else []),
            "--seed", str(args.seed), *advice, *threads,
            *(["--align", "--align-rotation", str(args.align_rotation)] if args.align
              else [])),
            READY_PREFIX, out / "controller.log")
        log(f"instrument {inst.endpoint}, controller status {ctrl.endpoint}")
        _progress(ctrl.endpoint, ctrl, None, args.quiet)
        code = ctrl.wait()
        if code != 0:
            raise LiveCommandError(f"the controller exited with status {code}"
                                   f"{ctrl.log_tail()}")
        inst.wait(timeout=10)
    except LiveCommandError as e:
        return _error(str(e))
    finally:
        for child in (ctrl, inst):
            if child is not None:
                child.close()
    summary = live_summary(run_path, args.specimen, args.size, args.seed)
    summary["policy"] = args.policy or "planned"
    summary["scheme"] = args.scheme
    summary["elapsed_s"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        per = ", ".join(f"{e} {v:.3f}" for e, v in summary["nrmse"].items())
        log(f"<NRMSE> = {summary['nrmse_mean']:.3f}  ({per})")
        log(f"{summary['haadf_tilts']} HAADF + {summary['chem_tilts']} chemical tilts, dose "
            f"{summary['dose_e_per_A2']:.4g} e/A^2, latency median "
            f"{_fmt(summary['latency_s_median'])} s")
        log(f"wrote {run_path}, {out / 'summary.json'} in {summary['elapsed_s']:.1f} s")
    return 0


def live_summary(run_path: Path, specimen: str, size: int, seed: int) -> dict[str, Any]:
    """The demo's summary of a finished run: the final snapshot scored against the truth
    re-simulated from the same specimen and seed (forward.simulate's binned truth)."""
    from fusetomo.simulators.forward import AcquisitionParams, bin_volume
    from fusetomo.simulators.specimens import make_specimen, resample
    from fusetomo.solver.metrics import nrmse_per_element

    rec = read_run(run_path)
    iteration, volumes = read_snapshot(run_path)
    o = AcquisitionParams().oversample
    spec = make_specimen(specimen, size * o, seed=seed)
    if spec.size != size * o:
        spec = resample(spec, size * o)
    truth = {e: bin_volume(spec.volumes[i], o) for i, e in enumerate(spec.elements)}
    scores = nrmse_per_element({e: truth[e] for e in volumes if e in truth}, volumes)
    lat = _latencies(rec.events)
    return {
        "specimen": str(specimen),
        "size": size,
        "seed": seed,
        "nrmse_mean": float(np.mean(list(scores.values()))),
        "nrmse": scores,
        "haadf_tilts": int(rec.series.haadf.shape[0]),
        "chem_tilts": int(rec.series.common_chem_angles.size),
        "chem_angles": [float(a) for a in rec.series.common_chem_angles],
        "advices": sum(1 for ev in rec.events if ev.get("kind") == "advice"),
        "dose_e_per_A2": sum(float(np.sum(v)) for v in rec.dose_e_per_A2.values()),
        "latency_s_median": float(np.median(lat)) if lat else None,
        "latency_s_p90": float(np.percentile(lat, 90)) if lat else None,
        "iterations": iteration,
        "complete": rec.complete,
        "files": {"run": str(run_path)},
    }


def cmd_live_demo(args: argparse.Namespace) -> int:
    return run_live_demo(args)


# -- registration ---------------------------------------------------------------------------
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
    _add_control_options(p)
    _add_curve_options(p)
    p.set_defaults(func=cmd_control)

    p = subparsers.add_parser(
        "replay", help="stream a series or run file through the live controller",
        description="Start an instrument that replays FILE and a controller that records "
                    "it anew.")
    p.add_argument("file", metavar="FILE.h5", help="series or run file")
    p.add_argument("--speed", type=_positive_float, default=100.0,
                   help="speed-up over real acquisition times (default 100)")
    p.add_argument("--record", default=None, metavar="RUN.h5",
                   help="run file to write (default FILE-replay.h5 beside FILE)")
    _add_control_options(p)
    p.set_defaults(func=cmd_replay)

    p = subparsers.add_parser(
        "demo", aliases=["live-demo"],
        help="the main job: simulated instrument and controller as separate processes",
        description="Run a whole simulated series through the live loop over loopback "
                    "ZeroMQ, with a progress display; write DIR/run.h5 and "
                    "DIR/summary.json.")
    add_demo_options(p)
    p.set_defaults(func=cmd_live_demo)
