"""A simulated series re-made with its images at known shifts, for the alignment tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from fusetomo.adapters.series import TiltSeries
from fusetomo.simulators.forward import haadf_signal
from fusetomo.solver.projector import ParallelProjector


def shifted_series(sim: Any, shifts: np.ndarray, seed: int) -> TiltSeries:
    """`sim.series` with every image at `shifts` (ds, dd) px, made by the projector's own
    shift model (exact sub-pixel moves); each spectrum image at the shift of the nearest
    HAADF tilt. HAADF noise 1 % of the maximum, Poisson maps."""
    s = sim.series
    rng = np.random.default_rng(seed)
    ang, cang = s.haadf_angles, s.common_chem_angles
    partner = np.array([int(np.argmin(np.abs(ang - a))) for a in cang])
    vols = np.stack([sim.truth[e] for e in s.elements])
    Z = np.array([s.Z[e] for e in s.elements])
    ph = ParallelProjector(s.shape[1], ang)
    ph.set_shifts(shifts)
    clean = ph.forward(haadf_signal(vols, Z, s.gamma or 1.7))
    haadf = clean + rng.normal(0, 0.01 * clean.max(), clean.shape)
    pc = ParallelProjector(s.shape[1], cang)
    pc.set_shifts(shifts[partner])
    proj = pc.forward(vols)
    kappa = float(s.attrs["counts_per_unit"])
    chem = {e: rng.poisson(kappa * proj[k] + s.background[e]).astype(np.float32)
            for k, e in enumerate(s.elements)}
    return replace(s, haadf=haadf.astype(np.float32), chem=chem)
