"""Coverage of the tilt range by spectrum images (issue 16, item 2).

A spectrum image every so many degrees is what makes the element volumes whole: a part of
the tilt range without one leaves its directions to the HAADF alone, which cannot tell the
elements apart (measured: an advisor that took all its maps on one side of the range ended
at <NRMSE> 0.50-0.54 against 0.30 for even spacing). So the advisor keeps the largest
angular gap between spectrum images within what the remaining budget can still close.

The gap of a set of map angles a_1 < ... < a_m over the range [lo, hi] counts the two ends
double, `max(2 (a_1 - lo), a_(i+1) - a_i, 2 (hi - a_m))`: K maps evenly spaced (each at the
centre of its 1/K of the range, as the uniform policy puts them) have gap (hi - lo) / K.
`maps_to_close` answers how many more maps, chosen among the tilts still to come (in any
order: a sequential series can only pick tilts ahead of it, a dose-symmetric one tilts on
both sides; the candidates say which), bring the gap down to a limit: the greedy sweep that
picks, from the low end, the farthest candidate within reach, which is optimal for covering
points on a line. The advisor must take the current tilt when skipping it would leave a gap
that the remaining budget can no longer close.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

__all__ = ["even_gap", "gap", "maps_to_close", "must_take"]

TOL = 1e-6  # degrees


def gap(angles: Sequence[float], lo: float, hi: float) -> float:
    """The largest gap of `angles` over [lo, hi], the ends counted double (inf if none)."""
    a = sorted(float(x) for x in angles)
    if not a:
        return float("inf")
    inner = max((b - c for c, b in itertools.pairwise(a)), default=0.0)
    return max(2.0 * (a[0] - lo), inner, 2.0 * (hi - a[-1]))


def even_gap(lo: float, hi: float, maps: int) -> float:
    """The gap of `maps` evenly spaced maps over [lo, hi]."""
    return (hi - lo) / max(maps, 1)


def maps_to_close(taken: Sequence[float], candidates: Sequence[float], lo: float, hi: float,
                  limit: float) -> int | None:
    """The fewest `candidates` to add to `taken` for a gap <= `limit` over [lo, hi]; None
    when no choice of candidates gets there."""
    if limit <= 0:
        return None
    fixed = sorted(float(x) for x in taken)
    cands = sorted(float(x) for x in candidates)
    pos = lo - limit / 2.0  # a virtual map there makes the low end count double
    n = 0
    i = j = 0
    while pos + limit / 2.0 < hi - TOL:
        reach = pos + limit + TOL
        while i < len(fixed) and fixed[i] <= pos + TOL:
            i += 1
        if i < len(fixed) and fixed[i] <= reach:
            # the next map already taken is within reach: go there (the farthest of them)
            while i + 1 < len(fixed) and fixed[i + 1] <= reach:
                i += 1
            pos = fixed[i]
            continue
        best = None
        while j < len(cands) and cands[j] <= reach:
            if cands[j] > pos + TOL:
                best = cands[j]
            j += 1
        if best is None:
            return None
        pos = best
        n += 1
    return n


def must_take(angle: float, taken: Sequence[float], ahead: Sequence[float], lo: float,
              hi: float, limit: float, left: int) -> bool:
    """Whether a spectrum image at `angle` is needed now: without it, the tilts still
    `ahead` cannot bring the gap within `limit` with the `left` maps the budget still allows
    (`angle` itself included), and with it they still can or the gap it leaves is smaller."""
    if left <= 0:
        return False
    skip = maps_to_close(taken, ahead, lo, hi, limit)
    if skip is not None and skip <= left:
        return False
    take = maps_to_close([*taken, angle], ahead, lo, hi, limit)
    if take is not None and take <= left - 1:
        return True
    # The limit cannot be met either way (a budget too small for it, or a gap already
    # left open): take the map if it shrinks the gap the series would otherwise end with.
    return gap([*taken, angle], lo, hi) < gap(taken, lo, hi) - TOL
