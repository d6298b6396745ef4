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

Where the code is: the parameters and `LaplaceModel` (Phi, its gradient and curvature) in
solver/uncertainty_model.py; here the warm-start state, the batched conjugate gradients
and the public calls (`estimate_std_error`, `functional_std`). Every public name is
importable from this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusetomo.solver.backend import to_device, to_numpy
from fusetomo.solver.uncertainty_model import (
    PRESENT,
    LaplaceModel,
    Mode,
    UncertaintyParams,
)

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusedSolver

__all__ = [
    "PRESENT",
    "LaplaceModel",
    "Mode",
    "UncertaintyParams",
    "UncertaintyState",
    "batched_cg",
    "estimate_std_error",
    "functional_std",
    "rademacher",
]


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
