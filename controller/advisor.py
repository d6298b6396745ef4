"""When to spend the next spectrum image: the spectroscopy policies in one place.

- `AdaptiveAdvisor` (controller/adaptive.py): decides from the reconstruction, keeping the
  tilt range covered and stopping once another map would hardly lower the error;
- `UniformPolicy`, `RandomPolicy` (controller/policies.py): K maps at evenly spaced or
  random tilts of the plan.
`make_policy(name, params, planned)` builds one; the rest are the types they share.
"""

from __future__ import annotations

from collections.abc import Sequence

from fusetomo.controller.adaptive import AdaptiveAdvisor
from fusetomo.controller.policies import (
    ACQUIRE,
    ACTIONS,
    POLICIES,
    STOP,
    WAIT,
    Advice,
    AdvisorError,
    AdvisorParams,
    Policy,
    RandomPolicy,
    SeriesState,
    UniformPolicy,
)


def make_policy(name: str, params: AdvisorParams, planned: Sequence[float]) -> Policy:
    """The policy called `name` (adaptive, uniform, random) over the planned tilts (in
    acquisition order)."""
    if name == "adaptive":
        return AdaptiveAdvisor(params, planned)
    if name == "uniform":
        return UniformPolicy(params, planned)
    if name == "random":
        return RandomPolicy(params, planned)
    raise AdvisorError(f"policy must be one of {list(POLICIES)}, got {name!r}")


__all__ = ["ACQUIRE", "ACTIONS", "POLICIES", "STOP", "WAIT", "AdaptiveAdvisor", "Advice",
           "AdvisorError", "AdvisorParams", "Policy", "RandomPolicy", "SeriesState",
           "UniformPolicy", "make_policy"]
