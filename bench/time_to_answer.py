"""Time to answer (issue 20, item 2): <NRMSE> against wall time for the fused
reconstruction, today's schedule (a fixed 60 iterations of 5 HAADF inner iterations and 5
TV iterations) against the stopping rule (solver/stopping.py) and cheaper inner loops, on
the robustness bench's specimens and reference acquisition (bench/robustness.py: another
projector on a 2x finer grid, background, offset and gamma unstated, chemical SNR 2.5).

Each run records, per fused iteration, the wall time spent in the solver (set-up, the
gamma search and the ML-EM start included; the scoring against the truth excluded) and the
<NRMSE> of the iterate, so one run gives the whole curve; the schedule's answer is the
iterate where it stops. The paths are the NumPy/scipy one the issue measured
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
from dataclasses import dataclass, field, replace
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
class Schedule:
    """A way to run the fused iterations: fixed `iterations`, or a stopping rule."""

    name: str
    iterations: int | None = TODAY_ITERATIONS  # None: the stopping rule
    rule: StopRule = field(default_factory=StopRule)
    haadf_inner: int = 5
    tv_iterations: int = 5
    kernels: bool = True

    def params(self) -> FusionParams:
        return replace(FusionParams(), haadf_inner_iterations=self.haadf_inner,
                       tv_iterations=self.tv_iterations)


SCHEDULES = {s.name: s for s in (
    Schedule("today-numpy", kernels=False),
    Schedule("today"),
    Schedule("rule", iterations=None),
    Schedule("rule-inner3", iterations=None, haadf_inner=3, tv_iterations=3),
    Schedule("rule-inner2", iterations=None, haadf_inner=2, tv_iterations=2),
    Schedule("rule-tol3e-3", iterations=None, rule=StopRule(tol=3e-3)),
)}


def run_one(sim: Simulator, sched: Schedule) -> dict[str, Any]:
    """One reconstruction of the reference acquisition; its curve and its answer."""
    os.environ["FUSETOMO_CPU_KERNELS"] = "numba" if sched.kernels else "numpy"
    acq = sim.acquire(REF)
    series = acq.raw
    t0 = time.perf_counter()
    solver = solver_for_series(series, sched.params(), device="cpu")
    solver.add_haadf(series.haadf_angles, series.haadf)
    solver.add_chem(series.common_chem_angles, series.chem)
    solver.initialize()
    setup = time.perf_counter() - t0
    elapsed, curve, seconds = setup, [], []
    rule = sched.rule
    h = solver.history
    reason = "fixed"
    k = 0
    while True:
        t1 = time.perf_counter()
        solver.step()
        elapsed += time.perf_counter() - t1
        k += 1
        curve.append(score(acq.truth, solver.volumes()))
        seconds.append(elapsed)
        if sched.iterations is not None:
            if k >= sched.iterations:
                break
            continue
        r = rule.check(h.change, h.haadf, h.chem, k)
        if r is not None:
            reason = r
            break
    return {"schedule": sched.name, "setup_s": setup, "seconds": seconds, "nrmse": curve,
            "iterations": k, "stop_reason": reason, "answer_s": seconds[-1],
            "answer_nrmse": curve[-1], "gamma": float(solver.gamma)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = RESULTS / f"time-to-answer-{args.tag}.json"
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {(r["size"], r["specimen"], r["schedule"]) for r in results["rows"]}
    if args.threads:
        backend.set_threads(args.threads)
    for size in args.sizes:
        for name in args.specimens.split(","):
            sim = Simulator(name, size, seed=0)
            for sname in args.schedules.split(","):
                if (size, name, sname) in done:
                    continue
                row = run_one(sim, SCHEDULES[sname])
                row.update(size=size, specimen=name, load=os.getloadavg()[0])
                print(f"{size:4d} {name:11s} {sname:13s} {row['iterations']:4d} its "
                      f"{row['answer_s']:7.1f} s  <NRMSE> {row['answer_nrmse']:.4f} "
                      f"({row['stop_reason']}, setup {row['setup_s']:.1f} s, load "
                      f"{row['load']:.1f})", flush=True)
                results["rows"].append(row)
                results["settings"] = {"machine": platform.processor() or platform.machine(),
                                       "cores": os.cpu_count(),
                                       "threads": backend.threads()}
                out.write_text(json.dumps(results, indent=1))
    return results


def report(results: dict[str, Any]) -> str:
    """Per size and specimen: each schedule's answer against today's (kernels and NumPy)."""
    rows = results["rows"]
    lines = ["| N | specimen | schedule | iterations | time to answer | vs today-numpy | "
             "<NRMSE> | vs today |", "|---|---|---|---|---|---|---|---|"]
    by = {(r["size"], r["specimen"], r["schedule"]): r for r in rows}
    for (size, spec, sname), r in sorted(by.items()):
        ref = by.get((size, spec, "today"))
        ref_np = by.get((size, spec, "today-numpy"))
        dt = f"{r['answer_s'] / ref_np['answer_s']:.2f}x" if ref_np else "-"
        dn = (f"{100 * (r['answer_nrmse'] / ref['answer_nrmse'] - 1):+.1f} %"
              if ref else "-")
        lines.append(f"| {size} | {spec} | {sname} | {r['iterations']} ({r['stop_reason']}) "
                     f"| {r['answer_s']:.1f} s | {dt} | {r['answer_nrmse']:.3f} | {dn} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--specimens", default="nanocubes,core-shell,film,rod")
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
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
