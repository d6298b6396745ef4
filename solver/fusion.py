"""The fused multi-modal solver (science.md §2) as a step object that can take new tilts.

    min_{x_i >= 0}  l1/2 ||c A_h sum_i (Z_i x_i)^gamma - b_H||^2          (Psi1, HAADF)
                  + l2 sum_i (1^T (A_c x_i + bg_i) - b_i^T log(A_c x_i + bg_i))   (Psi2)
                  + l3 sum_i TV(x_i)

How each term is scaled, so that the defaults hold across specimens and doses:
- x_i is kept in the chemical maps' own units (counts per voxel), so Psi2 is the true
  Poisson likelihood; the HAADF intensity scale c, unknown at a microscope, is refitted in
  closed form at every iteration (variable projection), so b_H may come in any units;
- the HAADF step is preconditioned with the SIRT weights (1/row sums, 1/column sums) of
  A_h, whose preconditioned Lipschitz constant is 1 (checked by sigpy's power method,
  `lipschitz()`): a few such steps are taken on the summed signal s = sum_i (Z_i x_i)^gamma
  alone (one volume, cheap) and the change they ask for is split among the elements in
  proportion to x_i Z_i^beta, normalised by ds/dx_i. beta = 0 would keep each voxel's
  element ratios (its stoichiometry, which the chemical maps decide) and scale only the
  amount of material; beta > 0 leans towards heavy elements, which dominate HAADF;
- the Poisson step is the relaxed ML-EM step (the gradient preconditioned by x / A_c^T 1),
  the majorise-minimise step of Psi2. Its step fraction is set per voxel and element:
  lambda_chem where the element carries the HAADF signal, up to lambda_chem_dark where
  HAADF cannot see it (a light element next to heavy ones), so that each element is driven
  by the modality that sees it;
- the TV weight is relative to each element's dynamic range (its 99.9th percentile after
  the conventional initialisation), so it does not depend on dose or units;
- the volumes' overall level is decided by the chemical maps alone: the HAADF term does not
  fix it, since the scale c it refits absorbs any level, so after every iteration all
  volumes are scaled by the one factor that maximises the chemical likelihood
  (`pin_level`); left to the chemical step's small fraction, TV's contrast loss drifted
  the level down and c up over long runs;
- the nuisances of real data (HAADF offsets, backgrounds, gamma, background-subtracted
  maps) are estimated where the series does not state them (solver/nuisance.py,
  solver/gamma.py, docs/model.md), and the fit is checked after (solver/fitcheck.py).
lambda_haadf and the lambda_chem pair are step fractions in (0, 1] of steps bounded by the
Lipschitz constants, and lambda_tv is dimensionless; none is tuned per dataset.

Warm start: tilts can be added between iterations; the volumes carry over across HAADF tilts,
and a chemical tilt re-seeds them from the conventional reconstruction (`reseed_on_chem`).
One iteration: Nesterov extrapolation (restarted whenever tilts are added), both data steps
from the same point (as the reference implementation), then the TV proximal step by FGP with
the non-negativity projection. The three cost terms are recorded at every iteration.
Where the code is: `FusedSolver` is put together from its parts (mixins), one module each,
so that each reads alone; this module keeps the parameters, the cost history, the
constructor and the iteration (`initialize`, `step`, `run`, `run_until`):
- solver/fusion_data.py, `FusionData`: adding tilts (`add_haadf`, `add_chem`), replacing
  their data or shifts, the growing data stores and the chemical maps' vacuum masks;
- solver/fusion_nuisance.py, `FusionNuisance`: backgrounds (stated, from the vacuum,
  joint), the subtracted level of background-subtracted maps, HAADF offsets and scale;
- solver/fusion_gamma.py, `FusionGamma`: `set_gamma`, the HAADF misfit, `estimate_gamma`;
- solver/fusion_steps.py, `FusionSteps`: the preconditioners, the HAADF step, the chemical
  step fractions, the TV prox, the level pin, the momentum restart, the HAADF phase's step
  and the reductions a slab overrides (solver/slabs.py);
- solver/fusion_model.py, `FusionModel`: read-only accessors of the data and the model,
  `volumes`, `haadf_volume`, `model_summary`, `fit_check`;
- solver/fusion_errors.py: `SolverNotReadyError`.
The parts share the fields `__init__` sets (each declares those it uses); every name that
was importable from this module still is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import sigpy as sp

from fusetomo.solver.backend import DeviceChoice, resolve_device, to_numpy
from fusetomo.solver.fusion_data import FusionData
from fusetomo.solver.fusion_errors import SolverNotReadyError
from fusetomo.solver.fusion_gamma import GAMMA_TOL, FusionGamma
from fusetomo.solver.fusion_model import FusionModel
from fusetomo.solver.fusion_nuisance import FusionNuisance
from fusetomo.solver.fusion_steps import DARK_SCALE_MIN, FusionSteps
from fusetomo.solver.gamma import GammaSearch
from fusetomo.solver.iterative import mlem_step
from fusetomo.solver.projector import ParallelProjector
from fusetomo.solver.stopping import StopReason, StopRule
from fusetomo.solver.tv import Backend

__all__ = ["DARK_SCALE_MIN", "DEFAULT_ITERATIONS", "GAMMA_START", "GAMMA_TOL", "SEED_FLOOR",
           "SEED_SUPPORT",
           "CostHistory", "FusedSolver", "FusionParams", "SolverNotReadyError",
           "check_fusion_weights"]

# Iterations of a full offline reconstruction with the default parameters.
DEFAULT_ITERATIONS = 60
# The HAADF phase's seed of the element volumes: 1 where its volume exceeds this fraction
# of its peak, SEED_FLOOR elsewhere (the maps may still put material there).
SEED_SUPPORT = 0.02
SEED_FLOOR = 0.05
# gamma before it is estimated (its precision, GAMMA_TOL, is in solver/fusion_gamma.py).
GAMMA_START = 1.7


def _optional_levels(what: str, values: Sequence[float | None] | None, n: int) -> np.ndarray:
    """Per-element levels with NaN where not given; checked finite and >= 0."""
    if values is None:
        return np.full(n, np.nan)
    vals = list(values)
    if len(vals) != n:
        raise ValueError(f"{what} must have {n} values (one per element), got {vals}")
    out = np.array([np.nan if v is None else float(v) for v in vals])
    given = out[~np.isnan(out)]
    if np.any(given < 0) or not np.all(np.isfinite(given)):
        raise ValueError(f"{what} must be finite values >= 0 (or None), got {vals}")
    return out

def check_fusion_weights(p: Any) -> None:
    """Validate the fields that the 3D and 2D fusion parameters share (ValueError naming
    the field and value): gamma, the two step fractions, the TV weight and eps."""
    if p.gamma is not None and not 1.0 <= p.gamma <= 2.5:
        raise ValueError(f"gamma must lie in [1, 2.5], got {p.gamma}")
    for name in ("lambda_haadf", "lambda_chem"):
        v = getattr(p, name)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} is a step fraction in [0, 1], got {v}")
    if p.lambda_tv < 0:
        raise ValueError(f"lambda_tv must be >= 0, got {p.lambda_tv}")
    if p.eps <= 0:
        raise ValueError(f"eps must be > 0, got {p.eps}")
    if p.tv_iterations < 0:
        raise ValueError(f"tv_iterations must be >= 0, got {p.tv_iterations}")


@dataclass(frozen=True)
class FusionParams:
    """Parameters of the fused reconstruction; the defaults need no per-dataset tuning."""

    # The HAADF exponent; None: estimated from the data (within gamma_bounds, from GAMMA_START).
    gamma: float | None = None
    lambda_haadf: float = 1.0
    lambda_chem: float = 0.01
    lambda_tv: float = 0.005
    chem_model: Literal["poisson", "lsq"] = "poisson"
    eps: float = 0.1
    tv_iterations: int = 5
    init_iterations: int = 8
    haadf_inner_iterations: int = 5
    tv_backend: Backend = "slices"
    refit_scale: bool = True
    split_bias: float = 0.85
    # Where a voxel's HAADF sensitivity sum_i g_i u_i is below this fraction of the
    # volume's largest, the HAADF change it gets is damped (see _haadf_update).
    split_damping: float = 1e-3
    momentum: bool = True
    momentum_max: float = 0.8
    # Restart the extrapolation when the HAADF and chemical terms both rose in an iteration
    # (adaptive restart, O'Donoghue & Candes 2015, on the data terms): the extrapolation
    # otherwise carries a drift of the volumes' level that TV's contrast loss and the free
    # HAADF scale start (docs/benchmarks.md, advisor: <NRMSE> after 20/80/300 iterations,
    # 32^3, 9 maps: rod 0.276/0.792/0.819 -> 0.257/0.387/0.738, alloy 0.211/0.229/0.230
    # -> 0.215/0.211/0.228).
    momentum_restart: bool = True
    # Iterate on the HAADF images alone until the first spectrum image arrives (HAADF SIRT),
    # then seed the element volumes with that volume (a live series that starts HAADF-only).
    haadf_phase: bool = False
    # Fix the volumes' overall level after every iteration, the one direction the HAADF
    # term cannot see (the scale c it refits absorbs it): "ml" (default), the factor for
    # all elements that maximises the chemical likelihood (_pin_level_ml); "global" or
    # "element", the map totals matched with one factor or one per element (_pin_level_totals);
    # "off", left to the chemical step. Left free, TV's contrast loss lowered the level
    # and the free c followed, iteration after iteration (32^3, 9 maps, <NRMSE> after
    # 20/80/300 iterations: ZnO rod 0.257/0.387/0.738 -> 0.257/0.304/0.330 with "ml",
    # Pt-Ni alloy 0.215/0.211/0.228 -> 0.219/0.239/0.247; docs/benchmarks.md). The totals
    # add up every vacuum pixel's background error: "element" broke the alloy's minor Fe
    # and O, "global" cost the rod (0.370 at 20 iterations).
    pin_level: Literal["off", "global", "element", "ml"] = "ml"
    lambda_chem_dark: float = 0.1
    # The maps' mean chemical SNR (estimated at the initialisation, `chem_snr`) below which
    # lambda_chem_dark is scaled down in proportion (to at most 0.4x); None: never. Noisy
    # maps then drive the elements HAADF cannot see more slowly: with the level pinned, the
    # runs go on to convergence and at SNR 1 fitted the maps' noise into the light
    # elements (64^3, bench/robustness.py's SNR-1 cells, <NRMSE> with lambda_chem_dark 0.1 /
    # 0.05 / 0.03: film 0.300 / 0.251 / 0.266, rod 0.481 / 0.363 / 0.327, nanocubes 0.299
    # / 0.253 / 0.254), while at SNR 2.5-5 0.1 was best (core-shell 0.196 / 0.221 / 0.246,
    # rod at SNR 5 0.172 / 0.189 / 0.213; `python bench/dark_step.py`).
    dark_snr_ref: float | None = 2.5
    reseed_on_chem: bool = True
    # The nuisances of real data (docs/model.md). A background the series does not state:
    # "vacuum", the mean count over the vacuum (where the nearest HAADF image sees none);
    # "joint", that start refined by ML-EM with the volumes, anchored on the vacuum; "zero".
    # One level per element, or one per map.
    background: Literal["vacuum", "joint", "zero"] = "vacuum"
    background_per_map: bool = False
    # The HAADF offset of each image: "auto" (the vacuum level of the detector-edge strips,
    # kept where both strips see vacuum, fitted with the intensity scale where the specimen
    # reaches an edge), "fit" (fitted for every image, from the vacuum level), "vacuum" (the
    # vacuum level, kept) or "none" (0).
    haadf_offset: Literal["auto", "fit", "vacuum", "none"] = "auto"
    gamma_bounds: tuple[float, float] = (1.2, 2.5)
    # How gamma is estimated: "consistency", the gamma whose short fused run fits the
    # chemical maps best (solver/gamma.py); "haadf", the HAADF misfit at the initialisation.
    gamma_method: Literal["consistency", "haadf"] = "consistency"

    def __post_init__(self) -> None:
        check_fusion_weights(self)
        if self.chem_model not in ("poisson", "lsq"):
            raise ValueError(f"chem_model must be 'poisson' or 'lsq', got {self.chem_model!r}")
        if self.tv_backend not in ("slices", "sigpy"):
            raise ValueError(f"tv_backend must be 'slices' or 'sigpy', got {self.tv_backend!r}")
        if self.dark_snr_ref is not None and not self.dark_snr_ref > 0:
            raise ValueError(f"dark_snr_ref must be > 0 or None, got {self.dark_snr_ref}")
        if not 0.0 <= self.lambda_chem_dark <= 1.0:
            raise ValueError(f"lambda_chem_dark is a step fraction in [0, 1], "
                             f"got {self.lambda_chem_dark}")
        if self.split_bias < 0:
            raise ValueError(f"split_bias must be >= 0, got {self.split_bias}")
        if not isinstance(self.momentum, bool):
            raise ValueError(f"momentum must be True or False, got {self.momentum!r}")
        if not 0.0 <= self.momentum_max < 1.0:
            raise ValueError(f"momentum_max must lie in [0, 1), got {self.momentum_max}")
        if self.haadf_inner_iterations < 1:
            raise ValueError(f"haadf_inner_iterations must be >= 1, got "
                             f"{self.haadf_inner_iterations}")
        if self.tv_iterations < 0 or self.init_iterations < 0:
            raise ValueError("iteration counts must be >= 0")
        if self.pin_level not in ("off", "global", "element", "ml"):
            raise ValueError(f"pin_level must be 'off', 'global', 'element' or 'ml', got "
                             f"{self.pin_level!r}")
        if self.gamma_method not in ("consistency", "haadf"):
            raise ValueError(f"gamma_method must be 'consistency' or 'haadf', got "
                             f"{self.gamma_method!r}")
        if self.background not in ("vacuum", "joint", "zero"):
            raise ValueError(f"background must be 'vacuum', 'joint' or 'zero', got "
                             f"{self.background!r}")
        if self.haadf_offset not in ("auto", "fit", "vacuum", "none"):
            raise ValueError(f"haadf_offset must be 'auto', 'fit', 'vacuum' or 'none', got "
                             f"{self.haadf_offset!r}")
        lo, hi = self.gamma_bounds
        if not 1.0 <= lo < hi <= 2.5:
            raise ValueError(f"gamma_bounds must satisfy 1 <= lo < hi <= 2.5, got "
                             f"{self.gamma_bounds}")


@dataclass
class CostHistory:
    """The three cost terms per iteration (unweighted) and the fitted HAADF scale."""

    haadf: list[float] = field(default_factory=list)
    chem: list[float] = field(default_factory=list)
    tv: list[float] = field(default_factory=list)
    haadf_scale: list[float] = field(default_factory=list)
    n_haadf_tilts: list[int] = field(default_factory=list)
    n_chem_tilts: list[int] = field(default_factory=list)
    # ||x_k - x_k-1|| / ||x_k||: how much the volumes changed in the iteration
    change: list[float] = field(default_factory=list)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}


class FusedSolver(FusionData, FusionNuisance, FusionGamma, FusionSteps, FusionModel):
    """Fused HAADF + chemical reconstruction that warm-starts when tilts are added.

    >>> s = FusedSolver(n=64, n_slices=64, elements=["Co", "O"], Z=[27, 8])
    >>> s.add_haadf(angles, haadf)            # [k, n_slices, n] any units
    >>> s.add_chem(angles_c, {"Co": m1, "O": m2})   # counts, [m, n_slices, n] each
    >>> s.run(30); s.add_haadf(...); s.run(5)  # continue from the current volumes
    """

    def __init__(
        self,
        n: int,
        n_slices: int,
        elements: Sequence[str],
        Z: Sequence[float],
        params: FusionParams | None = None,
        *,
        device: DeviceChoice | sp.Device | int = "auto",
        background: Sequence[float | None] | None = None,
        chem_kind: Literal["counts", "subtracted"] = "counts",
        subtracted: Sequence[float | None] | None = None,
    ) -> None:
        """`background`: counts per pixel of each element's maps, None (for all or for one
        element) where not known, which is then estimated (params.background) or taken as
        0. `chem_kind` "subtracted": the maps had a background subtracted and may
        be negative; `subtracted` is the level subtracted per element (None: estimated
        from the vacuum's variance)."""
        if len(elements) == 0 and not (params is not None and params.haadf_phase):
            # No element: only a HAADF-only series' HAADF phase (live) has nothing to fuse.
            raise ValueError("at least one element is needed (or params.haadf_phase, for "
                             "a HAADF-only series)")
        if len(Z) != len(elements):
            raise ValueError(f"{len(elements)} elements but {len(Z)} Z values")
        if len(set(elements)) != len(elements):
            raise ValueError(f"duplicate element in {list(elements)}")
        if chem_kind not in ("counts", "subtracted"):
            raise ValueError(f"chem_kind must be 'counts' or 'subtracted', got {chem_kind!r}")
        self.params = params or FusionParams()
        self.device = (
            device if isinstance(device, sp.Device)
            else sp.Device(device) if isinstance(device, int)
            else resolve_device(device)
        )
        self.n, self.n_slices = int(n), int(n_slices)
        self.elements = list(elements)
        self.Z = np.asarray(Z, dtype=np.float64)
        n_el = len(elements)
        self._bg_stated = _optional_levels("background", background, n_el)
        self.chem_kind = chem_kind
        self._sub_stated = (np.zeros(n_el) if chem_kind == "counts"
                            else _optional_levels("subtracted", subtracted, n_el))
        # The shift added to the maps (background-subtracted maps: the subtracted level).
        self._shift = np.nan_to_num(self._sub_stated, nan=0.0)
        self.haadf_proj = ParallelProjector(self.n, device=self.device)
        self.chem_proj = ParallelProjector(self.n, device=self.device)
        xp = self.device.xp
        with self.device:
            self._b_haadf = xp.zeros((0, self.n_slices, self.n), dtype=xp.float32)
            self._b_chem = xp.zeros((n_el, 0, self.n_slices, self.n), dtype=xp.float32)
            # 1 where a chemical map's pixel sees vacuum (nearest HAADF image), else 0.
            self._vacuum = xp.zeros((0, self.n_slices, self.n), dtype=xp.float32)
        # Per element and map [n_el, n_chem]: the background of the (shifted) maps.
        self._bg_maps = np.zeros((n_el, 0))
        self._vac_sum = np.zeros((n_el, 0))  # counts over each map's vacuum
        self._vac_n = np.zeros(0)  # vacuum pixels of each map
        self._bg: Any = None
        self._haadf_volume: Any = None  # the HAADF phase's volume (params.haadf_phase)
        self._haadf_off = np.zeros(0)  # per HAADF image
        self._haadf_fit = np.zeros(0, dtype=bool)  # whose offset is fitted
        self._haadf_sigma: float | None = None
        self.gamma = GAMMA_START if self.params.gamma is None else float(self.params.gamma)
        self.gamma_estimated = False
        self.gamma_search: GammaSearch | None = None  # the last consistency search
        self._gamma_n_chem = 0  # chemical tilts at the last estimate
        self.set_gamma(self.gamma)
        self.x: Any = None
        self.scale_tv: np.ndarray | None = None
        # Each element's chemical SNR as estimated at the initialisation (it sets
        # `dark_scale`, the factor on lambda_chem_dark: FusionParams.dark_snr_ref).
        self.chem_snr: np.ndarray | None = None
        self.haadf_scale = 1.0
        self.iteration = 0
        self.history = CostHistory()
        self._haadf_weights: tuple[Any, Any] | None = None
        self._chem_cinv: Any = None
        self._x_prev: Any = None
        self._momentum_k = 1
        self._reseed = False
        self._gamma_due = False  # set by initialize() when gamma is estimated

    def initialize(self, iterations: int | None = None) -> None:
        """Conventional reconstruction of each element (x0 ~ argmin Psi2) by ML-EM, with the
        estimated backgrounds refined alongside (the ML-EM step of an additive term)."""
        if self.n_chem == 0:
            raise SolverNotReadyError("no chemical tilt yet: nothing to initialise from")
        k = self.params.init_iterations if iterations is None else iterations
        xp = self.device.xp
        _, (_, c_inv) = self._weights()
        with self.device:
            # Uniform start with the right total signal (counts above background) per element.
            bg_total = self._bg_maps.sum(axis=1) * self.n_slices * self.n
            local = to_numpy(self._b_chem.sum(axis=(1, 2, 3))).astype(np.float64) - bg_total
            total = np.maximum(self._allreduce(local), 1e-6) / max(self.n_chem, 1)
            vol = float(self._n_slices_total * self.n * self.n)
            x = xp.ones((len(self.elements), self.n_slices, self.n, self.n), dtype=xp.float32)
            if self._haadf_volume is not None:
                # Seeded by the HAADF phase's volume: starting ML-EM from where HAADF sees
                # material carries the HAADF phase's work into the element volumes instead
                # of starting from a uniform block. Its support only, not its amplitude:
                # the heavy elements' signal would put every element's start there.
                v = self._haadf_volume
                peak = float(self._allreduce(np.array([float(v.max())]), "max")[0])
                seed = (v > SEED_SUPPORT * peak).astype(xp.float32) + SEED_FLOOR
                mean = float(self._allreduce(np.array([float(seed.sum())]))[0]) / vol
                if mean > 0:
                    x *= (seed / mean)[None]
                self._haadf_volume = None
            x *= xp.asarray((total / vol).astype(np.float32))[:, None, None, None]
            for _ in range(k):
                if self.params.chem_model == "poisson":
                    x = mlem_step(self.chem_proj, x, self._b_chem, c_inv,
                                  background=self._bg)
                    if self.chem_kind == "subtracted":
                        x = xp.maximum(x, 0)  # signed data can give negative EM ratios
                else:
                    x = self._chem_lsq_step(x, 1.0)
            self.x = x.astype(xp.float32)
            xn = to_numpy(self.x)
        scale = self._tv_scale(xn)
        self.scale_tv = np.where(scale > 0, scale, 1.0)
        self.chem_snr = self._estimate_chem_snr()
        # gamma is (re-)estimated at the first initialisation and, as spectrum images
        # arrive, whenever their number has doubled since the last estimate (the search
        # costs a few dozen iterations; its precision grows with the data).
        self._gamma_due = self.params.gamma is None and (
            not self.gamma_estimated or self.n_chem >= 2 * self._gamma_n_chem)

    def step(self) -> dict[str, float]:
        """One fused iteration. Returns the cost terms of the iterate it started from."""
        if not self.ready:
            raise SolverNotReadyError(
                "need chemical tilts and, unless lambda_haadf is 0, HAADF tilts "
                f"(have {self.n_haadf} HAADF, {self.n_chem} chemical)"
            )
        if self.in_haadf_phase:
            return self._haadf_phase_step()
        if self.x is None or self._reseed:
            # Warm start carries the volumes across HAADF tilts. When chemical tilts arrive,
            # the element split is re-seeded from the conventional reconstruction of all
            # chemical data (the paper's initialisation), and with it the TV scale: carrying
            # a split seeded from one or two chemical tilts through the series was measured
            # to end far worse (64^3 nanocubes, live schedule: <NRMSE> 0.38 vs 0.23).
            self.initialize()
            self._reseed = False
        if self._gamma_due and self.n_haadf:
            # gamma from the volumes of the (re)initialisation: the chemical maps' own
            # reconstruction, before the HAADF term has bent the volumes to any gamma.
            self.estimate_gamma()
        p = self.params
        xp = self.device.xp
        _, (cr_inv, cc_inv) = self._weights()
        with self.device:
            x = self.x
            if p.momentum and self._x_prev is not None:
                # Nesterov extrapolation (as in FISTA); the costs below are those of the
                # extrapolated point the step is taken from.
                k = self._momentum_k
                # Capped: with the coefficient going to 1 the overall level (a direction
                # the objective hardly constrains) kept drifting over long runs.
                beta = min((k - 1.0) / (k + 2.0), p.momentum_max)
                x = xp.maximum(x + beta * (x - self._x_prev), 0)
            self._x_prev = self.x
            self._momentum_k += 1
            dx_h, cost_h, c = self._haadf_update(x) if self.n_haadf else (0.0, 0.0, 1.0)
            # Chemical term at the same iterate.
            Ax = self.chem_proj.forward(x) + self._bg
            if p.chem_model == "poisson":
                cost_c = float(xp.sum(Ax - self._b_chem * xp.log(Ax)))
                dx_c = x * cc_inv * self.chem_proj.adjoint(self._b_chem / Ax - 1.0)
                self._update_background(Ax)
            else:
                r = self._b_chem - Ax
                cost_c = 0.5 * float(xp.vdot(r, r))
                dx_c = cc_inv * self.chem_proj.adjoint(r * cr_inv)
            tv_terms = self._tv_terms(x)
            x = x + p.lambda_haadf * dx_h + self._chem_step_fraction(x) * dx_c
            weights = xp.asarray(p.lambda_tv * self.scale_tv, dtype=xp.float32)
            x_before = self.x
            self.x = self._prox(x, weights)
            if p.pin_level != "off" and p.chem_model == "poisson" and self.n_haadf:
                self.x = self._pin_level(self.x)
            d = self.x - x_before
            norms = self._allreduce(np.array([float(xp.vdot(d, d)),
                                              float(xp.vdot(self.x, self.x))]))

        sums = self._allreduce(np.concatenate([[cost_h, cost_c], tv_terms]))
        cost_h, cost_c = float(sums[0]), float(sums[1])
        tv_now = sums[2:] / self.scale_tv
        self.iteration += 1
        h = self.history
        h.haadf.append(cost_h)
        h.chem.append(cost_c)
        h.tv.append(float(np.sum(tv_now)))
        h.haadf_scale.append(c)
        h.n_haadf_tilts.append(self.n_haadf)
        h.n_chem_tilts.append(self.n_chem)
        h.change.append(float(np.sqrt(norms[0] / max(norms[1], 1e-300))))
        if p.momentum_restart and len(h.haadf) >= 2 and h.haadf[-1] > h.haadf[-2] \
                and h.chem[-1] > h.chem[-2]:
            self._restart_momentum()
        return {"haadf": cost_h, "chem": cost_c, "tv": float(np.sum(tv_now))}

    def run(self, iterations: int, callback: Callable[[int, dict], None] | None = None) -> None:
        """Run `iterations` fused iterations from the current volumes (warm start)."""
        for k in range(iterations):
            costs = self.step()
            if callback is not None:
                callback(k, costs)

    def run_until(self, rule: StopRule | None = None,
                  callback: Callable[[int, dict], None] | None = None) -> StopReason:
        """Iterate until the stopping rule (solver/stopping.py) says so; returns why."""
        rule = rule or StopRule()
        h = self.history
        k = 0
        while True:
            costs = self.step()
            k += 1
            if callback is not None:
                callback(k - 1, costs)
            reason = rule.check(h.change, h.haadf, h.chem, k)
            if reason is not None:
                return reason
