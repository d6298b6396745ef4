"""`fusetomo simulate`: a simulated tilt series (with the truth), projected on a finer grid.

    fusetomo simulate --specimen nanocubes|core-shell|FILE.h5 --size N --out SERIES.h5
"""

from __future__ import annotations

import argparse
from typing import Any

from fusetomo.adapters.seriesfile import write_series
from fusetomo.cli.argtypes import add_threads_option, positive_int
from fusetomo.cli.common import UsageError, series_dose
from fusetomo.simulators.forward import AcquisitionParams, Simulation, TiltScheme, simulate
from fusetomo.simulators.specimens import check_size


def add_simulation_options(p: argparse.ArgumentParser, *, size: int | None) -> None:
    p.add_argument("--specimen", default="nanocubes",
                   help="built-in specimen (nanocubes, core-shell) or an HDF5 specimen file")
    p.add_argument("--size", type=positive_int, default=size, required=size is None,
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
    p.add_argument("--oversample", type=positive_int, default=2,
                   help="simulate on a grid this many times finer (no inverse crime)")


def simulation(args: argparse.Namespace) -> Simulation:
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


def cmd_simulate(args: argparse.Namespace) -> int:
    sim = simulation(args)
    s = sim.series
    write_series(args.out, s, sim.truth)
    snr = " ".join(f"{e} {v:.2f}" for e, v in sim.chem_snr.items())
    dose = series_dose(s)
    dose_text = "unknown" if dose is None else f"{dose:.3g} e/A^2"
    print(f"wrote {args.out}: {s.attrs.get('specimen', args.specimen)} {args.size}^3, "
          f"{s.haadf.shape[0]} HAADF + {s.common_chem_angles.size} chemical tilts, "
          f"chemical SNR {snr}, dose {dose_text}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("simulate", help="simulate a tilt series (with ground truth)")
    add_simulation_options(p, size=None)
    p.add_argument("--out", required=True, help="series file to write (.h5)")
    p.set_defaults(func=cmd_simulate)
