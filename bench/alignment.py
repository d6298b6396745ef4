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
binnings 4, 2, 1), each spectrum image's own drift registered to its HAADF image, then the
joint refinement of fusetomo.solver.joint_align: images moved by whole pixels only, the
fractions of the shifts in the fused solver's projectors, refined by Gauss-Newton against the
fused model (HAADF tilts, and each spectrum image's own offset against the maps). Shifts are
compared in the de-rotated frame with the unobservable components removed (mean of ds;
a cos t + b sin t of dd: a translation of the object), and the axis offset with the
constant of the true shifts' fit (which the random drift also feeds).

<NRMSE> of the fused reconstruction (60 iterations). The drift-free reference is the same
acquisition without drift (same HAADF noise draws). The headline ("joint") is reconstructed
afresh with the refined shifts put in the true series' gauge: the object's position in the
volume is not determined by any data, and choosing it through the shifts avoids resampling
the volume. Also given: the refined solver's own result after the best 3D (Fourier)
translation onto the truth ("joint_own_gauge", registered), projection matching alone with
resampled images (the method before the joint refinement), the true shifts in the model
(the floor of this route) and the unaligned series.

Live (`live`, the schedule of `fusetomo control --align`): `LiveAligner` (rotation known from
a calibration: the offline estimate) aligns each tilt in acquisition order against the
previous tilt / the reprojection of the warm-started solver; the solver takes the image moved
by whole pixels and the fraction in its projector, then k = 3 iterations; between tilts one
Gauss-Newton refinement against the fused model sets the solver's shifts; after the series,
`--final-iterations` with a refinement every `--final-every` until converged
(`controller.live.final_refinement_due`). Reported: per-tilt time of
alignment, of the whole tilt (alignment + k iterations) and of a refinement, shift error,
and <NRMSE> against the same schedule on the drift-free acquisition, as is and with that
run's object put where the live run put it (the unobservable part of the live shifts given
to its solver: the scoring translation then costs both alike), and the live shifts solved
afresh against the drift-free acquisition solved alike.

    python bench/alignment.py                   # 64^3, a few minutes on 2 busy cores
    python bench/alignment.py --size 128 --margin 24

Results go to bench/results/alignment.json (keyed by size, and "-seedN" for seeds other than
0). Timings on a shared CPU are contended.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from fusetomo.controller.live import final_refinement_due
from fusetomo.controller.live.aligner import LiveAligner, LiveAlignParams, solver_reprojector
from fusetomo.controller.offline_align import aligned_solver
from fusetomo.simulators.forward import TiltScheme, bin_projections, haadf_signal, simulate
from fusetomo.simulators.specimens import make_specimen
from fusetomo.solver import alignment as al
from fusetomo.solver import joint_align as ja
from fusetomo.solver.fusion import FusedSolver
from fusetomo.solver.metrics import nrmse
from fusetomo.solver.projector import ParallelProjector

RESULTS = Path(__file__).parent / "results" / "alignment.json"


def drifted(series: Any, *, sigma: float, offset: float, rotation: float, margin: int,
            chem_sigma: float, seed: int, axis: int | None = None) -> dict[str, Any]:
    """The series re-acquired with drift: the specimen's projections on the 2x finer grid of
    `simulate` are padded, rotated and moved there, then binned and given noise as
    `simulate` does (so drift costs no extra interpolation blur that a real, continuous
    drift would not cause). `axis` 0 or 1: drift along s or d only (the same draws, the
    other axis zeroed). Returns the measured stacks and the true image-frame shifts."""
    rng = np.random.default_rng(seed)
    o = int(series.attrs["oversample"])
    n = series.shape[1]
    spec = make_specimen(str(series.attrs["specimen"]), n * o, seed=int(series.attrs["seed"]))
    Z = np.asarray(spec.Z, dtype=np.float64)
    gamma = float(series.gamma or 1.7)
    n_t = series.haadf.shape[0]
    shifts = rng.normal(0.0, sigma, (n_t, 2))
    shifts[:, 1] += offset
    if axis is not None:
        shifts[:, 1 - axis] = 0.0
    chem_angles = series.common_chem_angles
    # Always drawn, so that a drift-free series (sigma = 0) with the same seed gets the
    # same noise draws for HAADF.
    own = rng.normal(0.0, 1.0, (chem_angles.size, 2)) * chem_sigma
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


def fused_model(series: Any, data: dict[str, Any], h_axis: np.ndarray, c_axis: np.ndarray,
                rotation: float, margin: int, iterations: int) -> FusedSolver:
    """The fused solver on the measured images moved by whole pixels only, the fractions of
    the (de-rotated frame) shifts in its projectors, the vacuum margin dropped
    (`fusetomo reconstruct --align`'s solver)."""
    measured = replace(series, haadf=data["haadf"], chem=data["chem"])
    s = aligned_solver(measured, h_axis, c_axis, rotation, crop_px=margin)
    if iterations:
        s.run(iterations)
    return s


def in_gauge(angles: np.ndarray, shifts: np.ndarray, true: np.ndarray) -> np.ndarray:
    """`shifts` with the unobservable components (a translation of the object) of `true`."""
    return al.gauge_free(angles, shifts) + (true - al.gauge_free(angles, true))


def offline(sim: Any, data: dict[str, Any], ref_data: dict[str, Any],
            args: argparse.Namespace) -> dict[str, Any]:
    s, m = sim.series, args.margin
    ang = s.haadf_angles
    idx, _ = ja.chem_partners(ang, s.common_chem_angles)
    t0 = time.perf_counter()
    A = al.align_series(data["haadf"], ang)
    t_align = time.perf_counter() - t0
    true_axis = al.to_axis_frame(data["shifts"], args.rotation)
    true_chem = al.to_axis_frame(data["shifts"][idx] + data["own"], args.rotation)
    # The spectrum images' own drift, registered on images resampled with their HAADF
    # image's shift (an estimate only: the data given to the solver are not resampled).
    haadf_c, _ = al.remove_background(
        al.apply_alignment(data["haadf"], A.shifts, A.rotation_deg))
    Z = [s.Z[e] for e in s.elements]
    bg = [s.background[e] for e in s.elements]
    own_axis = np.array([al.register_chem(
        haadf_c[i], {e: al.apply_alignment(data["chem"][e][j], A.shifts[i], A.rotation_deg,
                                            counts=True) for e in s.elements},
        Z, gamma=s.gamma or 1.7, background=bg) for j, i in enumerate(idx)])
    own_true = true_chem - true_axis[idx]
    own_err = np.sqrt(np.mean(np.sum((own_axis - own_true) ** 2, 1)))
    h_pm = A.axis_frame_shifts()
    c_pm = h_pm[idx] + own_axis
    # Projection matching's shifts, images resampled (the method before joint refinement).
    chem_pm = {e: crop(al.apply_alignment(
        data["chem"][e], al.to_image_frame(c_pm, A.rotation_deg), A.rotation_deg, counts=True),
        m) for e in s.elements}
    t1 = time.perf_counter()
    v_ref = fused(s, crop(ref_data["haadf"], m),
                  {e: crop(v, m) for e, v in ref_data["chem"].items()}, args.iterations)
    v_pm = fused(s, crop(haadf_c, m), chem_pm, args.iterations)
    v_raw = fused(s, crop(data["haadf"], m), {e: crop(v, m) for e, v in data["chem"].items()},
                  args.iterations)
    # Joint refinement against the fused model, shifts in the projectors.
    t2 = time.perf_counter()
    solver = fused_model(s, data, h_pm, c_pm, A.rotation_deg, m, 0)
    whole_h, _ = ja.split_shifts(h_pm)
    whole_c, _ = ja.split_shifts(c_pm)
    J = ja.refine_jointly(solver, ja.JointAlignParams(rounds=args.joint_rounds))
    t_joint = time.perf_counter() - t2
    h_j = whole_h + J.haadf_shifts
    c_j = whole_c + J.chem_shifts
    v_joint_own_gauge = solver.volumes()
    # Scored in the true gauge: the same shifts less their unobservable part, plus the true
    # series' (a translation of the object, which no data determine), reconstructed afresh
    # with the reference's iteration count; no resampling of the volume.
    g = in_gauge(ang, h_j, true_axis) - h_j
    v_joint = fused_model(s, data, h_j + g, c_j + g[idx], A.rotation_deg, m,
                          args.iterations).volumes()
    v_true = fused_model(s, data, true_axis, true_chem, args.rotation, m,
                         args.iterations).volumes()
    t_fused = time.perf_counter() - t1
    ref, pm, una, tru, jo, jo_own = (scores(sim.truth, v) for v in (
        v_ref, v_pm, v_raw, v_true, v_joint, v_joint_own_gauge))
    return {
        "align_s": t_align,
        "joint_refine_s": t_joint,
        "fused_all_s": t_fused,
        "rotation_true_deg": args.rotation,
        "rotation_est_deg": A.rotation_deg,
        "axis_offset_true_px": al.fit_axis(ang, true_axis[:, 1])[0],
        "axis_offset_set_px": args.offset,
        "axis_offset_pm_px": A.axis_offset_px,
        "axis_offset_joint_px": al.fit_axis(ang, h_j[:, 1])[0],
        "shift_rms_pm_px": shift_rms(ang, h_pm, true_axis),
        "shift_rms_px": shift_rms(ang, h_j, true_axis),
        "shift_rms_com_only_px": shift_rms(
            ang, al.com_shifts(al.apply_alignment(
                al.remove_background(data["haadf"])[0], np.zeros((ang.size, 2)),
                A.rotation_deg), ang)[0], true_axis),
        "chem_own_drift_rms_px": float(own_err),
        "chem_shift_rms_joint_px": shift_rms(s.common_chem_angles, c_j, true_chem),
        "projection_matching": A.history,
        "joint_refinement": J.history,
        "joint_converged": J.converged,
        "drift_free": ref,
        "projection_matching_resampled": pm,
        "joint": jo,
        "joint_own_gauge": jo_own,
        "unaligned": una,
        "true_shifts_model": tru,
        "nrmse_ratio": jo["nrmse"] / ref["nrmse"],
        "nrmse_ratio_registered_own_gauge":
            jo_own["nrmse_registered"] / ref["nrmse_registered"],
        "nrmse_ratio_pm_registered": pm["nrmse_registered"] / ref["nrmse_registered"],
        "rotation_for_live": A.rotation_deg,
    }


def live(sim: Any, data: dict[str, Any], args: argparse.Namespace,
         rotation: float, *, align: bool = True,
         gauge: np.ndarray | None = None) -> dict[str, Any]:
    """The live route as controller/live/ runs it: each tilt aligned on arrival and given
    to the solver with its fractional shift, k iterations, one model refinement in the idle
    time; after the series, the final iterations with a refinement every `final_every`.
    align=False: the same schedule with the images as they are (the drift-free reference),
    `gauge` [n, 2] the solver's shifts then (a translation of the object, see `live_gauge`)."""
    s, m = sim.series, args.margin
    if np.any(np.diff(s.haadf_angles) <= 0):  # arrival order = sorted order, used below
        raise SystemExit("the live bench needs a tilt scheme in ascending order")
    els = s.elements
    solver = FusedSolver(s.shape[1], s.shape[0], els, [s.Z[e] for e in els],
                         device="cpu", background=[s.background[e] for e in els])
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
        j = chem_idx.get(round(a, 6))
        raw_maps = None if j is None else {e: data["chem"][e][j] for e in els}
        if align:
            aligner.align_haadf(a, data["haadf"][i], reproject)
            img, frac = aligner.solver_haadf(a)
            if raw_maps is not None:
                aligner.align_chem(a, raw_maps, Z=Z, gamma=s.gamma or 1.7, background=bg)
                raw_maps, frac_c = aligner.solver_chem(a)
        else:
            img = data["haadf"][i] - al.vacuum_level(data["haadf"][i])
            frac = frac_c = np.zeros(2) if gauge is None else gauge[i]
        chem = None if raw_maps is None else {e: crop(v, m)[None] for e, v in raw_maps.items()}
        t_align.append(time.perf_counter() - t0)
        solver.add_haadf(a, crop(img, m), shifts=frac[None])
        if chem is not None:
            solver.add_chem(a, chem, shifts=frac_c[None])
        if solver.ready:
            solver.run(3)
        t_tilt.append(time.perf_counter() - t0)
        if solver.ready and align:  # idle time before the next tilt
            t1 = time.perf_counter()
            n_changed += len(aligner.refine(solver))
            t_refine.append(time.perf_counter() - t1)
    for it in range(args.final_iterations):
        if align and final_refinement_due(it, args.final_iterations, args.final_every,
                                          aligner):
            n_changed += len(aligner.refine(solver))
        solver.run(1)
    sc = scores(sim.truth, solver.volumes())
    if not align:
        return sc
    ang = aligner.angles
    order = np.argsort(ang)
    true_axis = al.to_axis_frame(data["shifts"][np.searchsorted(s.haadf_angles, ang)],
                                 args.rotation)
    est = aligner.axis_frame_shifts()[order]
    ang_c, c_axis = aligner.chem_axis_frame_shifts()
    c_order = [int(np.argmin(np.abs(ang_c - a))) for a in s.common_chem_angles]
    return {
        "gauge": live_gauge(ang[order], est, true_axis[order]),
        "shifts": (est, c_axis[c_order]),
        "shift_rms_px": shift_rms(ang[order], est, true_axis[order]),
        "align_ms_median": 1e3 * float(np.median(t_align)),
        "align_ms_max": 1e3 * float(np.max(t_align)),
        "tilt_s_median": float(np.median(t_tilt)),
        "tilt_s_p90": float(np.percentile(t_tilt, 90)),
        "refine_s_median": float(np.median(t_refine)) if t_refine else None,
        "refined_shift_updates": n_changed,
        "model_refinements": aligner.model_refinements,
        "axis_offset_est_px": aligner.axis_offset_px,
        **sc,
    }


def live_gauge(angles: np.ndarray, est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The unobservable part of the estimated shifts relative to the true ones (sorted
    angles): the translation of the object the live reconstruction carries. Given as the
    solver's shifts on drift-free data, it puts that reconstruction's object in the same
    place, so that scoring (a Fourier translation onto the truth) costs both alike."""
    return (est - al.gauge_free(angles, est)) - (true - al.gauge_free(angles, true))


def print_offline(off: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"offline: rotation {off['rotation_est_deg']:.3f} deg (true {args.rotation}), "
          f"axis offset {off['axis_offset_joint_px']:.2f} px (true constant "
          f"{off['axis_offset_true_px']:.2f}; projection matching "
          f"{off['axis_offset_pm_px']:.2f}), shift RMS {off['shift_rms_px']:.3f} px "
          f"(projection matching {off['shift_rms_pm_px']:.3f}, centre of mass alone "
          f"{off['shift_rms_com_only_px']:.3f}), own chem drift RMS "
          f"{off['chem_own_drift_rms_px']:.3f} px; align {off['align_s']:.1f} s + joint "
          f"{off['joint_refine_s']:.1f} s ({len(off['joint_refinement'])} rounds)")
    for k in ("drift_free", "joint", "joint_own_gauge", "projection_matching_resampled",
              "true_shifts_model", "unaligned"):
        print(f"  <NRMSE> {k:30s} {off[k]['nrmse']:.4f}  registered "
              f"{off[k]['nrmse_registered']:.4f}")
    print(f"  joint / drift-free: {off['nrmse_ratio']:.3f} (own gauge, registered "
          f"{off['nrmse_ratio_registered_own_gauge']:.3f}; projection matching, resampled, "
          f"registered {off['nrmse_ratio_pm_registered']:.3f})")


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
    ap.add_argument("--final-iterations", type=int, default=20,
                    help="live: iterations after the series end")
    ap.add_argument("--final-every", type=int, default=2,
                    help="live: a model refinement every this many final iterations")
    ap.add_argument("--joint-rounds", type=int, default=20,
                    help="joint refinement rounds at most (offline)")
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
    # The drift-free reference: the same acquisition (same HAADF noise draws), no drift.
    ref_data = drifted(sim.series, sigma=0.0, offset=0.0, rotation=0.0, margin=args.margin,
                       chem_sigma=0.0, seed=args.seed + 100)
    if args.no_offline:
        rot = al.estimate_rotation(al.remove_background(data["haadf"])[0])
        off: dict[str, Any] = {"rotation_for_live": rot}
    else:
        off = offline(sim, data, ref_data, args)
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
        gauge = lv.pop("gauge")
        h_axis, c_axis = lv.pop("shifts")
        lv["drift_free"] = live(sim, ref_data, args, 0.0, align=False)
        lv["drift_free_same_gauge"] = live(sim, ref_data, args, 0.0, align=False, gauge=gauge)
        # The live shifts solved afresh (args.iterations), against the drift-free series
        # solved afresh with the live run's object position: what the shifts are worth
        # without the live volume's history.
        rot = off["rotation_for_live"]
        s = sim.series
        fresh = scores(sim.truth, fused_model(s, data, h_axis, c_axis, rot, args.margin,
                                              args.iterations).volumes())
        hidx = {round(a, 6): i for i, a in enumerate(s.haadf_angles)}
        g_c = np.array([gauge[hidx[round(a, 6)]] for a in s.common_chem_angles])
        fresh_ref = scores(sim.truth, fused_model(s, ref_data, gauge, g_c, 0.0, args.margin,
                                                  args.iterations).volumes())
        lv["resolved"] = {"live_shifts": fresh, "drift_free_same_gauge": fresh_ref,
                          "ratio": fresh["nrmse_registered"]
                          / fresh_ref["nrmse_registered"]}
        lv["nrmse_ratio_registered"] = (lv["nrmse_registered"]
                                        / lv["drift_free"]["nrmse_registered"])
        lv["nrmse_ratio_same_gauge"] = (lv["nrmse_registered"]
                                        / lv["drift_free_same_gauge"]["nrmse_registered"])
        res["live"] = lv
        print(f"live: shift RMS {lv['shift_rms_px']:.3f} px, alignment per tilt median "
              f"{lv['align_ms_median']:.0f} ms (max {lv['align_ms_max']:.0f}), tilt "
              f"(alignment + 3 iterations) median {lv['tilt_s_median']:.2f} s p90 "
              f"{lv['tilt_s_p90']:.2f} s, refine median {lv['refine_s_median']}, <NRMSE> "
              f"{lv['nrmse']:.3f} registered {lv['nrmse_registered']:.3f} = "
              f"{lv['nrmse_ratio_registered']:.3f} x the drift-free live run, "
              f"{lv['nrmse_ratio_same_gauge']:.3f} x that run with the object where the "
              "live run put it")
        print(f"live shifts solved afresh ({args.iterations} iterations): registered "
              f"{lv['resolved']['live_shifts']['nrmse_registered']:.3f} = "
              f"{lv['resolved']['ratio']:.3f} x the drift-free series solved alike")
    res["wall_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(args.out.read_text()) if args.out.exists() else {}
    allres[str(args.size) if args.seed == 0 else f"{args.size}-seed{args.seed}"] = res
    args.out.write_text(json.dumps(allres, indent=1, default=float))
    print(f"wrote {args.out} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
