"""Conventional reconstructions that the fused solver is compared with.

- `chemical_sirt`: non-negative SIRT of each element's maps (all elements in one batched
  projection), the "conventional chemical tomography" of the 3D paper;
- `chemical_mlem`: Poisson ML-EM of the same maps, with an optional per-element background;
- `haadf_sirt`: non-negative SIRT of the HAADF series, which estimates sum_i (Z_i x_i)^gamma
  up to the (unknown) intensity scale;
- `hebt`: HAADF-EDS bimodal tomography (Zhong et al. 2017), in the linear least-squares form
  of section 2.2 of the HEBT quantification paper, solved by SIRT on the stacked system;
- `chemical_tv`: chemical-only reconstruction with the fused solver's own Poisson term and TV
  regulariser (`FusedSolver` with lambda_haadf = 0), the fairest "no HAADF" baseline.

Geometry follows science.md §5: maps are [n_elements, n_tilts, n_slices, n_det], volumes come
back as NumPy float32 [n_elements, n_slices, n_det, n_det] (or [n_slices, n_det, n_det] for
`haadf_sirt`). Every function runs on NumPy or CuPy from the same code (`device`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import sigpy as sp

from fusetomo.solver.backend import DeviceChoice, resolve_device, to_device, to_numpy
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.iterative import mlem_step, sirt_step, sirt_weights
from fusetomo.solver.projector import GeometryError, ParallelProjector

__all__ = [
    "chemical_mlem",
    "chemical_sirt",
    "chemical_tv",
    "haadf_sirt",
    "hebt",
    "hebt_response",
]

DeviceArg = DeviceChoice | str | sp.Device | int


def _device(device: DeviceArg) -> sp.Device:
    if isinstance(device, sp.Device):
        return device
    if isinstance(device, int):
        return sp.Device(device)
    return resolve_device(device)


def _iterations(name: str, k: int) -> int:
    if int(k) != k or k < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {k!r}")
    return int(k)


def _angles(what: str, angles: Sequence[float] | np.ndarray, n_tilts: int) -> np.ndarray:
    a = np.atleast_1d(np.asarray(angles, dtype=np.float64)).ravel()
    if a.size != n_tilts:
        raise GeometryError(f"{what}: {a.size} angles for {n_tilts} projections")
    if not np.all(np.isfinite(a)):
        raise GeometryError(f"{what}: angles must be finite, got {a.tolist()}")
    return a


def _maps(maps: Any) -> np.ndarray:
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim == 3:  # one element
        m = m[None]
    if m.ndim != 4:
        raise GeometryError(
            f"chemical maps must be [n_elements, n_tilts, n_slices, n_det], got {m.shape}"
        )
    if not np.all(np.isfinite(m)):
        raise ValueError("chemical maps contain NaN or inf")
    return m


def _background(background: Sequence[float] | float | None, n_el: int) -> np.ndarray:
    if background is None:
        return np.zeros(n_el)
    bg = np.broadcast_to(np.asarray(background, dtype=np.float64), (n_el,)).copy()
    if np.any(bg < 0) or not np.all(np.isfinite(bg)):
        raise ValueError(f"background must be {n_el} finite values >= 0, got {bg.tolist()}")
    return bg


def _optional_background(background: Sequence[float | None] | float | None,
                         n_el: int) -> list[float | None] | None:
    """Per-element backgrounds where None (for one element or all) means unknown."""
    if background is None or isinstance(background, int | float):
        return None if background is None else [float(background)] * n_el
    return list(background)


def _sirt(projector: ParallelProjector, b: Any, shape: tuple[int, ...], iterations: int) -> Any:
    """Non-negative SIRT from zero on the projector's device; b already there."""
    xp = projector.device.xp
    weights = sirt_weights(projector)
    with projector.device:
        x = xp.zeros(shape, dtype=xp.float32)
        for _ in range(iterations):
            x = sirt_step(projector, x, b, weights, nonnegative=True)
    return x


def chemical_sirt(
    angles: Sequence[float] | np.ndarray,
    maps: np.ndarray,
    iterations: int = 50,
    *,
    background: Sequence[float] | float | None = None,
    device: DeviceArg = "auto",
) -> np.ndarray:
    """Non-negative SIRT of every element's maps [n_el, m, ns, nd] -> [n_el, ns, nd, nd].

    `background` (counts/pixel per element, optional) is subtracted from the maps first.
    """
    m = _maps(maps)
    n_el, n_t, ns, nd = m.shape
    ang = _angles("chemical maps", angles, n_t)
    k = _iterations("iterations", iterations)
    bg = _background(background, n_el)
    dev = _device(device)
    proj = ParallelProjector(nd, ang, device=dev)
    with dev:
        b = to_device((m - bg[:, None, None, None]).astype(np.float32), dev)
    return to_numpy(_sirt(proj, b, (n_el, ns, nd, nd), k)).astype(np.float32)


def haadf_sirt(
    angles: Sequence[float] | np.ndarray,
    haadf: np.ndarray,
    iterations: int = 50,
    *,
    device: DeviceArg = "auto",
) -> np.ndarray:
    """Non-negative SIRT of a HAADF series [k, ns, nd] -> [ns, nd, nd] (HAADF units per
    voxel: an estimate of c * sum_i (Z_i x_i)^gamma)."""
    h = np.asarray(haadf, dtype=np.float32)
    if h.ndim == 2:
        h = h[None]
    if h.ndim != 3:
        raise GeometryError(f"HAADF series must be [n_tilts, n_slices, n_det], got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("HAADF series contains NaN or inf")
    k_t, ns, nd = h.shape
    ang = _angles("HAADF series", angles, k_t)
    k = _iterations("iterations", iterations)
    dev = _device(device)
    proj = ParallelProjector(nd, ang, device=dev)
    with dev:
        b = to_device(h, dev)
    return to_numpy(_sirt(proj, b, (ns, nd, nd), k)).astype(np.float32)


def chemical_mlem(
    angles: Sequence[float] | np.ndarray,
    maps: np.ndarray,
    iterations: int = 30,
    *,
    background: Sequence[float] | float | None = None,
    device: DeviceArg = "auto",
) -> np.ndarray:
    """Poisson ML-EM of the chemical maps (counts) [n_el, m, ns, nd] -> [n_el, ns, nd, nd].

    Model b ~ Poisson(A x + bg) with `background` the per-element counts/pixel (0 if None).
    Starts from a uniform volume with each element's mean total counts per tilt.
    """
    m = _maps(maps)
    if np.any(m < 0):
        raise ValueError(f"ML-EM needs counts >= 0, got a minimum of {float(m.min())}")
    n_el, n_t, ns, nd = m.shape
    ang = _angles("chemical maps", angles, n_t)
    k = _iterations("iterations", iterations)
    bg = _background(background, n_el)
    dev = _device(device)
    proj = ParallelProjector(nd, ang, device=dev)
    xp = dev.xp
    _, c_inv = sirt_weights(proj)
    signal = np.maximum(m - bg[:, None, None, None], 0).sum(axis=(1, 2, 3)) / n_t
    x0 = (signal / float(ns * nd * nd)).astype(np.float32)
    with dev:
        b = to_device(m, dev)
        bgd = xp.asarray(bg[:, None, None, None], dtype=xp.float32)
        x = xp.ones((n_el, ns, nd, nd), dtype=xp.float32)
        x *= xp.asarray(np.maximum(x0, 1e-6)[:, None, None, None])
        for _ in range(k):
            x = mlem_step(proj, x, b, c_inv, background=bgd)
    return to_numpy(x).astype(np.float32)


def chemical_tv(
    angles: Sequence[float] | np.ndarray,
    maps: np.ndarray,
    *,
    background: Sequence[float] | float | None = None,
    lambda_tv: float | None = None,
    iterations: int = 50,
    device: DeviceArg = "auto",
) -> np.ndarray:
    """Chemical-only reconstruction with the fused solver's Poisson term and TV
    (FusedSolver with lambda_haadf = 0): ML-EM initialisation, then `iterations` steps.
    A `background` not given (None, for all elements or for one) is estimated.

    `lambda_tv` defaults to FusionParams().lambda_tv, the fused solver's own default.
    """
    m = _maps(maps)
    n_el, n_t, ns, nd = m.shape
    ang = _angles("chemical maps", angles, n_t)
    k = _iterations("iterations", iterations)
    lam = FusionParams().lambda_tv if lambda_tv is None else float(lambda_tv)
    params = FusionParams(lambda_haadf=0.0, lambda_tv=lam)
    names = [f"element{i}" for i in range(n_el)]
    solver = FusedSolver(nd, ns, names, [1.0] * n_el, params, device=_device(device),
                         background=_optional_background(background, n_el))
    solver.add_chem(ang, m)
    solver.initialize()
    solver.run(k)
    vols = solver.volumes()
    return np.stack([vols[e] for e in names]).astype(np.float32)


# -- HEBT -------------------------------------------------------------------------------

ResponseModel = Literal["fit", "z"]


def _matched(haadf_angles: np.ndarray, chem_angles: np.ndarray, tol: float) -> tuple:
    """(chemical tilt indices, HAADF tilt indices) of the chemical tilts that have a HAADF
    image within `tol` degrees (the nearest one)."""
    idx = np.abs(haadf_angles[None, :] - chem_angles[:, None]).argmin(axis=1)
    ok = np.abs(haadf_angles[idx] - chem_angles) <= tol
    if not np.any(ok):
        raise GeometryError(
            f"HEBT regresses the HAADF on the chemical maps, so it needs a HAADF image within "
            f"{tol} deg of at least one chemical tilt; chemical angles {chem_angles.tolist()}"
        )
    return np.flatnonzero(ok), idx[ok]


def hebt_response(
    haadf_at_chem: np.ndarray,
    signal: np.ndarray,
    Z: Sequence[float],
    *,
    model: ResponseModel = "fit",
    gamma: float = 1.7,
) -> np.ndarray:
    """Response ratio factors r_A of I^H = sum_A r_A I_A (HEBT eq. 15) from the HAADF images
    [m, ns, nd] taken with the (background-free) chemical maps `signal` [n_el, m, ns, nd].

    model 'fit': non-negative least squares over all pixels, as the paper's linear
    regression (an element the regression gives no weight, e.g. one that always comes with
    another, gets the Z^gamma prior scaled like the others instead of 0);
    model 'z': r_A = s Z_A^gamma with one scale s fitted by least squares.
    """
    from scipy.optimize import nnls

    n_el = signal.shape[0]
    z = np.asarray(Z, dtype=np.float64)
    if z.shape != (n_el,) or np.any(z <= 0):
        raise ValueError(f"Z must be {n_el} values > 0, got {np.asarray(Z).tolist()}")
    prior = z**gamma
    y = np.asarray(haadf_at_chem, dtype=np.float64).ravel()
    a = np.asarray(signal, dtype=np.float64).reshape(n_el, -1).T
    pa = a @ prior
    den = float(pa @ pa)
    if den <= 0:
        raise ValueError("HEBT: the chemical maps carry no signal to regress the HAADF on")
    s = max(float(pa @ y) / den, 1e-30)
    if model == "z":
        return s * prior
    if model != "fit":
        raise ValueError(f"response model must be 'fit' or 'z', got {model!r}")
    norm = np.linalg.norm(a, axis=0)
    norm[norm == 0] = 1.0
    coef, _ = nnls(a / norm, y)
    r = coef / norm
    weak = r <= 1e-3 * s * prior
    r[weak] = s * prior[weak]
    return r


def hebt(
    haadf_angles: Sequence[float] | np.ndarray,
    haadf: np.ndarray,
    chem_angles: Sequence[float] | np.ndarray,
    maps: np.ndarray,
    Z: Sequence[float],
    *,
    iterations: int = 200,
    alpha: float = 0.8,
    background: Sequence[float] | float | None = None,
    response: ResponseModel | Sequence[float] = "fit",
    gamma: float = 1.7,
    angle_tolerance: float = 0.5,
    device: DeviceArg = "auto",
) -> np.ndarray:
    """HAADF-EDS bimodal tomography (HEBT), as in section 2.2 of the HEBT quantification
    paper (after Zhong et al. 2017). Returns element volumes [n_el, ns, nd, nd] in the
    chemical maps' units (X_A^b / r_A).

    What is implemented: the HAADF signal is taken as a linear sum of the chemical signals,
    I^H = sum_A r_A I_A (eq. 15), with response factors r_A from a linear regression of the
    HAADF images on the chemical maps at the chemical tilts (`hebt_response`, NNLS). The
    unknowns X_A^b (the HAADF signal of element A per voxel) minimise
        sum_A ||(1 - alpha)(r_A I_A - W_c X_A^b)||^2 + ||alpha (I^H - W_h sum_A X_A^b)||^2
    (eq. 17), solved by non-negative SIRT on that stacked system: row sums (1 - alpha) A_c 1
    for the chemical rows and alpha n_el A_h 1 for the HAADF rows, column sums
    (1 - alpha) A_c^T 1 + alpha A_h^T 1, from zero, negative voxels set to zero at every
    iteration as in the paper. alpha = 0.8 and 200 iterations are the paper's best settings
    (its Figs. 8-10).

    Simplifications and extensions: the HAADF rows use every HAADF tilt (W_h), not only the
    chemical ones (the paper's data had one HAADF image per spectrum image; with W_h = W_c
    this is exactly eq. 17); the regression pairs each chemical tilt with the HAADF image at
    the nearest HAADF tilt and uses the pairs within `angle_tolerance` degrees; `background`
    (counts/pixel) is subtracted from the maps first; no Gaussian pre-filter of the maps, no
    quantification (eq. 18), no thresholding. The HAADF's Z^gamma non-linearity is, by the
    method's assumption, not modelled. `response` may also be explicit factors r_A, or 'z'
    for r_A proportional to Z_A^gamma with one fitted scale.

    Known behaviour: the HAADF residual is shared equally among the elements in HAADF units,
    so elements with a small r_A (light, or sharing Z with another element) pick up the
    others' HAADF signal; on the simulated nanocubes (Co/Cu cubes, Z 27/29) HEBT helps Au
    but its mean NRMSE is worse than SIRT's (tests/test_baselines.py).
    """
    m = _maps(maps)
    n_el, n_c, ns, nd = m.shape
    h = np.asarray(haadf, dtype=np.float32)
    if h.ndim != 3 or h.shape[1:] != (ns, nd):
        raise GeometryError(f"HAADF series must be [k, {ns}, {nd}], got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("HAADF series contains NaN or inf")
    ang_h = _angles("HAADF series", haadf_angles, h.shape[0])
    ang_c = _angles("chemical maps", chem_angles, n_c)
    k = _iterations("iterations", iterations)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the HAADF weight) must lie in [0, 1], got {alpha}")
    bg = _background(background, n_el)
    signal = (m - bg[:, None, None, None]).astype(np.float32)
    if isinstance(response, str):
        ic, ih = _matched(ang_h, ang_c, angle_tolerance)
        r = hebt_response(h[ih], signal[:, ic], Z, model=response,  # type: ignore[arg-type]
                          gamma=gamma)
    else:
        r = np.asarray(response, dtype=np.float64)
        if r.shape != (n_el,) or np.any(r <= 0) or not np.all(np.isfinite(r)):
            raise ValueError(f"response factors must be {n_el} values > 0, got {r.tolist()}")

    dev = _device(device)
    xp = dev.xp
    pc = ParallelProjector(nd, ang_c, device=dev)
    ph = ParallelProjector(nd, ang_h, device=dev)
    (rc_inv, cc), (rh_inv, ch) = _sums(pc), _sums(ph)
    with dev:
        rd = xp.asarray(r[:, None, None, None], dtype=xp.float32)
        bc = to_device(signal, dev) * rd
        bh = to_device(h, dev)
        col = (1.0 - alpha) * cc + alpha * ch
        c_inv = xp.where(col > 1e-12, 1.0 / xp.maximum(col, 1e-12), 0).astype(xp.float32)
        rh_w = (rh_inv / n_el).astype(xp.float32)
        x = xp.zeros((n_el, ns, nd, nd), dtype=xp.float32)
        for _ in range(k):
            upd = 0.0
            if alpha < 1.0:
                upd = (1.0 - alpha) * pc.adjoint((bc - pc.forward(x)) * rc_inv)
            if alpha > 0.0:
                upd = upd + alpha * ph.adjoint((bh - ph.forward(x.sum(axis=0))) * rh_w)
            x = xp.maximum(x + c_inv * upd, 0)
        x = x / rd
    return to_numpy(x).astype(np.float32)


def _sums(proj: ParallelProjector) -> tuple[Any, Any]:
    """(1 / row sums, column sums) of one projector."""
    r_inv, _ = sirt_weights(proj)
    with proj.device:
        return r_inv, proj.col_sums()
