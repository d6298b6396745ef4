"""The gamma search's split damping (solver/gamma.py, `GammaSearchParams.split_damping`):
the estimated gamma and <NRMSE> for data formed at gamma 1.4/1.7/2.0, per damping, and
the fit check with an element left out of the list (docs/benchmarks.md, robustness).

    python bench/gamma_damping.py                         # ~6 min on 2 cores
    python bench/gamma_damping.py --specimens rod --dampings 1e-6,1e-4
    python bench/gamma_damping.py --missing               # nanocubes without Au

Series: bench/robustness.py's (64^3, another projector on a 2x finer grid, background and
HAADF offset unstated); specimens from bench/robustness_specimens.py and
bench/heldout_specimens.py. `--missing`: `reconstruct` on the simulator's nanocubes
(32^3 and 64^3) with and without Au in the element list: gamma, map chi^2, warnings.
Results go to bench/results/gamma_damping.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import heldout_specimens
import robustness

import fusetomo.solver.fusion_gamma as fusion_gamma
from fusetomo.adapters.series import TiltSeries
from fusetomo.controller.reconstruct import reconstruct
from fusetomo.simulators.forward import AcquisitionParams, simulate
from fusetomo.solver.gamma import GammaSearchParams, search_gamma

RESULTS = Path(__file__).resolve().parent / "results"
robustness.FAMILIES.update(heldout_specimens.FAMILIES)


def gamma_rows(specimens: list[str], dampings: list[float]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name in specimens:
        sim = robustness.Simulator(name, 64, 0)
        for cell in ("gamma1.4", "ref", "gamma2.0"):
            acq = sim.acquire(robustness.CELLS[cell])
            for d in dampings:
                # The search as the solver calls it, with this damping.
                fusion_gamma.search_gamma = (
                    lambda s, p=None, d=d: search_gamma(s, GammaSearchParams(split_damping=d)))
                res = reconstruct(acq.raw, "fused", device="cpu", progress=False)
                row = {"true": robustness.CELLS[cell].gamma, "damping": d,
                       "gamma": float(res.params["model_gamma"]),
                       "nrmse": robustness.score(acq.truth, res.volumes)}
                rows[f"{name} {cell} {d:g}"] = row
                print(f"{name:10s} {cell:9s} damping {d:g}: gamma {row['gamma']:.2f} "
                      f"<NRMSE> {row['nrmse']:.3f}", flush=True)
    fusion_gamma.search_gamma = search_gamma
    return rows


def missing_rows() -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for n in (32, 64):
        s = simulate("nanocubes", n, acq=AcquisitionParams(gamma=1.7), seed=0).series
        for els in ([e for e in s.elements if e != "Au"], list(s.elements)):
            series = TiltSeries(s.haadf, s.haadf_angles, {e: s.chem[e] for e in els},
                                {e: s.chem_angles[e] for e in els},
                                Z={e: s.Z[e] for e in els}, gamma=None)
            res = reconstruct(series, "fused", device="cpu", progress=False)
            p = res.params
            key = f"{n}^3 {'complete' if len(els) == len(s.elements) else 'without Au'}"
            rows[key] = {"gamma": float(p["model_gamma"]),
                         "chem_chi2": {e: float(p[f"fit_chem_chi2_{e}"]) for e in els
                                       if f"fit_chem_chi2_{e}" in p},
                         "haadf_unexplained": float(p.get("fit_haadf_unexplained", "nan")),
                         "warnings": list(res.warnings)}
            print(key, json.dumps(rows[key]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specimens", default="rod,nanocubes,film,alloy")
    ap.add_argument("--dampings", default="1e-6,1e-4")
    ap.add_argument("--missing", action="store_true")
    args = ap.parse_args()
    path = RESULTS / "gamma_damping.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if args.missing:
        doc["missing_au"] = missing_rows()
    else:
        doc.setdefault("gamma", {}).update(gamma_rows(
            args.specimens.split(","), [float(d) for d in args.dampings.split(",")]))
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
