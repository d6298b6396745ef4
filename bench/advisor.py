"""Evidence for the spectroscopy advisor (issue 4, item 4): adaptive vs uniform vs random.

For every specimen x seed x scheme, one simulated series carries a spectrum image at every
planned tilt (same noise for every policy; controller/policyrun.py runs the live loop's
schedule offline) and each policy decides which ones the reconstruction sees:
- at an equal number of maps K: uniform spacing, random tilts, and the adaptive advisor
  with its budget K and no stop rule;
- the adaptive advisor with its stop rule (budget K): how many maps it takes, and its
  <NRMSE> against uniform's with K maps.
Prints a table and writes bench/results/advisor.json.

    python bench/advisor.py [--size 40] [--maps 8] [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fusetomo.controller.advisor import AdvisorParams
from fusetomo.controller.policyrun import PolicyRunParams, plan_and_series, run_policy

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--maps", type=int, default=8, help="K: the equal map count / budget")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--specimens", nargs="+",
                    default=["nanocubes", "core-shell", "nanocubes@7"],
                    help="built-in names; NAME@G uses geometry seed G (a different specimen)")
    ap.add_argument("--schemes", nargs="+", default=["sequential", "dose-symmetric"])
    ap.add_argument("--stop-ratio", type=float, default=AdvisorParams.stop_ratio)
    ap.add_argument("--out", default=str(RESULTS / "advisor.json"))
    args = ap.parse_args()
    rows = []
    cases = [(sp, seed, sc) for sp in args.specimens for seed in args.seeds
             for sc in args.schemes]
    t0 = time.perf_counter()
    for spec, seed, scheme in tqdm(cases, desc="series"):
        name, _, geo = spec.partition("@")
        # The geometry seed is folded into the noise seed's stream by simulate(); a
        # different geometry is a different specimen.
        p = PolicyRunParams(specimen=name, size=args.size, seed=seed + 100 * int(geo or 0),
                            scheme=scheme)
        prep = plan_and_series(p)
        K = args.maps
        runs = {
            "uniform": run_policy("uniform", AdvisorParams(chem_maps=K), p, prep),
            "random": run_policy("random", AdvisorParams(chem_maps=K, seed=seed), p, prep),
            "adaptive": run_policy("adaptive", AdvisorParams(chem_maps=K, stop_ratio=0.0),
                                   p, prep),
            "adaptive_stop": run_policy("adaptive", AdvisorParams(
                chem_maps=K, stop_ratio=args.stop_ratio), p, prep),
        }
        row = {"specimen": spec, "seed": seed, "scheme": scheme,
               **{k: r.summary() for k, r in runs.items()}}
        rows.append(row)
        tqdm.write(f"{spec:14s} seed {seed} {scheme:15s} " + "  ".join(
            f"{k} {r.nrmse_mean:.3f}/{len(r.chem_angles)}" for k, r in runs.items()))
    def mean(key: str, field: str) -> float:
        return float(np.mean([r[key][field] for r in rows]))
    uni = np.array([r["uniform"]["nrmse_mean"] for r in rows])
    ada = np.array([r["adaptive"]["nrmse_mean"] for r in rows])
    rnd = np.array([r["random"]["nrmse_mean"] for r in rows])
    stp = np.array([r["adaptive_stop"]["nrmse_mean"] for r in rows])
    stp_maps = np.array([r["adaptive_stop"]["chem_tilts"] for r in rows])
    summary = {
        "size": args.size, "maps": args.maps, "stop_ratio": args.stop_ratio,
        "cases": len(rows), "seconds": time.perf_counter() - t0,
        "nrmse_mean": {"uniform": float(uni.mean()), "random": float(rnd.mean()),
                       "adaptive": float(ada.mean()), "adaptive_stop": float(stp.mean())},
        "adaptive_vs_uniform_worst_pct": float(np.max((ada - uni) / uni) * 100),
        "adaptive_vs_uniform_mean_pct": float(np.mean((ada - uni) / uni) * 100),
        "stop_rule_maps_mean": float(stp_maps.mean()),
        "stop_rule_map_saving_pct": float((1 - stp_maps.mean() / args.maps) * 100),
        "stop_rule_vs_uniform_mean_pct": float(np.mean((stp - uni) / uni) * 100),
        "stop_rule_reaches_uniform": int(np.sum(stp <= uni * 1.0)),
        "advice_seconds_median": float(np.median(
            [r["adaptive"]["advice_seconds_median"] for r in rows])),
        "defaults": dataclasses.asdict(AdvisorParams()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
