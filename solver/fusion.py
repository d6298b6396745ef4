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
  fix it, since the scale c it refits absorbs any level (`pin_level` pins each element's
  model counts to its data's after every iteration, for runs where it drifts);
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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import sigpy as sp
from scipy.optimize import minimize_scalar

from fusetomo.core.errors import FusetomoError
from fusetomo.solver import nuisance as nz
from fusetomo.solver.backend import DeviceChoice, resolve_device, to_device, to_numpy
from fusetomo.solver.fitcheck import FitCheck
from fusetomo.solver.gamma import GammaSearch, search_gamma
from fusetomo.solver.growing import Growing
from fusetomo.solver.iterative import mlem_step, sirt_weights
from fusetomo.solver.linop import sirt_lipschitz
from fusetomo.solver.projector import GeometryError, ParallelProjector
from fusetomo.solver.stopping import StopReason, StopRule
from fusetomo.solver.tv import Backend, prox_tv, tv_value

# Iterations of a full offline reconstruction with the default parameters.
DEFAULT_ITERATIONS = 60
# The HAADF phase's seed of the element volumes: 1 where its volume exceeds this fraction
# of its peak, SEED_FLOOR elsewhere (the maps may still put material there).
SEED_SUPPORT = 0.02
SEED_FLOOR = 0.05
# gamma before it is estimated, and the precision of the estimate (far below what the
# data decide).
GAMMA_START = 1.7
GAMMA_TOL = 0.005


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


class SolverNotReadyError(FusetomoError, RuntimeError):
    """The solver needs at least one HAADF and one chemical tilt before it can iterate."""


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
    # Iterate on the HAADF images alone until the first spectrum image arrives (HAADF SIRT),
    # then seed the element volumes with that volume (a live series that starts HAADF-only).
    haadf_phase: bool = False
    # Pin the volumes' level to the maps after every iteration (see _pin_level): "global",
    # one factor for all elements; "element", each element's own. Off by default: with
    # split_damping, "element" measured worse on a ZnO rod with Au caps (<NRMSE> 0.45 vs
    # 0.37) and "global" too (0.47), and "element" breaks the HAADF step's descent in the
    # first iterations; "global" keeps the level from drifting under a TV weight twice the
    # default (film 0.31 instead of 1.0, rod 0.43 instead of 0.76).
    pin_level: Literal["off", "global", "element"] = "off"
    lambda_chem_dark: float = 0.1
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
        if self.pin_level not in ("off", "global", "element"):
            raise ValueError(f"pin_level must be 'off', 'global' or 'element', got "
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


class FusedSolver:
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
        self.haadf_scale = 1.0
        self.iteration = 0
        self.history = CostHistory()
        self._haadf_weights: tuple[Any, Any] | None = None
        self._chem_cinv: Any = None
        self._x_prev: Any = None
        self._momentum_k = 1
        self._reseed = False
        self._gamma_due = False  # set by initialize() when gamma is estimated

    # -- data -----------------------------------------------------------------------------
    @property
    def n_haadf(self) -> int:
        return self.haadf_proj.n_tilts

    @property
    def n_chem(self) -> int:
        return self.chem_proj.n_tilts

    @property
    def ready(self) -> bool:
        """Chemical tilts are needed; HAADF ones too unless lambda_haadf is 0 (which makes
        this the chemical-only reconstruction with the same TV regulariser). With
        params.haadf_phase, HAADF tilts alone make it ready (the HAADF phase)."""
        if self.n_chem == 0:
            return self.params.haadf_phase and self.n_haadf > 0
        return self.n_haadf > 0 or self.params.lambda_haadf == 0

    @property
    def in_haadf_phase(self) -> bool:
        """Iterating on the HAADF images alone: no spectrum image yet (params.haadf_phase)."""
        return self.n_chem == 0 and self.ready

    @property
    def background(self) -> np.ndarray:
        """Each element's background, counts per pixel of its maps as given (for
        background-subtracted maps: what remains after the subtraction), stated or
        estimated; the mean over the maps when estimated per map."""
        if self._bg_maps.shape[1] == 0:
            return np.nan_to_num(self._bg_stated, nan=0.0)
        return self._bg_maps.mean(axis=1) - self._shift

    @property
    def background_maps(self) -> np.ndarray:
        """The background of every map [n_el, n_chem], counts per pixel as given."""
        return self._bg_maps - self._shift[:, None]

    @property
    def background_estimated(self) -> np.ndarray:
        """Which elements' backgrounds are estimated (not stated) [n_el] bool."""
        return np.isnan(self._bg_stated) & (self.params.background != "zero")

    @property
    def subtracted_level(self) -> np.ndarray:
        """For background-subtracted maps, the level added back to them per element (stated
        or estimated); zeros for raw counts."""
        return self._shift.copy()

    def stated_model(self) -> dict[str, Any]:
        """What the caller stated about the data model, as the constructor's keyword
        arguments (`background`, `chem_kind`, `subtracted`; None where not stated and so
        estimated): a twin solver built with them estimates the same nuisances."""
        def opt(v: np.ndarray) -> list[float | None]:
            return [None if np.isnan(x) else float(x) for x in v]
        return {"background": opt(self._bg_stated), "chem_kind": self.chem_kind,
                "subtracted": opt(self._sub_stated) if self.chem_kind == "subtracted"
                else None}

    @property
    def haadf_offsets(self) -> np.ndarray:
        """The HAADF offset of every image [n_haadf], in the images' units."""
        return self._haadf_off.copy()

    def _check_stack(self, what: str, data: np.ndarray, n_angles: int) -> np.ndarray:
        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 2:
            data = data[None]
        if data.shape != (n_angles, self.n_slices, self.n):
            raise GeometryError(
                f"{what}: shape {data.shape} != ({n_angles}, {self.n_slices}, {self.n})"
            )
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{what}: contains NaN or inf")
        return data

    def haadf_vacuum(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each HAADF image's starting offset and whether it is fitted, by
        params.haadf_offset: (levels [k], fitted [k] bool)."""
        mode = self.params.haadf_offset
        k = images.shape[0]
        start = np.zeros(k) if mode == "none" else nz.haadf_offsets(images)
        fit = nz.edge_touching(images) if mode == "auto" else np.full(k, mode == "fit")
        return start, fit

    # The data stacks grow by appending (solver/growing.py: no copy of the stack per tilt);
    # assigning one replaces it.
    @property
    def _b_haadf(self) -> Any:
        return self._haadf_rows.view

    @_b_haadf.setter
    def _b_haadf(self, value: Any) -> None:
        self._haadf_rows = Growing(value, axis=0)

    @property
    def _b_chem(self) -> Any:
        return self._chem_rows.view

    @_b_chem.setter
    def _b_chem(self, value: Any) -> None:
        self._chem_rows = Growing(value, axis=1)

    @property
    def _vacuum(self) -> Any:
        return self._vacuum_rows.view

    @_vacuum.setter
    def _vacuum(self, value: Any) -> None:
        self._vacuum_rows = Growing(value, axis=0)

    def add_haadf(self, angles: Sequence[float] | float, images: np.ndarray,
                  shifts: Any | None = None, *,
                  vacuum: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Append HAADF projections [k, n_slices, n] (any intensity units, any offset).
        `shifts` [k, 2]: where each image sits, (ds, dd) px, relative to the projection of
        the volume (the alignment, modelled by the projector instead of resampling the
        image). `vacuum`: `haadf_vacuum` of the whole images, from a caller that passes a
        part of them (a slab)."""
        ang = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        data = self._check_stack("HAADF", images, ang.size)
        xp = self.device.xp
        self.haadf_proj.extend(ang, shifts)
        with self.device:
            self._haadf_rows.append(to_device(data, self.device), xp)  # no copy of the stack
        start, fit = self.haadf_vacuum(data) if vacuum is None else vacuum
        self._haadf_off = np.concatenate([self._haadf_off, start])
        self._haadf_fit = np.concatenate([self._haadf_fit, fit])
        self._haadf_sigma = None
        self._haadf_weights = None
        self._restart_momentum()

    def _restart_momentum(self) -> None:
        self._x_prev = None
        self._momentum_k = 1

    def _chem_stack(self, maps: dict[str, np.ndarray] | np.ndarray, k: int) -> np.ndarray:
        """Maps as [n_el, k, n_slices, n] float32 in the solver's element order, checked."""
        if isinstance(maps, dict):
            unknown = sorted(set(maps) - set(self.elements))
            missing = [e for e in self.elements if e not in maps]
            if unknown or missing:
                raise KeyError(f"chemical maps: unknown elements {unknown}, missing {missing}")
            stack = [self._check_stack(f"chemical map {e}", maps[e], k)
                     for e in self.elements]
        else:
            arr = np.asarray(maps)
            if arr.ndim == 3:
                arr = arr[:, None]
            if arr.shape[0] != len(self.elements):
                raise GeometryError(
                    f"chemical maps: {arr.shape[0]} maps for {len(self.elements)} elements"
                )
            stack = [self._check_stack(f"chemical map {e}", arr[i], k)
                     for i, e in enumerate(self.elements)]
        if self.chem_kind == "counts":
            for e, m in zip(self.elements, stack, strict=True):
                if np.any(m < 0):
                    raise ValueError(f"chemical map {e}: negative counts (min "
                                     f"{float(m.min())}); background-subtracted maps need "
                                     "chem_kind='subtracted'")
        return np.stack(stack)

    def _vacuum_masks(self, angles: np.ndarray) -> np.ndarray:
        """Vacuum masks for chemical maps at `angles`, from the nearest HAADF images."""
        h = to_numpy(self._b_haadf)
        if h.shape[0] == 0:
            return np.stack([nz.border_columns((self.n_slices, self.n))] * angles.size)
        if self._haadf_sigma is None:
            self._haadf_sigma = nz.haadf_noise(h)
        return nz.nearest_masks(h, self.haadf_proj.angles, angles, self._haadf_off,
                                self._haadf_sigma)

    def add_chem(
        self, angles: Sequence[float] | float, maps: dict[str, np.ndarray] | np.ndarray,
        shifts: Any | None = None, *, vacuum_masks: np.ndarray | None = None,
    ) -> None:
        """Append chemical maps at `angles`: a dict element -> [k, n_slices, n] or an
        array [n_elements, k, n_slices, n] in the solver's element order (counts >= 0, or
        signed for background-subtracted maps). `shifts` [k, 2] as for `add_haadf`.
        `vacuum_masks` [k, n_slices, n]: where the maps see vacuum, from a caller that
        passes a part of the images (a slab); by default from the nearest HAADF images."""
        if not self.elements:
            raise ValueError("this solver has no element (a HAADF-only series): it takes "
                             "no spectrum image")
        ang = np.atleast_1d(np.asarray(angles, dtype=np.float64))
        raw = self._chem_stack(maps, ang.size)
        masks = self._vacuum_masks(ang) if vacuum_masks is None else np.asarray(
            vacuum_masks, dtype=bool)
        unknown_shift = np.isnan(self._sub_stated)
        if unknown_shift.any() and self.n_chem == 0:
            # The subtracted level, from the vacuum of the first maps (then kept).
            moments = self._allreduce(nz.vacuum_moments(raw, masks).ravel()).reshape(3, -1)
            self._shift = np.where(unknown_shift, nz.subtracted_level(moments), self._shift)
        data = raw + self._shift.astype(np.float32)[:, None, None, None]
        self._vac_sum = np.concatenate(
            [self._vac_sum, nz.chem_background_start(data, masks) * masks.sum(axis=(1, 2))],
            axis=1)
        self._vac_n = np.concatenate([self._vac_n, masks.sum(axis=(1, 2)).astype(float)])
        xp = self.device.xp
        self.chem_proj.extend(ang, shifts)
        with self.device:
            self._chem_rows.append(to_device(data, self.device), xp)  # (growing.py)
            self._vacuum_rows.append(to_device(masks.astype(np.float32), self.device), xp)
        self._set_background(self._background_start())
        self._chem_cinv = None
        self._restart_momentum()
        # New chemical data re-seeds the element split at the next step (see step()).
        self._reseed = self.x is not None and self.params.reseed_on_chem

    def _background_start(self) -> np.ndarray:
        """The background of every map [n_el, n_chem] of the shifted data: stated (plus the
        shift), else the mean over the vacuum (per map, or pooled over the element's maps),
        or the shift alone for params.background 'zero'."""
        stated = (self._bg_stated + self._shift)[:, None]
        n_el, m = self._vac_sum.shape
        both = self._allreduce(np.concatenate([self._vac_sum.ravel(), self._vac_n]))
        vac_sum, vac_n = both[:n_el * m].reshape(n_el, m), both[n_el * m:]
        if self.params.background_per_map:
            vac = vac_sum / np.maximum(vac_n, 1.0)
        else:
            vac = (vac_sum.sum(axis=1, keepdims=True)
                   / max(float(vac_n.sum()), 1.0)) * np.ones_like(vac_sum)
        unknown = vac if self.params.background != "zero" else self._shift[:, None] * 1.0
        return np.where(np.isnan(stated), unknown, stated) * np.ones_like(self._vac_sum)

    def _set_background(self, bg_maps: np.ndarray) -> None:
        """Store the per-map background [n_el, n_chem] (floored at eps, the Poisson mean's
        floor) and its device copy [n_el, n_chem, 1, 1]."""
        self._bg_maps = np.maximum(np.asarray(bg_maps, dtype=np.float64), self.params.eps)
        xp = self.device.xp
        with self.device:
            self._bg = xp.asarray(self._bg_maps[:, :, None, None], dtype=xp.float32)

    def set_gamma(self, gamma: float) -> None:
        """Use `gamma` in the HAADF model from now on (1 <= gamma <= 2.5)."""
        if not 1.0 <= float(gamma) <= 2.5:
            raise ValueError(f"gamma must lie in [1, 2.5], got {gamma}")
        self.gamma = float(gamma)
        xp = self.device.xp
        with self.device:
            self._w = xp.asarray((self.Z**self.gamma)[:, None, None, None], dtype=xp.float32)
        self._haadf_weights = None
        self._restart_momentum()

    def replace_haadf(self, images: np.ndarray) -> None:
        """New data for the HAADF tilts already added (same angles, same order), e.g.
        after the alignment was refined: [n_haadf, n_slices, n]."""
        data = self._check_stack("HAADF images", images, self.n_haadf)
        with self.device:
            self._b_haadf = to_device(data, self.device)
        mode = self.params.haadf_offset
        if mode != "none":
            self._haadf_off = nz.haadf_offsets(data)
        if mode == "auto":
            self._haadf_fit = nz.edge_touching(data)
        self._restart_momentum()

    def replace_chem(self, maps: dict[str, np.ndarray]) -> None:
        """New maps for the chemical tilts already added (same angles, same order):
        element -> [n_chem, n_slices, n]."""
        missing = [e for e in self.elements if e not in maps]
        if missing:
            raise KeyError(f"chemical maps: missing {missing}")
        data = self._chem_stack(maps, self.n_chem) \
            + self._shift.astype(np.float32)[:, None, None, None]
        with self.device:
            self._b_chem = to_device(data, self.device)
        self._restart_momentum()

    def set_shifts(self, haadf: Any | None = None, chem: Any | None = None) -> None:
        """New detector shifts [n, 2] (ds, dd) for the HAADF and/or chemical tilts already
        added (same order), e.g. after the alignment was refined; the data stay as they are.
        Both are checked before either is set."""
        if haadf is not None:
            haadf = self.haadf_proj.check_shifts(haadf, self.n_haadf)
        if chem is not None:
            chem = self.chem_proj.check_shifts(chem, self.n_chem)
        if haadf is not None:
            self.haadf_proj.set_shifts(haadf)
            self._haadf_weights = None
        if chem is not None:
            self.chem_proj.set_shifts(chem)
            self._chem_cinv = None
        self._restart_momentum()

    def haadf_data(self) -> Any:
        """The HAADF images the model is fitted to, [n_haadf, n_slices, n] on the device."""
        return self._b_haadf

    def haadf_data_less_offsets(self) -> Any:
        """The HAADF images less their (fitted) offsets: what c A s models."""
        xp = self.device.xp
        with self.device:
            return self._b_haadf - xp.asarray(self._haadf_off, dtype=xp.float32)[:, None, None]

    @property
    def element_weights(self) -> Any:
        """Z_i^gamma per element, [n_el, 1, 1, 1] on the device (the HAADF model's weights)."""
        return self._w

    def chem_background(self) -> Any:
        """The model's background of every map, [n_el, n_chem, 1, 1] on the device (the
        counts A x_i is added to)."""
        if self._bg is None:
            raise ValueError("no chemical tilt yet: no background")
        return self._bg

    def chem_background_per_element(self) -> Any:
        """Each element's mean background over its maps, [n_el, 1, 1, 1] on the device: the
        level a new map is expected to have."""
        xp = self.device.xp
        with self.device:
            return xp.asarray(self._bg_maps.mean(axis=1)[:, None, None, None],
                              dtype=xp.float32)

    def chem_preconditioner(self) -> Any:
        """1 / (A_c^T 1) per voxel of one slice, the chemical step's preconditioner."""
        return self._weights()[1][1]

    def chem_step_fraction(self, x: Any) -> Any:
        """The chemical step fraction per element and voxel at volumes x (see step())."""
        return self._chem_step_fraction(x)

    def chem_data(self) -> Any:
        """The chemical counts the model is fitted to, [n_el, n_chem, n_slices, n]."""
        return self._b_chem

    def model_chem(self) -> Any:
        """The model's expected counts A x_i + background at the chemical tilts, with their
        shifts ([n_el, n_chem, n_slices, n], on the solver's device)."""
        if self.x is None or self.n_chem == 0:
            raise ValueError("no chemical model yet: add chemical tilts and run the solver")
        with self.device:
            return self.chem_proj.forward(self.x) + self._bg

    def model_haadf(self) -> Any:
        """The model's HAADF images at the solver's tilts, c A sum_i (Z_i x_i)^gamma + o_t,
        with their shifts and offsets: what the measured images are fitted with
        ([n_haadf, n_slices, n], on the solver's device)."""
        if (self.x is None and self._haadf_volume is None) or self.n_haadf == 0:
            raise ValueError("no HAADF model yet: add HAADF tilts and run the solver first")
        xp = self.device.xp
        with self.device:
            off = xp.asarray(self._haadf_off, dtype=xp.float32)[:, None, None]
            return self.haadf_scale * self.haadf_proj.forward(self.haadf_signal()) + off

    def haadf_signal(self) -> Any:
        """The volume HAADF sees, sum_i (Z_i x_i)^gamma (before the fitted scale c); in the
        HAADF phase, its SIRT volume (the scale is then 1)."""
        if self.x is None and self._haadf_volume is not None:
            return self._haadf_volume
        if self.x is None:
            raise ValueError("no volumes yet: run the solver first")
        xp = self.device.xp
        with self.device:
            return xp.sum(self._w * xp.maximum(self.x, 0) ** self.gamma, axis=0)

    # -- set-up ---------------------------------------------------------------------------
    def _weights(self) -> tuple[tuple[Any, Any], Any]:
        if self._haadf_weights is None and self.n_haadf:
            self._haadf_weights = sirt_weights(self.haadf_proj)
        if self._chem_cinv is None and self.n_chem:
            self._chem_cinv = sirt_weights(self.chem_proj)  # (1/row sums, 1/col sums)
        return self._haadf_weights, self._chem_cinv

    def lipschitz(self) -> dict[str, float]:
        """Power-method Lipschitz constants of the SIRT-preconditioned HAADF and chemical
        least-squares gradients (each should be <= 1, which makes 1 a safe full step)."""
        out = {}
        if self.n_haadf:
            out["haadf"] = sirt_lipschitz(self.haadf_proj)
        if self.n_chem:
            out["chem"] = sirt_lipschitz(self.chem_proj)
        return out

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
        # gamma is (re-)estimated at the first initialisation and, as spectrum images
        # arrive, whenever their number has doubled since the last estimate (the search
        # costs a few dozen iterations; its precision grows with the data).
        self._gamma_due = self.params.gamma is None and (
            not self.gamma_estimated or self.n_chem >= 2 * self._gamma_n_chem)

    def _update_background(self, Ax: Any) -> None:
        if self.params.background == "joint":
            self._joint_background(Ax)

    def _joint_background(self, Ax: Any) -> None:
        """One ML-EM step of the estimated backgrounds at the model counts Ax (background
        included), over the vacuum pixels: b <- b * mean over the vacuum of the map (or of
        all maps) of data / Ax. Over the whole map, the volumes' faint haze and the
        background trade off (measured: 8-35 % low); the vacuum anchors the level while
        the model's own counts there still count."""
        est = self.background_estimated
        if not est.any():
            return
        xp = self.device.xp
        with self.device:
            ratio = xp.sum(self._b_chem / Ax * self._vacuum, axis=(2, 3), dtype=xp.float64)
            both = np.concatenate([np.asarray(to_numpy(ratio), np.float64).ravel(),
                                   np.asarray(to_numpy(self._vacuum.sum(axis=(1, 2))),
                                              np.float64)])
        both = self._allreduce(both)
        n_el, m = self._bg_maps.shape
        ratio, npx = both[:n_el * m].reshape(n_el, m), both[n_el * m:]
        if self.params.background_per_map:
            factor = ratio / np.maximum(npx, 1.0)
        else:
            factor = np.repeat(ratio.sum(axis=1, keepdims=True) / max(npx.sum(), 1.0),
                               m, axis=1)
        bg = np.where(est[:, None], self._bg_maps * factor, self._bg_maps)
        self._set_background(bg)

    # -- reductions and the prox: hooks a slab of a larger volume overrides to make them
    # -- global (solver/slabs.py); here the solver holds the whole volume ------------------
    @property
    def _n_slices_total(self) -> int:
        return self.n_slices

    def _allreduce(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """Combine per-slab values over all slabs (`op` 'sum' or 'max')."""
        return values

    def _tv_scale(self, xn: np.ndarray) -> np.ndarray:
        """Each element's 99.9th percentile of its positive voxels (1 if none)."""
        return np.array([np.percentile(v[v > 0], 99.9) if np.any(v > 0) else 1.0 for v in xn])

    def _prox(self, x: Any, weights: Any) -> Any:
        p = self.params
        return prox_tv(x, weights, iterations=p.tv_iterations, backend=p.tv_backend)

    def _tv_terms(self, x: Any) -> np.ndarray:
        """Total variation of each element volume (this slab's share)."""
        return np.asarray(to_numpy(tv_value(x)), dtype=np.float64)

    # -- iterations -----------------------------------------------------------------------
    def _chem_lsq_step(self, x: Any, relax: float) -> Any:
        _, (r_inv, c_inv) = self._weights()
        resid = (self._b_chem - self._bg - self.chem_proj.forward(x)) * r_inv
        return x + relax * c_inv * self.chem_proj.adjoint(resid)

    def _haadf_update(self, x: Any) -> tuple[Any, float, float]:
        """The HAADF step at x: (dx, Psi1 at x, fitted intensity scale)."""
        p = self.params
        xp = self.device.xp
        (hr_inv, hc_inv), _ = self._weights()
        xg1 = x ** (self.gamma - 1)
        s = xp.sum(self._w * xg1 * x, axis=0)
        As = self.haadf_proj.forward(s)
        c = self._fit_scale_offsets(As)
        b = self._b_haadf - xp.asarray(self._haadf_off, dtype=xp.float32)[:, None, None]
        resid = b - c * As
        cost_h = 0.5 * float(xp.vdot(resid, resid))
        # A few SIRT iterations on the summed signal alone (one volume, cheap), then
        # the change they ask for is split among the elements.
        target = c * s
        for k in range(p.haadf_inner_iterations):
            r_k = resid if k == 0 else b - self.haadf_proj.forward(target)
            target = xp.maximum(target + hc_inv * self.haadf_proj.adjoint(r_k * hr_inv), 0)
        # Split the change of the summed signal among the elements in proportion to
        # x_i Z_i^beta: beta = 0 keeps each voxel's element ratios (its stoichiometry,
        # decided by the chemical maps and TV) and scales the amount of material; larger
        # beta gives more of the change to heavy elements, which dominate HAADF. Normalised
        # so that, to first order, sum_i ds/dx_i dx_i = ds, except where the voxel's HAADF
        # sensitivity gu is small against the volume's largest (split_damping): there the
        # HAADF signal is most likely a heavy element's that the estimate has blurred away,
        # and handing it to the light elements present made hot spots of them (measured: a
        # Pt-decorated film, <NRMSE> 0.35 -> 0.21 with 1e-3 instead of 1e-6; a ZnO rod
        # with Au caps 0.48 -> 0.45; the demo's nanocubes 0.218 -> 0.221).
        ds = (target - c * s) / c
        g = self.gamma * self._w * xg1
        u = x * xp.asarray((self.Z ** p.split_bias)[:, None, None, None], dtype=xp.float32)
        gu = xp.sum(g * u, axis=0)
        damp = p.split_damping * float(
            self._allreduce(np.array([float(gu.max())]), "max")[0]) + 1e-30
        dx_h = u * (ds / (gu + damp))
        # At most a fourfold change of the material in a voxel per iteration.
        dx_h = xp.clip(dx_h, -x, 3.0 * x)
        return dx_h, cost_h, c

    def _pin_level(self, x: Any) -> Any:
        """Scale the volumes so that their model counts add up to the data's, as every ML-EM
        step leaves them (one factor, or one per element). The HAADF term alone does not fix
        the volumes' level (the scale c it refits absorbs it), and under a strong TV weight
        its shrinkage drifted the level down and c up over the iterations (measured: a
        Pt-decorated film with lambda_tv 0.01 lost 90 % of its material between iterations
        5 and 60, <NRMSE> 0.27 -> 0.93)."""
        xp = self.device.xp
        cols = self.chem_proj.col_sums()  # A^T 1 over all chemical tilts, one slice [n, n]
        model = to_numpy(xp.sum(x * cols, axis=(1, 2, 3), dtype=xp.float64))
        data = to_numpy(xp.sum(self._b_chem - self._bg, axis=(1, 2, 3), dtype=xp.float64))
        both = self._allreduce(np.concatenate([np.asarray(model, np.float64),
                                               np.asarray(data, np.float64)]))
        n_el = len(self.elements)
        model, data = both[:n_el], both[n_el:]
        if self.params.pin_level == "global":
            # One factor for all elements: only the direction the HAADF term cannot see
            # (all of x scaled, c the other way) is fixed; the elements' ratios stay.
            m, d = float(model.sum()), float(data.sum())
            ratio = np.full(n_el, d / m if m > 0 and d > 0 else 1.0)
        else:
            ratio = np.where((model > 0) & (data > 0), data / np.maximum(model, 1e-300), 1.0)
        return x * xp.asarray(ratio.astype(np.float32))[:, None, None, None]

    def _fit_scale_offsets(self, As: Any) -> float:
        """Refit the HAADF intensity scale c (params.refit_scale) and the offsets of the
        images whose offset is fitted (params.haadf_offset) to the model images As = A s, in
        closed form; returns c. The other offsets stay as they are (vacuum level, or 0)."""
        p = self.params
        if not (p.refit_scale or self._haadf_fit.any()):
            return self.haadf_scale
        sums = self._allreduce(nz.image_sums(As, self._b_haadf).ravel()).reshape(4, -1)
        npx = self._n_slices_total * self.n
        c, off = nz.scale_offsets(sums, npx, self._haadf_off, self._haadf_fit)
        if p.refit_scale and c > 0:
            self.haadf_scale = c
        self._haadf_off = np.where(self._haadf_fit,
                                   (sums[1] - self.haadf_scale * sums[0]) / npx, off)
        return self.haadf_scale

    def _chem_step_fraction(self, x: Any) -> Any:
        """Per element and voxel: lambda_chem where the element carries the HAADF signal,
        up to lambda_chem_dark where HAADF cannot see it (light elements next to heavy ones),
        so that each element is driven by the modality that sees it."""
        p = self.params
        if self.n_haadf == 0:
            return p.lambda_chem_dark  # nothing is seen by HAADF
        if p.lambda_chem_dark == p.lambda_chem:
            return p.lambda_chem
        xp = self.device.xp
        contrib = self._w * x**self.gamma
        share = contrib / xp.maximum(xp.sum(contrib, axis=0), 1e-30)
        return p.lambda_chem + (p.lambda_chem_dark - p.lambda_chem) * (1.0 - share)

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
            d = self.x - x_before
            norms = self._allreduce(np.array([float(xp.vdot(d, d)),
                                              float(xp.vdot(self.x, self.x))]))
            if p.pin_level != "off" and p.chem_model == "poisson" and self.n_haadf:
                self.x = self._pin_level(self.x)

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
        return {"haadf": cost_h, "chem": cost_c, "tv": float(np.sum(tv_now))}

    def haadf_misfit(self, gamma: float, x: Any | None = None) -> float:
        """The HAADF least-squares misfit at `gamma` (volumes x, default the current ones),
        with the scale and offsets refitted in closed form for it."""
        xp = self.device.xp
        x = self.x if x is None else x
        with self.device:
            w = xp.asarray((self.Z**gamma)[:, None, None, None], dtype=xp.float32)
            As = self.haadf_proj.forward(xp.sum(w * xp.maximum(x, 0) ** gamma, axis=0))
            b = self._b_haadf
            sums = self._allreduce(nz.image_sums(As, b).ravel()).reshape(4, -1)
            npx = self._n_slices_total * self.n
            c, off = nz.scale_offsets(sums, npx, self._haadf_off, self._haadf_fit)
            r = b - c * As - xp.asarray(off, dtype=xp.float32)[:, None, None]
            return float(self._allreduce(np.array([float(xp.vdot(r, r))]))[0])

    def estimate_gamma(self) -> float:
        """Estimate gamma within params.gamma_bounds (params.gamma_method: the gamma whose
        short fused run fits the chemical maps best, solver/gamma.py; or the HAADF misfit at
        the current volumes) and use it from now on. Returns it."""
        if self.x is None or self.n_haadf == 0 or self.n_chem == 0:
            raise SolverNotReadyError("gamma needs HAADF and chemical tilts and volumes")
        if self.params.gamma_method == "consistency":
            self.gamma_search = search_gamma(self)
            gamma = self.gamma_search.gamma
        else:
            lo, hi = self.params.gamma_bounds
            gamma = float(minimize_scalar(self.haadf_misfit, bounds=(lo, hi),
                                          method="bounded", options={"xatol": GAMMA_TOL}).x)
        self.set_gamma(gamma)
        self.gamma_estimated = True
        self._gamma_due = False
        self._gamma_n_chem = self.n_chem
        return self.gamma

    def model_summary(self) -> dict[str, Any]:
        """The nuisance model as fitted, for a reconstruction file's attributes: gamma (and
        whether estimated), each element's background (and which were estimated), the
        subtracted level of background-subtracted maps, the HAADF offsets and scale."""
        out: dict[str, Any] = {
            "model_elements": list(self.elements),
            "model_gamma": self.gamma,
            "model_gamma_estimated": self.gamma_estimated,
            "model_chem_kind": self.chem_kind,
            "model_background": self.background.astype(np.float64),
            "model_background_estimated": self.background_estimated,
            "model_haadf_scale": self.haadf_scale,
        }
        if self.chem_kind == "subtracted":
            out["model_subtracted_level"] = self.subtracted_level
            out["model_subtracted_estimated"] = np.isnan(self._sub_stated)
        if self.n_haadf:
            out["model_haadf_offsets"] = self.haadf_offsets
        if self.gamma_search is not None:
            g = self.gamma_search
            out["model_gamma_search_s"] = g.seconds
            out["model_gamma_search_bin"] = g.bin
            out["model_gamma_search_curve"] = np.asarray(g.curve, dtype=np.float64)
        return out

    def fit_check(self) -> FitCheck:
        """chi^2 per measurement of each modality at the current volumes, what is unexplained
        of the HAADF contrast, and the warnings they give (solver/fitcheck.py)."""
        if self.x is None:
            raise SolverNotReadyError("no reconstruction yet: nothing to check")
        xp = self.device.xp
        h_chi2 = h_unexpl = None
        with self.device:
            if self.n_haadf:
                b = self.haadf_data_less_offsets()
                r = b - self.haadf_scale * self.haadf_proj.forward(self.haadf_signal())
                sums = self._allreduce(np.array([float(xp.vdot(r, r)), float(b.sum()),
                                                 float(xp.vdot(b, b)), float(b.size)]))
                rr, sb, sbb, n = sums
                if self._haadf_sigma is None:
                    self._haadf_sigma = nz.haadf_noise(to_numpy(self._b_haadf))
                var_b = max(sbb - sb * sb / n, 1e-300)
                h_unexpl = float(rr / var_b)
                h_chi2 = (float(rr / n / self._haadf_sigma**2) if self._haadf_sigma > 0
                          else None)
            mu = self.chem_proj.forward(self.x) + self._bg
            pearson = to_numpy(xp.sum((self._b_chem - mu) ** 2 / mu, axis=(1, 2, 3),
                                      dtype=xp.float64))
        pearson = self._allreduce(np.asarray(pearson, dtype=np.float64))
        n_px = float(self.n_chem * self._n_slices_total * self.n)
        chem = {e: float(v / n_px) for e, v in zip(self.elements, pearson, strict=True)}
        return FitCheck.build(h_chi2, h_unexpl, chem, self.gamma,
                              self.gamma_estimated, self.params.gamma_bounds)

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

    def _haadf_phase_step(self) -> dict[str, float]:
        """One non-negative SIRT iteration of the HAADF images (less their offsets) alone:
        the volume of what HAADF sees, in the images' units, until the first spectrum
        image seeds the element volumes with it (see initialize)."""
        xp = self.device.xp
        (r_inv, c_inv), _ = self._weights()
        with self.device:
            if self._haadf_volume is None:
                self._haadf_volume = xp.zeros((self.n_slices, self.n, self.n), xp.float32)
            v = self._haadf_volume
            r = self.haadf_data_less_offsets() - self.haadf_proj.forward(v)
            cost = 0.5 * float(self._allreduce(np.array([float(xp.vdot(r, r))]))[0])
            v_new = xp.maximum(v + c_inv * self.haadf_proj.adjoint(r * r_inv), 0)
            d = v_new - v
            norms = self._allreduce(np.array([float(xp.vdot(d, d)),
                                              float(xp.vdot(v_new, v_new))]))
            self._haadf_volume = v_new
        self.iteration += 1
        h = self.history
        for name, value in (("haadf", cost), ("chem", 0.0), ("tv", 0.0),
                            ("haadf_scale", 1.0), ("n_haadf_tilts", self.n_haadf),
                            ("n_chem_tilts", 0),
                            ("change", float(np.sqrt(norms[0] / max(norms[1], 1e-300))))):
            getattr(h, name).append(value)
        return {"haadf": cost, "chem": 0.0, "tv": 0.0}

    def haadf_volume(self) -> np.ndarray:
        """The volume HAADF sees, NumPy float32 [n_slices, n, n]: in the HAADF phase the
        SIRT volume (the images' units per voxel), after it c sum_i (Z_i x_i)^gamma."""
        if self._haadf_volume is not None:
            return to_numpy(self._haadf_volume).astype(np.float32)
        if self.x is None:
            raise SolverNotReadyError("no reconstruction yet")
        with self.device:
            return to_numpy(self.haadf_scale * self.haadf_signal()).astype(np.float32)

    # -- results --------------------------------------------------------------------------
    def volumes(self) -> dict[str, np.ndarray]:
        """Current element volumes as NumPy float32 [n_slices, n, n] (chemical-map units)."""
        if self.x is None:
            raise SolverNotReadyError("no reconstruction yet")
        xn = to_numpy(self.x).astype(np.float32)
        return {e: xn[i] for i, e in enumerate(self.elements)}
