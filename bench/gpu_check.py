"""The measurements of bench/gpu_check.sh: agreement of a device with the CPU reference, time
per fused iteration and time to answer, and the live per-tilt time; one JSON file.

    python bench/gpu_check.py --device gpu --out gpu_check.json          # what the .sh runs
    python bench/gpu_check.py --device cpu --dry-run --out /tmp/x.json    # no GPU (CI)

Phases (each one guarded: an error is recorded and the next phase runs; the JSON file is
rewritten after every phase, so a run stopped by its time limit keeps what it measured):
1. agreement at 64^3 (`--dry-run`: 16^3) of the device against the CPU reference -- with
   `--device gpu` CuPy against the CPU, with `--device cpu` the numba kernels against the
   NumPy/scipy path -- for the projector (forward and adjoint, 4 volumes, 47 tilts, detector
   shifts), TV (prox of 4 volumes with per-element weights, TV value), the fused solver
   (volumes after 3 iterations; <NRMSE> against the truth after 20) and the uncertainty
   (cheap and accurate standard errors of the same solvers); each with the largest
   difference relative to the reference's peak and a pass/fail against its tolerance;
2. timing at 128^3 and 256^3 (`--dry-run`: 24^3 and 32^3), 4 elements, 47 HAADF + 10
   chemical tilts (bench/speed.py's data): set-up and first step, the median fused
   iteration, the kernels, the peak memory, and the time to answer: a fresh solver set up
   and run for 60 iterations (today's fixed count), measured;
3. live per-tilt time at 256^3 (`--dry-run`: 24^3): tilts arrive one by one in angle order
   (a spectrum image at every chemical tilt); after each, the solver runs k = 3 iterations
   and the volumes are copied to the host (what the controller publishes); median and 90th
   percentile over the tilts after the first chemical one. The controller's recording and
   ZeroMQ hops are not included (bench/live.py measures those; a few ms).
Targets (issue 20): <= 30 ms per fused iteration at 256^3 x 4 elements on an H100; live
<= 1 s per tilt at 256^3 (issue 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sigpy as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed

from fusetomo.core.jsonable import lenient_default
from fusetomo.simulators.forward import simulate
from fusetomo.solver import backend
from fusetomo.solver.backend import resolve_device, to_device, to_numpy
from fusetomo.solver.fusion import GAMMA_START, FusedSolver, FusionParams
from fusetomo.solver.metrics import nrmse
from fusetomo.solver.projector import ParallelProjector
from fusetomo.solver.tv import prox_tv, tv_value
from fusetomo.solver.uncertainty import UncertaintyParams, estimate_std_error

ELEMENTS = 4
HAADF_TILTS, CHEM_TILTS, TILT_RANGE = 47, 10, 70.0
K_PER_TILT = 3
# Tolerances, relative to the reference's peak: float32 sums in another order (projector,
# TV); three non-linear fused iterations (as tests/test_fusion_solver.py); <NRMSE> after 20
# iterations; standard errors (cheap: a diagonal; accurate: CG to cg_tol with random probes
# drawn on the host, so the same probes on both devices).
TOL = {"projector": 1e-4, "tv": 1e-4, "fused_3": 1e-3, "nrmse_20_rel": 1e-2,
       "std_cheap": 1e-2, "std_accurate": 5e-2}


class Report:
    """The JSON file, rewritten after every phase."""

    def __init__(self, path: Path, head: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**head, "phases": {}}
        self.t0 = time.perf_counter()

    def phase(self, name: str, fn: Callable[[], dict[str, Any]], budget_s: float) -> None:
        elapsed = time.perf_counter() - self.t0
        if elapsed > budget_s:
            self.data["phases"][name] = {"status": "skipped",
                                         "why": f"time budget {budget_s:.0f} s spent"}
        else:
            print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
            t1 = time.perf_counter()
            try:
                out = fn()
                out.setdefault("status", "ok")
            except Exception as e:  # recorded; the next phase still runs
                out = {"status": "error", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(limit=8)}
            out["elapsed_s"] = time.perf_counter() - t1
            self.data["phases"][name] = out
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = time.perf_counter() - self.t0
        self.data["load_average_end"] = speed.load_average()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=lenient_default) + "\n")


# -- reference and candidate ------------------------------------------------------------------
class Pair:
    """Runs a computation on the reference (the CPU; with --device cpu its NumPy/scipy path)
    and on the candidate (the GPU; with --device cpu the numba kernels)."""

    def __init__(self, device: sp.Device) -> None:
        self.device = device
        self.gpu = device != sp.cpu_device

    def ref(self, fn: Callable[[sp.Device], Any]) -> Any:
        with speed.cpu_path("numba" if self.gpu else "numpy", backend.available_cores()):
            return fn(sp.cpu_device)

    def new(self, fn: Callable[[sp.Device], Any]) -> Any:
        with speed.cpu_path("numba", backend.available_cores()), self.device:
            out = fn(self.device)
            speed.synchronize(self.device)
            return out

    @property
    def names(self) -> dict[str, str]:
        if self.gpu:
            return {"reference": "CPU (numba kernels)", "candidate": "GPU (CuPy)"}
        return {"reference": "CPU, NumPy/scipy path", "candidate": "CPU, numba kernels"}


def rel_diff(got: Any, ref: Any) -> float:
    g = np.asarray(to_numpy(got), dtype=np.float64)
    r = np.asarray(to_numpy(ref), dtype=np.float64)
    if g.shape != r.shape:
        raise ValueError(f"shapes differ: {g.shape} vs {r.shape}")
    return float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-30))


def check(out: dict[str, Any], name: str, value: float, tol: float) -> None:
    out[name] = {"max_rel_diff": value, "tolerance": tol, "ok": bool(value <= tol)}


# -- phase 1: agreement -----------------------------------------------------------------------
def agreement(n: int, pair: Pair) -> dict[str, Any]:
    out: dict[str, Any] = {"N": n, **pair.names}
    rng = np.random.default_rng(0)
    ha = np.linspace(-TILT_RANGE, TILT_RANGE, HAADF_TILTS)
    shifts = rng.uniform(-1.5, 1.5, (HAADF_TILTS, 2))
    x = rng.random((ELEMENTS, n, n, n), dtype=np.float32)
    y = rng.standard_normal((ELEMENTS, HAADF_TILTS, n, n + 6)).astype(np.float32)

    def projector(dev: sp.Device) -> tuple[Any, Any]:
        p = ParallelProjector(n, ha, n_det=n + 6, device=dev)
        p.set_shifts(shifts)
        return p.forward(to_device(x, dev)), p.adjoint(to_device(y, dev))

    (f0, a0), (f1, a1) = pair.ref(projector), pair.new(projector)
    check(out, "projector_forward", rel_diff(f1, f0), TOL["projector"])
    check(out, "projector_adjoint", rel_diff(a1, a0), TOL["projector"])

    w = np.array([0.02, 0.05, 0.1, 0.0], np.float32)

    def tv(dev: sp.Device) -> tuple[Any, Any]:
        xd = to_device(x, dev)
        return prox_tv(xd, to_device(w, dev), iterations=5), tv_value(xd)

    (p0, t0), (p1, t1) = pair.ref(tv), pair.new(tv)
    check(out, "tv_prox", rel_diff(p1, p0), TOL["tv"])
    check(out, "tv_value", rel_diff(t1, t0), TOL["tv"])

    sim = simulate("nanocubes", n, seed=0)
    s = sim.series

    def fused(dev: sp.Device) -> dict[str, Any]:
        solver = FusedSolver(n, n, s.elements, [s.Z[e] for e in s.elements],
                             FusionParams(gamma=s.gamma), device=dev,
                             background=[s.background[e] for e in s.elements])
        solver.add_haadf(s.haadf_angles, s.haadf)
        solver.add_chem(s.common_chem_angles, s.chem)
        solver.run(3)
        v3 = solver.volumes()
        solver.run(17)
        v20 = solver.volumes()
        nr = float(np.mean([nrmse(sim.truth[e], v20[e]) for e in s.elements]))
        std: dict[str, Any] = {}
        for mode in ("cheap", "accurate"):
            up = UncertaintyParams(mode=mode, probes=4, cg_iterations=60, cg_tol=1e-3)
            std[mode], _ = estimate_std_error(solver, up)
        return {"v3": v3, "nrmse20": nr, "std": std, "x20": v20}

    r0, r1 = pair.ref(fused), pair.new(fused)
    check(out, "fused_3_iterations", max(rel_diff(r1["v3"][e], r0["v3"][e])
                                         for e in s.elements), TOL["fused_3"])
    check(out, "fused_nrmse_20_iterations", abs(r1["nrmse20"] / r0["nrmse20"] - 1.0),
          TOL["nrmse_20_rel"])
    out["fused_nrmse_20_iterations"].update(reference=r0["nrmse20"], candidate=r1["nrmse20"])
    # The standard errors depend on the volumes they are taken at, which differ by the
    # fused solver's own CPU/GPU difference after 20 iterations (reported beside them).
    out["fused_20_iterations_volumes_max_rel_diff"] = max(
        rel_diff(r1["x20"][e], r0["x20"][e]) for e in s.elements)
    for mode in ("cheap", "accurate"):
        check(out, f"uncertainty_{mode}", max(rel_diff(r1["std"][mode][e], r0["std"][mode][e])
                                              for e in s.elements), TOL[f"std_{mode}"])
    out["all_ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict) and "ok" in v)
    if not out["all_ok"]:
        out["status"] = "failed"
    return out


# -- phase 2: timing --------------------------------------------------------------------------
def timing(n: int, device: sp.Device, iterations: int, answer_iterations: int,
           repeats: int) -> dict[str, Any]:
    ha = np.linspace(-TILT_RANGE, TILT_RANGE, HAADF_TILTS)
    ca = np.linspace(-TILT_RANGE, TILT_RANGE, CHEM_TILTS)
    t0 = time.perf_counter()
    data = speed.make_data(n, ELEMENTS, ha, ca, GAMMA_START)
    out: dict[str, Any] = {"N": n, "data_s": time.perf_counter() - t0,
                           "threads": backend.threads()}
    params = FusionParams()
    solver, first = speed.fresh_solver(n, data, (ha, ca), params, device, 1)
    out.update(first)
    steps = [speed.timed(solver.step, device) for _ in range(iterations)]
    out["iteration_s"] = float(np.median(steps))
    out["iteration_all_s"] = steps
    scale = solver.scale_tv
    del solver
    speed.synchronize(device)
    t1 = time.perf_counter()
    s2 = FusedSolver(n, n, data["elements"], data["Z"], params, device=device)
    s2.add_haadf(ha, data["haadf"])
    s2.add_chem(ca, data["chem"])
    s2.run(answer_iterations)
    vols = s2.volumes()  # on the host: the answer the microscopist sees
    out["time_to_answer_s"] = time.perf_counter() - t1
    out["answer_iterations"] = answer_iterations
    out["answer_finite"] = bool(all(np.isfinite(v).all() for v in vols.values()))
    del s2
    cases = speed.kernel_cases(n, data, (ha, ca), params, scale, device)
    with device:
        for k in ("fwd_adj_haadf", "fwd_adj_chem", "tv_slices"):
            out[f"{k}_s"] = speed.median_time(cases[k], device, repeats)
    print(f"  N={n}: iteration {1e3 * out['iteration_s']:.1f} ms, time to answer "
          f"({answer_iterations} it.) {out['time_to_answer_s']:.2f} s, first step "
          f"{out['warmup_step_s'][0]:.2f} s, peak {out['peak_memory_MB']:.0f} MB", flush=True)
    return out


# -- phase 3: live ----------------------------------------------------------------------------
def live(n: int, device: sp.Device) -> dict[str, Any]:
    ha = np.linspace(-TILT_RANGE, TILT_RANGE, HAADF_TILTS)
    ca = np.linspace(-TILT_RANGE, TILT_RANGE, CHEM_TILTS)
    data = speed.make_data(n, ELEMENTS, ha, ca, GAMMA_START)
    # arrival order: by angle; a chemical tilt arrives with the HAADF image nearest to it
    chem_at = {int(np.argmin(np.abs(ha - a))): j for j, a in enumerate(ca)}
    solver = FusedSolver(n, n, data["elements"], data["Z"], FusionParams(), device=device)
    lat: list[float] = []
    first_chem = None
    for i, a in enumerate(ha):
        speed.synchronize(device)
        t0 = time.perf_counter()
        solver.add_haadf([a], data["haadf"][i:i + 1])
        if i in chem_at:
            j = chem_at[i]
            solver.add_chem([ca[j]], data["chem"][:, j:j + 1])
            first_chem = i if first_chem is None else first_chem
        if solver.ready:
            solver.run(K_PER_TILT)
            solver.volumes()  # to the host, as the controller publishes it
        speed.synchronize(device)
        if first_chem is not None:
            lat.append(time.perf_counter() - t0)
    out = {"N": n, "k_per_tilt": K_PER_TILT, "tilts": len(lat),
           "per_tilt_s_median": float(np.median(lat)),
           "per_tilt_s_p90": float(np.percentile(lat, 90)), "per_tilt_s_max": float(max(lat)),
           "first_chem_tilt_s": lat[0]}
    print(f"  N={n}: live per tilt median {out['per_tilt_s_median']:.3f} s, p90 "
          f"{out['per_tilt_s_p90']:.3f} s", flush=True)
    return out


# -- GPU tests (run by the .sh; read from pytest's JUnit XML) ----------------------------------
def pytest_result(xml: Path | None, rc: int | None) -> dict[str, Any]:
    if xml is None:
        return {"status": "skipped", "why": "not run (--no-tests)"}
    out: dict[str, Any] = {"exit_code": rc}
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as e:
        return {"status": "error", "error": f"no JUnit XML from pytest: {e}", "exit_code": rc}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for k in ("tests", "failures", "errors", "skipped"):
        out[k] = sum(int(s.get(k, 0)) for s in suites)
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    out["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}"
                           for c in root.iter("testcase")
                           if c.find("failure") is not None or c.find("error") is not None]
    # pytest exits 5 when every selected test was deselected; 0 passed
    out["status"] = "ok" if rc in (0, 5) and not out["failed_tests"] else "failed"
    return out


# -- summary ----------------------------------------------------------------------------------
def summary(data: dict[str, Any]) -> str:
    ph = data["phases"]
    lines = [f"gpu_check on {data['hardware'].get('gpu') or data['hardware']['cpu_model']} "
             f"({data['device']}{', dry run' if data['dry_run'] else ''}), "
             f"{data['elapsed_s']:.0f} s"]
    for name, p in ph.items():
        lines.append(f"  {name:<16} {p.get('status')}"
                     + (f": {p.get('error') or p.get('why')}" if p.get("status") in
                        ("error", "skipped") else ""))
    t = ph.get("gpu_tests", {})
    if "tests" in t:
        lines.append(f"  GPU tests: {t['passed']} passed, {t['failures'] + t['errors']} "
                     f"failed, {t['skipped']} skipped"
                     + (f" ({', '.join(t['failed_tests'][:5])})" if t["failed_tests"] else ""))
    ag = ph.get("agreement", {})
    for k, v in ag.items():
        if isinstance(v, dict) and "ok" in v:
            lines.append(f"  agree {k:<28} {v['max_rel_diff']:.2e} (tol {v['tolerance']:.0e})"
                         f" {'ok' if v['ok'] else 'FAILED'}")
    for k, v in ph.items():
        if k.startswith("timing_") and v.get("status") == "ok":
            lines.append(f"  N={v['N']}: {1e3 * v['iteration_s']:.1f} ms per fused iteration, "
                         f"time to answer {v['time_to_answer_s']:.2f} s "
                         f"({v['answer_iterations']} it.), peak {v['peak_memory_MB']:.0f} MB")
    lv = ph.get("live", {})
    if lv.get("status") == "ok":
        lines.append(f"  live N={lv['N']}: {lv['per_tilt_s_median']:.3f} s per tilt (median), "
                     f"p90 {lv['per_tilt_s_p90']:.3f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    ap.add_argument("--dry-run", action="store_true", help="small sizes (a minute or less)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--budget-s", type=float, default=400.0,
                    help="start no phase after this many seconds (default 400)")
    ap.add_argument("--pytest-xml", type=Path, default=None)
    ap.add_argument("--pytest-rc", type=int, default=None)
    ap.add_argument("--pytest-s", type=float, default=None)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    agree_n, sizes, live_n = (16, [24, 32], 24) if args.dry_run else (64, [128, 256], 256)
    iterations, answer_it, repeats = (2, 5, 2) if args.dry_run else (5, 60, 3)
    report = Report(args.out, {
        "command": "bench/gpu_check.sh " + os.environ.get("GPU_CHECK_ARGS", " ".join(
            sys.argv[1:] if argv is None else argv)),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": args.device, "dry_run": args.dry_run,
        "hardware": speed.hardware(device), "threads": backend.threads(),
        "load_average_start": speed.load_average(), "tolerances": TOL,
        "targets": {"iteration_ms_256": 30.0, "live_per_tilt_s_256": 1.0},
    })
    tests = pytest_result(args.pytest_xml, args.pytest_rc)
    if args.pytest_s is not None:
        tests["elapsed_s"] = args.pytest_s
    report.data["phases"]["gpu_tests"] = tests
    speed.warm_up(device, ELEMENTS)
    pair = Pair(device)
    report.phase("agreement", lambda: agreement(agree_n, pair), args.budget_s)
    for n in sizes:
        report.phase(f"timing_{n}", lambda n=n: timing(n, device, iterations, answer_it,
                                                        repeats), args.budget_s)
    report.phase("live", lambda: live(live_n, device), args.budget_s)
    t256 = report.data["phases"].get(f"timing_{sizes[-1]}", {})
    if not args.dry_run and t256.get("status") == "ok":
        report.data["target_iteration_256_met"] = 1e3 * t256["iteration_s"] <= 30.0
    report.write()
    print(summary(report.data))
    print(f"wrote {args.out}")
    bad = [k for k, p in report.data["phases"].items() if p.get("status") in ("error",
                                                                              "failed")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
