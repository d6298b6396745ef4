"""Coverage of the tilt range by spectrum images (controller/coverage.py): the gap measure,
the fewest maps that close a gap, and when the advisor must take a map, for sequential and
dose-symmetric series (checked against brute force on small grids)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fusetomo.adapters.instrument.plans import make_plan
from fusetomo.controller.coverage import even_gap, gap, maps_to_close, must_take


def test_gap_counts_the_ends_double_and_even_spacing_meets_it():
    assert gap([], -60, 60) == float("inf")
    assert gap([0.0], -60, 60) == 120.0
    assert gap([-45.0, -15.0, 15.0, 45.0], -60, 60) == 30.0 == even_gap(-60, 60, 4)
    assert gap([-60.0, 60.0], -60, 60) == 120.0


def _brute(taken, cands, lo, hi, limit):
    for k in range(len(cands) + 1):
        for pick in itertools.combinations(cands, k):
            if gap([*taken, *pick], lo, hi) <= limit + 1e-9:
                return k
    return None


@pytest.mark.parametrize("seed", range(25))
def test_maps_to_close_is_the_fewest_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    grid = np.arange(-60.0, 60.1, 6.0)  # 21 tilts
    taken = sorted(rng.choice(grid, size=int(rng.integers(0, 4)), replace=False).tolist())
    rest = [a for a in grid if a not in taken]
    cands = sorted(rng.choice(rest, size=int(rng.integers(3, 9)), replace=False).tolist())
    limit = float(rng.uniform(15, 70))
    assert maps_to_close(taken, cands, -60, 60, limit) == _brute(taken, cands, -60, 60, limit)


def _walk(order, budget, limit, lo, hi):
    """Take a map only where `must_take` says so, along an acquisition order."""
    taken: list[float] = []
    for i, a in enumerate(order):
        if must_take(a, taken, order[i + 1:], lo, hi, limit, budget - len(taken)):
            taken.append(a)
    return taken


@pytest.mark.parametrize("scheme", ["sequential", "dose-symmetric"])
@pytest.mark.parametrize("k", [3, 5, 8, 16])
def test_forced_maps_alone_cover_the_range_within_the_budget(scheme, k):
    """Taking only what coverage forces never leaves a gap beyond the limit, never spends
    more than the budget, and a sequential series is covered to its far end."""
    order = [s.angle for s in make_plan(scheme, (-69.0, 69.0), 3.0, 3.0)]
    lo, hi = min(order), max(order)
    limit = 1.25 * even_gap(lo, hi, k)
    taken = _walk(order, k, limit, lo, hi)
    assert len(taken) <= k
    assert gap(taken, lo, hi) <= limit + 1e-9, (taken, limit)


def test_must_take_when_skipping_leaves_a_gap_that_cannot_close():
    order = [float(a) for a in np.arange(-60.0, 60.1, 10.0)]  # sequential, 13 tilts
    # 2 maps left for [-60, 60] with a limit of 60 deg: the first must sit at <= -30.
    assert not must_take(-60.0, [], order[1:], -60, 60, 60.0, 2)
    assert must_take(-30.0, [], order[4:], -60, 60, 60.0, 2)
    # no budget left: never
    assert not must_take(0.0, [-30.0, 30.0], order[7:], -60, 60, 60.0, 0)
    # a limit no choice can meet: take the map if it shrinks the final gap
    assert must_take(0.0, [], [10.0], -60, 60, 10.0, 1)
