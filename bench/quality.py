"""Evidence of quality: fused vs conventional chemical tomography on simulated specimens.

    python bench/quality.py                    # 128^3 + 64^3 dose sweep (~15 min, 2 cores)
    python bench/quality.py --size 64 --quick    # a few minutes

Prints the figures and writes bench/results/quality.json and quality.png. Setting (issue 2):
nanocube specimen, +-70 deg, HAADF every 3 deg, chemistry every 15 deg, chemical SNR ~2.5,
default parameters. Truth is simulated on a 2x finer grid (no inverse crime).
Compared: fused (defaults), conventional ML-EM and SIRT per element, chemical-only with
the same TV regulariser at its best weight (oracle choice, in its favour), HEBT.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from fusetomo.simulators.forward import AcquisitionParams, Simulation, TiltScheme, simulate
from fusetomo.solver import baselines
from fusetomo.solver.backend import resolve_device
from fusetomo.solver.fusion import DEFAULT_ITERATIONS, FusedSolver, FusionParams
from fusetomo.solver.metrics import nrmse

RESULTS = Path(__file__).resolve().parent / "results"
TV_GRID = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def scores(sim: Simulation, vols: dict[str, np.ndarray] | np.ndarray) -> dict[str, float]:
    els = sim.series.elements
    if not isinstance(vols, dict):
        vols = {e: vols[i] for i, e in enumerate(els)}
    per = {e: nrmse(sim.truth[e], vols[e]) for e in els}
    per["mean"] = float(np.mean([per[e] for e in els]))
    return per


def fused(sim: Simulation, iterations: int | None, device: str,
          params: FusionParams | None = None) -> tuple[dict[str, np.ndarray], float, FusedSolver]:
    s = sim.series
    p = params or FusionParams(gamma=s.gamma or 1.7)
    solver = FusedSolver(*s.shape[::-1], s.elements, [s.Z[e] for e in s.elements], p,
                         device=device, background=[s.background[e] for e in s.elements])
    solver.add_haadf(s.haadf_angles, s.haadf)
    solver.add_chem(s.common_chem_angles, s.chem)
    t0 = time.perf_counter()
    solver.run(iterations if iterations is not None else DEFAULT_ITERATIONS)
    return solver.volumes(), time.perf_counter() - t0, solver



def chem_stack(sim: Simulation) -> np.ndarray:
    return np.stack([sim.series.chem[e] for e in sim.series.elements])


def compare(sim: Simulation, iterations: int | None, device: str, tv_grid=TV_GRID) -> dict:
    s = sim.series
    out: dict = {"chem_snr": sim.chem_snr}
    vols, dt, solver = fused(sim, iterations, device)
    out["fused"] = scores(sim, vols)
    out["fused_seconds"] = dt
    out["fused_iterations"] = solver.iteration
    out["convergence"] = {k: v.tolist() for k, v in solver.history.as_arrays().items()}
    maps = chem_stack(sim)
    bg = np.array([s.background[e] for e in s.elements])
    ang = s.common_chem_angles
    out["conventional_mlem"] = scores(sim, baselines.chemical_mlem(ang, maps, background=bg,
                                                                   device=device))
    out["conventional_sirt"] = scores(sim, baselines.chemical_sirt(ang, maps, device=device))
    tv = {}
    for w in tv_grid:
        tv[str(w)] = scores(sim, baselines.chemical_tv(ang, maps, background=bg, lambda_tv=w,
                                                       device=device))
    best = min(tv, key=lambda k: tv[k]["mean"])
    out["chem_tv_sweep"] = tv
    out["chem_tv_best"] = {"lambda_tv": float(best), **tv[best]}
    out["hebt"] = scores(sim, baselines.hebt(s.haadf_angles, s.haadf, ang, maps,
                                             [s.Z[e] for e in s.elements], device=device))
    conv = min(out["conventional_mlem"]["mean"], out["conventional_sirt"]["mean"])
    out["conventional_best_mean"] = conv
    out["ratio_conventional_over_fused"] = conv / out["fused"]["mean"]
    return out


def dose_sweep(size: int, iterations: int | None, device: str, seed: int,
               factors=(0.25, 1.0, 4.0, 16.0)) -> list[dict]:
    rows = []
    for f in factors:
        snr = 2.5 * np.sqrt(f)
        sim = simulate("nanocubes", size, TiltScheme(), AcquisitionParams(chem_snr=snr), seed=seed)
        vols, _, _ = fused(sim, iterations, device)
        s = sim.series
        bg = np.array([s.background[e] for e in s.elements])
        conv = baselines.chemical_mlem(s.common_chem_angles, chem_stack(sim), background=bg,
                                       device=device)
        snr_mean = float(np.mean(list(sim.chem_snr.values())))
        rows.append({"dose_factor": f, "size": size, "chem_snr": snr_mean,
                     "chem_dose_e_per_A2": float(s.attrs["chem_dose_e_per_A2"]),
                     "fused": scores(sim, vols), "conventional_mlem": scores(sim, conv)})
        r = rows[-1]
        print(f"  dose x{f:<5} SNR {r['chem_snr']:.2f}: fused {r['fused']['mean']:.3f}  "
              f"conventional {r['conventional_mlem']['mean']:.3f}  "
              + "  ".join(f"{e} {r['fused'][e]:.2f}/{r['conventional_mlem'][e]:.2f}"
                          for e in s.elements), flush=True)
    return rows


def plot(main: dict, sweep: list[dict], sim: Simulation, fused_vols, conv_vols, path: Path) -> None:
    """Each element at the slice holding most of its mass, truth / conventional / fused on
    the truth's colour scale; the dose sweep; the three cost terms of the fused run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    els = sim.series.elements
    fig, ax = plt.subplots(3, len(els) + 1, figsize=(3.2 * (len(els) + 1), 9.5))
    for j, e in enumerate(els):
        k = int(np.argmax(sim.truth[e].sum(axis=(1, 2))))
        vmax = float(sim.truth[e].max()) or 1.0
        for i, (name, v) in enumerate((("truth", sim.truth), ("conventional", conv_vols),
                                       ("fused", fused_vols))):
            img = v[e][k]
            if name != "truth":  # put the reconstruction on the truth's scale (least squares)
                y, x = sim.truth[e].ravel(), v[e].ravel()
                img = img * (float(x @ y) / max(float(x @ x), 1e-30))
            ax[i, j].imshow(img, cmap="inferno", vmin=0, vmax=vmax)
            title = f"{e} {name}, slice {k}"
            if name != "truth":
                title += f"\nNRMSE {nrmse(sim.truth[e], v[e]):.2f}"
            ax[i, j].set_title(title, fontsize=9)
            ax[i, j].axis("off")
    a = ax[0, -1]
    if sweep:
        x = [r["chem_dose_e_per_A2"] for r in sweep]
        a.semilogx(x, [r["fused"]["mean"] for r in sweep], "o-", label="fused <NRMSE>")
        a.semilogx(x, [r["conventional_mlem"]["mean"] for r in sweep], "s-",
                   label="conventional <NRMSE>")
        for e in els:
            a.semilogx(x, [r["fused"][e] for r in sweep], ":", lw=1, label=f"fused {e}")
        a.set_xlabel("chemical dose per map (e/A^2)")
        a.legend(fontsize=7)
        a.set_title(f"dose sweep ({sweep[0].get('size', '')}^3)", fontsize=9)
    else:
        a.axis("off")
    h = main["convergence"]
    b = ax[1, -1]
    for name in ("haadf", "chem", "tv"):
        y = np.asarray(h[name], dtype=float)
        b.plot((y - y.min()) / (np.ptp(y) or 1.0), label=name)
    b.set_xlabel("iteration")
    b.set_title("fused cost terms (min-max normalised)", fontsize=9)
    b.legend(fontsize=8)
    c = ax[2, -1]
    names = ["fused", "chem_tv_best", "hebt", "conventional_mlem", "conventional_sirt"]
    c.barh(names, [main[n]["mean"] for n in names])
    c.set_xlabel("<NRMSE>")
    c.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--sweep-size", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="smaller TV grid, no dose sweep")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = resolve_device(args.device)
    dev_name = "cpu" if device.id < 0 else f"gpu{device.id}"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"nanocubes {args.size}^3, +-70 deg, HAADF/3 deg, chem/15 deg, device {dev_name}",
          flush=True)
    sim = simulate("nanocubes", args.size, TiltScheme(), AcquisitionParams(), seed=args.seed)
    print("  chemical SNR per element: "
          + ", ".join(f"{e} {v:.2f}" for e, v in sim.chem_snr.items()), flush=True)
    grid = (0.005, 0.02, 0.05) if args.quick else TV_GRID
    main_res = compare(sim, args.iterations, device, grid)
    for k in ("fused", "conventional_mlem", "conventional_sirt", "chem_tv_best", "hebt"):
        r = main_res[k]
        print(f"  {k:<18} <NRMSE> {r['mean']:.3f}  "
              + "  ".join(f"{e} {r[e]:.3f}" for e in sim.series.elements), flush=True)
    print(f"  conventional/fused = {main_res['ratio_conventional_over_fused']:.2f}x; "
          f"fused {main_res['fused_seconds']:.1f} s for {main_res['fused_iterations']} iterations",
          flush=True)
    sweep = [] if args.quick else dose_sweep(args.sweep_size, args.iterations, device, args.seed)
    core = None
    if not args.quick:
        cs = simulate("core-shell", args.sweep_size, seed=args.seed)
        core = compare(cs, args.iterations, device, (0.005, 0.02, 0.05))
        print(f"  core-shell {args.sweep_size}^3: fused {core['fused']['mean']:.3f}, "
              f"conventional {core['conventional_best_mean']:.3f}, "
              f"chem-TV best {core['chem_tv_best']['mean']:.3f}", flush=True)
    fvols, _, _ = fused(sim, args.iterations, device)
    s = sim.series
    conv = baselines.chemical_mlem(s.common_chem_angles, chem_stack(sim),
                                   background=np.array([s.background[e] for e in s.elements]),
                                   device=device)
    plot(main_res, sweep, sim, fvols, {e: conv[i] for i, e in enumerate(s.elements)},
         args.out / "quality.png")
    result = {"hardware": {"machine": platform.processor() or platform.machine(),
                           "device": dev_name},
              "size": args.size, "seed": args.seed, "nanocubes": main_res, "dose_sweep": sweep,
              "core_shell": core, "elapsed_s": time.perf_counter() - t0}
    path = args.out / f"quality-{args.size}-{dev_name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path} and {args.out / 'quality.png'} in {result['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
