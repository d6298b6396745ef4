"""The `fusetomo` command line: simulate, reconstruct, export, demo, inspect.

Every failure the user can cause (bad file, unknown specimen or element, missing GPU, ...)
ends with `fusetomo: error: <message>` on stderr and exit status 2, without a traceback
(set FUSETOMO_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.adapters.elements import UnknownElementError
from fusetomo.adapters.runfile import describe_run
from fusetomo.adapters.series import SeriesError, TiltSeries
from fusetomo.adapters.seriesfile import (
    RUN_FORMAT,
    describe_series,
    file_format,
    read_series,
    read_truth,
    total_dose,
    write_series,
)
from fusetomo.controller.argtypes import add_threads_option, apply_threads
from fusetomo.controller.argtypes import positive_int as _positive_int
from fusetomo.controller.reconfile import FORMAT as RECON_FORMAT
from fusetomo.controller.reconfile import (
    ReconFileError,
    describe_recon,
    export_emd,
    model_lines,
)
from fusetomo.controller.reconstruct import METHODS, MethodError, ReconResult, reconstruct
from fusetomo.simulators.forward import AcquisitionParams, Simulation, TiltScheme, simulate
from fusetomo.simulators.specimens import SpecimenError, check_size
from fusetomo.solver.backend import DeviceUnavailableError
from fusetomo.solver.fusion import SolverNotReadyError
from fusetomo.solver.metrics import nrmse_per_element
from fusetomo.solver.projector import GeometryError


class UsageError(ValueError):
    """A command-line value that the parameter classes reject."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    SeriesError, SpecimenError, DeviceUnavailableError, ReconFileError, MethodError,
    UnknownElementError, SolverNotReadyError, GeometryError, UsageError, OSError,
)


# -- helpers --------------------------------------------------------------------------------
def _eprint(*args: Any) -> None:
    print(*args, file=sys.stderr)




def _simulation(args: argparse.Namespace) -> Simulation:
    try:
        scheme = TiltScheme(tilt_range=tuple(args.tilt_range), haadf_step=args.haadf_step,
                            chem_step=args.chem_step)
        snr = None if args.chem_dose is not None else args.chem_snr
        acq = AcquisitionParams(chem_snr=snr, chem_dose=args.chem_dose,
                                oversample=args.oversample)
    except ValueError as e:
        raise UsageError(str(e)) from None
    check_size(args.size)
    return simulate(args.specimen, args.size, scheme, acq, seed=args.seed)


def _series_dose(series: TiltSeries) -> float | None:
    return total_dose(series.attrs, series.haadf.shape[0], series.common_chem_angles.size)


def _nrmse(truth: dict[str, np.ndarray] | None, res: ReconResult) -> dict[str, float]:
    if not truth:
        return {}
    common = {e: truth[e] for e in truth if e in res.volumes}
    if not common or any(v.shape != res.volumes[e].shape for e, v in common.items()):
        return {}
    return nrmse_per_element(common, res.volumes)


def _nrmse_line(scores: dict[str, float]) -> str:
    per = ", ".join(f"{e} {v:.3f}" for e, v in scores.items())
    return f"<NRMSE> = {np.mean(list(scores.values())):.3f}  ({per})"


# -- commands -------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    sim = _simulation(args)
    s = sim.series
    write_series(args.out, s, sim.truth)
    snr = " ".join(f"{e} {v:.2f}" for e, v in sim.chem_snr.items())
    dose = _series_dose(s)
    dose_text = "unknown" if dose is None else f"{dose:.3g} e/A^2"
    print(f"wrote {args.out}: {s.attrs.get('specimen', args.specimen)} {args.size}^3, "
          f"{s.haadf.shape[0]} HAADF + {s.common_chem_angles.size} chemical tilts, "
          f"chemical SNR {snr}, dose {dose_text}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    series = read_series(args.series)
    truth = read_truth(args.series)
    align = None
    if args.align:
        from fusetomo.controller.offline_align import OfflineAlignParams

        align = OfflineAlignParams(rotation_deg=args.align_rotation)
    res = reconstruct(series, method=args.method, iterations=args.iterations,
                      device=args.device, progress=not args.quiet,
                      uncertainty=args.uncertainty, align=align)
    res.save(args.out, source=args.series)
    print(f"wrote {args.out}: {args.method}, {res.params['iterations']} iterations on "
          f"{res.params['device']} in {res.elapsed:.1f} s")
    model = model_lines(res.params)
    if model:
        print("\n".join(model))
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.align:
        pr = res.params
        joint = (f", joint refinement {pr['align_joint_rounds']} rounds (last update "
                 f"{pr['align_joint_last_update_px']:.4f} px RMS)"
                 if "align_joint_rounds" in pr else ", images resampled")
        print(f"aligned: rotation {pr['align_rotation_deg']:.3f} deg, axis offset "
              f"{pr['align_axis_offset_px']:.2f} px{joint}")
    scores = _nrmse(truth, res)
    if scores:
        print(_nrmse_line(scores))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.emd:
        export_emd(args.recon, args.emd)
        print(f"wrote {args.emd}")
        return 0
    from fusetomo.controller.export_volume import export_mrc, export_tiff

    for path in (export_mrc(args.recon, args.mrc) if args.mrc
                 else export_tiff(args.recon, args.tiff)):
        print(f"wrote {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    fmt = file_format(args.file)
    if fmt == RECON_FORMAT:
        info = describe_recon(args.file)
    elif fmt == RUN_FORMAT:
        info = describe_run(args.file)
    else:
        info = describe_series(args.file)
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log: Callable[..., None] = _eprint if args.json else print
    sim = _simulation(args)
    write_series(out / "series.h5", sim.series, sim.truth)
    series = read_series(out / "series.h5")
    log(f"simulated {args.specimen} {args.size}^3: {series.haadf.shape[0]} HAADF, "
        f"{series.common_chem_angles.size} chemical tilts")
    fused = reconstruct(series, "fused", iterations=args.iterations, device=args.device)
    fused.save(out / "recon.h5", source=out / "series.h5")
    conv = reconstruct(series, "conventional", iterations=args.iterations,
                       device=args.device)
    scores, scores_c = _nrmse(sim.truth, fused), _nrmse(sim.truth, conv)
    summary = {
        "specimen": args.specimen,
        "size": args.size,
        "nrmse_mean": float(np.mean(list(scores.values()))),
        "nrmse": scores,
        "nrmse_conventional_mean": float(np.mean(list(scores_c.values()))),
        "nrmse_conventional": scores_c,
        "chem_snr": sim.chem_snr,
        "haadf_tilts": int(series.haadf.shape[0]),
        "chem_tilts": int(series.common_chem_angles.size),
        "dose_e_per_A2": _series_dose(series),
        "device": fused.params["device"],
        "elapsed_s": time.perf_counter() - t0,
        "files": {k: str(out / f"{k}.h5") for k in ("series", "recon")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        print("fused        " + _nrmse_line(scores))
        print("conventional " + _nrmse_line(scores_c))
        print(f"wrote {out}/series.h5, recon.h5, summary.json in {summary['elapsed_s']:.1f} s")
    return 0


# -- parser ---------------------------------------------------------------------------------
def _add_simulation_options(p: argparse.ArgumentParser, *, size: int | None) -> None:
    p.add_argument("--specimen", default="nanocubes",
                   help="built-in specimen (nanocubes, core-shell) or an HDF5 specimen file")
    p.add_argument("--size", type=_positive_int, default=size, required=size is None,
                   help="reconstruction size n (volume n^3)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--chem-snr", type=float, default=2.5, help="mean chemical-map SNR")
    g.add_argument("--chem-dose", type=float, default=None,
                   help="dose per spectrum image in e/A^2 (instead of --chem-snr)")
    p.add_argument("--haadf-step", type=float, default=3.0, help="degrees")
    p.add_argument("--chem-step", type=float, default=15.0, help="degrees")
    p.add_argument("--tilt-range", type=float, nargs=2, default=(-70.0, 70.0),
                   metavar=("LO", "HI"), help="degrees")
    add_threads_option(p)
    p.add_argument("--oversample", type=_positive_int, default=2,
                   help="simulate on a grid this many times finer (no inverse crime)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusetomo", description="Fused multi-modal (HAADF + EELS/EDX) electron tomography")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate a tilt series (with ground truth)")
    _add_simulation_options(p, size=None)
    p.add_argument("--out", required=True, help="series file to write (.h5)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("reconstruct", help="reconstruct a series file")
    p.add_argument("series", help="series file (.h5)")
    p.add_argument("--out", required=True, help="reconstruction file to write (.h5)")
    p.add_argument("--method", choices=METHODS, default="fused")
    p.add_argument("--iterations", type=_positive_int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--align", action="store_true",
                   help="align the series first (drift, tilt-axis offset and rotation; "
                        "docs/alignment.md) and record the shifts: fused keeps them in the "
                        "model, haadf and sirt reconstruct the resampled images")
    p.add_argument("--align-rotation", type=float, default=None, metavar="DEG",
                   help="with --align: the tilt axis' in-plane rotation if known "
                        "(default: estimated)")
    p.add_argument("--uncertainty", choices=("cheap", "accurate"), default=None,
                   help="also write per-voxel standard errors /std_error/<Symbol> (fused)")
    add_threads_option(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("export", help="export a reconstruction to EMD, MRC or TIFF stacks")
    p.add_argument("recon", help="reconstruction file (.h5)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--emd", help="Berkeley EMD file to write (.emd; tomviz)")
    g.add_argument("--mrc", help="MRC file(s) to write, voxel size set (IMOD, tomviz, "
                   "Avizo); OUT_<name>.mrc per volume when there are several")
    g.add_argument("--tiff", help="TIFF stack(s) to write, voxel size set (Fiji)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("offline-demo",
                       help="simulate, reconstruct offline (fused and conventional), score")
    _add_simulation_options(p, size=64)
    p.add_argument("--out", default="fusetomo-offline-demo", help="folder for the files")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--iterations", type=_positive_int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("inspect", help="summarise a series or reconstruction file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    # Live-loop commands live beside the modules they drive; each such module offers
    # register(subparsers) and may be absent while it is being built.
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


# Each command module registers its own subcommands; one not yet present is skipped.
_COMMAND_MODULES = (
    "fusetomo.controller.cli_instrument",
    "fusetomo.controller.cli_live",
    "fusetomo.controller.cli_report",
    "fusetomo.controller.cli_view",
    "fusetomo.controller.cli_import",
    "fusetomo.controller.cli_align",
    "fusetomo.controller.cli_sweep",
    "fusetomo.controller.cli_nion",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already reported
        return e.code if isinstance(e.code, int) else 2
    try:
        apply_threads(args)  # --threads, else FUSETOMO_THREADS, else every core
    except ValueError as e:  # a bad FUSETOMO_THREADS
        _eprint(f"fusetomo: error: {e}")
        return 2
    try:
        return int(args.func(args))
    except USER_ERRORS as e:
        if os.environ.get("FUSETOMO_DEBUG"):
            raise
        _eprint(f"fusetomo: error: {e}")
        return 2
    except KeyboardInterrupt:
        _eprint("fusetomo: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
