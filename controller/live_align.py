"""Live alignment: each tilt is aligned as it arrives, and the alignment of all tilts is
refined in the background while the controller waits for the next one.

    aligner = LiveAligner(LiveAlignParams(rotation_deg=0.0))
    shift = aligner.align_haadf(angle, image, solver)     # coarse, at arrival (ms)
    image_ok = aligner.corrected_haadf(angle)              # what goes to the solver
    shift_c, maps_ok = aligner.align_chem(angle, maps, Z=..., gamma=..., background=...)
    changed = aligner.refine(solver, budget_s=0.5)         # idle time: {angle: new shift}
    if changed:                                            # re-feed the solver's data
        angles, stack = aligner.haadf_stack(); angles_c, maps = aligner.chem_stack()

Shifts are (ds, dd) pixels in the measured image frame, the model of
`fusetomo.solver.alignment`: measured = shift(rotate(aligned, rotation_deg), shift).

At arrival (`align_haadf`) the vacuum level is removed, the image is de-rotated by the known
in-plane rotation (`LiveAlignParams.rotation_deg`), and its shift is found by phase
correlation against the reprojection of the current (warm-started) reconstruction at the new
angle, once that reconstruction holds enough tilts over a wide enough range, otherwise against
the nearest tilt already aligned. The first tilt is centred by its centre of mass.
A chemical tilt takes the shift of the HAADF image acquired with it (same angle), plus its
own drift relative to that image found by registration (`register_chem`), and its counts are
moved with one interpolation and clipped at 0 (the solver models their background).

`refine` (idle time) first re-fits the tilt-axis offset from the centre-of-mass trajectory of
all tilts (the constant of d = c + a cos t + b sin t), then registers every tilt to the
reprojection of the current reconstruction (one pass, abandoned if the time budget runs out
first), keeping the unobservable components (a translation of the object) and the axis
offset fixed; updates over `max_disagreement_px` are dropped. It returns the tilts whose shift
moved by more than `min_change_px`; the caller then hands the corrected stacks to the solver.

Pure array code: no sockets, no files. The reference passed to `align_haadf`/`refine` is a
`FusedSolver` (its HAADF signal sum_i (Z_i x_i)^gamma is reprojected), any callable
`angles -> [k, n_slices, n_det]` reprojections (None while it has nothing), or None.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fusetomo.solver.alignment import (
    AlignmentError,
    BackgroundMethod,
    apply_alignment,
    com_shifts,
    fit_axis,
    gauge_free,
    register,
    register_chem,
    to_image_frame,
    vacuum_level,
)
from fusetomo.solver.backend import to_numpy
from fusetomo.solver.projector import ParallelProjector

Reprojector = Callable[[np.ndarray], np.ndarray | None]
ANGLE_TOL = 1e-6  # degrees: angles closer than this are the same tilt


@dataclass(frozen=True)
class LiveAlignParams:
    """How tilts are aligned live. Distances in pixels."""

    rotation_deg: float = 0.0  # known in-plane rotation of the tilt axis (calibration)
    upsample: int = 20  # sub-pixel registration to 1/upsample px
    background: BackgroundMethod = "border"
    reference: Literal["auto", "previous", "reprojection"] = "auto"
    min_reprojection_tilts: int = 5  # 'auto' uses the reprojection from this many tilts ...
    min_reprojection_range_deg: float = 30.0  # ... spanning at least this range
    max_disagreement_px: float = 2.0  # reprojection vs previous tilt: beyond, trust neither
    register_chem: bool = True  # correct the spectrum image's own drift
    refine_axis: bool = True  # refine() re-fits the axis offset from the centre of mass
    min_change_px: float = 0.02  # refine() reports shifts that moved more than this
    order: int = 3

    def __post_init__(self) -> None:
        if not math.isfinite(self.rotation_deg) or abs(self.rotation_deg) > 45:
            raise AlignmentError(f"rotation_deg must be finite and within [-45, 45], got "
                                 f"{self.rotation_deg}")
        if isinstance(self.upsample, bool) or not isinstance(self.upsample, int) \
                or self.upsample < 1:
            raise AlignmentError(f"upsample must be an integer >= 1, got {self.upsample!r}")
        if self.reference not in ("auto", "previous", "reprojection"):
            raise AlignmentError(f"reference must be auto|previous|reprojection, got "
                                 f"{self.reference!r}")
        if self.background not in ("border", "percentile", "none"):
            raise AlignmentError(f"background must be border|percentile|none, got "
                                 f"{self.background!r}")
        if self.min_reprojection_tilts < 1:
            raise AlignmentError(f"min_reprojection_tilts must be >= 1, got "
                                 f"{self.min_reprojection_tilts}")
        for name in ("min_reprojection_range_deg", "min_change_px", "max_disagreement_px"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise AlignmentError(f"{name} must be a finite number >= 0, got {v!r}")


@dataclass
class _Tilt:
    angle: float
    raw: np.ndarray  # as received
    clean: np.ndarray  # vacuum removed, de-rotated (axis frame)
    shift: np.ndarray  # axis frame
    source: str  # 'centre' | 'previous' | 'reprojection' | 'refined'


def solver_reprojector(solver: Any) -> Reprojector:
    """Reprojections of a FusedSolver's HAADF signal c sum_i (Z_i x_i)^gamma at any angles
    (None while the solver has no volumes)."""

    def reproject(angles: np.ndarray) -> np.ndarray | None:
        x = getattr(solver, "x", None)
        if x is None:
            return None
        with solver.device:
            signal = solver.haadf_scale * solver.haadf_signal()
            proj = ParallelProjector(solver.n, np.atleast_1d(angles), device=solver.device)
            return to_numpy(proj.forward(signal))

    return reproject


def _as_reprojector(reference: Any) -> Reprojector | None:
    if reference is None:
        return None
    if hasattr(reference, "haadf_proj") and hasattr(reference, "x"):
        return solver_reprojector(reference)
    if callable(reference):
        return reference
    raise AlignmentError(f"reference must be a FusedSolver, a callable angles -> "
                         f"reprojections, or None; got {type(reference).__name__}")


class LiveAligner:
    """Per-tilt alignment of a tilt series that arrives one tilt at a time (see module doc)."""

    def __init__(self, params: LiveAlignParams | None = None) -> None:
        self.params = params or LiveAlignParams()
        self._tilts: list[_Tilt] = []
        self._chem: list[tuple[float, dict[str, np.ndarray], np.ndarray]] = []  # raw, own
        self._chem_args: dict[str, Any] = {}
        self.refinements = 0
        self.axis_offset_px: float | None = None

    # -- lookup -----------------------------------------------------------------------------
    def _index(self, angle: float) -> int | None:
        for i, t in enumerate(self._tilts):
            if abs(t.angle - float(angle)) <= ANGLE_TOL:
                return i
        return None

    @property
    def angles(self) -> np.ndarray:
        """HAADF tilt angles in arrival order."""
        return np.array([t.angle for t in self._tilts])

    @property
    def shifts(self) -> dict[float, np.ndarray]:
        """angle -> (ds, dd) image-frame shift of every HAADF tilt."""
        return {t.angle: self._image_shift(t) for t in self._tilts}

    def _image_shift(self, t: _Tilt) -> np.ndarray:
        return to_image_frame(t.shift, self.params.rotation_deg)[0]

    # -- arrival ----------------------------------------------------------------------------
    def _clean(self, image: np.ndarray) -> np.ndarray:
        p = self.params
        img = np.asarray(image, dtype=np.float32)
        img = img - np.float32(vacuum_level(img, method=p.background))
        if p.rotation_deg == 0.0:
            return img
        return apply_alignment(img, np.zeros(2), p.rotation_deg, order=p.order)

    def _use_reprojection(self, reproject: Reprojector | None) -> bool:
        p = self.params
        if reproject is None or p.reference == "previous":
            return False
        if p.reference == "reprojection":
            return True
        if len(self._tilts) < p.min_reprojection_tilts:
            return False
        return bool(np.ptp(self.angles) >= p.min_reprojection_range_deg)

    def align_haadf(self, angle: float, image: np.ndarray, reference: Any = None) -> np.ndarray:
        """Align a new HAADF tilt; returns its (ds, dd) image-frame shift. `reference`: the
        solver (or reprojector) holding the tilts aligned so far, or None."""
        angle = float(angle)
        if not math.isfinite(angle) or abs(angle) > 90:
            raise AlignmentError(f"tilt angle must be finite and within [-90, 90], got {angle}")
        img = np.asarray(image)
        if img.ndim != 2 or min(img.shape) < 4:
            raise AlignmentError(f"HAADF image must be 2D [n_slices, n_det], got {img.shape}")
        if not np.all(np.isfinite(img)):
            raise AlignmentError(f"HAADF image at {angle} degrees contains NaN or inf")
        if self._tilts and img.shape != self._tilts[0].raw.shape:
            raise AlignmentError(f"HAADF image at {angle} degrees has shape {img.shape}, the "
                                 f"series has {self._tilts[0].raw.shape}")
        if self._index(angle) is not None:
            raise AlignmentError(f"a HAADF tilt at {angle} degrees is already aligned")
        p = self.params
        clean = self._clean(img)
        reproject = _as_reprojector(reference)
        nearest = None
        if self._tilts:
            nearest = min(self._tilts, key=lambda t: abs(t.angle - angle))
        shift, source = None, "previous"
        if nearest is not None:
            shift = nearest.shift + register(nearest.clean, clean, upsample=p.upsample)
        if self._use_reprojection(reproject):
            assert reproject is not None
            ref = reproject(np.array([angle]))
            if ref is not None and float(np.abs(ref).max()) > 0:
                by_ref = register(ref[0], clean, upsample=p.upsample)
                # The reprojection is absolute (no chained error) but only as good as the
                # reconstruction: it is taken where it agrees with the neighbour's estimate.
                if shift is None or np.max(np.abs(by_ref - shift)) <= p.max_disagreement_px:
                    shift, source = by_ref, "reprojection"
        if shift is None:  # the first tilt: centred by its centre of mass
            shift = self._centre_of_mass_shift(clean)
            source = "centre"
        self._tilts.append(_Tilt(angle, img.astype(np.float32), clean,
                                 np.asarray(shift, dtype=np.float64), source))
        return self._image_shift(self._tilts[-1])

    @staticmethod
    def _centre_of_mass_shift(clean: np.ndarray) -> np.ndarray:
        w = np.clip(clean, 0, None).astype(np.float64)
        tot = w.sum()
        if tot <= 0:
            return np.zeros(2)
        cs = float((w.sum(axis=1) * np.arange(w.shape[0])).sum() / tot)
        cd = float((w.sum(axis=0) * np.arange(w.shape[1])).sum() / tot)
        return np.array([cs - (w.shape[0] - 1) / 2, cd - (w.shape[1] - 1) / 2])

    def corrected_haadf(self, angle: float) -> np.ndarray:
        """The HAADF image at `angle`, vacuum removed, de-rotated and moved back."""
        i = self._index(angle)
        if i is None:
            raise AlignmentError(f"no HAADF tilt at {angle} degrees")
        t = self._tilts[i]
        p = self.params
        img = t.raw - np.float32(vacuum_level(t.raw, method=p.background))
        return apply_alignment(img, self._image_shift(t), p.rotation_deg, order=p.order)

    # -- chemical maps ----------------------------------------------------------------------
    def shift_for_chem(self, angle: float) -> np.ndarray:
        """The shift of the HAADF image acquired with the spectrum image at `angle`."""
        i = self._index(angle)
        if i is None:
            raise AlignmentError(f"no HAADF tilt at {angle} degrees for the spectrum image "
                                 f"(have {self.angles.tolist()})")
        return self._image_shift(self._tilts[i])

    def align_chem(self, angle: float, maps: Mapping[str, np.ndarray], *,
                   Z: Sequence[float] | None = None, gamma: float = 1.7,
                   background: Sequence[float] | None = None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Align a spectrum image's element maps (counts) at `angle`: the HAADF shift plus,
        if `register_chem`, their own drift relative to that HAADF image. Returns (total
        image-frame shift, corrected maps, counts clipped at 0)."""
        if not maps:
            raise AlignmentError(f"no element maps at {angle} degrees")
        h_shift = self.shift_for_chem(angle)
        raw = {e: np.asarray(m, dtype=np.float32) for e, m in maps.items()}
        shape = self._tilts[0].raw.shape
        for e, m in raw.items():
            if m.shape != shape:
                raise AlignmentError(f"map {e} at {angle} degrees has shape {m.shape}, the "
                                     f"series has {shape}")
        own = np.zeros(2)
        self._chem_args = {"Z": Z, "gamma": gamma, "background": background}
        if self.params.register_chem:
            own = self._own_drift(angle, raw, h_shift)
        for k, (a, _, _) in enumerate(self._chem):
            if abs(a - float(angle)) <= ANGLE_TOL:
                del self._chem[k]
                break
        self._chem.append((float(angle), raw, own))
        return h_shift + own, self._correct_maps(raw, h_shift + own)

    def _own_drift(self, angle: float, raw: dict[str, np.ndarray],
                   h_shift: np.ndarray) -> np.ndarray:
        p = self.params
        first = self._correct_maps(raw, h_shift)
        args = self._chem_args
        own_axis = register_chem(self.corrected_haadf(angle), first, args["Z"],
                                 gamma=args["gamma"], background=args["background"],
                                 upsample=p.upsample)
        return to_image_frame(own_axis, p.rotation_deg)[0]

    def _correct_maps(self, raw: Mapping[str, np.ndarray],
                      shift: np.ndarray) -> dict[str, np.ndarray]:
        p = self.params
        return {e: apply_alignment(m, shift, p.rotation_deg, order=p.order, counts=True)
                for e, m in raw.items()}

    # -- stacks for the solver --------------------------------------------------------------
    def haadf_stack(self) -> tuple[np.ndarray, np.ndarray]:
        """(angles, corrected images [n, n_slices, n_det]) in arrival order."""
        if not self._tilts:
            raise AlignmentError("no HAADF tilt aligned yet")
        return self.angles, np.stack([self.corrected_haadf(t.angle) for t in self._tilts])

    def chem_stack(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(angles, element -> corrected maps [m, n_slices, n_det]) in arrival order."""
        if not self._chem:
            raise AlignmentError("no spectrum image aligned yet")
        angles = np.array([a for a, _, _ in self._chem])
        per: dict[str, list[np.ndarray]] = {e: [] for e in self._chem[0][1]}
        for a, raw, own in self._chem:
            for e, m in self._correct_maps(raw, self.shift_for_chem(a) + own).items():
                per[e].append(m)
        return angles, {e: np.stack(v) for e, v in per.items()}

    # -- idle-time refinement ---------------------------------------------------------------
    def refine(self, reference: Any = None, budget_s: float = 0.5) -> dict[float, np.ndarray]:
        """Refine the alignment within `budget_s` seconds: the axis offset from the centre of
        mass trajectory, then one pass of all tilts registered to the reprojection of the
        reference (skipped if the budget runs out). Returns {angle: new image-frame shift}
        of the tilts that moved."""
        if not math.isfinite(budget_s) or budget_s < 0:
            raise AlignmentError(f"budget_s must be a finite number >= 0, got {budget_s!r}")
        t0 = time.perf_counter()
        n = len(self._tilts)
        if n == 0:
            return {}
        p = self.params
        before = np.stack([t.shift for t in self._tilts])
        angles = self.angles
        wide = n >= 3 and np.ptp(angles) >= p.min_reprojection_range_deg
        if p.refine_axis and wide:
            self._refit_axis(angles)
        reproject = _as_reprojector(reference)
        if reproject is not None and self._use_reprojection(reproject):
            self._match(reproject, angles, t0, budget_s)
        self.refinements += 1
        after = np.stack([t.shift for t in self._tilts])
        moved = np.max(np.abs(after - before), axis=1) > p.min_change_px
        for t, m in zip(self._tilts, moved, strict=True):
            if m:
                t.source = "refined"
        return {t.angle: self._image_shift(t) for t, m in zip(self._tilts, moved, strict=True)
                if m}

    def _refit_axis(self, angles: np.ndarray) -> None:
        """Move every d shift by one constant so that the fitted axis offset of the current
        shifts equals that of the centre-of-mass trajectory (the only absolute measure of the
        axis offset; the arrival chain leaves it wherever the first tilt put it)."""
        clean = np.stack([t.clean for t in self._tilts])
        try:
            com, c_com = com_shifts(clean, angles)
        except AlignmentError:
            return  # an empty image: no centre of mass to trust
        cur = np.stack([t.shift for t in self._tilts])
        c_cur, _ = fit_axis(angles, cur[:, 1])
        c_com, _ = fit_axis(angles, com[:, 1])
        for t in self._tilts:
            t.shift = t.shift + np.array([0.0, c_com - c_cur])
        self.axis_offset_px = float(c_com)

    def _match(self, reproject: Reprojector, angles: np.ndarray, t0: float,
               budget_s: float) -> None:
        """One projection-matching pass over all tilts; abandoned (nothing changes) if the
        budget runs out first, so that the unobservable components are always removed over
        the whole series (partial passes let the object's position wander)."""
        p = self.params
        reproj = reproject(angles)
        if reproj is None:
            return
        upd = []
        for i, t in enumerate(self._tilts):
            if time.perf_counter() - t0 > budget_s:
                return
            upd.append(register(reproj[i], t.clean, upsample=p.upsample) - t.shift)
        u = np.array(upd)
        if p.refine_axis:
            # Keep the gauge (object position) and the axis offset, which the centre of
            # mass sets: only the components the reprojection determines are taken.
            c, ab = fit_axis(angles, u[:, 1])
            t = np.deg2rad(angles)
            u[:, 1] -= c + ab[0] * np.cos(t) + ab[1] * np.sin(t)
            u[:, 0] -= u[:, 0].mean()
        else:
            u = gauge_free(angles, u)
        # A refinement is a correction: updates beyond max_disagreement_px come from a poor
        # reconstruction (or a false correlation peak) and are dropped.
        u[np.max(np.abs(u), axis=1) > p.max_disagreement_px] = 0.0
        for tilt, d in zip(self._tilts, u, strict=True):
            tilt.shift = tilt.shift + d

    # -- reporting --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A JSON-able summary for the status publisher and the viewer's alignment panel."""
        sh = np.stack([self._image_shift(t) for t in self._tilts]) if self._tilts \
            else np.zeros((0, 2))
        return {
            "n_tilts": len(self._tilts),
            "angles": [float(t.angle) for t in self._tilts],
            "shifts_px": sh.round(3).tolist(),
            "sources": [t.source for t in self._tilts],
            "chem_own_px": {f"{a:g}": own.round(3).tolist() for a, _, own in self._chem},
            "rotation_deg": self.params.rotation_deg,
            "axis_offset_px": self.axis_offset_px,
            "refinements": self.refinements,
        }

    def axis_frame_shifts(self) -> np.ndarray:
        """[n, 2] shifts in the de-rotated frame, arrival order (for comparisons)."""
        return np.stack([t.shift for t in self._tilts]) if self._tilts else np.zeros((0, 2))

