"""The measurements behind the advisor's stop rule (issue 16, item 1; docs/benchmarks.md).

- `curve`: <NRMSE> of uniform spacing against the number of maps (2-10, 12, 16): where
  does it saturate, and how many maps come within 5 % of 16?
- `posterior`: along a uniform 16-map series, what the Laplace posterior predicts at each
  map: the variance ratio V / v of a new map (times the maps taken: Fisher additivity
  says constant) and the predicted <NRMSE> of a new map; against the curve, whether the
  posterior knows where the curve saturates.

Series as in bench/advisor.py (nuisances unstated, another projector, 32^3, +-69 deg, HAADF
every 3 deg, SNR 2.5), the policy run's schedule.

    python bench/advisor_variants.py curve|posterior [--specimens ...] [--schemes ...]

Writes bench/results/advisor_<experiment>.json (resumes: series already there are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from advisor import RANGE, STEP, series

from fusetomo.controller.advisor import ACQUIRE, AdvisorParams, SeriesState, UniformPolicy
from fusetomo.controller.policyrun import PolicyRunParams, run_policy
from fusetomo.controller.series_model import solver_for_series
from fusetomo.core.angles import angle_key
from fusetomo.solver.design import candidate_gains
from fusetomo.solver.uncertainty import UncertaintyParams, estimate_std_error

RESULTS = Path(__file__).resolve().parent / "results"
COUNTS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16)


def curve(name: str, scheme: str, args: argparse.Namespace) -> dict[str, Any]:
    order, acq, _ = series(name, args.size, 0, scheme, args.snr)
    p = PolicyRunParams(size=args.size, scheme=scheme, tilt_range=RANGE, haadf_step=STEP)
    rows = {}
    for k in COUNTS:
        rows[k] = run_policy("uniform", AdvisorParams(chem_maps=k), p, (order, acq)).nrmse_mean
        print(f"  {k:2d} maps: {rows[k]:.3f}", flush=True)
    ref = rows[16]
    enough = next((k for k in COUNTS if rows[k] <= 1.05 * ref), 16)
    return {"nrmse": rows, "fewest_within_5pct_of_16": enough}


def posterior(name: str, scheme: str, args: argparse.Namespace) -> dict[str, Any]:
    """The posterior's predictions at each map of a uniform 16-map series."""
    order, acq, _ = series(name, args.size, 0, scheme, args.snr)
    s = acq.series
    h = {angle_key(a): i for i, a in enumerate(s.haadf_angles.tolist())}
    c = {angle_key(a): i for i, a in enumerate(s.common_chem_angles.tolist())}
    solver = solver_for_series(s, device="cpu")
    pol = UniformPolicy(AdvisorParams(chem_maps=16), order)
    grid = sorted(order)
    taken: list[float] = []
    rows = []
    for k, a in enumerate(order):
        solver.add_haadf(a, s.haadf[h[angle_key(a)]])
        if solver.ready:
            solver.run(3)
        st = SeriesState(a, k, order[k + 1:], list(taken), len(taken), 1.0)
        if pol.advise(solver, st).action != ACQUIRE:
            continue
        if solver.ready:
            std, _ = estimate_std_error(solver, UncertaintyParams(mode="cheap"))
            g = candidate_gains(solver, grid, metric="jacobi", std=std)
            assert g.map_nrmse is not None
            rho = float(g.variance_ratio.mean())
            rows.append({"maps": len(taken), "rho": rho, "k_rho": len(taken) * rho,
                         "map_nrmse": float(g.map_nrmse.mean())})
        j = c[angle_key(a)]
        solver.add_chem(a, {e: s.chem[e][j][None] for e in s.elements})
        taken.append(a)
        solver.run(3)
    k_rho = np.array([r["k_rho"] for r in rows if r["maps"] >= 2])
    return {"rows": rows, "k_rho_mean": float(k_rho.mean()),
            "k_rho_rel_spread": float(k_rho.std() / k_rho.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=("curve", "posterior"))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--snr", type=float, default=2.5)
    ap.add_argument("--specimens", default="nanocubes,core-shell,film")
    ap.add_argument("--schemes", default="sequential,dose-symmetric")
    args = ap.parse_args()
    path = RESULTS / f"advisor_{args.experiment}.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    t0 = time.perf_counter()
    run = {"curve": curve, "posterior": posterior}[args.experiment]
    for name in args.specimens.split(","):
        for scheme in args.schemes.split(","):
            key = f"{name}/{scheme}"
            if key in doc:
                continue
            print(key, flush=True)
            doc[key] = run(name, scheme, args)
            path.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "rows"}
                      for k, v in doc.items()}, indent=1))
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
