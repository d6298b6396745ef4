"""Alignment figures (issue 7): a simulated series is drifted, offset and rotated, then
aligned offline and live, and the fused reconstruction is compared with the drift-free one.

The series: `simulate` (nanocubes, +-70 deg, HAADF every 3 deg, chemistry every 15 deg),
padded by `--margin` px of vacuum on every side (HAADF noise / Poisson background counts) so
that the drifting object stays inside the field of view, as a tracked microscope keeps it.
Each acquisition is then rotated by `--rotation` deg about the beam
(scipy.ndimage.rotate(reshape=False)) and moved by N(0, sigma) px per axis plus `--offset` px
along d (the tilt-axis offset); each spectrum image additionally by its own
N(0, --chem-drift) px. The rotation and shifts are applied on `simulate`'s 2x finer grid
before binning and noise (see `drifted`), so the drift itself adds no interpolation blur.

Offline: `align_series` (vacuum removal, rotation, centre of mass, projection matching at
binnings 4, 2, 1), chemical maps take their HAADF tilt's shift plus their own registered
drift; everything corrected in one interpolation and cropped back to the simulated field.
Shifts are compared in the de-rotated frame with the unobservable components removed (mean
of ds; a cos t + b sin t of dd: a translation of the object), and the axis offset with the
constant of the true shifts' fit (which the random drift also feeds). <NRMSE> of the fused
reconstruction (60 iterations) is given as is and after the best 3D translation onto the
truth (the object's position in the volume is a gauge), for the drift-free series, the
aligned one and the unaligned one.

Live: `LiveAligner` (rotation known from a calibration: the offline estimate) aligns each
tilt in acquisition order against the previous tilt / the reprojection of the warm-started
solver, the solver takes k = 3 iterations per tilt, and between tilts `refine` runs with a
budget; its changed shifts re-feed the solver's data. Reported: per-tilt time of alignment
and of the whole tilt (alignment + k iterations), shift error, final <NRMSE>.

    python bench/alignment.py                   # 64^3, a few minutes on 2 busy cores
    python bench/alignment.py --size 128 --margin 24

Results go to bench/results/alignment.json (keyed by size). Timings on a shared CPU are
contended.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from fusetomo.controller.live_align import LiveAligner, LiveAlignParams, solver_reprojector
from fusetomo.simulators.forward import TiltScheme, bin_projections, haadf_signal, simulate
from fusetomo.simulators.specimens import make_specimen
from fusetomo.solver import alignment as al
from fusetomo.solver.fusion import FusedSolver
from fusetomo.solver.metrics import nrmse
from fusetomo.solver.projector import ParallelProjector

RESULTS = Path(__file__).parent / "results" / "alignment.json"


def drifted(series: Any, *, sigma: float, offset: float, rotation: float, margin: int,
            chem_sigma: float, seed: int) -> dict[str, Any]:
    """The series re-acquired with drift: the specimen's projections on the 2x finer grid of
    `simulate` are padded, rotated and moved there, then binned and given noise as
    `simulate` does (so drift costs no extra interpolation blur that a real, continuous
    drift would not cause). Returns the measured stacks and the true image-frame shifts."""
    rng = np.random.default_rng(seed)
    o = int(series.attrs["oversample"])
    n = series.shape[1]
    spec = make_specimen(str(series.attrs["specimen"]), n * o, seed=int(series.attrs["seed"]))
    Z = np.asarray(spec.Z, dtype=np.float64)
    gamma = float(series.gamma or 1.7)
    n_t = series.haadf.shape[0]
    shifts = rng.normal(0.0, sigma, (n_t, 2))
    shifts[:, 1] += offset
    chem_angles = series.common_chem_angles
    own = rng.normal(0.0, chem_sigma, (chem_angles.size, 2)) if chem_sigma > 0 \
        else np.zeros((chem_angles.size, 2))
    mo = margin * o

    def move(fine: np.ndarray, sh: np.ndarray) -> np.ndarray:
        img = np.pad(fine, mo)
        if rotation:
            img = ndi.rotate(img, rotation, reshape=False, order=3, mode="constant")
        return np.clip(ndi.shift(img, sh * o, order=3, mode="constant"), 0, None)

    ph = ParallelProjector(n * o, series.haadf_angles)
    fine_h = ph.forward(haadf_signal(spec.volumes, Z, gamma))
    clean_h = bin_projections(np.stack([move(f, shifts[i]) for i, f in enumerate(fine_h)]), o)
    # The HAADF noise of `simulate`: sigma = mean signal on the support / SNR.
    ref = bin_projections(fine_h, o)
    sig_h = float(ref[ref > 0.1 * ref.max()].mean()) / float(series.attrs["haadf_snr"])
    haadf = (clean_h + rng.normal(0.0, sig_h, clean_h.shape)).astype(np.float32)
    idx = {round(a, 6): i for i, a in enumerate(series.haadf_angles)}
    kappa = float(series.attrs["counts_per_unit"])
    pc = ParallelProjector(n * o, chem_angles)
    fine_c = pc.forward(spec.volumes)  # [n_el, m, ns, nd]
    chem = {}
    for k, e in enumerate(spec.elements):
        clean = bin_projections(np.stack([
            move(fine_c[k, j], shifts[idx[round(a, 6)]] + own[j])
            for j, a in enumerate(chem_angles)]), o)
        chem[e] = rng.poisson(kappa * clean + series.background[e]).astype(np.float32)
    return {"haadf": haadf, "chem": chem, "shifts": shifts, "own": own}


def crop(a: np.ndarray, m: int) -> np.ndarray:
    return a[..., m:a.shape[-2] - m, m:a.shape[-1] - m] if m else a


def fused(series: Any, haadf: np.ndarray, chem: dict[str, np.ndarray],
          iterations: int) -> dict[str, np.ndarray]:
    els = series.elements
    s = FusedSolver(haadf.shape[2], haadf.shape[1], els, [series.Z[e] for e in els],
                    device="cpu", background=[series.background[e] for e in els])
    s.add_haadf(series.haadf_angles, haadf)
    s.add_chem(series.common_chem_angles, {e: chem[e] for e in els})
    s.run(iterations)
    return s.volumes()


def scores(truth: dict[str, np.ndarray], vols: dict[str, np.ndarray]) -> dict[str, float]:
    """<NRMSE> as is and after the best 3D translation of the volumes onto the truth."""
    raw = float(np.mean([nrmse(truth[e], vols[e]) for e in truth]))
    t_sum = sum(truth[e] / truth[e].max() for e in truth)
    v_sum = sum(vols[e] / max(vols[e].max(), 1e-30) for e in truth)
    sh, _, _ = phase_cross_correlation(t_sum, v_sum, upsample_factor=10, normalization=None)
    # A Fourier shift: band-limited, so the translation itself does not blur the volume.
    moved = {e: np.fft.ifftn(ndi.fourier_shift(np.fft.fftn(vols[e]), sh)).real
             for e in truth}
    reg = float(np.mean([nrmse(truth[e], moved[e]) for e in truth]))
    return {"nrmse": raw, "nrmse_registered": reg, "translation_px": [float(x) for x in sh]}


def shift_rms(angles: np.ndarray, est_axis: np.ndarray, true_axis: np.ndarray) -> float:
    d = al.gauge_free(angles, est_axis) - al.gauge_free(angles, true_axis)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


def offline(sim: Any, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    s, m = sim.series, args.margin
    ang = s.haadf_angles
    t0 = time.perf_counter()
    A = al.align_series(data["haadf"], ang)
    t_align = time.perf_counter() - t0
    true_axis = al.to_axis_frame(data["shifts"], args.rotation)
    haadf_c, _ = al.remove_background(
        al.apply_alignment(data["haadf"], A.shifts, A.rotation_deg))
    idx = {round(a, 6): i for i, a in enumerate(ang)}
    chem_c: dict[str, list[np.ndarray]] = {e: [] for e in s.elements}
    own_est = []
    Z = [s.Z[e] for e in s.elements]
    bg = [s.background[e] for e in s.elements]
    for j, a in enumerate(s.common_chem_angles):
        h_shift = A.shifts[idx[round(a, 6)]]
        raw = {e: data["chem"][e][j] for e in s.elements}
        first = {e: al.apply_alignment(v, h_shift, A.rotation_deg, counts=True)
                 for e, v in raw.items()}
        own_axis = al.register_chem(haadf_c[idx[round(a, 6)]], first, Z, gamma=s.gamma or 1.7,
                                    background=bg)
        own = al.to_image_frame(own_axis, A.rotation_deg)[0]
        own_est.append(own)
        for e, v in raw.items():
            chem_c[e].append(al.apply_alignment(v, h_shift + own, A.rotation_deg, counts=True))
    own_est_a = np.array(own_est)
    own_err = np.sqrt(np.mean(np.sum((al.to_axis_frame(own_est_a, args.rotation)
                                      - al.to_axis_frame(data["own"], args.rotation))**2, 1)))
    chem_aligned = {e: crop(np.stack(v), m) for e, v in chem_c.items()}
    t1 = time.perf_counter()
    v_ref = fused(s, s.haadf, s.chem, args.iterations)
    v_al = fused(s, crop(haadf_c, m), chem_aligned, args.iterations)
    v_raw = fused(s, crop(data["haadf"], m), {e: crop(v, m) for e, v in data["chem"].items()},
                  args.iterations)
    t_fused = time.perf_counter() - t1
    # Diagnostic: corrected with the true shifts and rotation (what interpolation alone costs).
    h_true = al.apply_alignment(data["haadf"], data["shifts"], args.rotation)
    c_true = {e: crop(np.stack([al.apply_alignment(
        data["chem"][e][j], data["shifts"][idx[round(a, 6)]] + data["own"][j], args.rotation,
        counts=True) for j, a in enumerate(s.common_chem_angles)]), m) for e in s.elements}
    v_true = fused(s, crop(h_true, m), c_true, args.iterations)
    ref, ali, una, tru = (scores(sim.truth, v) for v in (v_ref, v_al, v_raw, v_true))
    return {
        "align_s": t_align,
        "fused_4x_s": t_fused,
        "rotation_true_deg": args.rotation,
        "rotation_est_deg": A.rotation_deg,
        "axis_offset_true_px": al.fit_axis(ang, true_axis[:, 1])[0],
        "axis_offset_set_px": args.offset,
        "axis_offset_est_px": A.axis_offset_px,
        "shift_rms_px": shift_rms(ang, A.axis_frame_shifts(), true_axis),
        "shift_rms_com_only_px": shift_rms(
            ang, al.com_shifts(al.apply_alignment(
                al.remove_background(data["haadf"])[0], np.zeros((ang.size, 2)),
                A.rotation_deg), ang)[0], true_axis),
        "chem_own_drift_rms_px": float(own_err),
        "projection_matching": A.history,
        "drift_free": ref,
        "aligned": ali,
        "unaligned": una,
        "true_shifts": tru,
        "nrmse_ratio_registered": ali["nrmse_registered"] / ref["nrmse_registered"],
        "nrmse_ratio": ali["nrmse"] / ref["nrmse"],
        "rotation_for_live": A.rotation_deg,
    }


def live(sim: Any, data: dict[str, Any], args: argparse.Namespace,
         rotation: float) -> dict[str, Any]:
    s, m = sim.series, args.margin
    els = s.elements
    solver = FusedSolver(s.shape[1], s.shape[0], els, [s.Z[e] for e in els], device="cpu",
                         background=[s.background[e] for e in els])
    base = solver_reprojector(solver)

    def reproject(angles: np.ndarray) -> np.ndarray | None:
        r = base(angles)  # the solver's field, padded to the detector's
        return None if r is None else np.pad(r, ((0, 0), (m, m), (m, m)))

    aligner = LiveAligner(LiveAlignParams(rotation_deg=rotation))
    chem_idx = {round(a, 6): j for j, a in enumerate(s.common_chem_angles)}
    t_align, t_tilt, t_refine, n_changed = [], [], [], 0
    Z = [s.Z[e] for e in els]
    bg = [s.background[e] for e in els]
    for i, a in enumerate(s.haadf_angles):
        t0 = time.perf_counter()
        aligner.align_haadf(a, data["haadf"][i], reproject)
        img = crop(aligner.corrected_haadf(a), m)
        chem = None
        j = chem_idx.get(round(a, 6))
        if j is not None:
            _, maps = aligner.align_chem(a, {e: data["chem"][e][j] for e in els}, Z=Z,
                                         gamma=s.gamma or 1.7, background=bg)
            chem = {e: crop(v, m)[None] for e, v in maps.items()}
        t_align.append(time.perf_counter() - t0)
        solver.add_haadf(a, img)
        if chem is not None:
            solver.add_chem(a, chem)
        if solver.ready:
            solver.run(3)
        t_tilt.append(time.perf_counter() - t0)
        if solver.ready:  # idle time before the next tilt
            t1 = time.perf_counter()
            changed = aligner.refine(reproject, budget_s=args.refine_budget)
            t_refine.append(time.perf_counter() - t1)
            if changed:
                n_changed += len(changed)
                refeed(solver, aligner, m)
    solver.run(20)
    ang = aligner.angles
    order = np.argsort(ang)
    true_axis = al.to_axis_frame(data["shifts"][np.searchsorted(s.haadf_angles, ang)],
                                 args.rotation)
    sc = scores(sim.truth, solver.volumes())
    return {
        "shift_rms_px": shift_rms(ang[order], aligner.axis_frame_shifts()[order],
                                  true_axis[order]),
        "align_ms_median": 1e3 * float(np.median(t_align)),
        "align_ms_max": 1e3 * float(np.max(t_align)),
        "tilt_s_median": float(np.median(t_tilt)),
        "tilt_s_p90": float(np.percentile(t_tilt, 90)),
        "refine_s_median": float(np.median(t_refine)) if t_refine else None,
        "refine_budget_s": args.refine_budget,
        "refined_shift_updates": n_changed,
        "axis_offset_est_px": aligner.axis_offset_px,
        **sc,
    }


def refeed(solver: FusedSolver, aligner: LiveAligner, m: int) -> None:
    """Replace the solver's data by the re-corrected stacks. Stand-in for the proposed
    FusedSolver.replace_haadf/replace_chem (issue 7 report): it writes the same arrays."""
    import sigpy as sp

    _, h = aligner.haadf_stack()
    with solver.device:
        solver._b_haadf = sp.to_device(crop(h, m).astype(np.float32), solver.device)
        if solver.n_chem:
            _, maps = aligner.chem_stack()
            stack = np.stack([crop(maps[e], m) for e in solver.elements]).astype(np.float32)
            solver._b_chem = sp.to_device(stack, solver.device)
    solver._restart_momentum()


def print_offline(off: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"offline: rotation {off['rotation_est_deg']:.3f} deg (true {args.rotation}), "
          f"axis offset {off['axis_offset_est_px']:.2f} px (true constant "
          f"{off['axis_offset_true_px']:.2f}), shift RMS {off['shift_rms_px']:.3f} px "
          f"(centre of mass alone {off['shift_rms_com_only_px']:.3f}), own chem drift RMS "
          f"{off['chem_own_drift_rms_px']:.3f} px, {off['align_s']:.1f} s")
    for k in ("drift_free", "aligned", "true_shifts", "unaligned"):
        print(f"  <NRMSE> {k:10s} {off[k]['nrmse']:.3f}  registered "
              f"{off[k]['nrmse_registered']:.3f}")
    print(f"  aligned / drift-free (registered): {off['nrmse_ratio_registered']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=5.0, help="drift sigma, px")
    ap.add_argument("--offset", type=float, default=3.0, help="tilt-axis offset, px")
    ap.add_argument("--rotation", type=float, default=1.0, help="in-plane rotation, deg")
    ap.add_argument("--chem-drift", type=float, default=1.0,
                    help="spectrum image's own drift sigma, px")
    ap.add_argument("--margin", type=int, default=16, help="vacuum around the field, px")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--refine-budget", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-live", action="store_true")
    ap.add_argument("--no-offline", action="store_true",
                    help="live part only (rotation estimated from the whole series)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.perf_counter()
    sim = simulate("nanocubes", args.size, TiltScheme(), seed=args.seed)
    data = drifted(sim.series, sigma=args.sigma, offset=args.offset, rotation=args.rotation,
                   margin=args.margin, chem_sigma=args.chem_drift, seed=args.seed + 100)
    if args.no_offline:
        rot = al.estimate_rotation(al.remove_background(data["haadf"])[0])
        off: dict[str, Any] = {"rotation_for_live": rot}
    else:
        off = offline(sim, data, args)
    res: dict[str, Any] = {"size": args.size, "sigma_px": args.sigma, "offset_px": args.offset,
                           "rotation_deg": args.rotation, "chem_drift_px": args.chem_drift,
                           "margin_px": args.margin, "iterations": args.iterations,
                           "seed": args.seed, "offline": off,
                           "machine": f"{platform.machine()} {platform.processor()} "
                                      "(shared, contended CPU)"}
    if not args.no_offline:
        print_offline(off, args)
    if not args.no_live:
        lv = live(sim, data, args, off["rotation_for_live"])
        res["live"] = lv
        print(f"live: shift RMS {lv['shift_rms_px']:.3f} px, alignment per tilt median "
              f"{lv['align_ms_median']:.0f} ms (max {lv['align_ms_max']:.0f}), tilt "
              f"(alignment + 3 iterations) median {lv['tilt_s_median']:.2f} s p90 "
              f"{lv['tilt_s_p90']:.2f} s, refine median {lv['refine_s_median']}, <NRMSE> "
              f"{lv['nrmse']:.3f} registered {lv['nrmse_registered']:.3f}")
    res["wall_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(args.out.read_text()) if args.out.exists() else {}
    allres[str(args.size)] = res
    args.out.write_text(json.dumps(allres, indent=1, default=float))
    print(f"wrote {args.out} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
