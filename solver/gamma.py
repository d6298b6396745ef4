"""gamma from the data: the exponent at which the fused reconstruction explains the spectrum
images best (docs/model.md).

HAADF alone cannot decide gamma: the volumes bend to fit the HAADF images at any gamma. What
a wrong gamma does is make the HAADF term ask for the wrong amount of each element relative
to the others, which the chemical maps then contradict. So each candidate gamma (six, evenly
spread over the bounds) gets a short fused run (15 iterations) from the same conventional
initialisation, and is scored by the Poisson negative log-likelihood of the maps at its
result; a parabola through the best candidate and its neighbours gives the estimate.

Measured on four specimens, 11 acquisitions each (bench/robustness.py, 64^3, series from
another projector on a finer grid, docs/benchmarks.md): the reconstruction with the
estimated gamma scored within 10 % of the one given every nuisance in 43 of 44, often
better (a smaller gamma than the data's was kinder to the small features); the estimate was
within 0.1 of the truth in 24 of 44 and pulls towards 1.6-1.7 (data at 2.0 read 1.74-1.96).
Where one element fills every particle (a core-shell specimen with Co throughout) it pins at
the lower bound, and the reconstruction is still as good. The HAADF misfit at the
initialisation's volumes (`gamma_method="haadf"`) is cheap but biased low by up to 0.6 on a
film with small Pt particles: the few chemical tilts blur the volumes, and a blurred
volume's sum of x^gamma falls short more for a larger gamma.

It costs about 90 fused iterations of the series, once (and again when the number of
spectrum images has doubled): so on series at least 96 pixels wide it runs on the series
binned 2 x 2 (maps summed, so they stay Poisson; one voxel in eight). State gamma in the
series to skip it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fusetomo.solver.backend import to_numpy

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusedSolver

__all__ = ["GammaSearch", "GammaSearchParams", "search_gamma"]


@dataclass(frozen=True)
class GammaSearchParams:
    """How gamma is searched: fused iterations per candidate, the number of candidates
    (evenly spread over the bounds, then a parabola through the best and its neighbours),
    and the binning of the series (2: searched on the series binned 2 x 2 when both image
    axes keep at least `min_binned` pixels)."""

    iterations: int = 15
    candidates: int = 6
    bin: int = 2
    min_binned: int = 48
    # The short runs split the HAADF change with a tenth of the solver's damping. The
    # damping keeps light elements from taking a heavy one's signal, which also hides the
    # disagreement with their maps that tells gamma; without any, the light elements' hot
    # spots pull the estimate low on a thin rod. Estimated for data at gamma 1.4/1.7/2.0
    # (bench/robustness.py's series, 64^3; `python bench/gamma_damping.py --dampings
    # 1e-3,1e-4,1e-6 --specimens nanocubes,film,rod,alloy`):
    #   damping   nanocubes        film             ZnO rod, Au caps  Pt-Ni alloy (*)
    #   1e-3      1.20/1.51/1.85   1.37/1.58/1.79   1.45/1.62/1.74
    #   1e-4      1.39/1.66/1.84   1.44/1.65/1.79   1.46/1.63/1.74    1.20/1.37/1.47
    #   1e-6      1.45/1.71/1.95   1.46/1.70/1.83   1.20/1.46/1.57    1.20/1.20/1.20
    # (*) bench/heldout_specimens.py, written after the choice; its <NRMSE> at gamma 2.0 is
    # 0.203 with 1e-4 against 0.280 with 1e-6 and 0.218 given gamma.
    split_damping: float = 1e-4

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.bin not in (1, 2):
            raise ValueError(f"bin must be 1 or 2, got {self.bin}")
        if self.candidates < 3:
            raise ValueError(f"candidates must be >= 3, got {self.candidates}")


@dataclass
class GammaSearch:
    """The search's result: gamma, the likelihood at each candidate, the binning and time."""

    gamma: float
    curve: list[tuple[float, float]] = field(default_factory=list)
    bin: int = 1
    seconds: float = 0.0


def _bin2(a: np.ndarray) -> np.ndarray:
    """Sum 2 x 2 blocks over the last two axes (an odd last row or column is dropped)."""
    *lead, ns, nd = a.shape
    a = a[..., : ns - ns % 2, : nd - nd % 2]
    return a.reshape(*lead, ns // 2, 2, nd // 2, 2).sum(axis=(-3, -1))


def _proxy(solver: FusedSolver, b: int, p: GammaSearchParams) -> FusedSolver:
    """A fused solver on the solver's data binned b x b (b = 1: the data as they are), with
    the solver's current backgrounds stated and the maps already shifted."""
    from fusetomo.solver.fusion import FusedSolver

    def prep(x: Any) -> np.ndarray:
        x = np.asarray(to_numpy(x), dtype=np.float32)
        return _bin2(x) if b == 2 else x

    haadf, chem = prep(solver.haadf_data()), prep(solver.chem_data())
    bg = np.asarray(solver.background + solver.subtracted_level, dtype=np.float64) * b * b
    # The short runs leave the level free (pin_level "off") and lambda_chem_dark as set (the
    # binned maps would read a higher SNR anyway): pinned, they read gamma lower
    # (32^3 bench/advisor.py series, 9 maps: ZnO rod 1.48 instead of 1.70 for 1.7, Pt-Ni
    # alloy 1.20 instead of 1.40).
    params = replace(solver.params, gamma=solver.gamma, split_damping=p.split_damping,
                     pin_level="off", dark_snr_ref=None)
    proxy = FusedSolver(haadf.shape[-1], haadf.shape[-2], solver.elements, solver.Z, params,
                        device=solver.device, background=bg.tolist(),
                        chem_kind="subtracted", subtracted=[0.0] * len(solver.elements))
    proxy.add_haadf(solver.haadf_proj.angles, haadf, shifts=solver.haadf_proj.shifts / b)
    proxy.add_chem(solver.chem_proj.angles, chem, shifts=solver.chem_proj.shifts / b)
    return proxy


def search_gamma(solver: FusedSolver, params: GammaSearchParams | None = None) -> GammaSearch:
    """The gamma within solver.params.gamma_bounds whose short fused run from the
    conventional initialisation fits the chemical maps best (see the module doc)."""
    p = params or GammaSearchParams()
    t0 = time.perf_counter()
    ns, nd = solver.n_slices, solver.n
    b = 2 if p.bin == 2 and min(ns, nd) // 2 >= p.min_binned else 1
    proxy = _proxy(solver, b, p)
    proxy.initialize()
    x0 = proxy.x.copy()
    xp = proxy.device.xp
    curve: list[tuple[float, float]] = []

    def nll(gamma: float) -> float:
        proxy.x = x0.copy()
        proxy.set_gamma(gamma)  # also restarts the momentum
        proxy.run(p.iterations)
        with proxy.device:
            mu = proxy.model_chem()
            value = float(xp.sum(mu - proxy.chem_data() * xp.log(mu)))
        curve.append((float(gamma), value))
        return value

    lo, hi = solver.params.gamma_bounds
    grid = np.linspace(lo, hi, p.candidates)
    values = np.array([nll(float(g)) for g in grid])
    k = int(np.argmin(values))
    gamma = float(grid[k])
    if 0 < k < grid.size - 1:
        # The vertex of the parabola through the best candidate and its neighbours (the
        # likelihood is smooth in gamma; a bounded scalar search was measured to stop in
        # side minima of the short runs' noise).
        g3, v3 = grid[k - 1:k + 2], values[k - 1:k + 2]
        a, bb, _ = np.polyfit(g3, v3, 2)
        if a > 0:
            gamma = float(np.clip(-bb / (2 * a), g3[0], g3[2]))
    return GammaSearch(gamma, sorted(curve), b, time.perf_counter() - t0)
