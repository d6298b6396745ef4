"""Alignment refined against the fused reconstruction itself, with the shifts in the model.

`projection_matching` (fusetomo.solver.alignment) registers each image to a SIRT
reprojection and resamples the images; both limit the fused result. At 64^3 in
bench/alignment.py its shifts are right to 0.19 px RMS, and the fused <NRMSE> is still 1.6x
the drift-free one: the fused reconstruction of faceted particles is sensitive far below a
pixel, and resampling the HAADF images by a spline is itself a 6-10 % error
(bench/alignment_resampling.py).
Here, instead:

- the images are moved by whole pixels only (exact) and the remaining fraction of each shift
  is given to the projector (`ParallelProjector` shifts: the model moves, the data stay);
- the shifts are refined by Gauss-Newton (Lucas-Kanade) on the fused model's own HAADF
  images: image_t ~ model_t moved by delta_t, linearised in delta_t, two unknowns per tilt,
  solved in closed form; alternated with a few fused iterations; unobservable components
  (a translation of the object) removed from every update, as in projection matching;
- each chemical tilt keeps its own offset from the HAADF image taken with it (its
  registered drift) and moves with that image.

This is ours because it needs the fused solver's model and its projector shifts; the
Gauss-Newton step is the textbook one (no library offers it on a projector model).

    images, frac = prepare(raw, axis_shifts, rotation_deg)      # whole pixels + fractions
    solver.add_haadf(angles, images, shifts=frac)
    ...
    result = refine_jointly(solver, JointAlignParams())          # shifts in the solver
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusetomo.solver.alignment import AlignmentError, apply_alignment, remove_gauge
from fusetomo.solver.backend import to_numpy

__all__ = [
    "JointAlignParams",
    "JointAlignResult",
    "ShiftSteps",
    "chem_gauss_newton_shifts",
    "chem_partners",
    "gauss_newton_shifts",
    "move_integer",
    "prepare",
    "refine_jointly",
    "shift_steps",
    "split_shifts",
]


@dataclass
class JointAlignParams:
    """rounds: shift updates at most; iterations: fused iterations after each update (and
    before the first one if the solver has not run); max_step_px: the largest update per
    round and axis (a linearisation is only trusted that far); tol_px: stop when the RMS
    update falls below it."""

    rounds: int = 20
    iterations: int = 10
    warmup_iterations: int = 30
    max_step_px: float = 0.5
    tol_px: float = 0.002
    refine_chem: bool = True  # also each spectrum image's own offset, against the maps

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.iterations < 1 or self.warmup_iterations < 0:
            raise AlignmentError(
                f"rounds >= 0, iterations >= 1, warmup_iterations >= 0 needed, got "
                f"{self.rounds}, {self.iterations}, {self.warmup_iterations}")
        if not (self.max_step_px > 0 and self.tol_px >= 0):
            raise AlignmentError(f"max_step_px must be > 0 and tol_px >= 0, got "
                                 f"{self.max_step_px}, {self.tol_px}")


@dataclass
class JointAlignResult:
    """The refined HAADF shifts [n, 2] (ds, dd) px, the chemical tilts' shifts, and per
    round the RMS update (px), the chemical tilts' RMS update, and the HAADF misfit
    0.5 ||b - model||^2."""

    haadf_shifts: np.ndarray
    chem_shifts: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    converged: bool = False


def split_shifts(shifts: Any) -> tuple[np.ndarray, np.ndarray]:
    """(whole pixels, remaining fraction in [-0.5, 0.5]) of shifts [n, 2]."""
    sh = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    whole = np.round(sh).astype(np.int64)
    return whole, sh - whole


def move_integer(images: Any, whole: Any, fill: float = 0.0) -> np.ndarray:
    """Undo whole-pixel shifts exactly: out[i][p] = images[i][p + whole[i]], `fill` where
    that falls outside the image (vacuum after background removal). scipy.ndimage.shift
    with order 0 at a whole-pixel shift copies pixels, nothing is interpolated."""
    from scipy.ndimage import shift

    a = np.asarray(images)
    single = a.ndim == 2
    a = a[None] if single else a
    k = np.asarray(whole, dtype=np.int64).reshape(-1, 2)
    if k.shape[0] != a.shape[0]:
        raise AlignmentError(f"{k.shape[0]} shifts for {a.shape[0]} images")
    out = np.stack([shift(im, (-int(ks), -int(kd)), order=0, mode="constant", cval=fill)
                    for im, (ks, kd) in zip(a, k, strict=True)])
    return out[0] if single else out


def prepare(images: Any, axis_shifts: Any, rotation_deg: float = 0.0, *,
            counts: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images ready for a solver that models the shifts: de-rotated if `rotation_deg` (one
    interpolation: the projector cannot model a turned tilt axis), moved back by the whole
    pixels of `axis_shifts` (shifts in the de-rotated frame, `Alignment.axis_frame_shifts`),
    and the fractions to pass as the solver's shifts. `counts`: clip at 0 after rotation."""
    a = np.asarray(images)
    single = a.ndim == 2
    a = a[None] if single else a
    if rotation_deg:
        a = np.asarray(apply_alignment(a, np.zeros((a.shape[0], 2)), rotation_deg,
                                       counts=counts))
    whole, frac = split_shifts(axis_shifts)
    out = move_integer(a, whole)
    return (out[0] if single else out), frac


def gauss_newton_shifts(model: Any, images: Any) -> np.ndarray:
    """Per image, the shift delta [n, 2] (ds, dd) px such that image ~ model moved by delta,
    from one Gauss-Newton step linearised at delta = 0: image - model ~ -grad(model).delta.
    Exact to first order for smooth images; iterate for large shifts."""
    m = np.asarray(to_numpy(model), dtype=np.float64)
    b = np.asarray(to_numpy(images), dtype=np.float64)
    if m.shape != b.shape or m.ndim != 3:
        raise AlignmentError(f"model {m.shape} and images {b.shape} must be equal [n, s, d]")
    return _gauss_newton(m[None], b[None], None)


def chem_gauss_newton_shifts(model: Any, counts: Any) -> np.ndarray:
    """Per chemical tilt, the shift [n_chem, 2] such that the counts ~ the model (expected
    counts, [n_el, n_chem, s, d]) moved by it: one Gauss-Newton step of the Poisson-weighted
    (1/model) least squares, all elements of a tilt together."""
    m = np.asarray(to_numpy(model), dtype=np.float64)
    b = np.asarray(to_numpy(counts), dtype=np.float64)
    if m.shape != b.shape or m.ndim != 4:
        raise AlignmentError(f"model {m.shape} and counts {b.shape} must be equal "
                             "[n_el, n, s, d]")
    return _gauss_newton(m, b, 1.0 / np.maximum(m, 1e-6))


def _gauss_newton(m: np.ndarray, b: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """The weighted 2-parameter least squares per image of [e, n, s, d] stacks (summed over
    e): the normal equations of (b - m) ~ -grad(m).delta, solved in closed form; zero where
    they are singular (a flat image)."""
    gs, gd = np.gradient(m, axis=(2, 3))
    r = b - m
    ws, wd = (gs, gd) if w is None else (w * gs, w * gd)
    a11 = np.einsum("eijk,eijk->i", ws, gs)
    a12 = np.einsum("eijk,eijk->i", ws, gd)
    a22 = np.einsum("eijk,eijk->i", wd, gd)
    r1 = -np.einsum("eijk,eijk->i", ws, r)
    r2 = -np.einsum("eijk,eijk->i", wd, r)
    det = a11 * a22 - a12**2
    ok = det > 1e-12 * np.maximum(a11 * a22, 1e-300)
    out = np.zeros((a11.size, 2))
    out[ok, 0] = (a22[ok] * r1[ok] - a12[ok] * r2[ok]) / det[ok]
    out[ok, 1] = (a11[ok] * r2[ok] - a12[ok] * r1[ok]) / det[ok]
    return out


def chem_partners(haadf_angles: Any, chem_angles: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each chemical tilt: the index of the nearest HAADF tilt, and whether it is at the
    same angle (within 1e-3 deg: the HAADF image acquired with the spectrum image)."""
    h = np.asarray(haadf_angles, dtype=np.float64).ravel()
    c = np.asarray(chem_angles, dtype=np.float64).ravel()
    if h.size == 0:
        return np.full(c.size, -1, dtype=np.int64), np.zeros(c.size, dtype=bool)
    nearest = np.abs(h[None, :] - c[:, None]).argmin(axis=1)
    return nearest, np.abs(h[nearest] - c) < 1e-3


@dataclass
class ShiftSteps:
    """One round's shift updates from the solver's current model: `haadf` [n, 2] (clipped,
    unobservable part removed), `chem` [n_chem, 2] each spectrum image's own offset update
    (None if not refined), and the HAADF misfit 0.5 ||b - model||^2 before the update."""

    haadf: np.ndarray
    chem: np.ndarray | None
    misfit: float

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(np.sum(self.haadf**2, axis=1)))) if self.haadf.size \
            else 0.0

    @property
    def chem_rms(self) -> float:
        c = self.chem
        return 0.0 if c is None or c.size == 0 else float(np.sqrt(np.mean(np.sum(c**2, axis=1))))


def shift_steps(solver: Any, max_step_px: float = 0.5, refine_chem: bool = True) -> ShiftSteps:
    """The Gauss-Newton shift updates of every tilt against the solver's own model (its
    shifts as they are), each clipped to `max_step_px` per axis. The HAADF updates lose
    their unobservable part (a translation of the object: `remove_gauge`); the spectrum
    images' own offsets have none. `refine_jointly` and the live aligner both take these."""
    angles = solver.haadf_proj.angles
    b = to_numpy(solver.haadf_data())
    model = to_numpy(solver.model_haadf())
    misfit = 0.5 * float(np.sum((b - model) ** 2))
    step = np.clip(gauss_newton_shifts(model, b), -max_step_px, max_step_px)
    step = remove_gauge(angles, step)
    step_c = None
    if refine_chem and solver.n_chem:
        step_c = np.clip(chem_gauss_newton_shifts(solver.model_chem(), solver.chem_data()),
                         -max_step_px, max_step_px)
    return ShiftSteps(step, step_c, misfit)


def refine_jointly(solver: Any, params: JointAlignParams | None = None, *,
                   callback: Callable[[int, dict[str, float]], None] | None = None
                   ) -> JointAlignResult:
    """Refine the solver's HAADF shifts against its own model, alternating one
    Gauss-Newton shift update with `params.iterations` fused iterations, until the RMS
    update is below `tol_px` or after `rounds`. Chemical tilts move with their HAADF image
    (keeping their own offset). The solver ends with the refined shifts and iterated."""
    p = params or JointAlignParams()
    if solver.n_haadf == 0:
        raise AlignmentError("joint refinement needs HAADF tilts in the solver")
    if solver.x is None:
        solver.run(max(p.warmup_iterations, 1))
    shifts = solver.haadf_proj.shifts.copy()
    partners, paired = chem_partners(solver.haadf_proj.angles, solver.chem_proj.angles)
    own = solver.chem_proj.shifts.copy()
    own[paired] -= shifts[partners[paired]]
    result = JointAlignResult(shifts, solver.chem_proj.shifts.copy())
    for r in range(p.rounds):
        st = shift_steps(solver, p.max_step_px, p.refine_chem)
        shifts = shifts + st.haadf
        if st.chem is not None:
            # The spectrum image's own offset from its HAADF image (or its whole shift if
            # it has none): observable against the maps' model, no gauge to remove.
            own = own + st.chem
        chem = own.copy()
        chem[paired] = shifts[partners[paired]] + own[paired]
        solver.set_shifts(haadf=shifts, chem=chem if solver.n_chem else None)
        solver.run(p.iterations)
        entry = {"round": float(r), "update_rms_px": st.rms, "chem_update_rms_px": st.chem_rms,
                 "misfit": st.misfit}
        result.history.append(entry)
        if callback is not None:
            callback(r, entry)
        if max(st.rms, st.chem_rms) < p.tol_px:
            result.converged = True
            break
    result.haadf_shifts = shifts
    result.chem_shifts = solver.chem_proj.shifts.copy()
    return result
