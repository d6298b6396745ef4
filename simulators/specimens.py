"""Seeded 3D specimens: per-element concentration volumes plus Z.

Geometry is drawn once from the seed in normalised coordinates (the volume spans [-0.5, 0.5]
on each axis) and then rasterised at any size, so the same seed gives the same specimen at
64^3 and at 512^3 (which is what simulating finer than we reconstruct needs). Volumes follow
science.md §5: V[s, u, v], s along the tilt axis. Everything stays inside the cylinder that
every tilt sees whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fusetomo.core.elements import atomic_number
from fusetomo.core.errors import FusetomoError

MIN_SIZE, MAX_SIZE = 8, 1024


class SpecimenError(FusetomoError, ValueError):
    """Bad specimen name, size or file."""


@dataclass
class Specimen:
    name: str
    elements: list[str]
    Z: list[int]
    volumes: np.ndarray  # [n_elements, n, n, n] float32

    @property
    def size(self) -> int:
        return int(self.volumes.shape[-1])

    def as_dict(self) -> dict[str, np.ndarray]:
        return {e: self.volumes[i] for i, e in enumerate(self.elements)}


def _grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) / n
    return c[:, None, None], c[None, :, None], c[None, None, :]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _place(rng, radius: float, taken: list[tuple[np.ndarray, float]], r_cyl: float = 0.42):
    for _ in range(500):
        c = np.array([rng.uniform(-0.38 + radius, 0.38 - radius),
                      rng.uniform(-r_cyl, r_cyl), rng.uniform(-r_cyl, r_cyl)])
        if np.hypot(c[1], c[2]) + radius > r_cyl:
            continue
        if all(np.linalg.norm(c - p) > radius + q + 0.02 for p, q in taken):
            taken.append((c, radius))
            return c
    raise SpecimenError("could not place particles without overlap; try another seed")


def _fit(rng: np.random.Generator, draw, what: str) -> list:
    """Call draw(rng, shrink, taken) until its particles fit; after a failure, draw again
    with all sizes at 90%."""
    shrink = 1.0
    for _ in range(8):
        try:
            return draw(rng, shrink, [])
        except SpecimenError:
            shrink *= 0.9
    raise SpecimenError(f"could not place the {what} without overlap")


def _draw_cubes(rng: np.random.Generator, shrink: float, taken: list) -> list:
    cubes = []
    for kind in ("Co", "Cu", "Co", "Cu"):
        a = rng.uniform(0.17, 0.23) * shrink
        cubes.append((kind, _place(rng, a * np.sqrt(3) / 2, taken), a, _random_rotation(rng)))
    return cubes


def _draw_core_shell(rng: np.random.Generator, shrink: float, taken: list) -> list:
    particles = []
    for radius in (rng.uniform(0.24, 0.28) * shrink, rng.uniform(0.1, 0.13) * shrink):
        c = _place(rng, radius, taken)
        core_r = radius * rng.uniform(0.5, 0.65)
        off = rng.standard_normal(3)
        off *= (radius - core_r) * 0.4 / np.linalg.norm(off)
        particles.append((c, radius, c + off, core_r))
    return particles


def nanocubes(size: int, seed: int = 0) -> Specimen:
    """Au-decorated CoO and CuO nanocubes (the 3D paper's synthetic case): Co, Cu, O, Au."""
    rng = np.random.default_rng(seed)
    cubes = _fit(rng, _draw_cubes, "nanocubes")
    spheres = []
    for _kind, c, a, rot in cubes:
        for _ in range(int(rng.integers(2, 4))):
            face = rng.integers(0, 3)
            local = rng.uniform(-0.35 * a, 0.35 * a, 3)
            local[face] = np.sign(rng.uniform(-1, 1)) * a / 2
            spheres.append((c + rot @ local, rng.uniform(0.022, 0.035)))
    s, u, v = _grid(size)
    vol = {e: np.zeros((size, size, size), np.float32) for e in ("Co", "Cu", "O", "Au")}
    for kind, c, a, rot in cubes:
        d = [s - c[0], u - c[1], v - c[2]]
        inside = np.ones((size, size, size), bool)
        for k in range(3):
            proj = rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]
            inside &= np.abs(proj) <= a / 2
        vol[kind][inside] = 0.5
        vol["O"][inside] = 0.5
    for c, r in spheres:
        inside = (s - c[0]) ** 2 + (u - c[1]) ** 2 + (v - c[2]) ** 2 <= r * r
        for e in ("Co", "Cu", "O"):
            vol[e][inside] = 0.0
        vol["Au"][inside] = 1.0
    return _make("nanocubes", vol)


def core_shell(size: int, seed: int = 0) -> Specimen:
    """Core-shell nanoparticles: CoS core inside a CoO shell (Co, S, O)."""
    rng = np.random.default_rng(seed)
    particles = _fit(rng, _draw_core_shell, "core-shell particles")
    s, u, v = _grid(size)
    vol = {e: np.zeros((size, size, size), np.float32) for e in ("Co", "S", "O")}
    for c, r, cc, cr in particles:
        shell = (s - c[0]) ** 2 + (u - c[1]) ** 2 + (v - c[2]) ** 2 <= r * r
        core = (s - cc[0]) ** 2 + (u - cc[1]) ** 2 + (v - cc[2]) ** 2 <= cr * cr
        vol["Co"][shell] = 0.5
        vol["O"][shell & ~core] = 0.5
        vol["S"][core] = 0.5
    return _make("core-shell", vol)


BUILTIN = {"nanocubes": nanocubes, "core-shell": core_shell}


def _make(name: str, vol: dict[str, np.ndarray]) -> Specimen:
    els = list(vol)
    return Specimen(name, els, [atomic_number(e) for e in els], np.stack([vol[e] for e in els]))


def make_specimen(name_or_file: str | Path, size: int | None = None, seed: int = 0) -> Specimen:
    """A built-in specimen by name (at `size`), or one loaded from an HDF5 file."""
    key = str(name_or_file)
    if key in BUILTIN:
        if size is None:
            raise SpecimenError(f"built-in specimen {key!r} needs a size")
        check_size(size)
        return BUILTIN[key](int(size), seed)
    path = Path(key)
    if path.suffix.lower() in (".h5", ".hdf5") or path.exists():
        spec = load_specimen(path)
        if size is not None and size != spec.size:
            spec = resample(spec, size)
        return spec
    raise SpecimenError(f"unknown specimen {key!r}: use one of {sorted(BUILTIN)} or an HDF5 file")


def check_size(size: int) -> None:
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise SpecimenError(f"specimen size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")


def resample(spec: Specimen, size: int) -> Specimen:
    """Linear resampling to another cube size (for specimens read from files)."""
    from scipy.ndimage import zoom

    check_size(size)
    f = size / spec.size
    vols = np.stack([np.clip(zoom(v, f, order=1), 0, None)[:size, :size, :size]
                     for v in spec.volumes]).astype(np.float32)
    return Specimen(spec.name, spec.elements, spec.Z, vols)


def load_specimen(path: str | Path) -> Specimen:
    """Read `/specimen/<Symbol>` float volumes [n, n, n] (attribute `Z` optional)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise SpecimenError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        if "specimen" not in f or not isinstance(f["specimen"], h5py.Group):
            raise SpecimenError(f"{path}: no /specimen group")
        els, zs, vols = [], [], []
        group = f["specimen"]
        order = [str(e) for e in group.attrs.get("elements", [])]
        names = order if sorted(order) == sorted(group) else sorted(group)
        title = str(group.attrs.get("name", path.stem))
        for e in names:
            ds = f["specimen"][e]
            name = f"{path}:/specimen/{e}"
            try:
                z = int(ds.attrs["Z"]) if "Z" in ds.attrs else atomic_number(e)
            except KeyError as err:
                raise SpecimenError(f"{name}: {err}") from None
            try:
                v = np.asarray(ds[()], dtype=np.float32)
            except (OSError, TypeError, ValueError) as err:
                raise SpecimenError(f"{name}: cannot read ({err})") from err
            if v.ndim != 3 or len(set(v.shape)) != 1:
                raise SpecimenError(f"{name}: expected a cube [n, n, n], got {v.shape}")
            if not np.all(np.isfinite(v)) or float(v.min()) < 0:
                raise SpecimenError(f"{name}: values must be finite and >= 0")
            els.append(e)
            zs.append(z)
            vols.append(v)
    if not els:
        raise SpecimenError(f"{path}: /specimen holds no element volumes")
    if len({v.shape for v in vols}) != 1:
        raise SpecimenError(f"{path}: element volumes differ in shape "
                            f"{[v.shape for v in vols]}")
    return Specimen(title, els, zs, np.stack(vols))


def save_specimen(spec: Specimen, path: str | Path) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("specimen")
        for i, e in enumerate(spec.elements):
            ds = g.create_dataset(e, data=spec.volumes[i], compression="gzip")
            ds.attrs["Z"] = int(spec.Z[i])
        g.attrs["name"] = spec.name
        g.attrs["elements"] = list(spec.elements)
