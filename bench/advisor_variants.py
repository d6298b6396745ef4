"""The advisor experiments behind the choices in docs/benchmarks.md (issue 4):

- `curve`: ⟨NRMSE⟩ of uniform spacing against the number of maps (does quality saturate?),
  48^3 nanocubes, sequential, the policy run's schedule.
- `metric`: the adaptive advisor with the Jacobi ('cheap') vs the posterior-sample
  ('sampled') prediction, against uniform, at 6 maps; nanocubes seeds 0-1, both schemes, 40^3.
- `first-map`: the first map where even spacing puts one ('uniform', the default) vs at the
  very first tilt ('now'), at 5 and 8 maps; nanocubes and core-shell, seeds 0-2, both
  schemes, 40^3.

    python bench/advisor_variants.py curve|metric|first-map

Prints a table and writes bench/results/advisor_<experiment>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fusetomo.controller.advisor import AdvisorParams
from fusetomo.controller.policyrun import PolicyRunParams, plan_and_series, run_policy

RESULTS = Path(__file__).parent / "results"
SCHEMES = ("sequential", "dose-symmetric")


def curve() -> dict:
    p = PolicyRunParams(size=48, seed=0)
    prep = plan_and_series(p)
    rows = []
    for k in (1, 2, 4, 6, 8, 10, 14, 20):
        r = run_policy("uniform", AdvisorParams(chem_maps=k), p, prep)
        rows.append({"maps": k, "nrmse_mean": r.nrmse_mean})
        print(f"{k:3d} maps: <NRMSE> {r.nrmse_mean:.3f}", flush=True)
    return {"size": 48, "rows": rows}


def metric() -> dict:
    rows = []
    for seed in (0, 1):
        for scheme in SCHEMES:
            p = PolicyRunParams(size=40, seed=seed, scheme=scheme)
            prep = plan_and_series(p)
            row = {"seed": seed, "scheme": scheme}
            for name, kind, kw in (("uniform", "uniform", {}),
                                   ("jacobi", "adaptive", {"stop_ratio": 0.0}),
                                   ("sampled", "adaptive", {"stop_ratio": 0.0,
                                                            "metric": "sampled", "probes": 4,
                                                            "cg_iterations": 20})):
                r = run_policy(kind, AdvisorParams(chem_maps=6, **kw), p, prep)
                row[name] = r.nrmse_mean
                row[f"{name}_advice_s"] = float(np.median(r.advice_seconds))
            rows.append(row)
            print(f"seed {seed} {scheme:15s} uniform {row['uniform']:.3f}  jacobi "
                  f"{row['jacobi']:.3f}  sampled {row['sampled']:.3f}", flush=True)
    return {"size": 40, "maps": 6, "rows": rows}


def first_map() -> dict:
    rows = []
    for spec in ("nanocubes", "core-shell"):
        for seed in (0, 1, 2):
            for scheme in SCHEMES:
                p = PolicyRunParams(specimen=spec, size=40, seed=seed, scheme=scheme)
                prep = plan_and_series(p)
                for k in (5, 8):
                    row = {"specimen": spec, "seed": seed, "scheme": scheme, "maps": k}
                    row["uniform"] = run_policy("uniform", AdvisorParams(chem_maps=k), p,
                                                prep).nrmse_mean
                    for first in ("uniform", "now"):
                        row[f"first_{first}"] = run_policy("adaptive", AdvisorParams(
                            chem_maps=k, stop_ratio=0.0, first_map=first), p, prep).nrmse_mean
                    rows.append(row)
                    print(f"{spec:10s} seed {seed} {scheme:15s} K={k}: uniform "
                          f"{row['uniform']:.3f}  first at even spacing "
                          f"{row['first_uniform']:.3f}  first now {row['first_now']:.3f}",
                          flush=True)
    summary = {}
    for key in ("first_uniform", "first_now"):
        ratio = np.array([r[key] / r["uniform"] for r in rows])
        summary[key] = {"mean_pct": float((ratio.mean() - 1) * 100),
                        "worst_pct": float((ratio.max() - 1) * 100)}
    print(json.dumps(summary, indent=1))
    return {"size": 40, "rows": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=("curve", "metric", "first-map"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = {"curve": curve, "metric": metric, "first-map": first_map}[args.experiment]()
    out["seconds"] = time.perf_counter() - t0
    path = RESULTS / f"advisor_{args.experiment.replace('-', '_')}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
