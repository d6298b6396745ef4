"""Are the standard errors calibrated? Monte Carlo against every predictor (issue 16, item 4).

    python bench/uncertainty.py                       # 4 specimens x SNR 1, 2.5, 5; 32^3
    python bench/uncertainty.py --specimens film --snrs 2.5 --realisations 8 --replicas 8

Series as a microscope writes them (bench/nuisance_series.py: another projector, a grid
twice as fine, a chemical background of 15 % of each element's peak and a HAADF offset of
10 % of its peak, gamma 1.7, none of it stated: the solver estimates backgrounds, offsets
and gamma); +-69 deg, HAADF every 3 deg, a spectrum image every 15 deg (-60..60); fused
defaults, 60 iterations. For each specimen and chemical SNR, `--realisations` noise draws
of the same specimen are reconstructed (Monte Carlo); the predictions are made from
realisation 0 alone:
- `cheap` and `accurate`: the Laplace approximation (solver/uncertainty.py);
- `resample`: the data re-solved with `--replicas` added noise draws (solver/resample.py),
  with its per-voxel bias estimate.
Per element, inside its support (truth > 0): Spearman rho between predicted and empirical
std (goal >= 0.8) and the median of predicted / empirical (goal in [0.8, 1.25]); the ceiling
that R realisations allow any predictor (split-half rank correlation of the empirical std,
Spearman-Brown corrected, square-rooted). Bias: the Monte Carlo bias (mean of the
realisations - truth) against the predicted one (correlation, RMS); and, across the doses,
RMSE against the predicted std and bias. Reconstructions are cached in --cache (the run
resumes). Writes bench/results/uncertainty.json and uncertainty.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuisance_series import Clean, Nuisances

from fusetomo.controller.series_model import solver_for_series
from fusetomo.solver.backend import to_numpy
from fusetomo.solver.fusion import DEFAULT_ITERATIONS, FusedSolver
from fusetomo.solver.resample import ResampleParams, resample_errors
from fusetomo.solver.uncertainty import UncertaintyParams, estimate_std_error

RESULTS = Path(__file__).resolve().parent / "results"
HAADF_ANGLES = np.arange(-69.0, 69.1, 3.0)
CHEM_ANGLES = np.arange(-60.0, 60.1, 15.0)
GOAL_RHO, GOAL_RATIO = 0.8, (0.8, 1.25)


def reconstruct(clean: Clean, seed: int, snr: float, iterations: int) -> FusedSolver:
    acq = clean.acquire(seed, Nuisances(snr=snr))
    s = acq.series
    solver = solver_for_series(s, device="cpu")
    solver.add_haadf(s.haadf_angles, s.haadf)
    solver.add_chem(s.common_chem_angles, s.chem)
    solver.initialize()
    solver.run(iterations)
    return solver


def monte_carlo(clean: Clean, snr: float, args: argparse.Namespace) -> np.ndarray:
    """The realisations' volumes [R, n_el, ns, n, n], cached (resumes)."""
    path = args.cache / f"mc_{clean.name}_{clean.size}_{snr:g}_{args.iterations}.npz"
    xs = list(np.load(path)["xs"]) if path.exists() else []
    for r in range(len(xs), args.realisations):
        t0 = time.perf_counter()
        xs.append(to_numpy(reconstruct(clean, r, snr, args.iterations).x))
        np.savez(path, xs=np.array(xs))
        print(f"    realisation {r + 1}/{args.realisations} {time.perf_counter() - t0:.1f} s",
              flush=True)
    return np.array(xs[:args.realisations])


def predictions(clean: Clean, snr: float, args: argparse.Namespace) -> dict[str, Any]:
    """Every predictor's std (and the resampled bias) from realisation 0, cached."""
    path = args.cache / (f"pred_{clean.name}_{clean.size}_{snr:g}_{args.iterations}_"
                         f"{args.replicas}{'_mb' if args.model_bootstrap else ''}.npz")
    if path.exists():
        d = np.load(path)
        return {k: d[k] for k in d.files}
    solver = reconstruct(clean, 0, snr, args.iterations)
    els = solver.elements
    out: dict[str, Any] = {}
    for mode, up in (("cheap", UncertaintyParams(mode="cheap")),
                     ("accurate", UncertaintyParams(mode="accurate", probes=16))):
        std, state = estimate_std_error(solver, up)
        out[mode] = np.stack([std[e] for e in els])
        out[f"{mode}_seconds"] = np.array(state.seconds)
    if args.model_bootstrap:
        res = resample_errors(solver, ResampleParams(replicas=args.replicas, bias=False,
                                                     source="model"))
        out["model_bootstrap"] = np.stack([res.std[e] for e in els])
        out["model_bootstrap_seconds"] = np.array(res.seconds)
    res = resample_errors(solver, ResampleParams(replicas=args.replicas))
    out["resample"] = np.stack([res.std[e] for e in els])
    out["resample_gammas"] = np.array(res.gammas)
    assert res.bias is not None
    out["bias"] = np.stack([res.bias[e] for e in els])
    out["resample_seconds"] = np.array(res.seconds)
    out["x0"] = to_numpy(solver.x)
    np.savez(path, **out)
    return out


def ceiling(xs: np.ndarray, support: np.ndarray) -> list[float]:
    h = len(xs) // 2
    a, b = xs[:h].std(axis=0, ddof=1), xs[h:2 * h].std(axis=0, ddof=1)
    out = []
    for i in range(xs.shape[1]):
        r = float(spearmanr(a[i][support[i]], b[i][support[i]]).statistic)
        out.append(float(np.sqrt(max(2 * r / (1 + r), 0.0))))
    return out


def cell(clean: Clean, snr: float, args: argparse.Namespace) -> dict[str, Any]:
    xs = monte_carlo(clean, snr, args)
    pred = predictions(clean, snr, args)
    els = clean.elements
    kappa = clean.acquire(0, Nuisances(snr=snr)).kappa
    truth = clean.truth_vol * kappa  # in the volumes' units (counts per voxel)
    support = truth > 0
    emp = xs.std(axis=0, ddof=1)
    mc_bias = xs.mean(axis=0) - truth
    ceil = ceiling(xs, support)
    row: dict[str, Any] = {"elements": els, "kappa": kappa, "ceiling": dict(zip(
        els, ceil, strict=True)), "modes": {}, "seconds": {
        k: float(pred[f"{k}_seconds"]) for k in ("cheap", "accurate", "resample")},
        "gamma_replicas_std": float(np.std(pred["resample_gammas"]))
        if "resample_gammas" in pred else None}
    for mode in ("cheap", "accurate", "resample", "model_bootstrap"):
        if mode not in pred:
            continue
        row["modes"][mode] = {
            e: {"spearman": float(spearmanr(pred[mode][i][support[i]],
                                            emp[i][support[i]]).statistic),
                "median_ratio": float(np.median(pred[mode][i][support[i]]
                                                / emp[i][support[i]]))}
            for i, e in enumerate(els)}
    # Each element's level (its mean over the support) per realisation, against their
    # median: a level near 0 is a realisation where the solver lost the element.
    levels = np.array([[xs[r, i][support[i]].mean() for i in range(len(els))]
                       for r in range(len(xs))])
    rel = levels / np.maximum(np.median(levels, axis=0), 1e-30)
    row["levels"] = {e: {"rel_std": float(np.std(rel[:, i], ddof=1)),
                         "min": float(rel[:, i].min()), "max": float(rel[:, i].max()),
                         "collapsed": int(np.sum(rel[:, i] < 0.1))}
                     for i, e in enumerate(els)}
    b = pred["bias"]
    rmse = [float(np.sqrt(np.mean((xs[:, i][:, support[i]] - truth[i][support[i]]) ** 2)))
            for i in range(len(els))]
    row["bias"] = {e: {
        "corr_with_mc": float(pearsonr(b[i][support[i]], mc_bias[i][support[i]]).statistic),
        "rms_predicted": float(np.sqrt(np.mean(b[i][support[i]] ** 2))),
        "rms_mc": float(np.sqrt(np.mean(mc_bias[i][support[i]] ** 2))),
        "rmse": rmse[i],
        "std_emp_rms": float(np.sqrt(np.mean(emp[i][support[i]] ** 2))),
        "std_pred_rms": float(np.sqrt(np.mean(pred["resample"][i][support[i]] ** 2))),
    } for i, e in enumerate(els)}
    return row


def verdict(rows: dict[str, dict[str, Any]], mode: str) -> dict[str, Any]:
    rho = [r["modes"][mode][e]["spearman"] for r in rows.values() for e in r["elements"]]
    ratio = [r["modes"][mode][e]["median_ratio"] for r in rows.values()
             for e in r["elements"]]
    lo, hi = GOAL_RATIO
    return {"cells": len(rows), "element_cells": len(rho),
            "rho_ok": int(sum(v >= GOAL_RHO for v in rho)),
            "ratio_ok": int(sum(lo <= v <= hi for v in ratio)),
            "rho_min": float(min(rho)), "rho_median": float(np.median(rho)),
            "ratio_min": float(min(ratio)), "ratio_max": float(max(ratio))}


def plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for mode, mk in (("cheap", "x"), ("accurate", "s"), ("resample", "o")):
        rho = [r["modes"][mode][e]["spearman"] for r in rows.values() for e in r["elements"]]
        rat = [r["modes"][mode][e]["median_ratio"] for r in rows.values()
               for e in r["elements"]]
        ax[0].plot(rat, rho, mk, label=mode, alpha=0.7)
    ax[0].axhline(GOAL_RHO, color="k", lw=0.6)
    for v in GOAL_RATIO:
        ax[0].axvline(v, color="k", lw=0.6)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("median predicted / empirical std")
    ax[0].set_ylabel("Spearman rho (support)")
    ax[0].legend(fontsize=8)
    ax[0].set_title("per element, specimen and SNR", fontsize=9)
    rm = [b["rmse"] for r in rows.values() for b in r["bias"].values()]
    pr = [float(np.hypot(b["std_pred_rms"], b["rms_predicted"]))
          for r in rows.values() for b in r["bias"].values()]
    sd = [b["std_pred_rms"] for r in rows.values() for b in r["bias"].values()]
    ax[1].loglog(sd, rm, "x", label="predicted std alone")
    ax[1].loglog(pr, rm, "o", label="sqrt(std^2 + bias^2), predicted")
    lo, hi = min(rm + pr + sd), max(rm + pr + sd)
    ax[1].plot([lo, hi], [lo, hi], "k-", lw=0.6)
    ax[1].set_xlabel("predicted (RMS over the support)")
    ax[1].set_ylabel("RMSE against the truth")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--specimens", default="nanocubes,core-shell,film,rod")
    ap.add_argument("--snrs", default="1,2.5,5")
    ap.add_argument("--realisations", type=int, default=24)
    ap.add_argument("--replicas", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/fusetomo-uncertainty"))
    ap.add_argument("--model-bootstrap", action="store_true",
                    help="also the parametric bootstrap from the fitted model (comparison)")
    ap.add_argument("--out", type=Path, default=RESULTS / "uncertainty.json")
    args = ap.parse_args(argv)
    if args.realisations < 4:
        ap.error("--realisations must be >= 4")
    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    for name in args.specimens.split(","):
        clean = Clean(name, args.size, HAADF_ANGLES, CHEM_ANGLES)
        for snr in (float(v) for v in args.snrs.split(",")):
            print(f"{name} SNR {snr:g}:", flush=True)
            r = cell(clean, snr, args)
            rows[f"{name}@{snr:g}"] = r
            for mode in r["modes"]:
                print(f"  {mode:9s} " + "  ".join(
                    f"{e}: rho {v['spearman']:.2f} ratio {v['median_ratio']:.2f}"
                    for e, v in r["modes"][mode].items()), flush=True)
            print("  ceiling   " + "  ".join(f"{e} {v:.2f}" for e, v in r["ceiling"].items()))
            print("  levels    " + "  ".join(
                f"{e}: rel std {v['rel_std']:.3f} [{v['min']:.2f}, {v['max']:.2f}] collapsed "
                f"{v['collapsed']}" for e, v in r["levels"].items()), flush=True)
            print("  bias      " + "  ".join(
                f"{e}: corr {b['corr_with_mc']:.2f} rms pred {b['rms_predicted']:.3g} / mc "
                f"{b['rms_mc']:.3g}" for e, b in r["bias"].items()), flush=True)
    summary = {m: verdict(rows, m) for m in ("cheap", "accurate", "resample")}
    print(json.dumps(summary, indent=1))
    record = {"command": "python bench/uncertainty.py " + " ".join(
        sys.argv[1:] if argv is None else argv),
        "settings": {"size": args.size, "realisations": args.realisations,
                     "replicas": args.replicas, "iterations": args.iterations,
                     "haadf_angles": [-69, 69, 3], "chem_angles": [-60, 60, 15],
                     "nuisances": "background 15 % of peak, HAADF offset 10 %, gamma 1.7; "
                                  "none stated"},
        "summary": summary, "cells": rows, "elapsed_s": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
