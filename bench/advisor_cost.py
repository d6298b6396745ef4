"""Cost of the advice per tilt (issue 4, item 5): cheap standard-error refresh plus the
predicted gains at the current and every remaining planned tilt, against the per-tilt time
budget of the live loop (the instrument's tilt + tracking + HAADF scan, 7 s at speed 1).

    python bench/advisor_cost.py [--sizes 64 128] [--device cpu|gpu]

Prints a table and writes bench/results/advisor_cost.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from fusetomo.controller.advisor import AdaptiveAdvisor, AdvisorParams, SeriesState
from fusetomo.simulators.forward import AcquisitionParams, TiltScheme, simulate
from fusetomo.simulators.instrument import InstrumentParams
from fusetomo.solver.backend import resolve_device
from fusetomo.solver.fusion import FusedSolver, FusionParams

RESULTS = Path(__file__).parent / "results"


def measure(size: int, device: str, repeats: int) -> dict:
    grid = tuple(float(a) for a in np.arange(-69.0, 70.0, 3.0))
    chem = (-60.0, -30.0, 0.0, 30.0)
    sim = simulate("nanocubes", size, TiltScheme(haadf_angles=grid, chem_angles=chem),
                   AcquisitionParams(), seed=0)
    s = sim.series
    solver = FusedSolver(*s.shape[::-1], s.elements, [s.Z[e] for e in s.elements],
                         FusionParams(gamma=s.gamma or 1.7), device=resolve_device(device),
                         background=[s.background[e] for e in s.elements])
    # The state at tilt 40 of 47 in a sequential series with 4 maps taken: the advice
    # scores the current tilt and the remaining ones (the worst case is early in the
    # series, with every tilt still ahead: `candidates` below is all of them).
    solver.add_haadf(s.haadf_angles, s.haadf)
    solver.add_chem(s.common_chem_angles, {e: s.chem[e] for e in s.elements})
    solver.run(10)
    t = time.perf_counter()
    solver.run(3)
    t_iter = (time.perf_counter() - t) / 3
    adv = AdaptiveAdvisor(AdvisorParams(chem_maps=12, stop_gain=0.0), list(grid))
    state = SeriesState(angle=grid[0], tilt_seq=1, remaining=list(grid[1:]),
                        chem_angles=list(chem), chem_dose_used=4.0, chem_dose_per_map=1.0)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        adv.advise(solver, state)
        times.append(time.perf_counter() - t)
    budget = InstrumentParams()
    per_tilt = budget.t_tilt + budget.t_track + budget.t_haadf_scan
    med = float(np.median(times))
    return {"size": size, "device": device, "candidates": len(grid),
            "advice_s": med, "iteration_s": t_iter, "per_tilt_budget_s": per_tilt,
            "fraction_of_budget": med / per_tilt,
            "fraction_with_k3_iterations": (med + 3 * t_iter) / per_tilt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        r = measure(n, args.device, args.repeats)
        rows.append(r)
        print(f"{n:4d}^3 {args.device}: advice (cheap std + gains at {r['candidates']} tilts) "
              f"{r['advice_s']:.3f} s = {100 * r['fraction_of_budget']:.1f}% of the "
              f"{r['per_tilt_budget_s']:.0f} s per-tilt budget; one iteration "
              f"{r['iteration_s']:.3f} s; with k=3 iterations "
              f"{100 * r['fraction_with_k3_iterations']:.0f}%", flush=True)
    out = Path(args.out or RESULTS / f"advisor_cost_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
