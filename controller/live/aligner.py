"""Live alignment: each tilt is aligned as it arrives, and the alignment of all tilts is
refined against the fused model in the idle time while the controller waits for the next one.

    aligner = LiveAligner(LiveAlignParams(rotation_deg=0.0))
    shift = aligner.align_haadf(angle, image, solver)      # coarse, at arrival (ms)
    image, frac = aligner.solver_haadf(angle)               # whole pixels moved, fraction
    solver.add_haadf(angle, image, shifts=frac[None])       # ... in the solver's model
    aligner.align_chem(angle, maps, Z=..., gamma=..., background=...)
    maps, frac = aligner.solver_chem(angle)
    solver.add_chem(angle, {e: m[None] for e, m in maps.items()}, shifts=frac[None])
    aligner.refine(solver)                # idle time: the solver gets the refined shifts

Shifts are (ds, dd) pixels in the measured image frame, the model of
`fusetomo.solver.alignment`: measured = shift(rotate(aligned, rotation_deg), shift).

At arrival (`align_haadf`) the vacuum level is removed, the image is de-rotated by the known
in-plane rotation (`LiveAlignParams.rotation_deg`), and its shift is found by phase
correlation against the reprojection of the current (warm-started) reconstruction at the new
angle, once that reconstruction holds enough tilts over a wide enough range, otherwise against
the nearest tilt already aligned. The first tilt is centred by its centre of mass.
A chemical tilt takes the shift of the HAADF image acquired with it (same angle), plus its
own drift relative to that image found by registration (`register_chem`).

The images are not resampled (a spline shift of sharp HAADF images is itself a 5-10 % error
of the fused result, bench/alignment_resampling.py): `solver_haadf`/`solver_chem` move them
by the whole pixels of their shift, fixed at that moment, and the fraction goes to the
solver's projectors (`FusedSolver.add_haadf(..., shifts=)`), as in
`fusetomo reconstruct --align`.

`refine` (idle time), while the series is too short or narrow for a trustworthy model,
re-fits the tilt-axis offset from the centre-of-mass trajectory of all tilts (the constant
of d = c + a cos t + b sin t). After that it takes one Gauss-Newton step of every tilt's
shift against the fused model's own images (`solver.joint_align.shift_steps`, the step of the
offline joint refinement), and of each spectrum image's own offset against the maps' model.
If any shift moved by more than `min_change_px`, the solver gets the new fractions
(`set_solver_shifts`); it returns the HAADF tilts that moved.

Pure array code: no sockets, no files. The reference passed to `align_haadf` is a
`FusedSolver` (its HAADF signal sum_i (Z_i x_i)^gamma is reprojected), any callable
`angles -> [k, n_slices, n_det]` reprojections (None while it has nothing), or None.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fusetomo.core.angles import same_angle
from fusetomo.solver.alignment import (
    AlignmentError,
    BackgroundMethod,
    apply_alignment,
    com_shifts,
    fit_axis,
    register,
    register_chem,
    to_image_frame,
    vacuum_level,
)
from fusetomo.solver.backend import to_numpy
from fusetomo.solver.joint_align import move_integer, shift_steps, split_shifts
from fusetomo.solver.projector import ParallelProjector

Reprojector = Callable[[np.ndarray], np.ndarray | None]


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
    register_chem: bool = True  # correct the spectrum image's own drift (and refine it)
    refine_axis: bool = True  # refine() re-fits the axis offset from the centre of mass
    #                           until the model is trusted
    max_step_px: float = 0.5  # refine(): the largest Gauss-Newton update per axis
    tol_px: float = 0.01  # refine(): a model step of a smaller RMS is not applied (converged)
    min_change_px: float = 0.002  # refine() reports shifts that moved more than this
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
        if not (math.isfinite(self.max_step_px) and self.max_step_px > 0):
            raise AlignmentError(f"max_step_px must be a finite number > 0, got "
                                 f"{self.max_step_px!r}")
        for name in ("min_reprojection_range_deg", "min_change_px", "max_disagreement_px",
                     "tol_px"):
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
    whole: np.ndarray | None = None  # whole pixels moved in the solver's image (axis frame)


@dataclass
class _Chem:
    angle: float
    raw: dict[str, np.ndarray]  # element maps as received (counts)
    own: np.ndarray  # own drift from its HAADF image, axis frame
    whole: np.ndarray | None = None  # whole pixels moved in the solver's maps (axis frame)


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



class AlignedTilts:
    """The tilts an aligner holds and their shifts: lookup, the solver's fractional shifts,
    and the reports (status for the publisher, frames for comparisons)."""

    def __init__(self, params: LiveAlignParams | None = None) -> None:
        self.params = params or LiveAlignParams()
        self._tilts: list[_Tilt] = []
        self._chem: list[_Chem] = []
        self.refinements = 0
        self.model_refinements = 0  # of which Gauss-Newton steps against the fused model
        self.last_update_px = float("nan")  # RMS of the last model step (HAADF)
        self.axis_offset_px: float | None = None

    def _index(self, angle: float) -> int | None:
        for i, t in enumerate(self._tilts):
            if same_angle(t.angle, angle):
                return i
        return None

    def _tilt(self, angle: float, what: str = "HAADF tilt") -> _Tilt:
        i = self._index(angle)
        if i is None:
            raise AlignmentError(f"no {what} at {angle} degrees (have "
                                 f"{self.angles.tolist()})")
        return self._tilts[i]

    def _chem_at(self, angle: float) -> _Chem:
        for c in self._chem:
            if same_angle(c.angle, angle):
                return c
        raise AlignmentError(f"no spectrum image aligned at {angle} degrees (have "
                             f"{[c.angle for c in self._chem]})")

    @property
    def angles(self) -> np.ndarray:
        """HAADF tilt angles in arrival order."""
        return np.array([t.angle for t in self._tilts])

    @property
    def shifts(self) -> dict[float, np.ndarray]:
        """angle -> (ds, dd) image-frame shift of every HAADF tilt."""
        return {t.angle: self._image_shift(t.shift) for t in self._tilts}

    def _image_shift(self, axis_shift: np.ndarray) -> np.ndarray:
        return to_image_frame(axis_shift, self.params.rotation_deg)[0]

    def _chem_shift(self, c: _Chem) -> np.ndarray:
        """A spectrum image's total shift (axis frame): its HAADF image's plus its own."""
        i = self._index(c.angle)
        base = self._tilts[i].shift if i is not None else np.zeros(2)
        return base + c.own

    def model_shifts(self, angles: Any) -> np.ndarray:
        """[n, 2] the solver's projector shifts of the HAADF tilts at `angles` (each tilt's
        shift less the whole pixels moved in its image)."""
        return self._fractions([(self._tilt(a), f"the HAADF tilt at {a} degrees")
                                for a in np.atleast_1d(np.asarray(angles, dtype=np.float64))])

    def chem_model_shifts(self, angles: Any) -> np.ndarray:
        """[m, 2] the solver's projector shifts of the spectrum images at `angles`."""
        return self._fractions([(self._chem_at(a), f"the spectrum image at {a} degrees")
                                for a in np.atleast_1d(np.asarray(angles, dtype=np.float64))])

    def set_solver_shifts(self, solver: Any) -> None:
        """Give `solver` the current fractions of all its HAADF and chemical tilts."""
        solver.set_shifts(haadf=self.model_shifts(solver.haadf_proj.angles),
                          chem=self.chem_model_shifts(solver.chem_proj.angles)
                          if solver.n_chem else None)

    def _fractions(self, items: list[tuple[_Tilt | _Chem, str]]) -> np.ndarray:
        out = []
        for obj, what in items:
            if obj.whole is None:
                raise AlignmentError(f"{what} has not been given to the solver "
                                     "(solver_haadf / solver_chem)")
            total = obj.shift if isinstance(obj, _Tilt) else self._chem_shift(obj)
            out.append(total - obj.whole)
        return np.array(out).reshape(-1, 2)

    @property
    def converged(self) -> bool:
        """Whether the last model step was below `tol_px` (and so not applied)."""
        return self.last_update_px < self.params.tol_px

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for the status publisher and the viewer's alignment panel."""
        sh = np.stack([self._image_shift(t.shift) for t in self._tilts]) if self._tilts \
            else np.zeros((0, 2))
        return {
            "n_tilts": len(self._tilts),
            "angles": [float(t.angle) for t in self._tilts],
            "shifts_px": sh.round(3).tolist(),
            "sources": [t.source for t in self._tilts],
            "chem_own_px": {f"{c.angle:g}": self._image_shift(c.own).round(3).tolist()
                            for c in self._chem},
            "rotation_deg": self.params.rotation_deg,
            "axis_offset_px": self.axis_offset_px,
            "refinements": self.refinements,
            "model_refinements": self.model_refinements,
            "last_update_px": None if math.isnan(self.last_update_px)
            else round(self.last_update_px, 4),
        }

    def axis_frame_shifts(self) -> np.ndarray:
        """[n, 2] shifts in the de-rotated frame, arrival order (for comparisons)."""
        return np.stack([t.shift for t in self._tilts]) if self._tilts else np.zeros((0, 2))

    def chem_axis_frame_shifts(self) -> tuple[np.ndarray, np.ndarray]:
        """(angles, [m, 2] total shifts in the de-rotated frame) of the spectrum images."""
        return (np.array([c.angle for c in self._chem]),
                np.array([self._chem_shift(c) for c in self._chem]).reshape(-1, 2))


class LiveAligner(AlignedTilts):
    """Per-tilt alignment of a tilt series that arrives one tilt at a time (see module doc)."""

    def _clean(self, image: np.ndarray) -> np.ndarray:
        p = self.params
        img = np.asarray(image, dtype=np.float32)
        img = img - np.float32(vacuum_level(img, method=p.background))
        if p.rotation_deg == 0.0:
            return img
        return apply_alignment(img, np.zeros(2), p.rotation_deg, order=p.order)

    def _model_ready(self) -> bool:
        """Enough tilts over a wide enough range for the reconstruction to be a reference."""
        p = self.params
        if len(self._tilts) < p.min_reprojection_tilts:
            return False
        return bool(np.ptp(self.angles) >= p.min_reprojection_range_deg)

    def _use_reprojection(self, reproject: Reprojector | None) -> bool:
        p = self.params
        if reproject is None or p.reference == "previous":
            return False
        return p.reference == "reprojection" or self._model_ready()

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
        return self._image_shift(self._tilts[-1].shift)

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
        """The HAADF image at `angle`, vacuum removed, de-rotated and moved back by
        interpolation (for display and for registering the spectrum image to it; the solver
        gets `solver_haadf`)."""
        t = self._tilt(angle)
        p = self.params
        img = t.raw - np.float32(vacuum_level(t.raw, method=p.background))
        return apply_alignment(img, self._image_shift(t.shift), p.rotation_deg, order=p.order)

    def solver_haadf(self, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """(image, fraction) for the solver: the vacuum-removed, de-rotated image moved back
        by the whole pixels of its current shift (exact; fixed from now on), and the rest of
        the shift [2] (axis frame) for the solver's projector."""
        t = self._tilt(angle)
        t.whole, frac = split_shifts(t.shift)
        return move_integer(t.clean, t.whole), frac[0]

    def shift_for_chem(self, angle: float) -> np.ndarray:
        """The shift of the HAADF image acquired with the spectrum image at `angle`."""
        return self._image_shift(self._tilt(angle, "HAADF tilt for the spectrum image").shift)

    def align_chem(self, angle: float, maps: Mapping[str, np.ndarray], *,
                   Z: Sequence[float] | None = None, gamma: float = 1.7,
                   background: Sequence[float] | None = None) -> np.ndarray:
        """Align a spectrum image's element maps (counts) at `angle`: the HAADF shift plus,
        if `register_chem`, their own drift relative to that HAADF image. Returns the total
        image-frame shift; `solver_chem` then gives the maps for the solver."""
        if not maps:
            raise AlignmentError(f"no element maps at {angle} degrees")
        h = self._tilt(angle, "HAADF tilt for the spectrum image")
        raw = {e: np.asarray(m, dtype=np.float32) for e, m in maps.items()}
        shape = self._tilts[0].raw.shape
        for e, m in raw.items():
            if m.shape != shape:
                raise AlignmentError(f"map {e} at {angle} degrees has shape {m.shape}, the "
                                     f"series has {shape}")
            if not np.all(np.isfinite(m)):
                raise AlignmentError(f"map {e} at {angle} degrees contains NaN or inf")
        own = np.zeros(2)
        if self.params.register_chem:
            first = self._correct_maps(raw, h.shift)
            own = register_chem(self.corrected_haadf(angle), first, Z, gamma=gamma,
                                background=background, upsample=self.params.upsample)
        self._chem = [c for c in self._chem if not same_angle(c.angle, angle)]
        self._chem.append(_Chem(float(angle), raw, np.asarray(own, dtype=np.float64)))
        return self._image_shift(h.shift + own)

    def _correct_maps(self, raw: Mapping[str, np.ndarray],
                      axis_shift: np.ndarray) -> dict[str, np.ndarray]:
        p = self.params
        return {e: apply_alignment(m, self._image_shift(axis_shift), p.rotation_deg,
                                   order=p.order, counts=True) for e, m in raw.items()}

    def solver_chem(self, angle: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(maps, fraction) for the solver: the maps de-rotated (counts clipped at 0) and
        moved back by the whole pixels of their total shift, and the rest [2] (axis frame)."""
        c = self._chem_at(angle)
        c.whole, frac = split_shifts(self._chem_shift(c))
        p = self.params
        out = {}
        for e, m in c.raw.items():
            r = m if p.rotation_deg == 0.0 else apply_alignment(
                m, np.zeros(2), p.rotation_deg, order=p.order, counts=True)
            out[e] = move_integer(r, c.whole).astype(np.float32)
        return out, frac[0]

    def refine(self, solver: Any = None) -> dict[float, np.ndarray]:
        """Refine the alignment (module doc): the axis offset from the centre of mass while
        the model is not trusted yet (or without a solver), else one Gauss-Newton step of
        every shift against `solver`'s model (it must hold every tilt given by
        `solver_haadf`/`solver_chem`). If any shift moved, `solver` (if given) gets the new
        fractions. Returns {angle: new image-frame shift} of the HAADF tilts that moved."""
        n = len(self._tilts)
        if n == 0:
            return {}
        p = self.params
        before = np.stack([t.shift for t in self._tilts])
        before_c = [c.own.copy() for c in self._chem]
        if (solver is not None and getattr(solver, "x", None) is not None
                and p.reference != "previous" and self._model_ready()):
            self._model_step(solver)
        elif p.refine_axis and n >= 3 and np.ptp(self.angles) >= p.min_reprojection_range_deg:
            self._refit_axis(self.angles)
        self.refinements += 1
        after = np.stack([t.shift for t in self._tilts])
        moved = np.max(np.abs(after - before), axis=1) > p.min_change_px
        for t, m in zip(self._tilts, moved, strict=True):
            if m:
                t.source = "refined"
        chem_moved = any(np.max(np.abs(c.own - b)) > p.min_change_px
                         for c, b in zip(self._chem, before_c, strict=True))
        if solver is not None and (moved.any() or chem_moved):
            self.set_solver_shifts(solver)
        return {t.angle: self._image_shift(t.shift)
                for t, m in zip(self._tilts, moved, strict=True) if m}

    def _model_step(self, solver: Any) -> None:
        p = self.params
        angles = np.asarray(solver.haadf_proj.angles, dtype=np.float64)
        st = shift_steps(solver, p.max_step_px, p.register_chem)
        self.model_refinements += 1
        self.last_update_px = max(st.rms, st.chem_rms)
        if self.last_update_px < p.tol_px:
            # Converged: a step this small is noise, and setting it would restart the
            # solver's momentum (measured: refining every 2 final iterations cost 10-20 %
            # of the live <NRMSE> when applied regardless).
            return
        for a, d in zip(angles, st.haadf, strict=True):
            t = self._tilt(float(a))
            t.shift = t.shift + d
        if st.chem is not None:
            for a, d in zip(solver.chem_proj.angles, st.chem, strict=True):
                c = self._chem_at(float(a))
                c.own = c.own + d
        if angles.size >= 3:
            self.axis_offset_px = fit_axis(angles, np.array(
                [self._tilt(float(a)).shift[1] for a in angles]))[0]

    def _refit_axis(self, angles: np.ndarray) -> None:
        """Move every d shift by one constant so that the fitted axis offset of the current
        shifts equals that of the centre-of-mass trajectory (the only absolute measure of the
        axis offset before the model is trusted; the arrival chain leaves it wherever the
        first tilt put it)."""
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
