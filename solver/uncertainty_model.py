"""The Laplace model of the standard errors (split from solver/uncertainty.py, whose
docstring derives it and which re-exports every public name here): `UncertaintyParams`,
and `LaplaceModel`, the objective Phi, its gradient and its curvature H at the solver's
current volumes, with the diagonal, the preconditioner and the probes' right-hand sides
that the 'cheap' and 'accurate' modes need."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fusetomo.solver.backend import array_module, to_device, to_numpy
from fusetomo.solver.fusion import SolverNotReadyError
from fusetomo.solver.tv import divergence, gradient

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusedSolver

__all__ = ["PRESENT", "LaplaceModel", "Mode", "UncertaintyParams"]

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
