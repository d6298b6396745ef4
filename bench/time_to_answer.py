"""Time to answer (issue 20, item 2): <NRMSE> against wall time for the fused
reconstruction, today's schedule (a fixed 60 iterations of 5 HAADF inner iterations and 5
TV iterations) against the stopping rule (solver/stopping.py) and cheaper inner loops, on
the robustness bench's specimens and reference acquisition (bench/robustness.py: another
projector on a 2x finer grid, background, offset and gamma unstated, chemical SNR 2.5).

Each run records, per fused iteration, the wall time spent in the solver (set-up, the
gamma search and the ML-EM start included; the scoring against the truth excluded), the
<NRMSE> of the iterate and the history the stopping rule reads, so one run gives every
schedule with the same inner loops (a fixed count, the rule at several tolerances) at the
same machine load; the schedule's answer is the iterate where it stops. The paths are the
NumPy/scipy one the issue measured
(FUSETOMO_CPU_KERNELS=numpy, one core) and the CPU kernels (solver/cpu_kernels.py).

    python bench/time_to_answer.py --sizes 64 128 --specimens nanocubes,core-shell,film,rod
    python bench/time_to_answer.py --report          # the table of the stored results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import REF, Simulator, score

from fusetomo.controller.series_model import solver_for_series
from fusetomo.solver import backend
from fusetomo.solver.fusion import FusionParams
from fusetomo.solver.stopping import StopRule

RESULTS = Path(__file__).resolve().parent / "results"
TODAY_ITERATIONS = 60


@dataclass(frozen=True)
class Inner:
    """The inner loops of one fused iteration, and the CPU path."""

    name: str
    haadf_inner: int = 5
    tv_iterations: int = 5
    kernels: bool = True

    def params(self) -> FusionParams:
        return replace(FusionParams(), haadf_inner_iterations=self.haadf_inner,
                       tv_iterations=self.tv_iterations)


INNER = {i.name: i for i in (
    Inner("numpy-5/5", kernels=False),
    Inner("5/5"),
    Inner("3/3", haadf_inner=3, tv_iterations=3),
    Inner("2/2", haadf_inner=2, tv_iterations=2),
)}

# When to stop, applied to a run's history: a fixed count (today: 60) or the stopping rule
# at a tolerance on the volumes' relative change per iteration.
RULES: dict[str, StopRule | int] = {
    "60 its": TODAY_ITERATIONS, "30 its": 30,
    "rule 1e-3": StopRule(tol=1e-3), "rule 2e-3": StopRule(tol=2e-3),
    "rule 3e-3": StopRule(tol=3e-3), "rule 5e-3": StopRule(tol=5e-3),
}


def stop_at(rule: StopRule | int, hist: dict[str, list[float]]) -> tuple[int, str]:
    """The iteration (1-based) where `rule` stops on the recorded history, and why."""
    if isinstance(rule, int):
        return rule, "fixed"
    for k in range(1, len(hist["change"]) + 1):
        r = rule.check(hist["change"][:k], hist["haadf"][:k], hist["chem"][:k], k)
        if r is not None:
            return k, r
    return len(hist["change"]), "not reached"


def run_one(sim: Simulator, inner: Inner) -> dict[str, Any]:
    """One reconstruction of the reference acquisition, iterated until today's 60
    iterations and the tightest rule have both been reached: per iteration its wall time,
    <NRMSE> and the history the rules read."""
    os.environ["FUSETOMO_CPU_KERNELS"] = "numba" if inner.kernels else "numpy"
    acq = sim.acquire(REF)
    series = acq.raw
    t0 = time.perf_counter()
    solver = solver_for_series(series, inner.params(), device="cpu")
    solver.add_haadf(series.haadf_angles, series.haadf)
    solver.add_chem(series.common_chem_angles, series.chem)
    solver.initialize()
    setup = time.perf_counter() - t0
    elapsed, curve, seconds = setup, [], []
    h = solver.history
    tight = StopRule(tol=1e-3)
    k = 0
    while True:
        t1 = time.perf_counter()
        solver.step()
        elapsed += time.perf_counter() - t1
        k += 1
        curve.append(score(acq.truth, solver.volumes()))
        seconds.append(elapsed)
        if not inner.kernels and k >= TODAY_ITERATIONS:
            break  # the NumPy path is measured for today's schedule only
        if k >= TODAY_ITERATIONS and tight.check(h.change, h.haadf, h.chem, k) is not None:
            break
    n = len(curve)
    return {"inner": inner.name, "setup_s": setup, "seconds": seconds, "nrmse": curve,
            "history": {"change": list(h.change[-n:]), "haadf": list(h.haadf[-n:]),
                        "chem": list(h.chem[-n:])},
            "gamma": float(solver.gamma)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = RESULTS / f"time-to-answer-{args.tag}.json"
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {(r["size"], r["specimen"], r["inner"]) for r in results["rows"]}
    if args.threads:
        backend.set_threads(args.threads)
    for size in args.sizes:
        for name in args.specimens.split(","):
            sim = Simulator(name, size, seed=0)
            for iname in args.inner.split(","):
                if (size, name, iname) in done:
                    continue
                row = run_one(sim, INNER[iname])
                row.update(size=size, specimen=name, load=os.getloadavg()[0])
                k, why = stop_at(StopRule(), row["history"])
                print(f"{size:4d} {name:11s} {iname:10s} {len(row['seconds']):4d} its "
                      f"{row['seconds'][-1]:7.1f} s; 60 its: <NRMSE> "
                      f"{row['nrmse'][min(59, len(row['nrmse']) - 1)]:.4f}; default rule at "
                      f"{k} ({why}) <NRMSE> {row['nrmse'][k - 1]:.4f} (setup "
                      f"{row['setup_s']:.1f} s, load {row['load']:.1f})", flush=True)
                results["rows"].append(row)
                results["settings"] = {"machine": platform.processor() or platform.machine(),
                                       "cores": os.cpu_count(), "threads": backend.threads()}
                out.write_text(json.dumps(results, indent=1))
    return results


def answers(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (size, specimen, inner loops, stopping) answer: iterations, seconds, <NRMSE>."""
    out = []
    for r in results["rows"]:
        for rname, rule in RULES.items():
            if r["inner"].startswith("numpy") and rname != "60 its":
                continue
            k, why = stop_at(rule, r["history"])
            if k > len(r["seconds"]):
                continue
            out.append({"size": r["size"], "specimen": r["specimen"], "inner": r["inner"],
                        "stop": rname, "iterations": k, "reason": why,
                        "seconds": r["seconds"][k - 1], "nrmse": r["nrmse"][k - 1],
                        "load": r["load"]})
    return out


def report(results: dict[str, Any]) -> str:
    """Per size and specimen: each schedule's answer against today's (60 iterations of
    5/5 inner iterations) on the kernels and on the NumPy path."""
    ans = answers(results)
    today = {(a["size"], a["specimen"]): a for a in ans
             if a["inner"] == "5/5" and a["stop"] == "60 its"}
    numpy_ = {(a["size"], a["specimen"]): a for a in ans if a["inner"].startswith("numpy")}
    lines = ["| N | specimen | inner (HAADF/TV) | stop | iterations | time to answer | "
             "vs today | vs today, NumPy path | <NRMSE> | vs today |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for a in sorted(ans, key=lambda a: (a["size"], a["specimen"], a["inner"], a["stop"])):
        key = (a["size"], a["specimen"])
        t, tn = today.get(key), numpy_.get(key)
        lines.append(
            f"| {a['size']} | {a['specimen']} | {a['inner']} | {a['stop']} | "
            f"{a['iterations']} ({a['reason']}) | {a['seconds']:.1f} s | "
            + (f"{a['seconds'] / t['seconds']:.2f}x | " if t else "- | ")
            + (f"{a['seconds'] / tn['seconds']:.2f}x | " if tn else "- | ")
            + f"{a['nrmse']:.4f} | "
            + (f"{100 * (a['nrmse'] / t['nrmse'] - 1):+.1f} % |" if t else "- |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--specimens", default="nanocubes,core-shell,film,rod")
    ap.add_argument("--inner", default=",".join(INNER),
                    help="inner-loop settings to run: " + ", ".join(INNER))
    ap.add_argument("--threads", type=int, default=0, help="kernel threads (0: default)")
    ap.add_argument("--tag", default="cpu", help="results/time-to-answer-TAG.json")
    ap.add_argument("--report", action="store_true", help="print the stored results' table")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads((RESULTS / f"time-to-answer-{args.tag}.json").read_text())))
        return
    print(report(run(args)))


if __name__ == "__main__":
    main()
