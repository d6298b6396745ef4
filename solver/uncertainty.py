"""Per-voxel, per-element standard errors of the fused reconstruction (science.md §3).

A Laplace approximation: at the solver's current volumes x (chemical-count units, like
`FusedSolver.volumes()`) the posterior covariance is approximated by H^-1, H the curvature
of the objective Phi below, and the standard error of voxel j is sqrt([H^-1]_jj).

The objective
-------------
The fused solver is a preconditioned forward-backward scheme (solver/fusion.py): its fixed
point is not the minimiser of one weighted objective, so an objective has to be chosen. We
take the negative log-posterior whose data terms carry their statistical weights and whose
regulariser is the solver's TV prox carried over to the likelihood's units:

    Phi(x) = 1/(2 sigma_H^2) ||c A_h sum_i w_i x_i^gamma - b_H||^2       HAADF, w_i = Z_i^gamma
           + sum_i 1^T (A_c x_i + bg_i) - b_i^T log(A_c x_i + bg_i)         Poisson, per element
           + sum_i sum_j mu_ij (sqrt(|grad x_i|_j^2 + delta_i^2) - delta_i)  smoothed TV
           + sum_i alpha_i / 2 ||x_i||^2                                     weak Gaussian prior

- HAADF: c is refitted in closed form at x, as the solver does at every iteration; because
  it is refitted (variable projection), the HAADF data say nothing along A_h s itself and
  its curvature is the projected Gauss-Newton term J^T (I - a a^T) J, a = A_h s/||A_h s||
  (otherwise the HAADF would pin the absolute scale of every element, which in fact the
  chemical counts set). sigma_H^2 = mean((b_H - c A_h s)^2) unless `haadf_sigma` is given;
  the residual also holds the model error (partial volume, gamma of an average), so
  sigma_H is over- rather than under-estimated (5x on the simulated nanocubes).
- TV weight (`tv_metric='solver'`, the default). In the chemical directions a solver step
  is the relaxed ML-EM step x - D grad Psi2, D = lambda_c(x) x / (A_c^T 1) (the per-voxel
  step fraction of the solver), followed by the TV prox of weight t_i = lambda_tv *
  scale_tv[i] in x units. A fixed point satisfies grad Psi2 + D^-1 t_i dTV(x_i) = 0, so in
  the likelihood's units the prox is a TV of weight mu_ij = t_i / D_ij. mu is frozen at
  the current x (Phi is then a spatially weighted TV; the two differ only where D varies
  between neighbours), and x is floored at `x_floor * scale_tv[i]` (0.1: the level below
  which an element counts as absent, also used for alpha): the ML-EM metric vanishes at
  x = 0, where the solver's clip, not the metric, holds the voxel. `tv_metric='fisher'`
  reads the prox in the metric of the Fisher diagonal instead (mu = t_i F_jj, a far weaker
  TV than the solver applies; kept for comparison).
- delta_i = `tv_delta * scale_tv[i]` only regularises the curvature where the solution is
  exactly flat: the default 0.003 is well below the gradients of a reconstruction at
  chemical SNR ~ 2, so the curvature is set by the solution's own gradients (on the 64^3
  nanocubes the cheap standard errors change by ~10% between 0.001 and 0.003, then grow
  with delta, +35% at 0.01 and 2x at 0.05, as their rank agreement with Monte Carlo falls).
- alpha_i = `prior_weight * median F_jj` (F the chemical Fisher diagonal where element i
  is present) only keeps H positive definite where nothing else does.

Its curvature
-------------
    H = J^T (I - a a^T) J / sigma_H^2 + blockdiag_i A_c^T diag(q_i) A_c
        + blockdiag_i G^T diag(mu_i / sqrt(|G x_i|^2 + delta_i^2)) G + diag(alpha)

J v = c A_h sum_i gamma w_i x_i^(gamma-1) v_i (Gauss-Newton: the term with the HAADF
residual is dropped; it blows up at x = 0 for gamma < 2 and makes H indefinite);
q_i = 1 / (A_c x_i + bg_i) (expected Fisher information, `fisher='expected'`) or
b_i / (A_c x_i + bg_i)^2 (observed); G the forward differences of solver/tv.py with the
lagged-diffusivity curvature of TV (the quadratic majoriser of TV at x, as in IRLS: the
exact curvature has eigenvalue delta^2 / |.|^3 across an edge and would give edges an
almost unbounded variance). `LaplaceModel.hessian_vector(v, exact=True)` applies instead
the exact Hessian of Phi at fixed c (second-order HAADF term, observed Fisher, exact
smoothed-TV curvature); the tests check it against finite differences of `gradient`.

Two modes
---------
- 'cheap': Jacobi, var_j = 1 / H_jj. diag(A^T diag(q) A) = (A o A)^T q is one
  back-projection with the elementwise-squared matrix (cached per number of tilts): the
  diagonal costs one forward HAADF projection, one forward and one squared back chemical
  projection and a few finite differences, a fraction of one fused iteration. It is a lower
  bound of [H^-1]_jj for the same H (ignores the correlations between voxels and elements).
- 'accurate': diag(H^-1) from `probes` random vectors, each H^-1 v by conjugate gradients
  preconditioned by the voxel-wise element blocks of H (diagonal plus the HAADF rank-one
  block, inverted by Sherman-Morrison), the probes solved as one batch, warm-started from
  the solutions of the previous call (`UncertaintyState`). Two estimators:
  `estimator='sampling'` (default): v_k = B^T xi_k with xi_k standard normal and
  H = B^T B the factorisation of H by its own terms (rows of J, of Q^1/2 A_c, of
  Lambda^1/2 G and of alpha^1/2), so that u_k = H^-1 v_k ~ N(0, H^-1) and
  var_j = mean_k u_kj^2 ("perturbation-optimisation" sampling of a Gaussian): its relative
  error is sqrt(2 / probes) whatever the correlations. `estimator='hutchinson'` (Bekas et
  al.): Rademacher v_k, var_j = mean_k v_kj (H^-1 v_k)_j; its error grows with the
  off-diagonal mass of H^-1, which TV coupling over whole flat regions makes large (on a
  tiny problem 128 probes give 8% median error by sampling, 39% by Hutchinson), and its
  rough probes need ~3x more CG iterations; estimates below the Jacobi bound are raised to
  it. The draws of each tilt come from their own seed, so the right-hand sides of earlier
  tilts are unchanged when tilts are added and warm starts stay close.
`covariance='estimator'` gives instead the linearised covariance of the penalised
estimator, H^-1 F H^-1 (F the data terms of H; Fessler's approximation): sampling with the
data rows of B only, and F_jj / H_jj^2 in the cheap mode.

Honest caveats
--------------
- The Laplace variance is that of the posterior, not of the estimator: it exceeds the
  estimator's (sandwich) covariance by H^-1 R H^-1, R the regulariser's curvature, i.e. it
  counts the regulariser's share (which shows up as bias, not scatter). Over noise
  realisations the empirical scatter lies between the two (bench/uncertainty.py).
- TV shrinks the scatter in flat regions to almost nothing but the global level and puts
  it at edges; the std there depends on mu, i.e. on lambda_tv and on the solver metric.
- The statistical HAADF weight assumes the solver uses the HAADF as well as its noise
  allows. At fine scale it does not (a few SIRT steps per iteration on a model with
  errors), so for elements carried by the HAADF in small features (Au in the nanocubes)
  the standard error is a lower bound, several times below the empirical scatter.
- The solver is not a descent method: with momentum its iterates keep drifting after the
  costs have levelled off, and the scatter over noise realisations depends on the number
  of iterations (it grows several-fold from 60 to 300 iterations on the nanocubes). Its
  loosest direction is the common level of the HAADF-carried elements (x and the refitted
  HAADF scale trade against each other, and only the small chemical steps hold them): the
  chemical counts fix that level to < 1% (sqrt(m^T H^-1 m), `functional_std`), while the
  solver's level scatters by 1-8% over noise realisations. The standard error refers to the
  objective, not to the iteration count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fusetomo.solver.backend import array_module, to_device, to_numpy
from fusetomo.solver.fusion import SolverNotReadyError
from fusetomo.solver.tv import divergence, gradient

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusedSolver

Mode = Literal["cheap", "accurate"]

# Level (relative to scale_tv) above which an element counts as present in a voxel.
PRESENT = 0.1


@dataclass(frozen=True)
class UncertaintyParams:
    """How the standard errors are computed (see the module docstring)."""

    mode: Mode = "cheap"
    estimator: Literal["sampling", "hutchinson"] = "sampling"  # of the 'accurate' mode
    covariance: Literal["laplace", "estimator"] = "laplace"
    probes: int = 16              # probes (samples) of the 'accurate' mode
    probe_batch: int = 8          # probes solved together (memory: ~8 volumes each)
    cg_iterations: int = 100      # CG iterations at most per solve
    cg_tol: float = 1e-2          # stop when ||H u - v|| <= cg_tol ||v||
    tv_delta: float = 0.003       # TV smoothing, relative to each element's scale_tv
    tv_metric: Literal["solver", "fisher"] = "solver"
    x_floor: float = 0.1          # floor of x in the solver metric, relative to scale_tv
    prior_weight: float = 1e-3    # relative to the median chemical Fisher diagonal
    fisher: Literal["expected", "observed"] = "expected"
    haadf_sigma: float | None = None  # HAADF noise std; None: from the residual
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {"mode": ("cheap", "accurate"), "estimator": ("sampling", "hutchinson"),
                   "covariance": ("laplace", "estimator"), "tv_metric": ("solver", "fisher"),
                   "fisher": ("expected", "observed")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {'|'.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("probes", "probe_batch", "cg_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.cg_tol < 1:
            raise ValueError(f"cg_tol must lie in (0, 1), got {self.cg_tol}")
        for name in ("tv_delta", "x_floor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")
        if self.haadf_sigma is not None and not self.haadf_sigma > 0:
            raise ValueError(f"haadf_sigma must be > 0, got {self.haadf_sigma}")


@dataclass
class UncertaintyState:
    """What one call leaves for the next (warm start) and what it measured.

    `solutions` (the probes' H^-1 v, on the solver's device: probes x one volume stack,
    e.g. 16 x 4 x 256^3 float32 = 4.3 GB) are the CG starting points of the next 'accurate'
    call with the same shape, seed, estimator, covariance and probe count (the squared
    projectors are cached by the projectors themselves, per set of tilts)."""

    shape: tuple[int, ...] = ()
    seed: int = 0
    key: tuple[Any, ...] = ()
    solutions: Any = None
    cg_iterations: list[int] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = ""
    haadf_sigma: float = float("nan")


def _tv_operator_diagonal(lam: Any) -> Any:
    """diag(G^T diag(lam) G) for forward differences over the last three axes (lam is one
    weight per voxel, shared by the three difference directions)."""
    d = array_module(lam).zeros_like(lam)
    nd = lam.ndim
    for k in range(3):
        ax = nd - 3 + k
        if lam.shape[ax] < 2:
            continue
        lo = [slice(None)] * nd
        hi = [slice(None)] * nd
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        # difference (x_{j+1} - x_j) carries weight lam_j: it touches voxels j and j+1
        d[tuple(lo)] += lam[tuple(lo)]
        d[tuple(hi)] += lam[tuple(lo)]
    return d


# -- the model ----------------------------------------------------------------------------------
class LaplaceModel:
    """Phi and its curvature at the solver's current volumes (frozen: c, sigma_H, mu,
    delta, alpha and the curvature weights are computed once, at x0).

    Vectors are arrays [..., n_el, n_slices, n, n] on the solver's device (leading axes are
    independent vectors, e.g. probes). `dtype` (default float32) sets the working precision.
    """

    def __init__(self, solver: FusedSolver, params: UncertaintyParams | None = None, *,
                 x: Any = None, dtype: Any = None) -> None:
        if solver.x is None or solver.scale_tv is None:
            raise SolverNotReadyError("no reconstruction yet: run the solver first")
        if solver.n_chem == 0:
            raise SolverNotReadyError("no chemical tilt: nothing to estimate from")
        self.solver = solver
        self.params = p = params or UncertaintyParams()
        dev = solver.device
        xp = self.xp = dev.xp
        sp_ = solver.params
        with dev:
            dt = xp.dtype(xp.float32 if dtype is None else dtype)
            self.dtype = dt
            x0 = solver.x if x is None else to_device(x, dev)
            self.x0 = xp.maximum(xp.asarray(x0, dtype=dt), 0)
            n_el = len(solver.elements)
            scale = xp.asarray(solver.scale_tv, dtype=dt).reshape(n_el, 1, 1, 1)
            self.gamma = float(solver.gamma)
            self.w = xp.asarray(solver.element_weights, dtype=dt)
            self.bg = xp.asarray(solver.chem_background(), dtype=dt)
            self.b_chem = xp.asarray(solver.chem_data(), dtype=dt)

            # HAADF: scale refitted at x0, noise from the residual (or given).
            self.has_haadf = solver.n_haadf > 0 and sp_.lambda_haadf > 0
            self.c = 1.0
            self.profile = False
            self.a: Any = None
            self.sigma2 = 1.0
            if self.has_haadf:
                self.b_haadf = xp.asarray(solver.haadf_data_less_offsets(), dtype=dt)
                As = solver.haadf_proj.forward(self._haadf_signal(self.x0))
                den = float(xp.vdot(As, As))
                self.c = max(float(xp.vdot(As, self.b_haadf)) / den, 1e-30) if den > 0 else 1.0
                r = self.b_haadf - self.c * As
                self.sigma2 = (p.haadf_sigma**2 if p.haadf_sigma is not None
                               else max(float(xp.mean(r * r)), 1e-30))
                # J v = A_h sum_i jh_i v_i (already divided by sigma_H)
                self.jh = (self.c / np.sqrt(self.sigma2)) * self.gamma * self.w \
                    * self.x0 ** (self.gamma - 1)
                # The solver refits c at every iteration (variable projection): the HAADF
                # data then carry no information along the direction of A_h s itself, and
                # the Gauss-Newton term is J^T (I - a a^T) J with a = A_h s / ||A_h s||.
                self.profile = bool(sp_.refit_scale) and den > 0
                self.a = As / np.sqrt(den) if self.profile else None

            # Poisson Fisher weights at x0.
            Ax = solver.chem_proj.forward(self.x0) + self.bg
            self.q = 1.0 / Ax if p.fisher == "expected" else self.b_chem / (Ax * Ax)
            self.fisher_diag = solver.chem_proj.squared().adjoint(self.q).astype(dt)

            # TV weight mu (frozen) and smoothing delta.
            tv_w = (sp_.lambda_tv * scale).astype(dt)
            if p.tv_metric == "solver":
                c_inv = solver.chem_preconditioner()
                frac = solver.chem_step_fraction(self.x0)
                xf = xp.maximum(self.x0, p.x_floor * scale)
                D = frac * xf * xp.asarray(c_inv, dtype=dt)
                self.mu = (tv_w / xp.maximum(D, 1e-30)).astype(dt)
            else:
                self.mu = (tv_w * self.fisher_diag).astype(dt)
            self.delta = (p.tv_delta * scale).astype(dt)
            g = gradient(self.x0)
            self.phi = xp.sqrt(xp.sum(g * g, axis=0) + self.delta**2)
            self.tv_lam = (self.mu / self.phi).astype(dt)
            self._g0 = g

            # Weak prior, relative to the Fisher diagonal where the element is present.
            alpha = np.zeros(n_el)
            fd = to_numpy(self.fisher_diag)
            xn = to_numpy(self.x0)
            for i in range(n_el):
                present = xn[i] > PRESENT * float(solver.scale_tv[i])
                ref = fd[i][present] if present.any() else fd[i].ravel()
                alpha[i] = p.prior_weight * float(np.median(ref))
            self.alpha = xp.asarray(alpha.reshape(n_el, 1, 1, 1), dtype=dt)

    # -- objective ------------------------------------------------------------------------
    def _haadf_signal(self, x: Any) -> Any:
        return self.xp.sum(self.w * self.xp.maximum(x, 0) ** self.gamma, axis=-4)

    def value(self, x: Any) -> float:
        """Phi(x) for one volume stack x [n_el, n_slices, n, n] (x > 0)."""
        xp, s = self.xp, self.solver
        out = 0.0
        if self.has_haadf:
            r = self.c * s.haadf_proj.forward(self._haadf_signal(x)) - self.b_haadf
            out += 0.5 * float(xp.vdot(r, r)) / self.sigma2
        Ax = s.chem_proj.forward(x) + self.bg
        out += float(xp.sum(Ax - self.b_chem * xp.log(Ax)))
        g = gradient(x)
        out += float(xp.sum(self.mu * (xp.sqrt(xp.sum(g * g, axis=0) + self.delta**2)
                                       - self.delta)))
        out += 0.5 * float(xp.sum(self.alpha * x * x))
        return out

    def gradient(self, x: Any) -> Any:
        """grad Phi(x) for one volume stack x (x > 0)."""
        xp, s = self.xp, self.solver
        out = self.alpha * x
        if self.has_haadf:
            r = self.c * s.haadf_proj.forward(self._haadf_signal(x)) - self.b_haadf
            back = s.haadf_proj.adjoint(r)
            out = out + (self.c / self.sigma2) * self.gamma * self.w \
                * x ** (self.gamma - 1) * back
        Ax = s.chem_proj.forward(x) + self.bg
        out = out + s.chem_proj.adjoint(1.0 - self.b_chem / Ax)
        g = gradient(x)
        phi = xp.sqrt(xp.sum(g * g, axis=0) + self.delta**2)
        out = out - divergence(self.mu * g / phi)
        return out

    # -- curvature ------------------------------------------------------------------------
    def hessian_vector(self, v: Any, *, exact: bool = False) -> Any:
        """H v for v [..., n_el, n_slices, n, n]. exact=False: the curvature used for the
        standard errors (module docstring); exact=True: the full Hessian of Phi at x0."""
        xp, s = self.xp, self.solver
        v = xp.asarray(v, dtype=self.dtype)
        out = self.alpha * v
        if self.has_haadf:
            t = s.haadf_proj.forward(xp.sum(self.jh * v, axis=-4))
            if not exact:
                t = self._project_out_scale(t)
            out = out + self.jh * s.haadf_proj.adjoint(t)[..., None, :, :, :]
            if exact:
                r = self.c * s.haadf_proj.forward(self._haadf_signal(self.x0)) - self.b_haadf
                second = (self.c / self.sigma2) * self.gamma * (self.gamma - 1) * self.w \
                    * self.x0 ** (self.gamma - 2) * s.haadf_proj.adjoint(r)
                out = out + second * v
        Ax = s.chem_proj.forward(self.x0) + self.bg
        q = self.b_chem / (Ax * Ax) if exact else self.q
        out = out + s.chem_proj.adjoint(q * s.chem_proj.forward(v))
        gv = gradient(v)
        if exact:
            g0 = self._g0
            proj = xp.sum(g0 * gv, axis=0)
            flux = self.mu * (gv / self.phi - g0 * (proj / self.phi**3))
        else:
            flux = self.tv_lam * gv
        return out - divergence(flux)

    def _project_out_scale(self, t: Any) -> Any:
        """(I - a a^T) t for HAADF stacks t [..., n_tilts, n_slices, n_det]."""
        if not self.profile:
            return t
        xp = self.xp
        coef = xp.sum(t * self.a, axis=(-3, -2, -1), keepdims=True)
        return t - coef * self.a

    def _haadf_diagonal(self) -> Any:
        """diag(J^T (I - a a^T) J): (A_h o A_h)^T 1 times jh^2, less (J^T a)^2."""
        d = self.jh * self.jh * self._haadf_cols()
        if self.profile:
            Ja = self.jh * self.solver.haadf_proj.adjoint(self.a)
            d = d - Ja * Ja
        return self.xp.maximum(d, 0)

    def _haadf_cols(self) -> Any:
        """(A_h o A_h)^T 1 for one slice [n, n]."""
        return self.xp.asarray(self.solver.haadf_proj.squared().col_sums(), dtype=self.dtype)

    def data_hessian_vector(self, v: Any) -> Any:
        """F v: the HAADF and Poisson terms of the curvature alone (no TV, no prior)."""
        xp, s = self.xp, self.solver
        v = xp.asarray(v, dtype=self.dtype)
        out = s.chem_proj.adjoint(self.q * s.chem_proj.forward(v))
        if self.has_haadf:
            t = self._project_out_scale(s.haadf_proj.forward(xp.sum(self.jh * v, axis=-4)))
            out = out + self.jh * s.haadf_proj.adjoint(t)[..., None, :, :, :]
        return out

    def diagonal(self) -> Any:
        """diag(H) of the curvature used for the standard errors, [n_el, n_slices, n, n]."""
        d = self.fisher_diag + _tv_operator_diagonal(self.tv_lam) + self.alpha
        if self.has_haadf:
            d = d + self._haadf_diagonal()
        return d.astype(self.dtype)

    def preconditioner(self) -> Callable[[Any], Any]:
        """r -> M^-1 r with M the voxel-wise element blocks of H: diagonal (Fisher, TV,
        prior) plus the HAADF block cols_j u_j u_j^T (u_j = the HAADF Jacobian weights of
        voxel j), exact and inverted by Sherman-Morrison. It couples the elements of a
        voxel, which HAADF ties together, and is much better than Jacobi for CG."""
        xp = self.xp
        d_inv = 1.0 / (self.fisher_diag + _tv_operator_diagonal(self.tv_lam) + self.alpha)
        if not self.has_haadf:
            return lambda r: d_inv * r
        cols = self._haadf_cols()
        ud = self.jh * d_inv                                    # D^-1 u
        denom = 1.0 + cols * xp.sum(self.jh * ud, axis=0)       # 1 + c u^T D^-1 u
        coef = (cols / denom).astype(self.dtype)

        def apply(r: Any) -> Any:
            rd = d_inv * r
            return rd - ud * (coef * xp.sum(self.jh * rd, axis=-4))[..., None, :, :, :]

        return apply

    def sample_rhs(self, probes: range, seed: int, *, prior: bool = True) -> Any:
        """z_k = B^T xi_k for the probes k in `probes`, with H = B^T B the factorisation
        of the curvature by its terms (HAADF, Poisson, TV and prior rows) and xi_k
        standard normal: cov(z) = H (prior=True) or the data Fisher information F
        (prior=False). Each tilt's draws come from their own seed (seed, term, tilt,
        probe), so the draws of earlier tilts stay the same when tilts are added and the
        previous solutions remain good starting points."""
        xp, s = self.xp, self.solver
        dev = s.device
        n_el, ns, n = len(s.elements), s.n_slices, s.n
        k = len(probes)

        def draw(*key: int, shape: tuple[int, ...]) -> np.ndarray:
            return np.random.default_rng([seed, *key]).standard_normal(shape).astype(
                np.float32)

        z = xp.zeros((k, n_el, ns, n, n), dtype=self.dtype)
        if self.has_haadf:
            xi = np.stack([np.stack([draw(1, t, j, shape=(ns, n))
                                     for t in range(s.n_haadf)]) for j in probes])
            xi = self._project_out_scale(to_device(xi, dev))
            z += self.jh * s.haadf_proj.adjoint(xi)[:, None]
        xi = np.stack([np.stack([np.stack([draw(2, i, t, j, shape=(ns, n))
                                           for t in range(s.n_chem)]) for i in range(n_el)])
                       for j in probes])
        z += s.chem_proj.adjoint(xp.sqrt(self.q) * to_device(xi, dev))
        if prior:
            xi = np.stack([draw(3, j, shape=(3, n_el, ns, n, n)) for j in probes], axis=1)
            z -= divergence(xp.sqrt(self.tv_lam) * to_device(xi, dev))
            xi = np.stack([draw(4, j, shape=(n_el, ns, n, n)) for j in probes])
            z += xp.sqrt(self.alpha) * to_device(xi, dev)
        return z


# -- conjugate gradients ------------------------------------------------------------------------
def _batched_dot(a: Any, b: Any) -> Any:
    return (a * b).reshape(a.shape[0], -1).sum(axis=1)


def batched_cg(model: LaplaceModel, rhs: Any, precond: Callable[[Any], Any], x0: Any | None,
               iterations: int, tol: float) -> tuple[Any, list[int]]:
    """Solve H u_k = rhs_k for a batch rhs [k, n_el, ns, n, n] by preconditioned CG
    (precond: r -> M^-1 r); probes that reach ||r|| <= tol ||rhs|| stop there. Returns
    (u, iterations per probe)."""
    xp = model.xp
    k = rhs.shape[0]
    shape = (k,) + (1,) * (rhs.ndim - 1)
    x = xp.zeros_like(rhs) if x0 is None else x0.astype(rhs.dtype, copy=True)
    r = rhs - model.hessian_vector(x) if x0 is not None else rhs.copy()
    bnorm = xp.sqrt(_batched_dot(rhs, rhs))
    z = precond(r)
    p = z.copy()
    rz = _batched_dot(r, z)
    its = np.full(k, -1, dtype=int)
    for it in range(iterations + 1):
        res = to_numpy(xp.sqrt(_batched_dot(r, r)) / xp.maximum(bnorm, 1e-30))
        done = res <= tol
        its = np.where(done & (its < 0), it, its)
        if done.all() or it == iterations:
            break
        active = xp.asarray(~done)
        Hp = model.hessian_vector(p)
        pHp = _batched_dot(p, Hp)
        alpha = xp.where(active & (pHp > 0), rz / xp.where(pHp > 0, pHp, 1), 0)
        x += alpha.reshape(shape).astype(x.dtype) * p
        r -= alpha.reshape(shape).astype(r.dtype) * Hp
        z = precond(r)
        rz_new = _batched_dot(r, z)
        beta = xp.where(active, rz_new / xp.where(rz != 0, rz, 1), 0)
        p = xp.where(active.reshape(shape), z + beta.reshape(shape).astype(p.dtype) * p, p)
        rz = xp.where(active, rz_new, rz)
    return x, np.where(its < 0, iterations, its).tolist()


def rademacher(probes: range, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Probes of +-1, float32 [len(probes), *shape]; probe k comes from its own seed
    (seed, k), so it is the same on any device and in any batch."""
    return np.stack([
        (2 * np.random.default_rng([seed, 0, k]).integers(0, 2, size=shape, dtype=np.int8)
         - 1).astype(np.float32) for k in probes])


def _data_diagonal(model: LaplaceModel) -> Any:
    """diag(F) of the data terms alone (HAADF Gauss-Newton and Poisson Fisher)."""
    d = model.fisher_diag
    if model.has_haadf:
        d = d + model._haadf_diagonal()
    return d


# -- the public call ----------------------------------------------------------------------------
def estimate_std_error(
    solver: FusedSolver,
    params: UncertaintyParams | None = None,
    *,
    warm_start: UncertaintyState | None = None,
) -> tuple[dict[str, np.ndarray], UncertaintyState]:
    """Standard error per element and voxel (float32 [n_slices, n, n], chemical-count units
    like `solver.volumes()`) at the solver's current volumes, and the state to pass as
    `warm_start` to the next call (after tilts were added and the solver iterated)."""
    p = params or UncertaintyParams()
    t0 = time.perf_counter()
    prev = warm_start or UncertaintyState()
    dev = solver.device
    xp = dev.xp
    with dev:
        model = LaplaceModel(solver, p)
        diag = model.diagonal()
        var = 1.0 / diag
        if p.covariance == "estimator":
            # Jacobi reading of H^-1 F H^-1: F_jj / H_jj^2.
            var = _data_diagonal(model) * var * var
        state = UncertaintyState(shape=tuple(int(d) for d in solver.x.shape), seed=p.seed,
                                 mode=p.mode, haadf_sigma=float(np.sqrt(model.sigma2)))
        if p.mode == "accurate":
            key = (p.estimator, p.covariance, p.probes)
            can_warm = (prev.solutions is not None and prev.shape == state.shape
                        and prev.seed == p.seed and prev.key == key)
            state.key = key
            precond = model.preconditioner()
            sols = []
            acc = xp.zeros_like(diag)
            for start in range(0, p.probes, p.probe_batch):
                batch = range(start, min(start + p.probe_batch, p.probes))
                if p.estimator == "hutchinson":
                    v = to_device(rademacher(batch, state.shape, p.seed), dev)
                else:
                    v = model.sample_rhs(batch, p.seed, prior=p.covariance == "laplace")
                u0 = prev.solutions[batch.start:batch.stop] if can_warm else None
                u, its = batched_cg(model, v, precond, u0, p.cg_iterations, p.cg_tol)
                acc += xp.sum(v * u if p.estimator == "hutchinson" else u * u, axis=0)
                sols.append(u)
                state.cg_iterations.extend(its)
            state.solutions = xp.concatenate(sols)
            est = acc / p.probes
            # Hutchinson with few probes is noisy and may fall below the Jacobi lower bound
            # (or even below 0); it is raised to it. Sampling needs no such guard.
            var = xp.maximum(est, var) if p.estimator == "hutchinson" else est
        std = to_numpy(xp.sqrt(var)).astype(np.float32)
    state.seconds = time.perf_counter() - t0
    return {e: std[i] for i, e in enumerate(solver.elements)}, state


def functional_std(
    solver: FusedSolver,
    weights: Any,
    params: UncertaintyParams | None = None,
) -> np.ndarray:
    """Standard errors of linear functionals m_k^T x of the volumes, e.g. the mean level of
    an element over a region of interest: sqrt(m_k^T H^-1 m_k) (Laplace) or
    sqrt(u_k^T F u_k), u_k = H^-1 m_k (covariance='estimator'), by one CG solve each.
    `weights`: array [k, n_el, n_slices, n, n] (or one functional without the first axis).
    These include the correlations between voxels, which no per-voxel std can give."""
    p = params or UncertaintyParams()
    dev = solver.device
    xp = dev.xp
    with dev:
        model = LaplaceModel(solver, p)
        m = xp.asarray(to_device(np.asarray(weights, dtype=np.float32), dev))
        if m.ndim == 4:
            m = m[None]
        u, _ = batched_cg(model, m, model.preconditioner(), None, p.cg_iterations, p.cg_tol)
        if p.covariance == "estimator":
            var = _batched_dot(u, model.data_hessian_vector(u))
        else:
            var = _batched_dot(m, u)
        return np.sqrt(np.maximum(to_numpy(var), 0)).astype(np.float64)
