"""The dark chemical step against the maps' SNR (docs/model.md, weights that need no tuning;
`FusionParams.lambda_chem_dark` and `dark_snr_ref`).

    python bench/dark_step.py                      # both parts, ~8 min on 2 cores
    python bench/dark_step.py --part sweep         # lambda_chem_dark 0.1 / 0.05 / 0.03
    python bench/dark_step.py --part heldout       # dark_snr_ref off / on, held-out specimens

Series: bench/robustness.py's (64^3, another projector on a 2x finer grid, background and
HAADF offset unstated), cells at chemical SNR 1, 2.5 (`ref`) and 5; `reconstruct` with the
fused defaults but for the setting varied, <NRMSE> against the truth.
- `sweep`: lambda_chem_dark fixed at 0.1, 0.05 and 0.03 (dark_snr_ref None) on the
  robustness bench's four specimens: which fraction each SNR wants;
- `heldout`: dark_snr_ref None (the fraction fixed at 0.1) against 2.5 (the default: scaled
  by the maps' estimated SNR below 2.5) on three specimens the scaling was not chosen on
  (bench/heldout_specimens.py: Pt-Ni alloy, janus, lamella).
Results go to bench/results/dark_step.json.
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

from fusetomo.controller.reconstruct import reconstruct
from fusetomo.solver.fusion import FusionParams

RESULTS = Path(__file__).resolve().parent / "results"
robustness.FAMILIES.update(heldout_specimens.FAMILIES)
CELLS = ("snr1", "ref", "snr5")


def rows(specimens: list[str], settings: dict[str, FusionParams]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in specimens:
        sim = robustness.Simulator(name, 64, 0)
        for cell in CELLS:
            acq = sim.acquire(robustness.CELLS[cell])
            for label, params in settings.items():
                res = reconstruct(acq.raw, "fused", device="cpu", progress=False,
                                  params=params)
                row = {"nrmse": robustness.score(acq.truth, res.volumes),
                       "chem_snr": [float(v) for v in res.params.get("model_chem_snr", [])],
                       "dark_scale": float(res.params.get("model_chem_dark_scale", 1.0))}
                out[f"{name} {cell} {label}"] = row
                print(f"{name:10s} {cell:5s} {label:16s} <NRMSE> {row['nrmse']:.3f} "
                      f"(dark-step factor {row['dark_scale']:.2f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("sweep", "heldout", "both"), default="both")
    args = ap.parse_args()
    path = RESULTS / "dark_step.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if args.part in ("sweep", "both"):
        doc["sweep"] = rows(["nanocubes", "core-shell", "film", "rod"], {
            f"dark {d:g}": FusionParams(lambda_chem_dark=d, dark_snr_ref=None)
            for d in (0.1, 0.05, 0.03)})
    if args.part in ("heldout", "both"):
        doc["heldout"] = rows(["alloy", "janus", "lamella"], {
            "fixed 0.1": FusionParams(dark_snr_ref=None), "scaled (default)": FusionParams()})
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
