"""Evidence for the spectroscopy advisor (issue 16, items 1-3): adaptive against uniform
spacing and against the default plan, on series as a microscope writes them.

    python bench/advisor.py                                  # held-out specimens, 32^3
    python bench/advisor.py --specimens nanocubes,core-shell,film --tag dev

Series (bench/nuisance_series.py): another projector on a grid twice as fine, a chemical
background and a HAADF offset nobody states, gamma estimated; +-69 deg, HAADF every 3 deg
(47 tilts), a spectrum image possible at every tilt (one noise draw per series, shared by
every policy), chemical SNR 2.5; the live loop's schedule offline (controller/policyrun.py).
Per specimen x noise seed x scheme (sequential, dose-symmetric):
- `stop` (item 1): a generous budget of 16 maps; uniform-16 against the adaptive advisor
  with its defaults (stop rule on). Goal: <NRMSE> within 5 % of uniform-16's with at most
  60 % of its maps.
- `default` (item 2): no budget given; the default plan (a spectrum image every 15 deg)
  against the adaptive advisor, whose allowance is then the plan's maps. Goal: never worse.
- `equal` (item 3): K = 5 and 8 maps; uniform against the adaptive advisor with budget K
  and no stop rule. Goal: better on average, never more than 3 % worse.
Results go to bench/results/advisor-<tag>.json, a series at a time (the run resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuisance_series import Clean, Nuisances

from fusetomo.adapters.instrument.plans import make_plan
from fusetomo.controller.advisor import AdvisorParams, UniformPolicy
from fusetomo.controller.policies import _FixedPolicy
from fusetomo.controller.policyrun import PolicyResult, PolicyRunParams, run_policy

RESULTS = Path(__file__).resolve().parent / "results"
RANGE, STEP, PLAN_STEP = (-69.0, 69.0), 3.0, 15.0
GENEROUS = 16
EQUAL = (5, 8)


class PlanPolicy(_FixedPolicy):
    """The default plan: the scheme's own spectrum images (every PLAN_STEP degrees)."""

    name = "plan"

    def __init__(self, params: AdvisorParams, planned: list[float], chem: list[float]):
        self._chem = chem
        super().__init__(replace(params, chem_maps=len(chem)), planned)

    def _choose(self, angles: list[float], k: int) -> list[float]:
        return list(self._chem)


def series(name: str, size: int, seed: int, scheme: str, snr: float
           ) -> tuple[list[float], Any, list[float]]:
    plan = make_plan(scheme, RANGE, STEP, STEP)
    order = [s.angle for s in plan]
    grid = np.array(sorted(order))
    acq = Clean(name, size, grid, grid).acquire(seed, Nuisances(snr=snr))
    chem = [s.angle for s in make_plan(scheme, RANGE, STEP, PLAN_STEP) if s.with_spectrum]
    return order, acq, chem


def row_of(r: PolicyResult) -> dict[str, Any]:
    last = r.advices[-1] if r.advices else None
    stops = [a.reason for a in r.advices if a.action == "stop_spectroscopy"]
    return {"nrmse_mean": r.nrmse_mean, "nrmse": r.nrmse, "maps": len(r.chem_angles),
            "chem_angles": r.chem_angles, "stop_reason": stops[0] if stops else None,
            "planned": None if last is None else last.chem_maps_planned,
            "advice_s_median": float(np.median(r.advice_seconds)) if r.advice_seconds
            else None, "seconds": r.seconds}


def one_series(name: str, seed: int, scheme: str, args: argparse.Namespace,
               adaptive: AdvisorParams) -> dict[str, Any]:
    order, acq, chem = series(name, args.size, seed, scheme, args.snr)
    p = PolicyRunParams(size=args.size, scheme=scheme, tilt_range=RANGE, haadf_step=STEP)
    prep = (order, acq)
    out: dict[str, Any] = {"specimen": name, "seed": seed, "scheme": scheme,
                           "plan_chem": chem}
    ex = args.experiments
    if "stop" in ex:
        out["uniform16"] = row_of(run_policy("uniform", AdvisorParams(chem_maps=GENEROUS),
                                             p, prep))
        out["adaptive16"] = row_of(run_policy("adaptive", replace(adaptive,
                                                                  chem_maps=GENEROUS), p, prep))
        k = out["adaptive16"]["maps"]
        out["uniform_same"] = row_of(run_policy("uniform", AdvisorParams(chem_maps=k), p,
                                                prep))
    if "default" in ex:
        out["plan"] = row_of(run_policy(PlanPolicy(AdvisorParams(), order, chem), None, p,
                                        prep))
        out["adaptive_plan"] = row_of(run_policy("adaptive", replace(
            adaptive, planned_maps=len(chem)), p, prep))
    if "equal" in ex:
        for k in EQUAL:
            out[f"uniform{k}"] = row_of(run_policy("uniform", AdvisorParams(chem_maps=k),
                                                   p, prep))
            out[f"adaptive{k}eq"] = row_of(run_policy("adaptive", replace(
                adaptive, chem_maps=k, stop_gain=0.0), p, prep))
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def col(key: str, field: str = "nrmse_mean") -> np.ndarray:
        return np.array([r[key][field] for r in rows if key in r], dtype=float)

    s: dict[str, Any] = {"series": len(rows)}
    if rows and "uniform16" in rows[0]:
        u, a, m = col("uniform16"), col("adaptive16"), col("adaptive16", "maps")
        ratio = a / u
        s["stop"] = {"ratio_mean": float(ratio.mean()), "ratio_max": float(ratio.max()),
                     "maps_mean": float(m.mean()), "maps_max": int(m.max()),
                     "within_5pct": int(np.sum(ratio <= 1.05)),
                     "at_most_60pct_maps": int(np.sum(m <= 0.6 * GENEROUS)),
                     "both": int(np.sum((ratio <= 1.05) & (m <= 0.6 * GENEROUS))),
                     "uniform_same_ratio_mean": float((col("uniform_same") / u).mean())}
    if rows and "plan" in rows[0]:
        pl, ad = col("plan"), col("adaptive_plan")
        s["default"] = {"ratio_mean": float((ad / pl).mean()),
                        "ratio_max": float((ad / pl).max()),
                        "worse": int(np.sum(ad > pl)),
                        "maps_mean": float(col("adaptive_plan", "maps").mean()),
                        "plan_maps_mean": float(col("plan", "maps").mean())}
    if rows and f"uniform{EQUAL[0]}" in rows[0]:
        for k in EQUAL:
            d = col(f"adaptive{k}eq") / col(f"uniform{k}") - 1
            s[f"equal{k}"] = {"mean_pct": float(100 * d.mean()),
                              "worst_pct": float(100 * d.max()),
                              "best_pct": float(100 * d.min()),
                              "over_3pct": int(np.sum(d > 0.03))}
    return s


def report(doc: dict[str, Any]) -> str:
    """The per-series figures as a markdown table."""
    lines = ["| series | uniform-16 | adaptive (maps) | uniform, same count | default plan "
             "(maps) | adaptive, no budget (maps) | K=5 uniform / adaptive | K=8 uniform / "
             "adaptive |", "|---|---|---|---|---|---|---|---|"]
    def cell(r: dict[str, Any], k: str, maps: bool = False) -> str:
        if k not in r:
            return "-"
        return f"{r[k]['nrmse_mean']:.3f}" + (f" ({r[k]['maps']})" if maps else "")

    for r in doc["rows"]:
        def v(k: str, maps: bool = False, r: dict[str, Any] = r) -> str:
            return cell(r, k, maps)
        lines.append(f"| {r['specimen']} {r['scheme']} s{r['seed']} | {v('uniform16')} | "
                     f"{v('adaptive16', True)} | {v('uniform_same')} | {v('plan', True)} | "
                     f"{v('adaptive_plan', True)} | {v('uniform5')} / {v('adaptive5eq')} | "
                     f"{v('uniform8')} / {v('adaptive8eq')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--snr", type=float, default=2.5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--specimens", default="rod,janus,lamella,alloy")
    ap.add_argument("--schemes", default="sequential,dose-symmetric")
    ap.add_argument("--experiments", default="stop,default,equal")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="an AdvisorParams field of the adaptive runs (e.g. gap_slack=0)")
    ap.add_argument("--tag", default="heldout")
    ap.add_argument("--report", action="store_true", help="print the stored results only")
    args = ap.parse_args()
    if args.report:
        doc = json.loads((RESULTS / f"advisor-{args.tag}.json").read_text())
        print(report(doc))
        print(json.dumps(summarise(doc["rows"]), indent=1))
        return
    args.experiments = args.experiments.split(",")
    kw: dict[str, Any] = {}
    for item in args.set:
        k, _, v = item.partition("=")
        kw[k] = type(getattr(AdvisorParams(), k) or 0.0)(v) if v not in ("None",) else None
    adaptive = AdvisorParams(**kw)
    out = RESULTS / f"advisor-{args.tag}.json"
    doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {(r["specimen"], r["seed"], r["scheme"]) for r in doc["rows"]}
    t0 = time.perf_counter()
    for name in args.specimens.split(","):
        for seed in args.seeds:
            for scheme in args.schemes.split(","):
                if (name, seed, scheme) in done:
                    continue
                r = one_series(name, seed, scheme, args, adaptive)
                doc["rows"].append(r)
                print(f"{name:10s} seed {seed} {scheme:14s} " + "  ".join(
                    f"{k} {v['nrmse_mean']:.3f}/{v['maps']}" for k, v in r.items()
                    if isinstance(v, dict)), flush=True)
                doc["summary"] = summarise(doc["rows"])
                doc["settings"] = {"size": args.size, "snr": args.snr, "range": RANGE,
                                   "haadf_step": STEP, "plan_step": PLAN_STEP,
                                   "adaptive": asdict(adaptive),
                                   "uniform_targets_example": UniformPolicy(
                                       AdvisorParams(chem_maps=8),
                                       [float(a) for a in np.arange(-69, 69.1, 3)]).targets}
                RESULTS.mkdir(exist_ok=True)
                out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc.get("summary", {}), indent=1))
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
