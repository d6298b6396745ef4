"""How the fused iteration's answer changes the longer it runs, with few spectrum images
(docs/benchmarks.md, advisor section: the equal-count noise and the momentum restart).

    python bench/iteration_drift.py                         # the table, ~5 min on 2 cores
    python bench/iteration_drift.py --specimens rod --settings restart,off
    python bench/iteration_drift.py --plans                 # the five 5-map alloy plans
    python bench/iteration_drift.py --trace --specimens rod --settings off
    python bench/iteration_drift.py --specimens rod,alloy --settings no-tv-no-momentum
    python bench/iteration_drift.py --pin-cost --sizes 64 128     # what the level pin costs
    python bench/iteration_drift.py --plan-seeds 1 2 3  # the alloy plans on other noise draws

Series: bench/advisor.py's (32^3, another projector on a 2x finer grid, background, HAADF
offset and gamma unstated, sequential scheme, chemical SNR 2.5). Each row reconstructs from
every HAADF tilt and the maps at uniform spacing (5 or 9 maps) and reports <NRMSE> after
20, 80 and 300 fused iterations, for each solver setting:
- `ml`: the defaults (momentum restarted when both data terms rise, the volumes' level
  pinned to the chemical likelihood, `FusionParams.pin_level = "ml"`); `ml-off`: the pin
  without the restart;
- `restart`: the restart, no pin (the solver before the pin);
- `off`: neither (the solver before the restart); `element`, `global`: no restart, the
  volumes' level pinned to the map totals per element or for all elements.
`--plans`: the live loop's schedule (bench/advisor.py, 3 iterations a tilt, then 20 or 150
final ones) with five fixed 5-map plans a few degrees apart on the alloy, and the same plans
offline (all tilts at once, 20/80/300 iterations).
`--pin-cost`: the time of one fused iteration with the level pin ("ml", the default) and
without ("off"), interleaved step by step on bench/speed.py's data (nanocubes, 4 elements;
71 HAADF and 10 chemical tilts over +-70 deg), medians; the machine may be shared, so
compare the ratio.
Results go to bench/results/iteration_drift.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import sigpy as sp
import speed as bench_speed

sys.path.insert(0, str(Path(__file__).resolve().parent))
import advisor as bench_advisor

from fusetomo.controller.advisor import AdvisorParams
from fusetomo.controller.policyrun import PolicyRunParams, run_policy
from fusetomo.controller.series_model import fusion_params_for, solver_for_series
from fusetomo.solver.fusion import GAMMA_START, FusedSolver, FusionParams
from fusetomo.solver.metrics import nrmse

RESULTS = Path(__file__).resolve().parent / "results"
PLANS = {"5 maps": [-57.0, -27.0, 0.0, 27.0, 57.0],
         "9 maps": [-60.0, -45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0, 60.0]}
SETTINGS = {"restart": {"pin_level": "off"}, "off": {"momentum_restart": False, "pin_level": "off"},
            "element": {"momentum_restart": False, "pin_level": "element"},
            "global": {"momentum_restart": False, "pin_level": "global"},
            "ml": {"pin_level": "ml"}, "ml-off": {"momentum_restart": False, "pin_level": "ml"}}
# Remedies measured and not taken (run with --settings; all without the restart).
OTHERS = {"haadf-step-0.5": {"lambda_haadf": 0.5}, "haadf-step-0.25": {"lambda_haadf": 0.25},
          "no-momentum": {"momentum": False}, "tv-0.0025": {"lambda_tv": 0.0025},
          "tv-0.001": {"lambda_tv": 0.001}, "offsets-fit": {"haadf_offset": "fit"},
          "no-tv-no-momentum": {"lambda_tv": 0.0, "momentum": False}}
SETTINGS.update({k: {"momentum_restart": False, **v} for k, v in OTHERS.items()})
DEFAULT_SETTINGS = "ml,restart,off,element,global"
CHECKPOINTS = (20, 80, 300)
ALLOY_PLANS = ([-57.0, -27.0, 0.0, 27.0, 57.0], [-57.0, -24.0, -3.0, 21.0, 54.0],
               [-54.0, -27.0, 0.0, 24.0, 54.0], [-60.0, -30.0, 0.0, 30.0, 60.0],
               [-57.0, -30.0, -3.0, 27.0, 57.0])


def trajectory(acq: Any, plan: list[float], setting: dict[str, Any]) -> list[float]:
    s = acq.series
    solver = solver_for_series(s, fusion_params_for(s, FusionParams(**setting)), device="cpu")
    solver.add_haadf(s.haadf_angles, s.haadf)
    idx = [int(np.argmin(np.abs(s.common_chem_angles - a))) for a in plan]
    solver.add_chem(np.asarray(plan), {e: s.chem[e][idx] for e in s.elements})
    solver.initialize()
    out, done = [], 0
    for k in CHECKPOINTS:
        solver.run(k - done)
        done = k
        v = solver.volumes()
        out.append(float(np.mean([nrmse(acq.truth[e], v[e]) for e in s.elements])))
    return out


def trace(name: str, setting: dict[str, Any]) -> list[dict[str, float]]:
    """HAADF and chemical terms, TV and the HAADF scale c at a few iterations."""
    _, acq, _ = bench_advisor.series(name, 32, 0, "sequential", 2.5)
    s = acq.series
    solver = solver_for_series(s, fusion_params_for(s, FusionParams(**setting)), device="cpu")
    solver.add_haadf(s.haadf_angles, s.haadf)
    plan = PLANS["9 maps"]
    idx = [int(np.argmin(np.abs(s.common_chem_angles - a))) for a in plan]
    solver.add_chem(np.asarray(plan), {e: s.chem[e][idx] for e in s.elements})
    solver.initialize()
    out, done = [], 0
    for k in (5, 10, 16, 20, 30, 40, 60, 80):
        solver.run(k - done)
        done = k
        h, v = solver.history, solver.volumes()
        row = {"iteration": k, "haadf": h.haadf[-1], "chem": h.chem[-1], "tv": h.tv[-1],
               "c": h.haadf_scale[-1],
               "nrmse": float(np.mean([nrmse(acq.truth[e], v[e]) for e in s.elements]))}
        out.append(row)
        print(" ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    return out


def plans_row() -> dict[str, Any]:
    order, acq, _ = bench_advisor.series("alloy", 32, 0, "sequential", 2.5)
    out: dict[str, Any] = {}
    for final in (20, 150):
        p = PolicyRunParams(size=32, scheme="sequential", tilt_range=bench_advisor.RANGE,
                            haadf_step=bench_advisor.STEP, final_iterations=final)
        out[f"final {final}"] = [
            run_policy(bench_advisor.PlanPolicy(AdvisorParams(), order, plan), None, p,
                       (order, acq)).nrmse_mean for plan in ALLOY_PLANS]
        print(f"alloy plans, {final} final iterations: "
              + ", ".join(f"{v:.3f}" for v in out[f"final {final}"]), flush=True)
    # The same plans offline (all tilts at once, the defaults), after 20/80/300 iterations:
    # whether the spread between plans is the live schedule's or the maps' own.
    out["offline"] = [trajectory(acq, list(plan), {}) for plan in ALLOY_PLANS]
    print("alloy plans offline, 20/80/300 iterations: " + ", ".join(
        " / ".join(f"{v:.3f}" for v in t) for t in out["offline"]), flush=True)
    return {"plans": [list(p) for p in ALLOY_PLANS], **out}


def plan_seeds(seeds: list[int]) -> dict[str, Any]:
    """The five alloy plans offline (20 iterations) on other noise draws of the series:
    whether a plan's score follows its angles or its maps' noise."""
    out: dict[str, Any] = {}
    for seed in seeds:
        _, acq, _ = bench_advisor.series("alloy", 32, seed, "sequential", 2.5)
        out[str(seed)] = [trajectory(acq, list(plan), {})[0] for plan in ALLOY_PLANS]
        print(f"alloy plans offline, seed {seed}, 20 iterations: "
              + ", ".join(f"{v:.3f}" for v in out[str(seed)]), flush=True)
    return out


def pin_cost(sizes: list[int], iterations: int) -> dict[str, Any]:
    """Median seconds per fused iteration with the pin on and off, interleaved."""
    out: dict[str, Any] = {}
    dev = sp.cpu_device
    for n in sizes:
        h_angles, c_angles = np.linspace(-70, 70, 71), np.linspace(-70, 70, 10)
        data = bench_speed.make_data(n, 4, h_angles, c_angles, GAMMA_START)
        solvers = {}
        for pin in ("ml", "off"):
            s = FusedSolver(n, n, data["elements"], data["Z"],
                            FusionParams(gamma=GAMMA_START, pin_level=pin), device=dev)
            s.add_haadf(h_angles, data["haadf"])
            s.add_chem(c_angles, data["chem"])
            s.step()
            solvers[pin] = s
        times: dict[str, list[float]] = {"ml": [], "off": []}
        for _ in range(iterations):
            for pin, s in solvers.items():
                times[pin].append(bench_speed.timed(s.step, dev))
        med = {k: float(np.median(v)) for k, v in times.items()}
        out[str(n)] = {"ml_s": med["ml"], "off_s": med["off"],
                       "overhead": med["ml"] / med["off"] - 1.0, "iterations": iterations,
                       "load_average": bench_speed.load_average()}
        print(f"N={n}: {med['ml']:.3f} s with the pin, {med['off']:.3f} s without "
              f"({100 * out[str(n)]['overhead']:+.1f} %)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specimens", default="rod,alloy,janus,lamella")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS,
                    help=f"comma-separated among {', '.join(SETTINGS)}")
    ap.add_argument("--trace", action="store_true",
                    help="the data terms and HAADF scale along the run (first specimen, "
                         "9 maps, first setting)")
    ap.add_argument("--plans", action="store_true", help="the alloy's five 5-map plans")
    ap.add_argument("--plan-seeds", type=int, nargs="+", default=None,
                    help="the alloy plans offline on these noise seeds")
    ap.add_argument("--pin-cost", action="store_true",
                    help="seconds per iteration with and without the level pin")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()
    path = RESULTS / "iteration_drift.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if args.plan_seeds:
        doc["alloy_plans_seeds"] = plan_seeds(args.plan_seeds)
    elif args.pin_cost:
        doc["pin_cost_cpu"] = pin_cost(args.sizes, args.iterations)
    elif args.plans:
        doc["alloy_plans"] = plans_row()
    elif args.trace:
        name, setting = args.specimens.split(",")[0], args.settings.split(",")[0]
        doc.setdefault("traces", {})[f"{name}, 9 maps, {setting}"] = trace(
            name, SETTINGS[setting])
    else:
        rows = doc.setdefault("trajectories", {})
        for name in args.specimens.split(","):
            _, acq, _ = bench_advisor.series(name, 32, 0, "sequential", 2.5)
            for label, plan in PLANS.items():
                for setting in args.settings.split(","):
                    vals = trajectory(acq, plan, SETTINGS[setting])
                    rows[f"{name}, {label}, {setting}"] = vals
                    print(f"{name:8s} {label}  {setting:8s} " + " / ".join(
                        f"{v:.3f}" for v in vals), flush=True)
    doc["checkpoints"] = list(CHECKPOINTS)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
