"""Speed and memory of the fused solver and of its two heavy kernels.

    python bench/speed.py --sizes 64 128                 # quick (about a minute on 2 cores)
    python bench/speed.py --sizes 64 128 256 --iterations 2   # the recorded figures
    python bench/speed.py --device gpu                   # CuPy; needs fusetomo[gpu]

For each reconstruction size N (volumes N^3 per element) it measures
- the median wall time of one fused iteration (`FusedSolver.step`) after a warm-up step
  (the warm-up step includes the conventional ML-EM initialisation and the gamma estimate,
  and is reported apart), on data that state no nuisance (backgrounds and gamma estimated,
  HAADF offsets from the vacuum), and the same for a solver given them all, interleaved:
  `nuisance_overhead` is what the estimation adds per iteration;
- the peak memory of setting the solver up and running the warm-up step: tracemalloc's peak
  on the CPU (NumPy and SciPy report their buffers to it), the CuPy memory pool's high-water
  mark on a GPU (bytes the pool holds after the pool was emptied before set-up);
- one forward + adjoint projection of one volume with the HAADF tilts, and of all element
  volumes with the chemical tilts (medians of `--repeats`);
- one TV proximal step of all element volumes (FusionParams().tv_iterations FGP iterations)
  with each finite-difference back end, 'slices' and 'sigpy'.
The data are made at the reconstruction size from the seeded nanocubes specimen (timing
does not depend on noise or on avoiding the inverse crime). It prints a table and writes
bench/results/speed-<device>.json with the hardware it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import sigpy as sp

from fusetomo.simulators.forward import haadf_signal
from fusetomo.simulators.specimens import nanocubes
from fusetomo.solver.backend import resolve_device, to_device
from fusetomo.solver.fusion import GAMMA_START, FusedSolver, FusionParams
from fusetomo.solver.projector import ParallelProjector
from fusetomo.solver.tv import prox_tv

RESULTS = Path(__file__).resolve().parent / "results"
# Extra elements (beyond the specimen's own four) reuse its volumes, shifted.
EXTRA_ELEMENTS = [("Fe", 26), ("Ni", 28), ("Ti", 22), ("Pt", 78), ("Ag", 47), ("Si", 14)]
MB = 1024.0**2


# -- hardware --------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware(device: sp.Device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sigpy": sp.__version__,
        "gpu": None,
    }
    if device != sp.cpu_device:
        import cupy as cp

        props = cp.cuda.runtime.getDeviceProperties(device.id)
        name = props["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["gpu_memory_GB"] = round(props["totalGlobalMem"] / 1024.0**3, 1)
        info["cupy"] = cp.__version__
    return info


# -- timing helpers --------------------------------------------------------------------------
def synchronize(device: sp.Device) -> None:
    if device != sp.cpu_device:
        import cupy as cp

        cp.cuda.Device(device.id).synchronize()


def timed(fn: Callable[[], Any], device: sp.Device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def median_time(fn: Callable[[], Any], device: sp.Device, repeats: int) -> float:
    fn()  # warm-up (CuPy kernel compilation, page faults)
    return statistics.median(timed(fn, device) for _ in range(max(repeats, 1)))


class PeakMemory:
    """Peak bytes allocated inside the block: tracemalloc (CPU) or the CuPy pool (GPU)."""

    def __init__(self, device: sp.Device) -> None:
        self.device = device
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device == sp.cpu_device:
            tracemalloc.start()
        else:
            import cupy as cp

            synchronize(self.device)
            cp.get_default_memory_pool().free_all_blocks()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == sp.cpu_device:
            self.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        else:
            import cupy as cp

            synchronize(self.device)
            self.peak_bytes = cp.get_default_memory_pool().total_bytes()


# -- data ------------------------------------------------------------------------------------
def make_data(n: int, n_elements: int, haadf_angles: np.ndarray, chem_angles: np.ndarray,
              gamma: float, seed: int = 0) -> dict[str, Any]:
    """Clean HAADF and Poisson chemical maps of the nanocubes at size n."""
    spec = nanocubes(n, seed)
    vols = list(spec.volumes)
    elements, Z = list(spec.elements), list(spec.Z)
    extra = iter(EXTRA_ELEMENTS)
    while len(vols) < n_elements:
        sym, z = next(extra)
        vols.append(np.roll(vols[len(vols) % 4], len(vols), axis=1))
        elements.append(sym)
        Z.append(z)
    vols_a = np.stack(vols[:n_elements]).astype(np.float32)
    elements, Z = elements[:n_elements], Z[:n_elements]
    rng = np.random.default_rng(seed)
    haadf = ParallelProjector(n, haadf_angles).forward(haadf_signal(vols_a, np.asarray(Z), gamma))
    clean = ParallelProjector(n, chem_angles).forward(vols_a)
    kappa = 20.0
    bg = 0.15 * clean.reshape(n_elements, -1).max(axis=1)
    counts = rng.poisson(kappa * (clean + bg[:, None, None, None])).astype(np.float32)
    return {"elements": elements, "Z": Z, "haadf": haadf.astype(np.float32),
            "chem": counts, "background": (kappa * bg).tolist(), "volumes": vols_a}


# -- one size --------------------------------------------------------------------------------
def bench_size(n: int, args: argparse.Namespace, device: sp.Device) -> dict[str, Any]:
    haadf_angles = np.linspace(-args.tilt_range, args.tilt_range, args.haadf_tilts)
    chem_angles = np.linspace(-args.tilt_range, args.tilt_range, args.chem_tilts)
    params = FusionParams()
    t0 = time.perf_counter()
    data = make_data(n, args.elements, haadf_angles, chem_angles, GAMMA_START)
    print(f"N={n}: data made in {time.perf_counter() - t0:.1f} s", flush=True)
    row: dict[str, Any] = {"N": n}

    # Fused solver: set-up and warm-up under the memory tracer, then timed iterations.
    # The solver with its defaults meets a series that states no nuisance (background and
    # gamma estimated, HAADF offsets from the vacuum); `plain` is given them all (the model
    # without its estimation), to measure what the estimation costs.
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        solver = FusedSolver(n, n, data["elements"], data["Z"], params, device=device)
        solver.add_haadf(haadf_angles, data["haadf"])
        solver.add_chem(chem_angles, data["chem"])
        synchronize(device)
        row["setup_s"] = time.perf_counter() - t0
        for _ in range(max(args.warmup, 1)):
            row.setdefault("warmup_step_s", []).append(timed(solver.step, device))
    row["peak_memory_MB"] = mem.peak_bytes / MB
    row["memory_measure"] = "tracemalloc" if device == sp.cpu_device else "cupy pool"
    plain = FusedSolver(n, n, data["elements"], data["Z"],
                        replace(params, gamma=GAMMA_START, haadf_offset="none"),
                        device=device, background=data["background"])
    plain.add_haadf(haadf_angles, data["haadf"])
    plain.add_chem(chem_angles, data["chem"])
    row["plain_warmup_step_s"] = [timed(plain.step, device) for _ in range(max(args.warmup, 1))]
    steps, plain_steps = [], []
    for _ in range(args.iterations):  # interleaved, so that both see the same machine load
        steps.append(timed(solver.step, device))
        plain_steps.append(timed(plain.step, device))
    row["iteration_s"] = statistics.median(steps) if steps else float("nan")
    row["iteration_all_s"] = steps
    row["plain_iteration_s"] = statistics.median(plain_steps) if steps else float("nan")
    row["nuisance_overhead"] = row["iteration_s"] / row["plain_iteration_s"] - 1.0
    print(f"N={n}: fused iteration {row['iteration_s']:.3f} s (median of {len(steps)}), "
          f"{100 * row['nuisance_overhead']:+.1f} % against the model given its nuisances; "
          f"first step {row['warmup_step_s'][0]:.2f} s against "
          f"{row['plain_warmup_step_s'][0]:.2f} s (gamma estimated); "
          f"peak {row['peak_memory_MB']:.0f} MB", flush=True)
    scale = solver.scale_tv
    del solver, plain

    # Kernels.
    ph = ParallelProjector(n, haadf_angles, device=device)
    pc = ParallelProjector(n, chem_angles, device=device)
    row["projector_build_s"] = timed(
        lambda: ParallelProjector(n, haadf_angles, device=device), device)
    xp = device.xp
    with device:
        vols = to_device(data["volumes"], device)
        one = vols.sum(axis=0)
        row["fwd_adj_haadf_s"] = median_time(lambda: ph.adjoint(ph.forward(one)), device,
                                             args.repeats)
        row["fwd_adj_chem_s"] = median_time(lambda: pc.adjoint(pc.forward(vols)), device,
                                            args.repeats)
        w = xp.asarray(params.lambda_tv * np.asarray(scale), dtype=xp.float32)
        for backend in ("slices", "sigpy"):
            row[f"tv_{backend}_s"] = median_time(
                lambda b=backend: prox_tv(vols, w, iterations=params.tv_iterations,
                                          backend=b), device, args.repeats)
    print(f"N={n}: fwd+adj HAADF {row['fwd_adj_haadf_s']:.3f} s, chem "
          f"{row['fwd_adj_chem_s']:.3f} s; TV slices {row['tv_slices_s']:.3f} s, sigpy "
          f"{row['tv_sigpy_s']:.3f} s", flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'N':>5} {'set-up':>8} {'1st step':>9} {'iter':>8} {'nuis.':>6} {'peak MB':>9} "
            f"{'fwd+adj H':>10} {'fwd+adj C':>10} {'TV slices':>10} {'TV sigpy':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['N']:>5} {r['setup_s']:>8.2f} {r['warmup_step_s'][0]:>9.2f} "
            f"{r['iteration_s']:>8.3f} {100 * r['nuisance_overhead']:>+5.0f}% "
            f"{r['peak_memory_MB']:>9.0f} {r['fwd_adj_haadf_s']:>10.3f} "
            f"{r['fwd_adj_chem_s']:>10.3f} {r['tv_slices_s']:>10.3f} {r['tv_sigpy_s']:>9.3f}")
    lines.append("(seconds; '1st step' includes the ML-EM initialisation and the gamma "
                 "estimate; 'nuis.' is what estimating the nuisances adds per iteration; 'H' "
                 "is one volume at the HAADF tilts, 'C' all elements at the chemical tilts)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--elements", type=int, default=4)
    ap.add_argument("--haadf-tilts", type=int, default=47)
    ap.add_argument("--chem-tilts", type=int, default=10)
    ap.add_argument("--tilt-range", type=float, default=70.0, help="+- degrees")
    ap.add_argument("--iterations", type=int, default=3, help="timed fused iterations")
    ap.add_argument("--warmup", type=int, default=1, help="untimed fused steps first")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each kernel timing")
    ap.add_argument("--output", type=Path, default=None,
                    help="JSON path (default bench/results/speed-<device>.json)")
    args = ap.parse_args(argv)
    if not 1 <= args.elements <= 4 + len(EXTRA_ELEMENTS):
        ap.error(f"--elements must be in [1, {4 + len(EXTRA_ELEMENTS)}], got {args.elements}")
    if args.haadf_tilts < 1 or args.chem_tilts < 1:
        ap.error("tilt counts must be >= 1")

    device = resolve_device(args.device)
    dev_name = "cpu" if device == sp.cpu_device else "gpu"
    hw = hardware(device)
    print(f"device {dev_name}: CPU {hw['cpu_model']} ({hw['cpu_affinity']} of "
          f"{hw['cpu_count']} cores usable), GPU {hw['gpu'] or 'none'}", flush=True)
    rows = [bench_size(n, args, device) for n in args.sizes]
    print()
    print(table(rows))

    out = args.output or RESULTS / f"speed-{dev_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python bench/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": dev_name,
        "hardware": hw,
        "settings": {
            "elements": args.elements, "haadf_tilts": args.haadf_tilts,
            "chem_tilts": args.chem_tilts, "tilt_range_deg": args.tilt_range,
            "iterations_timed": args.iterations, "warmup_steps": args.warmup,
            "kernel_repeats": args.repeats, "fusion_params": asdict(FusionParams()),
        },
        "results": rows,
    }
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
