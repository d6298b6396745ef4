"""Specimens written for issue 16's checks, after the advisor's and the standard errors'
defaults were chosen, and never used to choose them (the held-out set).

- `lamella`: a HfO2/SiO2 multilayer (Hf, Si, O) cut as a lamella whose layers run at an
  angle to the tilt axis: extended, thin, periodic features, an element (O) everywhere;
- `alloy`: Pt-Ni particles with a radial composition gradient (Pt-rich core, Ni-rich rim)
  and two small Fe oxide particles (Fe, O) next to them: concentrations that vary smoothly,
  and two elements close in Z (Fe 26, Ni 28) that HAADF cannot tell apart.
Geometry is drawn from the seed in normalised coordinates (the volume spans [-0.5, 0.5]) and
rasterised at any size inside the cylinder that every tilt sees whole; volumes follow
fusetomo's layout V[s, u, v], s along the tilt axis.
"""

from __future__ import annotations

import numpy as np
from robustness_specimens import R_CYL, _grid, _make  # the same rasterisation

from fusetomo.simulators.specimens import Specimen


def lamella(size: int, seed: int = 0) -> Specimen:
    """Alternating HfO2 and SiO2 layers (period ~0.09) in a lamella 0.5 x 0.2 thick."""
    rng = np.random.default_rng(seed)
    s, u, v = _grid(size)
    a = np.deg2rad(rng.uniform(15, 40))  # the layers' normal against the tilt axis s
    b = rng.uniform(0, 2 * np.pi)
    normal = np.array([np.cos(a), np.sin(a) * np.cos(b), np.sin(a) * np.sin(b)])
    t = np.deg2rad(rng.uniform(-30, 30))  # the lamella's thin direction in (u, v)
    thin = np.array([0.0, np.cos(t), np.sin(t)])
    depth = s * 0 + u * thin[1] + v * thin[2]
    lam = (np.abs(depth) <= 0.1) & (u * u + v * v <= (R_CYL - 0.03) ** 2) & (np.abs(s) <= 0.36)
    period = rng.uniform(0.08, 0.1)
    phase = rng.uniform(0, period)
    h = s * normal[0] + u * normal[1] + v * normal[2] + phase
    hf_layer = np.mod(h, period) < 0.4 * period
    vol = {e: np.zeros((size, size, size), np.float32) for e in ("Hf", "Si", "O")}
    vol["Hf"][lam & hf_layer] = 0.33
    vol["Si"][lam & ~hf_layer] = 0.33
    vol["O"][lam] = 0.67
    return _make("lamella", vol)


def alloy(size: int, seed: int = 0) -> Specimen:
    """Three Pt-Ni particles, Pt fraction falling from 0.8 at the centre to 0.2 at the rim,
    and two Fe3O4-like particles (Fe 0.43, O 0.57)."""
    rng = np.random.default_rng(seed)
    s, u, v = _grid(size)
    vol = {e: np.zeros((size, size, size), np.float32) for e in ("Pt", "Ni", "Fe", "O")}
    taken: list[tuple[np.ndarray, float]] = []
    for k in range(5):
        r = rng.uniform(0.09, 0.13) if k < 3 else rng.uniform(0.05, 0.07)
        for _try in range(500):
            c = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3),
                          rng.uniform(-0.3, 0.3)])
            if np.hypot(c[1], c[2]) + r < R_CYL - 0.02 and all(
                    np.linalg.norm(c - p) > r + q + 0.02 for p, q in taken):
                taken.append((c, r))
                break
        else:
            r *= 0.8
            c = np.array([0.0, 0.0, 0.0])
        d = np.sqrt((s - c[0]) ** 2 + (u - c[1]) ** 2 + (v - c[2]) ** 2)
        ball = d <= r
        if k < 3:
            pt = 0.8 - 0.6 * np.clip(d / r, 0, 1)
            vol["Pt"][ball] = pt[ball]
            vol["Ni"][ball] = 1.0 - pt[ball]
        else:
            vol["Fe"][ball] = 0.43
            vol["O"][ball] = 0.57
    return _make("alloy", vol)


FAMILIES = {"lamella": lamella, "alloy": alloy}
