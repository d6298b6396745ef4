"""2D fused multi-modal EM: fusetomo.solver.fusion2d next to the published package
multimodal-fusion 0.6.0 (Schwartz et al.), on the same simulated maps, in one run.

For each specimen a default tilt series is simulated (fusetomo.simulators.forward.simulate:
+-70 deg, chemical tilts every 15 deg, chemical SNR 2.5, HAADF SNR 300) and one chemical tilt
is taken: the noisy maps are its Poisson counts, the HAADF image the one acquired at the
same tilt, and the clean maps its noise-free projections (same specimen, same grid, in
counts). Both methods run 50 iterations at their documented defaults:
- multimodal-fusion: DataFusion(elements, gamma=1.6), run(nIter=50, lambdaEDS=0.005,
  lambdaTV=0.1, ng=15, bkg=0.1) (README quick start and `run` defaults);
- fusetomo: fuse_2d(haadf, maps, Z, Fusion2DParams(), 50, background=series.background).
PSNR (fusetomo.solver.metrics.psnr, least-squares gain and offset, so units do not count)
against the clean maps, per element and mean; time per iteration (best of `--repeats`
runs; the machine may be shared) at the bench size and at 256 x 256 with 4 elements
(nanocubes, simulated without oversampling to save memory).

    python bench/fusion2d.py [--size 128] [--timing-size 256] [--sweep]
                             [--out bench/results/fusion2d.json]

`--sweep` adds, per specimen, the best PSNR each method reaches on a small parameter grid
when the grid point is chosen with the clean truth (an oracle; see `oracle_sweep`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the reference prints a progress bar per run
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np

from fusetomo.simulators.forward import (
    AcquisitionParams,
    TiltScheme,
    bin_projections,
    simulate,
)
from fusetomo.simulators.specimens import make_specimen
from fusetomo.solver.fusion2d import Fused2D, Fusion2DParams
from fusetomo.solver.metrics import psnr
from fusetomo.solver.projector import ParallelProjector

REF_PARAMS = {"lambdaEDS": 0.005, "lambdaTV": 0.1, "ng": 15, "bkg": 0.1}
REF_GAMMA = 1.6


@dataclass
class TiltCase:
    specimen: str
    size: int
    angle: float
    haadf: np.ndarray
    noisy: dict[str, np.ndarray]
    clean: dict[str, np.ndarray]
    Z: dict[str, int]
    background: dict[str, float]


def tilt_case(
    specimen: str, size: int, angle: float = 0.0, seed: int = 0, *,
    single_tilt: bool = False, oversample: int = 2,
) -> TiltCase:
    """The chemical tilt nearest `angle` of a simulated series, with its clean maps."""
    scheme = TiltScheme()
    if single_tilt:
        scheme = TiltScheme(haadf_angles=(angle,), chem_angles=(angle,))
    acq = AcquisitionParams(oversample=oversample)
    sim = simulate(specimen, size, scheme, acq, seed=seed)
    s = sim.series
    chem_angles = s.common_chem_angles
    ic = int(np.abs(chem_angles - angle).argmin())
    a = float(chem_angles[ic])
    ih = int(np.abs(s.haadf_angles - a).argmin())
    if abs(float(s.haadf_angles[ih]) - a) > 1e-6:
        raise RuntimeError(f"no HAADF image at chemical tilt {a} deg")
    o = int(s.attrs["oversample"])
    spec = make_specimen(specimen, size * o, seed=seed)
    proj = ParallelProjector(size * o, [a])
    clean = bin_projections(proj.forward(spec.volumes), o)[:, 0] * s.attrs["counts_per_unit"]
    return TiltCase(
        specimen=specimen, size=size, angle=a, haadf=s.haadf[ih].copy(),
        noisy={e: s.chem[e][ic].copy() for e in s.elements},
        clean={e: clean[i].astype(np.float32) for i, e in enumerate(s.elements)},
        Z=dict(s.Z), background=dict(s.background),
    )


def run_ours(case: TiltCase, iterations: int, repeats: int) -> tuple[dict, float]:
    best, maps = np.inf, {}
    for _ in range(repeats):
        f = Fused2D(case.haadf, case.noisy, case.Z, Fusion2DParams(),
                    background=case.background, device="cpu")
        t = time.perf_counter()
        f.run(iterations)
        best = min(best, time.perf_counter() - t)
        maps = f.maps()
    return maps, best / iterations


def run_reference(case: TiltCase, iterations: int, repeats: int) -> tuple[dict, float]:
    import multimodal_fusion.fusion as mmf

    best, maps = np.inf, {}
    elements = list(case.noisy)
    for _ in range(repeats):
        df = mmf.DataFusion(elements, gamma=REF_GAMMA)
        # load_* normalise their arguments in place: give them copies.
        df.load_chemical_maps({e: case.noisy[e].astype(np.float32) for e in elements})
        df.load_haadf(case.haadf.astype(np.float32))
        t = time.perf_counter()
        df.run(iterations, plot_images=False, plot_convergence=False, **REF_PARAMS)
        best = min(best, time.perf_counter() - t)
        maps = {e: np.asarray(v, dtype=np.float32) for e, v in df.get_results().items()}
    return maps, best / iterations


REF_GRID = {"lambdaEDS": (0.005, 0.02, 0.05, 0.1), "lambdaTV": (0.003, 0.01, 0.03, 0.1),
            "method": (0, 3)}
OUR_GRID = {"lambda_tv": (0.04, 0.06, 0.08, 0.1, 0.15), "amount_exponent": (None, 1.0)}


def oracle_sweep(case: TiltCase, iterations: int) -> dict:
    """Best mean PSNR of each method over a small parameter grid, chosen with the clean
    truth (an oracle no experiment has): how far tuning could take each of them.
    Reference grid: lambdaEDS x lambdaTV x the Z-weighting `method` of load_chemical_maps
    (0: none, the default; 3: Z_i / sum Z; 4 fails in 0.6.0 on a list of Z)."""
    import itertools

    import multimodal_fusion.fusion as mmf

    elements = list(case.noisy)
    ref = []
    for le, lt, meth in itertools.product(*REF_GRID.values()):
        df = mmf.DataFusion(elements, gamma=REF_GAMMA)
        df.load_chemical_maps({e: case.noisy[e].astype(np.float32) for e in elements},
                              method=meth)
        df.load_haadf(case.haadf.astype(np.float32))
        df.run(iterations, lambdaEDS=le, lambdaTV=lt, ng=15, bkg=0.1, plot_images=False,
               plot_convergence=False)
        sc = scores(case.clean, df.get_results())
        ref.append({"lambdaEDS": le, "lambdaTV": lt, "method": meth, "psnr_db": sc})
    ours = []
    for lt, be in itertools.product(*OUR_GRID.values()):
        f = Fused2D(case.haadf, case.noisy, case.Z,
                    Fusion2DParams(lambda_tv=lt, amount_exponent=be),
                    background=case.background, device="cpu")
        f.run(iterations)
        ours.append({"lambda_tv": lt, "amount_exponent": be,
                     "psnr_db": scores(case.clean, f.maps())})

    def best(rows: list[dict]) -> dict:
        return max(rows, key=lambda r: r["psnr_db"]["mean"])

    return {"multimodal_fusion_best": best(ref), "fusetomo_best": best(ours),
            "grid": {"multimodal_fusion": REF_GRID, "fusetomo": OUR_GRID}}


def scores(clean: dict[str, np.ndarray], maps: dict[str, np.ndarray]) -> dict[str, float]:
    out = {e: round(psnr(clean[e], maps[e]), 3) for e in clean}
    out["mean"] = round(float(np.mean([out[e] for e in clean])), 3)
    return out


def compare(case: TiltCase, iterations: int, repeats: int) -> dict:
    ours, t_ours = run_ours(case, iterations, repeats)
    ref, t_ref = run_reference(case, iterations, repeats)
    return {
        "specimen": case.specimen,
        "image": [int(case.haadf.shape[0]), int(case.haadf.shape[1])],
        "elements": list(case.noisy),
        "tilt_deg": case.angle,
        "psnr_db": {
            "noisy": scores(case.clean, case.noisy),
            "multimodal_fusion": scores(case.clean, ref),
            "fusetomo": scores(case.clean, ours),
        },
        "s_per_iteration": {"multimodal_fusion": t_ref, "fusetomo": t_ours,
                            "ratio_reference_over_fusetomo": t_ref / t_ours},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--timing-size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--angle", type=float, default=0.0, help="chemical tilt nearest this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep", action="store_true",
                    help="also tune both methods on a small grid with the clean truth")
    ap.add_argument("--out", type=Path, default=Path("bench/results/fusion2d.json"))
    args = ap.parse_args(argv)
    from importlib.metadata import version

    results = {
        "config": {
            "iterations": args.iterations, "seed": args.seed, "size": args.size,
            "acquisition": "simulate() defaults: chem SNR 2.5, HAADF SNR 300, gamma 1.7, "
                           "background 15% of peak, oversample 2",
            "multimodal_fusion": {"version": version("multimodal-fusion"), "gamma": REF_GAMMA,
                                  **REF_PARAMS},
            "fusetomo": {k: v for k, v in vars(Fusion2DParams()).items()},
            "timing": f"best of {args.repeats} runs, CPU, {os.cpu_count()} cores, "
                      f"{platform.processor() or platform.machine()}; shared machine",
        },
        "cases": [],
    }
    for name in ("nanocubes", "core-shell"):
        case = tilt_case(name, args.size, args.angle, args.seed)
        res = compare(case, args.iterations, args.repeats)
        if args.sweep:
            res["oracle_tuned"] = oracle_sweep(case, args.iterations)
        results["cases"].append(res)
    if args.timing_size:
        case = tilt_case("nanocubes", args.timing_size, args.angle, args.seed,
                         single_tilt=True, oversample=1)
        results["timing_case"] = compare(case, args.iterations, args.repeats)
    _print(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written {args.out}")
    return results


def _print(results: dict) -> None:
    cases = [*results["cases"], *([results["timing_case"]] if "timing_case" in results else [])]
    for c in cases:
        ny, nx = c["image"]
        print(f"\n{c['specimen']} {ny}x{nx}, tilt {c['tilt_deg']:g} deg, "
              f"{len(c['elements'])} elements")
        els = [*c["elements"], "mean"]
        print(f"  {'PSNR dB':20s}" + "".join(f"{e:>8s}" for e in els))
        for k, v in c["psnr_db"].items():
            print(f"  {k:20s}" + "".join(f"{v[e]:8.2f}" for e in els))
        t = c["s_per_iteration"]
        if "oracle_tuned" in c:
            o = c["oracle_tuned"]
            r, f = o["multimodal_fusion_best"], o["fusetomo_best"]
            print(f"  {'oracle-tuned ref':20s}" + "".join(f"{r['psnr_db'][e]:8.2f}" for e in els)
                  + f"   (lambdaEDS {r['lambdaEDS']}, lambdaTV {r['lambdaTV']}, "
                  f"method {r['method']})")
            print(f"  {'oracle-tuned ours':20s}" + "".join(f"{f['psnr_db'][e]:8.2f}" for e in els)
                  + f"   (lambda_tv {f['lambda_tv']}, amount_exponent "
                  f"{f['amount_exponent']})")
        print(f"  ms/iteration: multimodal_fusion {1e3 * t['multimodal_fusion']:.2f}, "
              f"fusetomo {1e3 * t['fusetomo']:.2f}, "
              f"ratio {t['ratio_reference_over_fusetomo']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
