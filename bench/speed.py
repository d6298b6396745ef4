"""Speed and memory of the fused solver and of its two heavy kernels, over CPU threads.

    python bench/speed.py --sizes 64 128                 # quick (a few minutes on 2 cores)
    python bench/speed.py --sizes 64 128 256 --iterations 2 --repeats 2   # recorded figures
    python bench/speed.py --device gpu                   # CuPy; needs fusetomo[gpu]

For each reconstruction size N (volumes N^3 per element), for today's single-threaded path
('numpy_1': scipy.sparse and NumPy ufuncs, FUSETOMO_CPU_KERNELS=numpy; `--no-baseline` leaves
it out) and for the numba kernels at each thread count of `--threads` (default: 1 and every
core; 0 means every core), it measures
- the set-up and the first fused step of a fresh solver (the first step includes the
  conventional ML-EM initialisation and the gamma estimate), with the peak memory of both:
  tracemalloc's peak on the CPU (NumPy and SciPy report their buffers to it), the CuPy
  memory pool's high-water mark on a GPU;
- the median wall time of one fused iteration (`FusedSolver.step`), the runs interleaved
  step by step (A, B, C, A, B, C...), so that all see the same load;
- the time to answer: set-up + first step + (answer_iterations - 1) x the median iteration,
  with answer_iterations = 60, today's fixed count (`--answer run` runs them instead). Until
  the fused solver stops on a convergence rule (issue 20, item 2) an answer is 60
  iterations;
- `nuisance_overhead` at the default thread count: the solver with its defaults meets a
  series that states no nuisance (backgrounds and gamma estimated, HAADF offsets from the
  vacuum); the same solver given them all is timed interleaved with it, and the overhead is
  what the estimation adds per iteration;
- the kernels: one forward + adjoint projection of one volume at the HAADF tilts and of all
  element volumes at the chemical tilts, and one TV proximal step of all element volumes
  (FusionParams().tv_iterations FGP iterations, 'slices' back end; sigpy's operators once
  as a reference), on today's single-threaded path (scipy.sparse and NumPy ufuncs,
  FUSETOMO_CPU_KERNELS=numpy) and on the numba kernels at each thread count, interleaved,
  medians of `--repeats`.
With `--scaling N` it also times the kernels and a fused iteration at size N for 1, 2, 4 ...
threads up to the cores and draws the speed-up (bench/results/speed-scaling-<device>.png).
The data are made at the reconstruction size from the seeded nanocubes specimen (timing
does not depend on noise or on avoiding the inverse crime). It prints a table and writes
bench/results/speed-<device>.json with the hardware, the thread counts and the load average
(the machine may be shared: compare ratios measured in one run, not absolute times).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import sigpy as sp

from fusetomo.simulators.forward import haadf_signal
from fusetomo.simulators.specimens import nanocubes
from fusetomo.solver import backend, cpu_kernels
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
        "numba": getattr(getattr(cpu_kernels, "numba", None), "__version__", None),
        "cpu_kernels": "numba" if cpu_kernels.enabled() else "numpy",
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


# -- threads and paths ----------------------------------------------------------------------
def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def thread_counts(requested: list[int], device: sp.Device) -> list[int]:
    """The thread counts to measure (0: every core), in order, without repeats; one entry
    on a GPU (threads only matter to the CPU kernels)."""
    cores = backend.available_cores()
    if device != sp.cpu_device:
        return [cores]
    out: list[int] = []
    for t in requested:
        t = cores if t == 0 else t
        if t not in out:
            out.append(t)
    return out


@contextlib.contextmanager
def cpu_path(path: str, threads: int) -> Iterator[None]:
    """Run the block on today's single-threaded path ('numpy': scipy.sparse and NumPy
    ufuncs) or on the numba kernels ('numba') with `threads` threads."""
    before = os.environ.get("FUSETOMO_CPU_KERNELS")
    os.environ["FUSETOMO_CPU_KERNELS"] = path
    backend.set_threads(threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FUSETOMO_CPU_KERNELS", None)
        else:
            os.environ["FUSETOMO_CPU_KERNELS"] = before


def interleaved(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of `repeats` rounds, each round running every case once (A, B, A, B ...)."""
    for f in cases.values():
        f()  # warm-up: compilation, page faults
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(max(repeats, 1)):
        for k, f in cases.items():
            times[k].append(f())
    return {k: statistics.median(v) for k, v in times.items()}


def warm_up(device: sp.Device, elements: int) -> None:
    """Compile the CPU kernels (numba JIT, or load them from its cache) before anything is
    timed: a small fused run and the kernels at 16^3."""
    angles = (np.linspace(-60.0, 60.0, 5), np.linspace(-60.0, 60.0, 3))
    data = make_data(16, elements, angles[0], angles[1], GAMMA_START)
    with cpu_path("numba", backend.available_cores()):
        solver, _ = fresh_solver(16, data, angles, FusionParams(), device, 2)
        for f in kernel_cases(16, data, angles, FusionParams(), solver.scale_tv,
                              device).values():
            f()


# -- one size --------------------------------------------------------------------------------
def fresh_solver(n: int, data: dict[str, Any], angles: tuple[np.ndarray, np.ndarray],
                 params: FusionParams, device: sp.Device, warmup: int
                 ) -> tuple[FusedSolver, dict[str, Any]]:
    """A solver set up with the data and its warm-up steps, timed, under the memory tracer."""
    out: dict[str, Any] = {}
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        solver = FusedSolver(n, n, data["elements"], data["Z"], params, device=device)
        solver.add_haadf(angles[0], data["haadf"])
        solver.add_chem(angles[1], data["chem"])
        synchronize(device)
        out["setup_s"] = time.perf_counter() - t0
        out["warmup_step_s"] = [timed(solver.step, device) for _ in range(max(warmup, 1))]
    out["peak_memory_MB"] = mem.peak_bytes / MB
    return solver, out


def configs(args: argparse.Namespace, device: sp.Device) -> list[tuple[str, str, int]]:
    """(label, path, threads) of the runs to compare: today's single-threaded path
    ('numpy_1', unless --no-baseline) and the kernels at each thread count ('1', '2' ...)."""
    out = [("numpy_1", "numpy", 1)] if args.baseline and device == sp.cpu_device else []
    return out + [(str(t), "numba", t) for t in thread_counts(args.threads, device)]


def bench_size(n: int, args: argparse.Namespace, device: sp.Device) -> dict[str, Any]:
    haadf_angles = np.linspace(-args.tilt_range, args.tilt_range, args.haadf_tilts)
    chem_angles = np.linspace(-args.tilt_range, args.tilt_range, args.chem_tilts)
    angles = (haadf_angles, chem_angles)
    params = FusionParams()
    threads = thread_counts(args.threads, device)
    runs = configs(args, device)
    default = runs[-1]  # the kernels at the last thread count (default: every core)
    t0 = time.perf_counter()
    data = make_data(n, args.elements, haadf_angles, chem_angles, GAMMA_START)
    print(f"N={n}: data made in {time.perf_counter() - t0:.1f} s; runs "
          f"{[r[0] for r in runs]}; load {load_average()}", flush=True)
    row: dict[str, Any] = {"N": n, "threads": threads, "runs": [r[0] for r in runs],
                           "load_average_start": load_average(),
                           "memory_measure": "tracemalloc" if device == sp.cpu_device
                           else "cupy pool", "by_threads": {}}

    # Set-up, first step and peak memory of a fresh solver for each run; one solver is
    # kept per path (its state does not change the time of a step) for the iterations.
    solvers: dict[str, FusedSolver] = {}
    for label, path, t in runs:
        with cpu_path(path, t):
            solvers.pop(path, None)
            solvers[path], row["by_threads"][label] = fresh_solver(n, data, angles, params,
                                                                   device, args.warmup)
    # The model given all its nuisances, to measure what the estimation costs.
    plain = FusedSolver(n, n, data["elements"], data["Z"],
                        replace(params, gamma=GAMMA_START, haadf_offset="none"),
                        device=device, background=data["background"])
    plain.add_haadf(haadf_angles, data["haadf"])
    plain.add_chem(chem_angles, data["chem"])
    with cpu_path(default[1], default[2]):
        row["plain_warmup_step_s"] = [timed(plain.step, device)
                                      for _ in range(max(args.warmup, 1))]
    steps: dict[str, list[float]] = {r[0]: [] for r in runs}
    plain_steps: list[float] = []
    for _ in range(args.iterations):  # interleaved, so that all see the same machine load
        for label, path, t in runs:
            with cpu_path(path, t):
                steps[label].append(timed(solvers[path].step, device))
        with cpu_path(default[1], default[2]):
            plain_steps.append(timed(plain.step, device))
    for label, _, _ in runs:
        r = row["by_threads"][label]
        r["iteration_s"] = statistics.median(steps[label]) if steps[label] else float("nan")
        r["iteration_all_s"] = steps[label]
        r["time_to_answer_s"] = (r["setup_s"] + r["warmup_step_s"][0]
                                 + (args.answer_iterations - 1) * r["iteration_s"])
        r["time_to_answer"] = "estimated"
    scale = solvers[default[1]].scale_tv
    solvers.clear()
    if args.answer == "run":
        for label, path, t in runs:
            with cpu_path(path, t):
                t1 = time.perf_counter()
                s2 = FusedSolver(n, n, data["elements"], data["Z"], params, device=device)
                s2.add_haadf(haadf_angles, data["haadf"])
                s2.add_chem(chem_angles, data["chem"])
                s2.run(args.answer_iterations)
                s2.volumes()
                row["by_threads"][label]["time_to_answer_s"] = time.perf_counter() - t1
                row["by_threads"][label]["time_to_answer"] = "measured"
                del s2
    # Top-level figures (the default run), as before issue 20.
    top = row["by_threads"][default[0]]
    for k in ("setup_s", "warmup_step_s", "peak_memory_MB", "iteration_s", "iteration_all_s",
              "time_to_answer_s"):
        row[k] = top[k]
    row["plain_iteration_s"] = statistics.median(plain_steps) if plain_steps else float("nan")
    row["nuisance_overhead"] = row["iteration_s"] / row["plain_iteration_s"] - 1.0
    b = row["by_threads"]
    print(f"N={n}: fused iteration " + ", ".join(
        f"{b[r[0]]['iteration_s']:.3f} s ({r[0]})" for r in runs)
        + f"; time to answer ({args.answer_iterations} it.) "
        + ", ".join(f"{b[r[0]]['time_to_answer_s']:.1f} s ({r[0]})" for r in runs)
        + f"; nuisances {100 * row['nuisance_overhead']:+.1f} % per iteration; peak "
        + ", ".join(f"{b[r[0]]['peak_memory_MB']:.0f} MB ({r[0]})" for r in runs), flush=True)
    del plain

    row.update(bench_kernels(n, data, angles, params, scale, threads, device, args.repeats))
    row["load_average_end"] = load_average()
    return row


def kernel_cases(n: int, data: dict[str, Any], angles: tuple[np.ndarray, np.ndarray],
                 params: FusionParams, scale: Any, device: sp.Device
                 ) -> dict[str, Callable[[], Any]]:
    """The kernels as argument-less calls: one volume's forward + adjoint at the HAADF tilts,
    all volumes' at the chemical tilts, the TV prox of all volumes."""
    ph = ParallelProjector(n, angles[0], device=device)
    pc = ParallelProjector(n, angles[1], device=device)
    xp = device.xp
    with device:
        vols = to_device(data["volumes"], device)
        one = vols.sum(axis=0)
        w = xp.asarray(params.lambda_tv * np.asarray(scale), dtype=xp.float32)
    return {
        "fwd_adj_haadf": lambda: ph.adjoint(ph.forward(one)),
        "fwd_adj_chem": lambda: pc.adjoint(pc.forward(vols)),
        "tv_slices": lambda: prox_tv(vols, w, iterations=params.tv_iterations),
        "tv_sigpy": lambda: prox_tv(vols, w, iterations=params.tv_iterations,
                                    backend="sigpy"),
    }


def bench_kernels(n: int, data: dict[str, Any], angles: tuple[np.ndarray, np.ndarray],
                  params: FusionParams, scale: Any, threads: list[int], device: sp.Device,
                  repeats: int) -> dict[str, Any]:
    cases = kernel_cases(n, data, angles, params, scale, device)
    row: dict[str, Any] = {}
    row["projector_build_s"] = timed(
        lambda: ParallelProjector(n, angles[0], device=device), device)
    with device:
        if device != sp.cpu_device:
            got = interleaved({k: (lambda f=f: timed(f, device)) for k, f in cases.items()},
                              repeats)
            row.update({f"{k}_s": v for k, v in got.items()})
            return row
        # CPU: today's path (1 thread) against the kernels at each thread count.
        runs: dict[str, Callable[[], float]] = {}
        for name in ("fwd_adj_haadf", "fwd_adj_chem", "tv_slices"):
            for path, ts in (("numpy", [1]), ("numba", threads)):
                for t in ts:
                    def run(f: Callable[[], Any] = cases[name], p: str = path,
                            k: int = t) -> float:
                        with cpu_path(p, k):
                            return timed(f, device)
                    runs[f"{name}|{path}|{t}"] = run
        got = interleaved(runs, repeats)
        with cpu_path("numba", threads[-1]):
            row["tv_sigpy_s"] = median_time(cases["tv_sigpy"], device, repeats)
    kern: dict[str, Any] = {}
    for key, v in got.items():
        name, path, t = key.split("|")
        kern.setdefault(name, {})[path if path == "numpy" else f"numba_{t}"] = v
    row["kernels"] = kern
    for name, v in kern.items():  # top level: the default (every core) kernels
        row[f"{name}_s"] = v[f"numba_{threads[-1]}"]
        row[f"{name}_numpy_s"] = v["numpy"]
    print(f"N={n}: kernels (s) " + "; ".join(
        f"{name} " + ", ".join(f"{k} {t:.3f}" for k, t in v.items())
        for name, v in kern.items()) + f"; TV sigpy {row['tv_sigpy_s']:.3f}", flush=True)
    return row


# -- scaling over threads --------------------------------------------------------------------
def scaling(n: int, args: argparse.Namespace, device: sp.Device) -> dict[str, Any]:
    """Kernels and a fused iteration at size n for 1, 2, 4 ... threads up to the cores,
    interleaved, with the speed-up over 1 thread."""
    cores = backend.available_cores()
    counts = sorted({1, cores, *(2**k for k in range(1, 8) if 2**k < cores)})
    haadf_angles = np.linspace(-args.tilt_range, args.tilt_range, args.haadf_tilts)
    chem_angles = np.linspace(-args.tilt_range, args.tilt_range, args.chem_tilts)
    data = make_data(n, args.elements, haadf_angles, chem_angles, GAMMA_START)
    params = FusionParams()
    load0 = load_average()
    with cpu_path("numba", cores):
        solver, _ = fresh_solver(n, data, (haadf_angles, chem_angles), params, device, 1)
    cases = kernel_cases(n, data, (haadf_angles, chem_angles), params, solver.scale_tv,
                         device)
    cases = {"fwd_adj_haadf": cases["fwd_adj_haadf"], "fwd_adj_chem": cases["fwd_adj_chem"],
             "tv_slices": cases["tv_slices"], "fused_iteration": solver.step}
    runs = {}
    for name, f in cases.items():
        for t in counts:
            def run(f: Callable[[], Any] = f, t: int = t) -> float:
                with cpu_path("numba", t):
                    return timed(f, device)
            runs[f"{name}|{t}"] = run
    got = interleaved(runs, args.repeats)
    out: dict[str, Any] = {"N": n, "threads": counts, "seconds": {}, "speedup": {},
                           "load_average_start": load0, "load_average_end": load_average()}
    for name in cases:
        secs = [got[f"{name}|{t}"] for t in counts]
        out["seconds"][name] = secs
        out["speedup"][name] = [secs[0] / s for s in secs]
    print(f"scaling at N={n} over threads {counts}: " + "; ".join(
        f"{k} " + " ".join(f"{v:.2f}x" for v in sp_) for k, sp_ in out["speedup"].items()),
        flush=True)
    return out


def scaling_figure(sc: dict[str, Any], hw: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    t = sc["threads"]
    ax.plot(t, t, "k:", label="ideal")
    labels = {"fwd_adj_haadf": "forward + adjoint, 1 volume, HAADF tilts",
              "fwd_adj_chem": "forward + adjoint, all elements, chemical tilts",
              "tv_slices": "TV prox (FGP)", "fused_iteration": "fused iteration"}
    for k, v in sc["speedup"].items():
        ax.plot(t, v, "o-", label=labels.get(k, k))
    ax.set_xlabel("threads")
    ax.set_ylabel("speed-up over 1 thread")
    ax.set_xticks(t)
    ax.set_title(f"{sc['N']}^3, {hw['cpu_model']} ({hw['cpu_affinity']} cores), load "
                 f"{sc['load_average_start'][0] if sc['load_average_start'] else '?'}",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'N':>5} {'threads':>7} {'set-up':>8} {'1st step':>9} {'iter':>8} {'answer':>8} "
            f"{'peak MB':>9} {'nuis.':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        for t in r["runs"]:
            b = r["by_threads"][t]
            lines.append(
                f"{r['N']:>5} {t:>7} {b['setup_s']:>8.2f} {b['warmup_step_s'][0]:>9.2f} "
                f"{b['iteration_s']:>8.3f} {b['time_to_answer_s']:>8.1f} "
                f"{b['peak_memory_MB']:>9.0f} {100 * r['nuisance_overhead']:>+5.0f}%")
    lines.append("(seconds; '1st step' includes the ML-EM initialisation and the gamma "
                 "estimate; 'answer' is set-up + 1st step + 59 iterations, today's fixed 60; "
                 "'nuis.' is what estimating the nuisances adds per iteration, at every core; "
                 "'numpy_1' is today's single-threaded path)")
    kl = [f"{'N':>5} {'kernel':>14} " + " ".join(f"{k:>10}" for k in
                                                 rows[0].get("kernels", {}).get(
                                                     "tv_slices", {}))]
    for r in rows:
        for name, v in r.get("kernels", {}).items():
            kl.append(f"{r['N']:>5} {name:>14} " + " ".join(f"{t:>10.4f}" for t in v.values()))
    if len(kl) > 1:
        lines += ["", *kl, "(seconds; 'numpy' is today's single-threaded path: scipy.sparse "
                  "and NumPy ufuncs; 'numba_T' the kernels with T threads)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[64, 128, 256])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                    help="thread counts to compare (0: every core; default 1 0)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="leave out today's single-threaded path (numpy_1) from the fused "
                         "iterations (its kernels are always timed)")
    ap.add_argument("--elements", type=int, default=4)
    ap.add_argument("--haadf-tilts", type=int, default=47)
    ap.add_argument("--chem-tilts", type=int, default=10)
    ap.add_argument("--tilt-range", type=float, default=70.0, help="+- degrees")
    ap.add_argument("--iterations", type=int, default=3,
                    help="timed fused iterations per thread count")
    ap.add_argument("--warmup", type=int, default=1, help="untimed fused steps first")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each kernel timing")
    ap.add_argument("--answer", choices=["estimate", "run"], default="estimate",
                    help="time to answer: estimated from the median iteration, or run")
    ap.add_argument("--answer-iterations", type=int, default=60,
                    help="fused iterations of an answer (today's fixed count: 60)")
    ap.add_argument("--scaling", type=int, default=None, metavar="N",
                    help="also time size N over 1, 2, 4 ... threads and draw the speed-up")
    ap.add_argument("--output", type=Path, default=None,
                    help="JSON path (default bench/results/speed-<device>.json)")
    args = ap.parse_args(argv)
    if not 1 <= args.elements <= 4 + len(EXTRA_ELEMENTS):
        ap.error(f"--elements must be in [1, {4 + len(EXTRA_ELEMENTS)}], got {args.elements}")
    if args.haadf_tilts < 1 or args.chem_tilts < 1:
        ap.error("tilt counts must be >= 1")
    if any(t < 0 for t in args.threads):
        ap.error("--threads: counts must be >= 0 (0: every core)")

    device = resolve_device(args.device)
    dev_name = "cpu" if device == sp.cpu_device else "gpu"
    hw = hardware(device)
    print(f"device {dev_name}: CPU {hw['cpu_model']} ({hw['cpu_affinity']} of "
          f"{hw['cpu_count']} cores usable), GPU {hw['gpu'] or 'none'}, kernels "
          f"{hw['cpu_kernels']}, load {load_average()}", flush=True)
    warm_up(device, args.elements)
    rows = [bench_size(n, args, device) for n in args.sizes]
    if rows:
        print()
        print(table(rows))
    sc = None
    if args.scaling and device == sp.cpu_device:
        sc = scaling(args.scaling, args, device)
        png = (args.output.parent if args.output else RESULTS) / f"speed-scaling-{dev_name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        scaling_figure(sc, hw, png)
        sc["figure"] = str(png)
        print(f"wrote {png}")

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
            "kernel_repeats": args.repeats, "threads": args.threads,
            "baseline": args.baseline,
            "answer": args.answer, "answer_iterations": args.answer_iterations,
            "fusion_params": asdict(FusionParams()),
        },
        "load_average_end": load_average(),
        "max_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "results": rows,
        "scaling": sc,
    }
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
