"""`fusetomo demo` (alias `live-demo`): the simulated instrument and the controller as
two processes over loopback ZeroMQ, with a progress display; writes DIR/run.h5, the final
reconstruction DIR/recon.h5 (with its standard error), the report DIR/report/index.html
(unless --no-report) and DIR/summary.json, and ends with the commands that open them.

    fusetomo live-demo [--out DIR] [--specimen NAME|FILE] [--size N] [--json] [--speed X]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from tqdm.auto import tqdm

from fusetomo.adapters.runfile import RunRecord, read_run, read_snapshot
from fusetomo.adapters.transport import StatusSubscriber
from fusetomo.cli.argtypes import positive_float as _positive_float
from fusetomo.cli.argtypes import positive_int as _positive_int
from fusetomo.cli.children import Child, fusetomo_argv, start_instrument
from fusetomo.cli.common import error
from fusetomo.cli.live_options import (
    READY_PREFIX,
    LiveCommandError,
    add_advice_options,
    add_solver_options,
)
from fusetomo.controller.live.timing import timing_summary


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
    p.add_argument("--haadf-only", action="store_true",
                   help="a HAADF-only series (no spectrum image): the HAADF volume, scored "
                        "against the specimen's HAADF signal")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-report", action="store_true",
                   help="do not write DIR/report (figures and index.html)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=_positive_float, default=60.0, metavar="S",
                   help="fail when the instrument is silent this long (default 60)")
    add_solver_options(p)
    add_advice_options(p, mode_default="auto")


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
    if args.haadf_only:
        if args.policy is not None:
            return error("--haadf-only takes no spectrum image: it has no --policy")
        sim += ["--haadf-only"]
    advice: list[str] = []
    if args.policy is not None:
        # The instrument holds at each tilt and the controller's policy decides.
        sim += ["--hold-for-advice"]
        advice = ["--advice", "auto", "--policy", args.policy, "--stop-gain",
                  str(args.stop_gain)]
        for flag, v in (("--chem-maps", args.chem_maps),
                        ("--chem-dose-budget", args.chem_dose_budget),
                        ("--min-spacing", args.min_spacing)):
            if v is not None:
                advice += [flag, str(v)]
        if args.policy in ("uniform", "random") and args.chem_maps is None:
            return error(f"--policy {args.policy} needs --chem-maps K (the number of "
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
        return error(str(e))
    finally:
        for child in (ctrl, inst):
            if child is not None:
                child.close()
    summary = live_summary(run_path, args.specimen, args.size, args.seed)
    summary["policy"] = args.policy or "planned"
    summary["scheme"] = args.scheme
    summary["files"].update(demo_outputs(run_path, out, not args.no_report))
    summary["next"] = next_commands(summary["files"])
    summary["elapsed_s"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        per = ", ".join(f"{e} {v:.3f}" for e, v in summary["nrmse"].items())
        log(f"<NRMSE> = {summary['nrmse_mean']:.3f}  ({per})")
        log(f"{summary['haadf_tilts']} HAADF + {summary['chem_tilts']} chemical tilts, dose "
            f"{summary['dose_e_per_A2']:.4g} e/A^2")
        for line in summary_lines(summary):
            log(line)
        written = ", ".join(str(v) for k, v in summary["files"].items() if k != "report")
        log(f"wrote {written}, {out / 'summary.json'} in {summary['elapsed_s']:.1f} s")
        log("")
        log("what next:")
        for line in summary["next"]:
            log(f"  {line}")
    return 0


def demo_outputs(run_path: Path, out: Path, report: bool) -> dict[str, str]:
    """The final reconstruction as a reconstruction file (for export) and, if `report`,
    the report of the run; their paths."""
    from fusetomo.adapters.reconfile import write_recon
    from fusetomo.adapters.runfile import describe_run
    from fusetomo.controller.report import make_report

    files: dict[str, str] = {}
    rec = read_run(run_path)
    iteration, volumes = read_snapshot(run_path)
    std = read_snapshot(run_path, -1, group="std_error")[1] \
        if describe_run(run_path).get("std_errors") else None
    recon = write_recon(out / "recon.h5", volumes, std_error=std, attrs={
        "method": "fused (live)", "iterations": int(iteration),
        "source_file": run_path.name, "pixel_size_nm": rec.series.pixel_size_nm})
    files["recon"] = str(recon)
    if report:
        make_report(run_path, out / "report")
        files["report"] = str(out / "report" / "index.html")
    return files


def next_commands(files: dict[str, str]) -> list[str]:
    """The lines that tell the user what to open next."""
    recon = Path(files["recon"])
    lines = []
    if "report" in files:
        lines.append(f"report:  open {files['report']} in a browser (figures, atomic "
                     "fractions, convergence)")
    lines += [f"viewer:  fusetomo view --run {files['run']}",
              f"regions: fusetomo stoichiometry {recon}",
              f"export:  fusetomo export {recon} --mrc {recon.with_suffix('.mrc')}   (or "
              f"--emd {recon.with_suffix('.emd')} for tomviz)"]
    return lines


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
    if "HAADF" in volumes:  # a HAADF-only run: the volume of what HAADF sees
        from fusetomo.simulators.forward import haadf_signal

        gamma = AcquisitionParams().gamma
        truth["HAADF"] = bin_volume(haadf_signal(spec.volumes, np.asarray(spec.Z), gamma), o)
    scores = nrmse_per_element({e: truth[e] for e in volumes if e in truth}, volumes)
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
        **spectroscopy_summary(rec),
        **timing_summary(rec.events),
        "iterations": iteration,
        "complete": rec.complete,
        "files": {"run": str(run_path)},
    }


def spectroscopy_summary(rec: RunRecord) -> dict[str, Any]:
    """Spectrum images taken and allowed, and the chemical dose saved: the allowance is the
    advisor's (its budget, or the plan's spectrum images when no budget was given; the
    last advice says it), else the plan's; the stop message is the advisor's last."""
    advices = [ev for ev in rec.events if ev.get("kind") == "advice"]
    taken = int(rec.series.common_chem_angles.size)
    try:
        header = json.loads(rec.attrs.get("start_header", "{}"))
    except ValueError:
        header = {}
    scheme = header.get("scheme") if isinstance(header.get("scheme"), dict) else {}
    planned = scheme.get("chem_angles") if isinstance(scheme.get("chem_angles"), list) else []
    allowed = next((ev.get(k) for ev in reversed(advices)
                    for k in ("chem_maps_allowed", "chem_maps_budget")
                    if isinstance(ev.get(k), int)), None)
    if allowed is None:
        allowed = max(len(planned), taken)
    chem_dose = float(np.sum(rec.dose_e_per_A2.get("chem", np.zeros(0))))
    per_map = chem_dose / taken if taken else header.get("chem_dose_e_per_A2")
    per_map = float(per_map) if isinstance(per_map, int | float) else None
    saved = max(allowed - taken, 0)
    stops = [ev for ev in advices if ev.get("action") == "stop_spectroscopy"]
    return {"chem_maps_taken": taken, "chem_maps_allowed": int(allowed),
            "chem_dose_e_per_A2": chem_dose,
            "chem_dose_saved_e_per_A2": None if per_map is None else saved * per_map,
            "chem_dose_saved_fraction": saved / allowed if allowed else 0.0,
            "stop_reason": stops[0].get("reason") if stops else None}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The spectroscopy and timing lines of the printed summary."""
    saved = summary.get("chem_dose_saved_e_per_A2")
    lines = [f"spectrum images: {summary['chem_maps_taken']} taken of "
             f"{summary['chem_maps_allowed']} allowed; chemical dose saved "
             f"{_fmt(saved)} e/A^2 ({100 * summary['chem_dose_saved_fraction']:.0f} %)"]
    if summary.get("stop_reason"):
        lines.append(f"spectroscopy stopped: {summary['stop_reason']}")
    lines.append(f"per-tilt processing median {_fmt(summary['processing_s_median'])} s "
                 f"(p90 {_fmt(summary['processing_s_p90'])} s); reconstruction behind the "
                 f"newest tilt: median {_fmt(summary['lag_s_median'])} s, max "
                 f"{_fmt(summary['lag_s_max'])} s ({_fmt(summary['lag_tilts_max'])} tilt(s))")
    return lines


def cmd_live_demo(args: argparse.Namespace) -> int:
    return run_live_demo(args)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", aliases=["live-demo"],
        help="the main job: simulated instrument and controller as separate processes",
        description="Run a whole simulated series through the live loop over loopback "
                    "ZeroMQ, with a progress display; write DIR/run.h5 and "
                    "DIR/summary.json.")
    add_demo_options(p)
    p.set_defaults(func=cmd_live_demo)
