"""Shift refinement of a HAADF-only series against its own SIRT model, shifts in the model.

The joint refinement of solver/joint_align.py for a series without spectrum images, where
the model is a non-negative SIRT reconstruction instead of the fused one: the images are
moved by whole pixels only (exact) and de-rotated, the fraction of each shift goes to the
projector (`ParallelProjector` shifts), and each round takes one Gauss-Newton step per tilt
(`joint_align.gauss_newton_shifts`: image ~ model moved by delta, two unknowns per tilt,
clipped to `max_step_px`, the object's translation removed) followed by a few warm-started
SIRT iterations, until the RMS step is below `tol_px`. Projection matching
(solver/alignment.py) registers resampled images to reprojections by phase correlation,
which leaves a few tenths of a pixel; this is what brings the shifts below that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sigpy as sp

from fusetomo.solver.alignment import AlignmentError, remove_gauge
from fusetomo.solver.backend import to_device, to_numpy
from fusetomo.solver.iterative import sirt_step, sirt_weights
from fusetomo.solver.joint_align import gauss_newton_shifts, prepare, split_shifts
from fusetomo.solver.projector import ParallelProjector

__all__ = ["HaadfRefineParams", "HaadfRefineResult", "refine_haadf_shifts"]


@dataclass(frozen=True)
class HaadfRefineParams:
    """rounds: Gauss-Newton steps at most; iterations: SIRT iterations after each (and
    `warmup_iterations` before the first); max_step_px: largest step per round and axis;
    tol_px: stop when the RMS step falls below it."""

    rounds: int = 30
    iterations: int = 10
    warmup_iterations: int = 50
    max_step_px: float = 0.5
    tol_px: float = 0.005

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.iterations < 1 or self.warmup_iterations < 1:
            raise AlignmentError(f"rounds >= 0, iterations >= 1, warmup_iterations >= 1 "
                                 f"needed, got {self.rounds}, {self.iterations}, "
                                 f"{self.warmup_iterations}")
        if not (self.max_step_px > 0 and self.tol_px >= 0):
            raise AlignmentError(f"max_step_px must be > 0 and tol_px >= 0, got "
                                 f"{self.max_step_px}, {self.tol_px}")


@dataclass
class HaadfRefineResult:
    """Refined shifts [n, 2] (ds, dd) px in the de-rotated frame, one history row per
    round (RMS step in px, misfit 0.5 ||b - model||^2), whether it converged."""

    axis_shifts: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    converged: bool = False


def _sirt(proj: ParallelProjector, b: Any, x: Any, iterations: int) -> Any:
    w = sirt_weights(proj)
    with proj.device:
        for _ in range(iterations):
            x = sirt_step(proj, x, b, w, nonnegative=True)
    return x


def refine_haadf_shifts(images: Any, angles: Any, axis_shifts: Any, rotation_deg: float,
                        params: HaadfRefineParams | None = None, *,
                        device: sp.Device | int = -1) -> HaadfRefineResult:
    """Refine `axis_shifts` [n, 2] (de-rotated frame, as `Alignment.axis_frame_shifts`) of
    background-free HAADF `images` [n, ns, nd] (module docstring)."""
    p = params or HaadfRefineParams()
    a = np.asarray(to_numpy(images), dtype=np.float32)
    ang = np.asarray(angles, dtype=np.float64).ravel()
    total = np.asarray(axis_shifts, dtype=np.float64).reshape(-1, 2).copy()
    if a.ndim != 3 or a.shape[0] != ang.size or total.shape[0] != ang.size:
        raise AlignmentError(f"refine: images {a.shape}, {ang.size} angles and "
                             f"{total.shape[0]} shifts do not match")
    dev = sp.Device(device)
    derot = prepare(a, np.zeros_like(total), rotation_deg)[0] if rotation_deg else a
    ns, nd = a.shape[1:]
    proj = ParallelProjector(nd, ang, device=dev)
    whole, frac = split_shifts(total)

    def data(whole: np.ndarray) -> Any:
        moved, _ = prepare(derot, whole.astype(np.float64), 0.0)
        with dev:
            return to_device(moved.astype(np.float32), dev)

    b = data(whole)
    proj.set_shifts(frac)
    with dev:
        x = dev.xp.zeros((ns, nd, nd), dtype=dev.xp.float32)
    x = _sirt(proj, b, x, p.warmup_iterations)
    out = HaadfRefineResult(total)
    for r in range(p.rounds):
        model = proj.forward(x)
        misfit = 0.5 * float(to_numpy(((b - model) ** 2).sum()))
        step = np.clip(gauss_newton_shifts(model, b), -p.max_step_px, p.max_step_px)
        step = remove_gauge(ang, step)
        total = whole + frac + step
        new_whole, frac = split_shifts(total)
        if np.any(new_whole != whole):
            whole = new_whole
            b = data(whole)
        proj.set_shifts(frac)
        x = _sirt(proj, b, x, p.iterations)
        rms = float(np.sqrt(np.mean(np.sum(step**2, axis=1))))
        out.history.append({"round": float(r), "update_rms_px": rms, "misfit": misfit})
        if rms < p.tol_px:
            out.converged = True
            break
    out.axis_shifts = whole + frac
    return out
