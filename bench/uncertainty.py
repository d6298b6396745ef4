"""Validation of the standard errors (solver/uncertainty.py) against Monte Carlo.

    python bench/uncertainty.py            # 64^3, 24 noise realisations, 4-dose sweep
    python bench/uncertainty.py --quick    # 32^3, 8 realisations, small sweep (~2 min)

Setting: nanocube specimen (Co, Cu, O, Au) built once at twice the size (seed 0) and
simulated with noise seeds 0..R-1 (the geometry stays, the noise changes); +-70 deg, HAADF
every 3 deg, chemistry every 15 deg, chemical SNR 2.5; fused defaults, DEFAULT_ITERATIONS
iterations unless --iterations. Standard errors are predicted from realisation 0 alone.

Figures, inside the specimen (truth of the element > 0), per element and mode:
- Spearman rank correlation between the predicted and the empirical per-voxel std (goal
  >= 0.7), with the ceiling that R realisations allow (the split-half rank correlation of
  the empirical std with itself, Spearman-Brown corrected, square-rooted);
- median of predicted / empirical std (goal within [0.5, 2]);
- medians at edges (distance to the element's boundary <= 1 voxel) and inside (> 2);
- the scatter split into each element's global level (std of its mean over the support:
  empirical vs sqrt(m^T H^-1 m)) and the local rest (each realisation rescaled to the mean
  level), because the solver leaves the global level of the HAADF-carried elements loose;
- dose sweep: per chemical SNR, mean standard error vs RMSE (both in the truth's units,
  over all elements' support) and R^2 of a straight-line fit;
- cost: the cheap refresh against one fused iteration; CG iterations warm vs cold after
  one more HAADF and chemical tilt.
Writes bench/results/uncertainty.json and uncertainty.png (uncertainty-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import spearmanr

from fusetomo.simulators.forward import AcquisitionParams, Simulation, TiltScheme, simulate
from fusetomo.simulators.specimens import Specimen, make_specimen
from fusetomo.solver.backend import resolve_device
from fusetomo.solver.fusion import DEFAULT_ITERATIONS, FusedSolver, FusionParams
from fusetomo.solver.uncertainty import UncertaintyParams, estimate_std_error, functional_std

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import hardware  # the bench scripts share the hardware record

RESULTS = Path(__file__).resolve().parent / "results"


# -- running the solver -------------------------------------------------------------------------
def make_solver(sim: Simulation, device: Any, *, drop_last: bool = False) -> FusedSolver:
    s = sim.series
    solver = FusedSolver(*s.shape[::-1], s.elements, [s.Z[e] for e in s.elements],
                         FusionParams(gamma=s.gamma or 1.7), device=device,
                         background=[s.background[e] for e in s.elements])
    kh = len(s.haadf_angles) - (1 if drop_last else 0)
    kc = len(s.common_chem_angles) - (1 if drop_last else 0)
    solver.add_haadf(s.haadf_angles[:kh], s.haadf[:kh])
    solver.add_chem(s.common_chem_angles[:kc], {e: s.chem[e][:kc] for e in s.elements})
    return solver


def reconstruct(spec: Specimen, size: int, snr: float, seed: int, iterations: int,
                device: Any) -> tuple[FusedSolver, Simulation, float]:
    sim = simulate(spec, size, TiltScheme(), AcquisitionParams(chem_snr=snr), seed=seed)
    solver = make_solver(sim, device)
    solver.initialize()
    t0 = time.perf_counter()
    solver.run(iterations)
    return solver, sim, (time.perf_counter() - t0) / max(iterations, 1)


def stack(d: dict[str, np.ndarray], elements: list[str]) -> np.ndarray:
    return np.stack([d[e] for e in elements])


# -- comparing predicted and empirical std ------------------------------------------------------
def compare(pred: np.ndarray, emp: np.ndarray, truth: np.ndarray, elements: list[str]
            ) -> dict[str, dict[str, float]]:
    out = {}
    for i, e in enumerate(elements):
        m = truth[i] > 0
        dist = ndimage.distance_transform_edt(m)
        edge, inner = m & (dist <= 1), dist > 2
        p, q = pred[i], emp[i]
        out[e] = {
            "spearman": float(spearmanr(p[m], q[m]).statistic),
            "median_ratio": float(np.median(p[m] / q[m])),
            "pred_median": float(np.median(p[m])),
            "emp_median": float(np.median(q[m])),
            "pred_edge": float(np.median(p[edge])) if edge.any() else float("nan"),
            "emp_edge": float(np.median(q[edge])) if edge.any() else float("nan"),
            "pred_inside": float(np.median(p[inner])) if inner.any() else float("nan"),
            "emp_inside": float(np.median(q[inner])) if inner.any() else float("nan"),
        }
    return out


def ceiling(xs: np.ndarray, truth: np.ndarray, elements: list[str]) -> dict[str, float]:
    """How well any predictor can rank-correlate with an empirical std from R samples: the
    split-half rank correlation r of the std with itself, Spearman-Brown corrected to the
    full R (2r/(1+r)) and square-rooted (the correlation of the noisy empirical std with
    its noise-free self)."""
    h = len(xs) // 2
    a, b = xs[:h].std(axis=0, ddof=1), xs[h:2 * h].std(axis=0, ddof=1)
    out = {}
    for i, e in enumerate(elements):
        m = truth[i] > 0
        r = float(spearmanr(a[i][m], b[i][m]).statistic)
        out[e] = float(np.sqrt(max(2 * r / (1 + r), 0.0)))
    return out


def predict(solver: FusedSolver, params: UncertaintyParams) -> tuple[np.ndarray, dict]:
    std, state = estimate_std_error(solver, params)
    info = {"seconds": state.seconds, "haadf_sigma": state.haadf_sigma,
            "cg_iterations_mean": float(np.mean(state.cg_iterations))
            if state.cg_iterations else 0.0}
    return stack(std, solver.elements), info


# -- the parts of the bench ---------------------------------------------------------------------
def monte_carlo(spec: Specimen, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    xs, it_times = [], []
    solver0 = sim0 = None
    t0 = time.perf_counter()
    for seed in range(args.realisations):
        solver, sim, dt = reconstruct(spec, args.size, args.snr, seed, args.iterations, device)
        xs.append(stack(solver.volumes(), solver.elements))
        it_times.append(dt)
        if seed == 0:
            solver0, sim0 = solver, sim
        print(f"  realisation {seed + 1}/{args.realisations}: {dt:.3f} s/iteration", flush=True)
    assert solver0 is not None and sim0 is not None
    els = solver0.elements
    x = np.array(xs)
    emp = x.std(axis=0, ddof=1)
    truth = stack(sim0.truth, els)
    kappa = float(sim0.series.attrs["counts_per_unit"])
    out: dict[str, Any] = {
        "realisations": args.realisations, "mc_seconds": time.perf_counter() - t0,
        "fused_iteration_s": statistics.median(it_times), "counts_per_unit": kappa,
        "ceiling_spearman": ceiling(x, truth, els), "modes": {},
    }
    # the empirical scatter's global level: std of each element's mean over its support
    out["global_level_rel_std"] = {
        e: float(np.std([xi[i][truth[i] > 0].mean() for xi in x], ddof=1)
                 / np.mean([xi[i][truth[i] > 0].mean() for xi in x]))
        for i, e in enumerate(els)}
    modes = {
        "cheap": UncertaintyParams(mode="cheap"),
        "cheap_estimator": UncertaintyParams(mode="cheap", covariance="estimator"),
        "accurate": UncertaintyParams(mode="accurate", probes=args.probes,
                                      probe_batch=args.probe_batch),
        "accurate_estimator": UncertaintyParams(mode="accurate", covariance="estimator",
                                                probes=args.probes_other,
                                                probe_batch=args.probe_batch,
                                                cg_iterations=200),
    }
    if args.hutchinson:
        modes["accurate_hutchinson"] = UncertaintyParams(
            mode="accurate", estimator="hutchinson", probes=args.probes_other,
            probe_batch=args.probe_batch, cg_iterations=200)
    preds = {}
    for name, p in modes.items():
        pred, info = predict(solver0, p)
        preds[name] = pred
        res = compare(pred, emp, truth, els)
        out["modes"][name] = {"params": asdict(p), **info, "elements": res}
        print(f"  {name:20s} {info['seconds']:7.2f} s  " + "  ".join(
            f"{e}: rho {r['spearman']:.2f} ratio {r['median_ratio']:.2f}"
            for e, r in res.items()), flush=True)
    # The scatter splits into each element's global level (one number per realisation)
    # and the local rest. The level: predicted from the functional m^T x (m the mean over
    # the element's support) against the std of that mean over the realisations.
    w = np.zeros((len(els), *truth.shape), np.float32)
    for i in range(len(els)):
        w[i, i] = (truth[i] > 0) / max(int((truth[i] > 0).sum()), 1)
    level = np.array([[float(np.sum(w[i, i] * xi[i])) for i in range(len(els))] for xi in x])
    lev = {"empirical": level.std(axis=0, ddof=1)}
    for name, cov in (("laplace", "laplace"), ("estimator", "estimator")):
        lev[name] = functional_std(solver0, w, UncertaintyParams(covariance=cov,
                                                                 cg_iterations=200))
    out["global_level"] = {e: {k: float(v[i]) for k, v in lev.items()}
                           for i, e in enumerate(els)}
    print("  std of each element's mean level: " + "  ".join(
        f"{e}: empirical {lev['empirical'][i]:.2e} laplace {lev['laplace'][i]:.2e} "
        f"estimator {lev['estimator'][i]:.2e}" for i, e in enumerate(els)), flush=True)
    # The local scatter: each realisation rescaled to the mean level.
    x_loc = x * (level.mean(axis=0) / level)[:, :, None, None, None]
    emp_loc = x_loc.std(axis=0, ddof=1)
    out["local"] = {}
    for name in ("cheap", "accurate"):
        res = compare(preds[name], emp_loc, truth, els)
        out["local"][name] = res
        print(f"  local scatter, {name:9s} " + "  ".join(
            f"{e}: rho {r['spearman']:.2f} ratio {r['median_ratio']:.2f}"
            for e, r in res.items()), flush=True)
    out["_arrays"] = {"emp": emp, "truth": truth, "preds": preds, "elements": els}
    out["_solver"] = solver0
    return out


def timing(solver: FusedSolver, repeats: int = 5) -> dict[str, float]:
    """The cheap refresh (warm cache, as after every tilt) against one fused iteration."""
    p = UncertaintyParams(mode="cheap")
    t0 = time.perf_counter()
    _, state = estimate_std_error(solver, p)
    cold = time.perf_counter() - t0
    cheap = []
    for _ in range(repeats):
        _, state = estimate_std_error(solver, p, warm_start=state)
        cheap.append(state.seconds)
    steps = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        solver.step()
        steps.append(time.perf_counter() - t0)
    c, s = statistics.median(cheap), statistics.median(steps)
    return {"cheap_first_call_s": cold, "cheap_s": c, "fused_iteration_s": s,
            "cheap_over_iteration": c / s}


def warm_start(spec: Specimen, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Accurate mode before and after the last HAADF + chemical tilt arrive (and 5 more
    iterations, as in the live loop): CG iterations cold vs warm-started."""
    sim = simulate(spec, args.size, TiltScheme(), AcquisitionParams(chem_snr=args.snr), seed=0)
    solver = make_solver(sim, device, drop_last=True)
    solver.run(args.iterations)
    p = UncertaintyParams(mode="accurate", probes=args.probe_batch,
                          probe_batch=args.probe_batch)
    _, before = estimate_std_error(solver, p)
    s = sim.series
    solver.add_haadf(s.haadf_angles[-1:], s.haadf[-1:])
    solver.add_chem(s.common_chem_angles[-1:], {e: s.chem[e][-1:] for e in s.elements})
    solver.run(5)
    _, warm = estimate_std_error(solver, p, warm_start=before)
    _, cold = estimate_std_error(solver, p)
    return {"probes": p.probes, "cg_tol": p.cg_tol,
            "cold_iterations": float(np.mean(cold.cg_iterations)),
            "warm_iterations": float(np.mean(warm.cg_iterations)),
            "cold_s": cold.seconds, "warm_s": warm.seconds}


def dose_sweep(spec: Specimen, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Per chemical SNR: mean standard error (cheap: over all realisations; accurate:
    realisation 0) and RMSE against the truth, both in the truth's units, over the voxels
    where each element is present, pooled over elements."""
    rows = []
    for snr in args.doses:
        se_cheap, se_acc, rmse, emp_std, xs = [], [], [], [], []
        truth = None
        kappa = dose = 1.0
        for seed in range(args.dose_realisations):
            solver, sim, _ = reconstruct(spec, args.size, snr, seed, args.iterations, device)
            els = solver.elements
            truth = stack(sim.truth, els)
            kappa = float(sim.series.attrs["counts_per_unit"])
            dose = float(sim.series.attrs["chem_dose_e_per_A2"])
            m = truth > 0
            x = stack(solver.volumes(), els) / kappa
            xs.append(x)
            rmse.append(float(np.sqrt(np.mean((x[m] - truth[m]) ** 2))))
            std, _ = predict(solver, UncertaintyParams(mode="cheap"))
            se_cheap.append(float(np.mean(std[m])) / kappa)
            if seed == 0:
                std, _ = predict(solver, UncertaintyParams(
                    mode="accurate", probes=args.probes_other, probe_batch=args.probe_batch))
                se_acc.append(float(np.mean(std[m])) / kappa)
        assert truth is not None
        if len(xs) > 1:
            emp_std.append(float(np.mean(np.array(xs).std(axis=0, ddof=1)[truth > 0])))
        row = {"chem_snr": snr, "chem_dose_e_per_A2": dose, "counts_per_unit": kappa,
               "rmse": float(np.mean(rmse)), "se_cheap": float(np.mean(se_cheap)),
               "se_accurate": se_acc[0], "empirical_std": emp_std[0] if emp_std else None}
        rows.append(row)
        print(f"  SNR {snr:5.2f}: RMSE {row['rmse']:.4f}  SE cheap {row['se_cheap']:.4f}  "
              f"accurate {row['se_accurate']:.4f}  empirical std {row['empirical_std']}",
              flush=True)
    fits = {k: linear_fit([r[k] for r in rows], [r["rmse"] for r in rows])
            for k in ("se_cheap", "se_accurate")}
    # The variance part of the error alone: the empirical std over the realisations.
    if all(r["empirical_std"] is not None for r in rows):
        for k in ("se_cheap", "se_accurate"):
            fits[f"empirical_std_vs_{k}"] = linear_fit([r[k] for r in rows],
                                                       [r["empirical_std"] for r in rows])
    return {"rows": rows, "fits": fits}


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares y = a x + b and its R^2."""
    X, Y = np.asarray(x), np.asarray(y)
    a, b = np.polyfit(X, Y, 1)
    ss_res = float(np.sum((Y - (a * X + b)) ** 2))
    ss_tot = float(np.sum((Y - Y.mean()) ** 2)) or 1e-30
    return {"slope": float(a), "intercept": float(b), "r2": 1.0 - ss_res / ss_tot}


# -- figure -------------------------------------------------------------------------------------
def plot(mc: dict[str, Any], sweep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = mc["_arrays"]
    els, emp, truth = arr["elements"], arr["emp"], arr["truth"]
    shown = [m for m in ("cheap", "accurate") if m in arr["preds"]]
    fig, ax = plt.subplots(len(shown), len(els) + 1, figsize=(3.3 * (len(els) + 1),
                                                               3.2 * len(shown)),
                           squeeze=False)
    rng = np.random.default_rng(0)
    for r, mode in enumerate(shown):
        pred = arr["preds"][mode]
        for i, e in enumerate(els):
            m = truth[i] > 0
            p, q = pred[i][m], emp[i][m]
            k = rng.choice(p.size, size=min(p.size, 3000), replace=False)
            a = ax[r, i]
            a.loglog(q[k], p[k], ".", ms=2, alpha=0.4)
            lo, hi = float(min(q.min(), p.min())), float(max(q.max(), p.max()))
            a.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            for f in (0.5, 2.0):
                a.plot([lo, hi], [f * lo, f * hi], "k:", lw=0.6)
            res = mc["modes"][mode]["elements"][e]
            a.set_title(f"{e} {mode}: rho {res['spearman']:.2f}, "
                        f"ratio {res['median_ratio']:.2f}", fontsize=8)
            a.set_xlabel("empirical std", fontsize=8)
            a.set_ylabel("predicted std", fontsize=8)
    a = ax[0, -1]
    rows = sweep["rows"]
    for key, mk in (("se_cheap", "o"), ("se_accurate", "s")):
        x = [row[key] for row in rows]
        y = [row["rmse"] for row in rows]
        f = sweep["fits"][key]
        a.plot(x, y, mk, label=f"{key}: R^2 {f['r2']:.3f}")
        xx = np.linspace(0, max(x) * 1.05, 10)
        a.plot(xx, f["slope"] * xx + f["intercept"], "--", lw=0.8)
    a.set_xlabel("mean standard error (truth units)", fontsize=8)
    a.set_ylabel("RMSE (truth units)", fontsize=8)
    a.set_title("dose sweep", fontsize=8)
    a.legend(fontsize=7)
    for r in range(1, len(shown)):
        ax[r, -1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--realisations", type=int, default=24)
    ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    ap.add_argument("--snr", type=float, default=2.5, help="chemical SNR of the Monte Carlo")
    ap.add_argument("--doses", type=float, nargs="+", default=[1.25, 2.5, 5.0, 10.0],
                    help="chemical SNRs of the dose sweep (dose ~ SNR^2)")
    ap.add_argument("--dose-realisations", type=int, default=3)
    ap.add_argument("--probes", type=int, default=32, help="probes of the accurate mode")
    ap.add_argument("--probes-other", type=int, default=16,
                    help="probes of the other accurate variants and of the dose sweep")
    ap.add_argument("--probe-batch", type=int, default=8)
    ap.add_argument("--no-hutchinson", dest="hutchinson", action="store_false")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true",
                    help="32^3, 8 realisations, 3 doses x 2, fewer probes, no Hutchinson")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.realisations, args.doses, args.dose_realisations = 32, 8, [
            1.25, 2.5, 5.0], 2
        args.probes, args.probes_other, args.hutchinson = 16, 8, False
    if args.realisations < 4:
        ap.error("--realisations must be >= 4")
    device = resolve_device(args.device)
    t_start = time.perf_counter()
    spec = make_specimen("nanocubes", 2 * args.size, seed=0)
    print(f"Monte Carlo: nanocubes {args.size}^3, {args.realisations} realisations, "
          f"{args.iterations} fused iterations, chemical SNR {args.snr}", flush=True)
    mc = monte_carlo(spec, args, device)
    print("cost:", flush=True)
    cost = timing(mc["_solver"])
    print(f"  cheap refresh {cost['cheap_s']:.3f} s = {cost['cheap_over_iteration']:.2f} "
          f"of a fused iteration ({cost['fused_iteration_s']:.3f} s); first call "
          f"{cost['cheap_first_call_s']:.3f} s", flush=True)
    ws = warm_start(spec, args, device)
    print(f"  accurate after one more tilt: CG iterations cold {ws['cold_iterations']:.1f}, "
          f"warm {ws['warm_iterations']:.1f} ({ws['cold_s']:.1f} s vs {ws['warm_s']:.1f} s)",
          flush=True)
    print("dose sweep:", flush=True)
    sweep = dose_sweep(spec, args, device)
    for k, f in sweep["fits"].items():
        label = k if k.startswith("emp") else "RMSE vs " + k
        print(f"  {label}: slope {f['slope']:.2f}, intercept {f['intercept']:.4f}, "
              f"R^2 {f['r2']:.3f}")
    print("ceiling of the rank correlation with this many realisations: "
          + "  ".join(f"{e} {v:.2f}" for e, v in mc["ceiling_spearman"].items()))

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "uncertainty-quick" if args.quick else "uncertainty"
    plot(mc, sweep, args.out / f"{stem}.png")
    record = {
        "command": "python bench/uncertainty.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": "cpu" if device.id < 0 else "gpu",
        "hardware": hardware(device),
        "settings": {
            "specimen": "nanocubes", "size": args.size, "specimen_seed": 0,
            "realisations": args.realisations, "iterations": args.iterations,
            "chem_snr": args.snr, "scheme": asdict(TiltScheme()),
            "fusion_params": asdict(replace(FusionParams(), gamma=1.7)),
            "doses_chem_snr": args.doses, "dose_realisations": args.dose_realisations,
        },
        "monte_carlo": {k: v for k, v in mc.items() if not k.startswith("_")},
        "cost": {**cost, "warm_start": ws},
        "dose_sweep": sweep,
        "elapsed_s": time.perf_counter() - t_start,
    }
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(record, indent=1, default=float))
    print(f"wrote {path} and {args.out / f'{stem}.png'} "
          f"({record['elapsed_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
