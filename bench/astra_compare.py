"""fusetomo's projector against ASTRA's CPU projector: forward + back projection of one volume.

    python -m pip install astra-toolbox        # or: pip install -e ".[bench]"
    python bench/astra_compare.py              # 128^3, 56 tilts over +-70 degrees
    python bench/astra_compare.py --sizes 64 128 256 --tilts 47

ASTRA's CPU projectors are 2D (its 3D projectors need a GPU), so the ASTRA side projects the
volume slice by slice with astra.create_sino / astra.create_backprojection and the given
projector type ('linear': Joseph's ray-driven linear interpolation, the usual choice;
'strip' and 'line' also work). fusetomo's side is ParallelProjector.forward + adjoint of
the whole volume, on its numba kernels at each thread count of --threads (default: 1 and
every core) and on the single-threaded scipy path (FUSETOMO_CPU_KERNELS=numpy). The cases
run interleaved (A, B, C, A, B, C ...) and the medians of --repeats are reported, with the
load average: the machine may be shared.

Geometry: ASTRA's angle theta - 90 degrees with the detector as is reproduces fusetomo's
P_t[s, d] = sum along the ray, d = u cos t + v sin t (docs/model.md); the script checks this on
a test volume and reports the largest difference relative to the peak (the two interpolation
models differ by a few per cent at sharp edges), so that both sides do the same projection.
Writes bench/results/astra_compare.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed

from fusetomo.solver import backend
from fusetomo.solver.projector import ParallelProjector

RESULTS = Path(__file__).resolve().parent / "results"


def astra_fp_bp(astra: Any, n: int, angles_deg: np.ndarray, kind: str
                ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray],
                                                                       np.ndarray]]:
    """Slice-by-slice forward and back projection with ASTRA's 2D CPU projector `kind`."""
    vg = astra.create_vol_geom(n, n)
    pg = astra.create_proj_geom("parallel", 1.0, n, np.deg2rad(angles_deg - 90.0))
    pid = astra.create_projector(kind, pg, vg)

    def fp(vol: np.ndarray) -> np.ndarray:
        out = np.empty((vol.shape[0], len(angles_deg), n), np.float32)
        for s in range(vol.shape[0]):
            sid, out[s] = astra.create_sino(vol[s], pid)
            astra.data2d.delete(sid)
        return out

    def bp(sino: np.ndarray) -> np.ndarray:
        out = np.empty((sino.shape[0], n, n), np.float32)
        for s in range(sino.shape[0]):
            bid, out[s] = astra.create_backprojection(sino[s], pid)
            astra.data2d.delete(bid)
        return out

    return fp, bp


def test_volume(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    c = (n - 1) / 2
    u = np.arange(n) - c
    r2 = (u[:, None] ** 2 + u[None, :] ** 2) / (0.35 * n) ** 2
    disc = np.exp(-2 * r2) * (r2 < 1)
    return (rng.uniform(0.5, 1.5, (n, 1, 1)) * disc[None]).astype(np.float32)


def compare(astra: Any, n: int, angles: np.ndarray, kind: str, counts: list[int],
            repeats: int) -> dict[str, Any]:
    """FP + BP of one n^3 volume: ASTRA against fusetomo (scipy path, kernels per thread
    count), interleaved; medians in seconds."""
    vol = test_volume(n)
    proj = ParallelProjector(n, angles)
    fp, bp = astra_fp_bp(astra, n, angles, kind)
    ours = proj.forward(vol)  # [tilts, slices, det]: the same projection on both sides
    theirs = np.moveaxis(fp(vol), 1, 0)
    geometry = float(np.abs(ours - theirs).max() / np.abs(ours).max())

    def run_ours(path: str, t: int) -> float:
        with speed.cpu_path(path, t):
            t0 = time.perf_counter()
            proj.adjoint(proj.forward(vol))
            return time.perf_counter() - t0

    def run_astra() -> float:
        t0 = time.perf_counter()
        bp(fp(vol))
        return time.perf_counter() - t0

    cases: dict[str, Callable[[], float]] = {
        "astra": run_astra, "fusetomo_scipy_1": lambda: run_ours("numpy", 1)}
    for t in counts:
        cases[f"fusetomo_{t}"] = lambda t=t: run_ours("numba", t)
    load0 = speed.load_average()
    med = speed.interleaved(cases, repeats)
    return {"N": n, "tilts": len(angles), "seconds": med,
            "astra_over_fusetomo": {k: med["astra"] / v for k, v in med.items()
                                    if k != "astra"},
            "geometry_max_rel_diff": geometry, "load_average_start": load0,
            "load_average_end": speed.load_average()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--tilts", type=int, default=56)
    ap.add_argument("--tilt-range", type=float, default=70.0, help="+- degrees")
    ap.add_argument("--projector", default="linear", choices=["linear", "strip", "line"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                    help="fusetomo thread counts (0: every core)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", type=Path, default=RESULTS / "astra_compare.json")
    args = ap.parse_args(argv)
    try:
        import astra
    except ImportError:
        print("astra_compare: needs astra-toolbox (python -m pip install astra-toolbox)",
              file=sys.stderr)
        return 2
    import sigpy as sp

    hw = speed.hardware(sp.cpu_device)
    hw["astra"] = astra.__version__
    counts = speed.thread_counts(args.threads, sp.cpu_device)
    angles = np.linspace(-args.tilt_range, args.tilt_range, args.tilts)
    rows = []
    print(f"CPU {hw['cpu_model']} ({hw['cpu_affinity']} cores), ASTRA {astra.__version__} "
          f"'{args.projector}', fusetomo threads {counts}, load {speed.load_average()}",
          flush=True)
    for n in args.sizes:
        row = compare(astra, n, angles, args.projector, counts, args.repeats)
        rows.append(row)
        med = row["seconds"]
        print(f"N={n}, {args.tilts} tilts: FP+BP ASTRA {med['astra']:.3f} s; fusetomo "
              + ", ".join(f"{k.removeprefix('fusetomo_')} {v:.3f} s "
                          f"({med['astra'] / v:.1f}x)" for k, v in med.items()
                          if k != "astra")
              + f"; geometry differs by {row['geometry_max_rel_diff']:.3f} of the peak",
              flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "command": "python bench/astra_compare.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hardware": hw,
        "astra_projector": args.projector, "threads": counts,
        "threads_in_force": backend.threads(), "repeats": args.repeats, "results": rows,
        "note": "'scipy_1' is fusetomo's single-threaded scipy.sparse path; a number is "
                "fusetomo's numba kernels with that many threads; ratios are ASTRA's time "
                "over fusetomo's",
    }, indent=2, default=float) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
