"""What correcting drift costs the fused reconstruction, with the *true* shifts: resampling
the measured images (spline, order 3) against moving them by whole pixels and putting the
fraction in the projector (fusetomo.solver.joint_align). The figures behind step 6 of
docs/alignment.md.

Series as in bench/alignment.py (nanocubes, +-70 deg every 3 deg, chemistry every 15 deg,
drift applied on the simulation's 2x finer grid, 16-px vacuum margin). Each row changes one
thing against the drift-free reference (same HAADF noise draws):

- HAADF drifting along d only, or along s only (sigma 5 px; no rotation; maps not drifting):
  corrected by resampling, or in the model;
- the maps drifting (their HAADF images not): resampled;
- all of it with a 1 deg in-plane rotation: model route with and without the rotation (the
  de-rotation is the one interpolation the model route keeps).

    python bench/alignment_resampling.py [--size 64] [--seed 0]

<NRMSE> of 60 fused iterations, the ratio to the drift-free reference; results in
bench/results/alignment_resampling.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from alignment import crop, drifted, fused, fused_model, scores

from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.solver import alignment as al
from fusetomo.solver import joint_align as ja

RESULTS = Path(__file__).parent / "results" / "alignment_resampling.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.perf_counter()
    sim = simulate("nanocubes", args.size, TiltScheme(), seed=args.seed)
    s, m, it = sim.series, args.margin, args.iterations
    ang = s.haadf_angles
    idx, _ = ja.chem_partners(ang, s.common_chem_angles)
    kw: dict[str, Any] = {"margin": m, "seed": args.seed + 100}

    def score(haadf: np.ndarray, chem: dict[str, np.ndarray]) -> float:
        return scores(sim.truth, fused(s, haadf, chem, it))["nrmse"]

    def resampled_haadf(d: dict[str, Any]) -> np.ndarray:
        return crop(al.remove_background(al.apply_alignment(d["haadf"], d["shifts"]))[0], m)

    still = drifted(s, sigma=0, offset=0, rotation=0, chem_sigma=0, **kw)
    still_chem = {e: crop(v, m) for e, v in still["chem"].items()}
    ref = score(crop(al.remove_background(still["haadf"])[0], m), still_chem)
    rows: dict[str, float] = {}
    for axis, name in ((1, "d"), (0, "s")):
        d = drifted(s, sigma=5, offset=3, rotation=0, chem_sigma=0, axis=axis, **kw)
        rows[f"haadf along {name}, resampled"] = score(resampled_haadf(d), still_chem)
        z = np.zeros((s.common_chem_angles.size, 2))
        model = fused_model(s, {"haadf": d["haadf"], "chem": still["chem"]}, d["shifts"], z,
                            0.0, m, it)
        rows[f"haadf along {name}, in the model"] = scores(sim.truth, model.volumes())["nrmse"]
    d = drifted(s, sigma=5, offset=3, rotation=0, chem_sigma=1, **kw)
    chem_res = {e: crop(al.apply_alignment(d["chem"][e], d["shifts"][idx] + d["own"],
                                           counts=True), m) for e in s.elements}
    rows["maps resampled (HAADF not drifting)"] = score(
        crop(al.remove_background(still["haadf"])[0], m), chem_res)
    for rot in (0.0, 1.0):
        d = drifted(s, sigma=5, offset=3, rotation=rot, chem_sigma=1, **kw)
        ta = al.to_axis_frame(d["shifts"], rot)
        tc = al.to_axis_frame(d["shifts"][idx] + d["own"], rot)
        v = fused_model(s, d, ta, tc, rot, m, it).volumes()
        rows[f"all drifting, rotation {rot:g} deg, in the model"] = \
            scores(sim.truth, v)["nrmse"]
    print(f"<NRMSE> drift-free {ref:.4f}")
    for k, v in rows.items():
        print(f"  {k:45s} {v:.4f}  x{v / ref:.3f}")
    res = {"size": args.size, "seed": args.seed, "drift_free": ref,
           "rows": {k: {"nrmse": v, "ratio": v / ref} for k, v in rows.items()},
           "wall_s": time.perf_counter() - t0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(args.out.read_text()) if args.out.exists() else {}
    allres[f"{args.size}-seed{args.seed}"] = res
    args.out.write_text(json.dumps(allres, indent=1))
    print(f"wrote {args.out} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
