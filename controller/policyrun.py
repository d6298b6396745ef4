"""A whole series under a spectroscopy policy, offline (no sockets): the loop the live
controller runs with an instrument that holds at each tilt for its decision, step for step.

The simulated series carries a spectrum image at *every* planned tilt (one noise draw), and
the policy decides which of them the reconstruction gets to see: so adaptive, uniform and
random policies are compared on the same specimen and the same noise. At each planned tilt
(in acquisition order): the HAADF image is added and the solver takes k warm-started
iterations; the policy advises; a spectrum image it takes is added and followed by k more
iterations. After the last tilt come the final iterations. These are the live controller's
defaults (`LiveParams`: k = 3, 20 final iterations) without its idle iterations, which
depend on the instrument's timing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusetomo.adapters.instrument.plans import make_plan
from fusetomo.controller.advisor import (
    ACQUIRE,
    Advice,
    AdvisorParams,
    Policy,
    SeriesState,
    make_policy,
)
from fusetomo.controller.series_model import solver_for_series
from fusetomo.core.angles import angle_key
from fusetomo.simulators.forward import AcquisitionParams, Simulation, TiltScheme, simulate
from fusetomo.solver.backend import resolve_device
from fusetomo.solver.metrics import nrmse


@dataclass(frozen=True)
class PolicyRunParams:
    """The series and the iteration schedule of one policy run."""

    specimen: str = "nanocubes"
    size: int = 48
    seed: int = 0
    scheme: str = "sequential"
    tilt_range: tuple[float, float] = (-69.0, 69.0)
    haadf_step: float = 3.0
    iterations_per_tilt: int = 3
    final_iterations: int = 20
    device: str = "cpu"
    acquisition: AcquisitionParams = field(default_factory=AcquisitionParams)


@dataclass
class PolicyResult:
    policy: str
    chem_angles: list[float]
    nrmse: dict[str, float]
    advices: list[Advice]
    advice_seconds: list[float]
    iterations: int
    seconds: float

    @property
    def nrmse_mean(self) -> float:
        return float(np.mean(list(self.nrmse.values())))

    def summary(self) -> dict[str, Any]:
        return {"policy": self.policy, "nrmse_mean": self.nrmse_mean, "nrmse": self.nrmse,
                "chem_tilts": len(self.chem_angles), "chem_angles": self.chem_angles,
                "iterations": self.iterations, "seconds": self.seconds,
                "advice_seconds_median": (float(np.median(self.advice_seconds))
                                          if self.advice_seconds else None)}


def plan_and_series(p: PolicyRunParams) -> tuple[list[float], Simulation]:
    """The planned HAADF tilts in acquisition order, and a simulated series with a spectrum
    image at every one of them."""
    plan = make_plan(p.scheme, p.tilt_range, p.haadf_step, p.haadf_step)
    angles = [s.angle for s in plan]
    grid = tuple(sorted(angles))
    sim = simulate(p.specimen, p.size, TiltScheme(haadf_angles=grid, chem_angles=grid),
                   p.acquisition, seed=p.seed)
    return angles, sim


def run_policy(policy: str | Policy, advisor: AdvisorParams | None, p: PolicyRunParams,
               prepared: tuple[list[float], Any] | None = None) -> PolicyResult:
    """Run the series of `p` under `policy` (adaptive, uniform, random, or a policy made
    for the plan: `advisor` is then not used). `prepared`: the acquisition order and a
    simulated series (anything with `series` and `truth`) with a spectrum image at every
    planned tilt, instead of `plan_and_series(p)`."""
    t0 = time.perf_counter()
    order, sim = prepared if prepared is not None else plan_and_series(p)
    s = sim.series
    h_index = {angle_key(a): i for i, a in enumerate(s.haadf_angles.tolist())}
    c_index = {angle_key(a): i for i, a in enumerate(s.common_chem_angles.tolist())}
    solver = solver_for_series(s, device=resolve_device(p.device))
    if isinstance(policy, str):
        policy = make_policy(policy, advisor or AdvisorParams(), order)
    policy_name = policy.name
    dose_per_map = float(s.attrs.get("chem_dose_e_per_A2") or 1.0)
    taken: list[float] = []
    advices: list[Advice] = []
    secs: list[float] = []
    for k, angle in enumerate(order):
        i = h_index[angle_key(angle)]
        solver.add_haadf(angle, s.haadf[i])
        if solver.ready:
            solver.run(p.iterations_per_tilt)
        state = SeriesState(angle=angle, tilt_seq=k, remaining=order[k + 1:],
                            chem_angles=list(taken),
                            chem_dose_used=len(taken) * dose_per_map,
                            chem_dose_per_map=dose_per_map)
        t = time.perf_counter()
        adv = policy.advise(solver, state)
        secs.append(time.perf_counter() - t)
        adv.decision = "acquire" if adv.action == ACQUIRE else "continue"
        advices.append(adv)
        if adv.action == ACQUIRE:
            j = c_index[angle_key(angle)]
            solver.add_chem(angle, {e: s.chem[e][j][None] for e in s.elements})
            taken.append(angle)
            solver.run(p.iterations_per_tilt)
    if solver.ready:
        solver.run(p.final_iterations)
        vols = solver.volumes()
        err = {e: float(nrmse(vols[e], sim.truth[e])) for e in s.elements}
    else:
        err = {e: float("nan") for e in s.elements}
    return PolicyResult(policy_name, taken, err, advices, secs, solver.iteration,
                        time.perf_counter() - t0)
