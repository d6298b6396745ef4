"""Specimens for the robustness bench that the solver's defaults were not tuned on.

Unlike the demo's (nanocubes, core-shell), whose features are compact particles with one
concentration level, these have extended and thin features, caps and absences:
- `film`: a thin SiO2 film (Si, O) tilted through the volume, decorated with Pt particles
  of several sizes on both faces (a catalyst on a support);
- `rod`: a ZnO rod (Zn, O) with Au caps at both ends, lying off the tilt axis;
- `janus`: Cu-Pd particles whose Pd is absent from one half (an element absent from part of
  the specimen), next to a pure Cu particle.
Geometry is drawn from the seed in normalised coordinates (the volume spans [-0.5, 0.5]) and
rasterised at any size, inside the cylinder that every tilt sees whole; volumes follow
fusetomo's layout V[s, u, v], s along the tilt axis.
"""

from __future__ import annotations

import numpy as np

from fusetomo.core.elements import atomic_number
from fusetomo.simulators.specimens import Specimen

R_CYL = 0.42


def _grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) / n
    return c[:, None, None], c[None, :, None], c[None, None, :]


def _make(name: str, vol: dict[str, np.ndarray]) -> Specimen:
    els = list(vol)
    return Specimen(name, els, [atomic_number(e) for e in els],
                    np.stack([vol[e] for e in els]).astype(np.float32))


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def film(size: int, seed: int = 0) -> Specimen:
    """SiO2 film 0.06 thick, normal tilted ~20-35 deg from v, with Pt particles on it."""
    rng = np.random.default_rng(seed)
    s, u, v = _grid(size)
    tilt = np.deg2rad(rng.uniform(20, 35))
    normal = np.array([rng.uniform(-0.2, 0.2), np.sin(tilt), np.cos(tilt)])
    normal /= np.linalg.norm(normal)
    half = 0.03
    dist = s * normal[0] + u * normal[1] + v * normal[2]
    inside_cyl = (u * u + v * v <= (R_CYL - 0.02) ** 2) & (np.abs(s) <= 0.4)
    slab = (np.abs(dist) <= half) & inside_cyl
    vol = {e: np.zeros((size, size, size), np.float32) for e in ("Si", "O", "Pt")}
    vol["Si"][slab] = 0.33
    vol["O"][slab] = 0.67
    for _ in range(int(rng.integers(7, 11))):
        r = rng.uniform(0.02, 0.045)
        side = rng.choice([-1.0, 1.0])
        for _try in range(50):
            p = np.array([rng.uniform(-0.32, 0.32), rng.uniform(-0.3, 0.3),
                          rng.uniform(-0.3, 0.3)])
            p = p - (p @ normal) * normal + side * (half + 0.6 * r) * normal
            if np.hypot(p[1], p[2]) + r < R_CYL - 0.02:
                break
        ball = (s - p[0]) ** 2 + (u - p[1]) ** 2 + (v - p[2]) ** 2 <= r * r
        for e in ("Si", "O"):
            vol[e][ball] = 0.0
        vol["Pt"][ball] = 1.0
    return _make("film", vol)


def rod(size: int, seed: int = 0) -> Specimen:
    """A ZnO rod (radius ~0.07) with hemispherical Au caps, axis at 30-60 deg to s."""
    rng = np.random.default_rng(seed)
    s, u, v = _grid(size)
    ang = np.deg2rad(rng.uniform(30, 60))
    az = rng.uniform(0, 2 * np.pi)
    axis = np.array([np.cos(ang), np.sin(ang) * np.cos(az), np.sin(ang) * np.sin(az)])
    centre = np.array([0.0, rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)])
    radius, half_len = rng.uniform(0.06, 0.08), 0.22
    d = [s - centre[0], u - centre[1], v - centre[2]]
    t = d[0] * axis[0] + d[1] * axis[1] + d[2] * axis[2]
    r2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2 - t * t
    body = (np.abs(t) <= half_len) & (r2 <= radius**2)
    vol = {e: np.zeros((size, size, size), np.float32) for e in ("Zn", "O", "Au")}
    vol["Zn"][body] = 0.5
    vol["O"][body] = 0.5
    cap_r = radius * rng.uniform(1.0, 1.25)
    for sign in (-1.0, 1.0):
        c = centre + sign * half_len * axis
        cap = ((s - c[0]) ** 2 + (u - c[1]) ** 2 + (v - c[2]) ** 2 <= cap_r**2) & (
            sign * t >= half_len - 0.3 * cap_r)
        for e in ("Zn", "O"):
            vol[e][cap] = 0.0
        vol["Au"][cap] = 1.0
    return _make("rod", vol)


def janus(size: int, seed: int = 0) -> Specimen:
    """Two Cu-Pd particles (Cu 0.6, Pd 0.4) whose Pd is absent from one half, and one pure
    Cu particle."""
    rng = np.random.default_rng(seed)
    s, u, v = _grid(size)
    vol = {e: np.zeros((size, size, size), np.float32) for e in ("Cu", "Pd")}
    centres = [np.array([-0.18, -0.12, 0.1]), np.array([0.15, 0.12, -0.08]),
               np.array([0.05, -0.15, -0.18])]
    for k, c in enumerate(centres):
        c = c + rng.uniform(-0.03, 0.03, 3)
        r = rng.uniform(0.1, 0.14) if k < 2 else rng.uniform(0.06, 0.08)
        ball = (s - c[0]) ** 2 + (u - c[1]) ** 2 + (v - c[2]) ** 2 <= r * r
        if k == 2:
            vol["Cu"][ball] = 1.0
            continue
        n = _unit(rng)
        half = ((s - c[0]) * n[0] + (u - c[1]) * n[1] + (v - c[2]) * n[2]) > 0
        vol["Cu"][ball] = 0.6
        vol["Pd"][ball & half] = 0.4
        vol["Cu"][ball & ~half] = 1.0
    return _make("janus", vol)


FAMILIES = {"film": film, "rod": rod, "janus": janus}
