"""Predicted value of a new spectrum image at a candidate tilt (science.md §4).

Under the Laplace posterior N(x, H^-1) of solver/uncertainty.py, a chemical projection at
angle t measures, for element i and ray r, y_r ~ Poisson((A_t x_i)_r + bg_i), i.e. with
variance v_r = (A_t x_i)_r + bg_i (the expected counts of a spectrum image at the nominal
dose). What the reconstruction already knows about that ray is the posterior variance of
its line integral, V_r = a_r^T H^-1 a_r. Treating the rays of one projection as
independent (they are nearly so: neighbouring rays share few voxels' uncertainty once TV
has been paid for), the expected information gain of the projection is (D-optimal design)

    IG_i(t) = 1/2 sum_r log(1 + V_r / v_r)          [nats]

and the expected reduction of the total posterior variance (A-optimal) is, ray by ray,
sum_r ||H^-1 a_r||^2 / (V_r + v_r).

Two ways to get V_r:
- 'sampled' (default): from posterior samples u_k ~ N(0, H^-1) (the 'accurate' mode's
  perturbation-optimisation samples, `UncertaintyState.solutions`): V_r = mean_k (A_t u_k)_r^2.
  This keeps the correlations between voxels that make a projection at an angle close to
  an already measured one nearly worthless; it costs one forward projection of the samples
  per candidate angle.
- 'jacobi': from the per-voxel standard errors s alone (cheap mode): V_r = ((A_t o A_t) s^2)_r,
  the formula of science.md §4. It ignores all correlations, so it hardly depends on the
  angle: it ranks candidates poorly but still measures how much is left to learn (stop rule).

The gains are per element and per candidate; the controller's advisor turns them into
advice (controller/advisor.py). Pure array code: no sockets, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fusetomo.solver.backend import to_device, to_numpy
from fusetomo.solver.fusion import SolverNotReadyError
from fusetomo.solver.projector import ParallelProjector

if TYPE_CHECKING:
    from fusetomo.solver.fusion import FusedSolver

Metric = Literal["sampled", "jacobi"]


@dataclass(frozen=True)
class CandidateGains:
    """Predicted information gain (nats) of one spectrum image per candidate angle and
    element, and the number of rays it measures (for per-ray normalisation)."""

    angles: np.ndarray  # [n_cand] degrees
    elements: tuple[str, ...]
    gain: np.ndarray  # [n_cand, n_el] nats
    variance_ratio: np.ndarray  # [n_cand, n_el] mean_r V_r / v_r over the specimen's rays
    n_rays: int
    # [n_cand, n_el] expected fraction of the total variance removed ('jacobi' only)
    variance_reduction: np.ndarray | None = None
    # [n_cand, n_el] the posterior's predicted NRMSE of the map at each candidate: the
    # posterior std of its rays over the spread of its expected signal (the specimen's rays)
    map_nrmse: np.ndarray | None = None

    @property
    def total(self) -> np.ndarray:
        """Gain summed over elements, [n_cand]."""
        return self.gain.sum(axis=1)

    def per_ray(self) -> np.ndarray:
        """Mean gain per measured ray, nats [n_cand] (summed over elements)."""
        return self.total / max(self.n_rays, 1)


def _expected_counts(solver: FusedSolver, proj: ParallelProjector) -> Any:
    """v = A_t x + bg, [n_el, n_cand, n_slices, n_det] (counts of one spectrum image at the
    nominal dose, in the solver's chemical units)."""
    xp = solver.device.xp
    x = xp.maximum(solver.x, 0)
    v = proj.forward(x) + solver.chem_background_per_element()
    return xp.maximum(v, 1e-3)


def candidate_gains(
    solver: FusedSolver,
    angles: Sequence[float],
    *,
    metric: Metric = "sampled",
    samples: Any = None,
    std: Mapping[str, np.ndarray] | None = None,
) -> CandidateGains:
    """Information gain of a spectrum image at each of `angles` under the current posterior.

    metric 'sampled' needs `samples` [n_probes, n_el, n_slices, n, n] (draws of N(0, H^-1),
    e.g. `UncertaintyState.solutions` of an 'accurate' call); 'jacobi' needs `std`
    (element -> per-voxel standard error, as `estimate_std_error` returns)."""
    if solver.x is None or solver.n_chem == 0:
        raise SolverNotReadyError("no reconstruction with a chemical tilt yet: nothing to "
                                  "predict from")
    angles = [float(a) for a in angles]
    if not angles:
        raise ValueError("candidate_gains: no candidate angle")
    dev = solver.device
    xp = dev.xp
    n_el = len(solver.elements)
    with dev:
        proj = ParallelProjector(solver.chem_proj.n, angles, n_det=solver.chem_proj.n_det,
                                 device=dev)
        v = _expected_counts(solver, proj)  # [n_el, n_cand, ns, nd]
        if metric == "sampled":
            if samples is None:
                raise ValueError("metric 'sampled' needs posterior samples (the 'accurate' "
                                 "uncertainty state's solutions)")
            u = xp.asarray(to_device(samples, dev))
            if u.ndim != 5 or tuple(u.shape[1:]) != tuple(solver.x.shape):
                want = ", ".join(map(str, solver.x.shape))
                raise ValueError(f"samples must be [n_probes, {want}], got shape "
                                 f"{tuple(u.shape)}")
            V = xp.zeros_like(v)
            for k in range(u.shape[0]):  # one probe at a time: memory stays at one stack
                p = proj.forward(u[k])
                V += p * p
            V /= u.shape[0]
        elif metric == "jacobi":
            if std is None:
                raise ValueError("metric 'jacobi' needs the per-voxel standard errors")
            missing = [e for e in solver.elements if e not in std]
            if missing:
                raise ValueError(f"std has no volume for {missing}")
            s2 = xp.stack([xp.asarray(to_device(np.asarray(std[e], dtype=np.float32), dev))
                           ** 2 for e in solver.elements])
            V = proj.squared().forward(s2)
        else:
            raise ValueError(f"metric must be 'sampled' or 'jacobi', got {metric!r}")
        # The interpolating projector's rays carry sum_j a_rj^2 that depends on the angle
        # (1 per voxel crossed at 0 and 90 deg, ~2/3 in between, where each ray splits over
        # two voxels); a variance summed with those weights would favour 0 and 90 deg for
        # reasons of discretisation, not physics. Each candidate's variance is divided by
        # its mean squared-weight ratio (A o A) 1 / A 1 relative to the candidates' median.
        sq = proj.squared()
        ones = xp.ones((1, 1, proj.n, proj.n), dtype=v.dtype)
        eff = xp.mean(sq.forward(ones)[0], axis=(-2, -1)) / xp.maximum(
            xp.mean(proj.forward(ones)[0], axis=(-2, -1)), 1e-12)  # [n_cand]
        eff = (eff / xp.median(eff))[None, :, None, None]
        V = V / eff
        ratio = V / v
        reduction = None
        if metric == "jacobi":
            # A-optimal, ray by ray: the expected drop of the total variance, as a fraction
            # of sum_j s_j^2 (science.md §4).
            s4 = sq.forward(s2 * s2) / eff
            drop = xp.sum(s4 / (V + v), axis=(-2, -1))  # [n_el, n_cand]
            reduction = drop / xp.maximum(xp.sum(s2, axis=(-3, -2, -1))[:, None], 1e-30)
        gain = 0.5 * xp.sum(xp.log1p(ratio), axis=(-2, -1))  # [n_el, n_cand]
        # Rays through the specimen: where the projected HAADF-carrying volume is non-zero.
        signal = xp.sum(v - solver.chem_background_per_element(), axis=0)
        inside = signal > 0.02 * xp.max(signal)
        n_in = xp.maximum(xp.sum(inside, axis=(-2, -1)), 1)
        vr = xp.sum(ratio * inside, axis=(-2, -1)) / n_in
        n_rays = int(to_numpy(xp.max(n_in)))
        # The map's predicted NRMSE: sqrt(sum_r V_r) over the spread of its signal, both over
        # the specimen's rays (the NRMSE of a map, as the volumes' NRMSE is of a volume).
        sig = v - solver.chem_background_per_element()
        mean = xp.sum(sig * inside, axis=(-2, -1), keepdims=True) / n_in[..., None, None]
        spread = xp.sum(((sig - mean) * inside) ** 2, axis=(-2, -1))
        mnrmse = xp.sqrt(xp.sum(V * inside, axis=(-2, -1)) / xp.maximum(spread, 1e-30))
    return CandidateGains(np.asarray(angles), tuple(solver.elements),
                          to_numpy(gain).T.astype(np.float64),
                          to_numpy(vr).T.astype(np.float64), n_rays * n_el,
                          None if reduction is None
                          else to_numpy(reduction).T.astype(np.float64),
                          to_numpy(mnrmse).T.astype(np.float64))

