"""When to stop the fused iterations: a rule on the volumes' change and the data terms,
instead of a fixed count (docs/model.md).

Measured on four specimens at 64^3 (bench/robustness.py's reference acquisition, 120
iterations, the <NRMSE> of each iterate against the truth):
- where the iteration converges (nanocubes, a core-shell particle), the relative change of
  the volumes per iteration, ||x_k - x_k-1|| / ||x_k||, falls smoothly (0.048 at iteration
  5, 0.0064 at 30, 0.0014 at 60, 0.0006 at 100) while <NRMSE> creeps down (0.232, 0.219,
  0.216 for nanocubes at 30, 60, 100);
- where it does not (a Pt-decorated film, a ZnO rod with Au caps), the HAADF and chemical
  terms start to rise together after 20-30 iterations (the HAADF step begins handing a
  heavy element's signal at an interface to the lighter elements there) and <NRMSE> rises
  from its best (film 0.206 at iteration 38, rod 0.256 at 18) to 0.216 and 0.443 at 60.
(Those turns were mostly the volumes' level drifting, which the level pin of the fused
solver now holds (solver/fusion.py, `pin_level`): measured again with it, every one of those
runs stops on convergence, at 38-64 iterations at 64^3, the rod at 0.217 instead of 0.264;
docs/benchmarks.md, time to answer.)
So the rule stops on whichever comes first, after `min_iterations`: the volumes changed by
less than `tol` for `patience` iterations in a row (converged), or the HAADF and chemical
terms both rose in each of the last `patience` iterations (the data are being fitted worse:
going on only makes it worse), or `max_iterations`.

The tolerance, measured against today's fixed 60 iterations (bench/time_to_answer.py, same
run, so same machine load): 1e-3 runs 74-79 iterations on the nanocubes at 64^3 and 128^3
for a 0.7-2.1 % better <NRMSE> (1.11-1.24x the time); 2e-3 stops at 55 (+0.4 %, +0.9 %;
0.94-0.96x the time) and at 37 on the core-shell particle (+1.9 %, 0.86x); 3e-3 is +1.4 to
+3.3 %. 2e-3 is the default: the same answer within 2 % on every specimen measured, never
later than 60 iterations there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["StopReason", "StopRule"]

StopReason = Literal["converged", "data terms rising", "max_iterations"]


@dataclass(frozen=True)
class StopRule:
    """The stopping rule's parameters (see the module doc for the measurements)."""

    tol: float = 2e-3
    patience: int = 3
    min_iterations: int = 10
    max_iterations: int = 150

    def __post_init__(self) -> None:
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not 1 <= self.min_iterations <= self.max_iterations:
            raise ValueError(f"need 1 <= min_iterations <= max_iterations, got "
                             f"{self.min_iterations}, {self.max_iterations}")

    def check(self, change: list[float], haadf: list[float], chem: list[float],
              iterations: int) -> StopReason | None:
        """Whether to stop after `iterations` iterations of this run, given the whole
        history (per iteration: relative change of the volumes, HAADF and chemical terms,
        the newest last)."""
        if iterations >= self.max_iterations:
            return "max_iterations"
        if iterations < self.min_iterations:
            return None
        p = self.patience
        if len(change) >= p and np.all(np.asarray(change[-p:]) < self.tol):
            return "converged"
        if len(haadf) > p and len(chem) > p:
            dh = np.diff(np.asarray(haadf[-p - 1:]))
            dc = np.diff(np.asarray(chem[-p - 1:]))
            if np.all(dh > 0) and np.all(dc > 0):
                return "data terms rising"
        return None
