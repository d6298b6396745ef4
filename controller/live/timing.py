"""Two honest figures for how the live reconstruction keeps up (issue 16, item 6).

A single "latency" (arrival of a tilt -> its reconstruction published) mixes two things:
how long the solver works on a tilt, and how long the tilt waited behind earlier ones when
the solver fell behind the instrument (a first run's 15 s "latency" was almost all waiting).
So each settled tilt gets:
- `processing_s`: the time the solver spent on it, from when it could start (its arrival,
  or the previous tilt's publication if that came later) to its publication: the k
  iterations, the hooks (advice, standard errors) and the publishing;
- `lag_s` / `lag_tilts`: how far the published reconstruction is behind the newest tilt at
  that moment: the tilts received but not yet in it, and how long the oldest of them has
  waited (0 and 0 when it is up to date).
`latency_s` (arrival -> published) stays recorded; it is processing plus waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TiltTiming", "lag_of", "timing_summary"]


@dataclass
class TiltTiming:
    """The timing state of a live reconstruction (wall-clock seconds, time.time())."""

    last_published: float | None = None  # when the last settled tilts were published
    processing_s: float | None = None  # of the last settled tilt
    lag_s: float = 0.0  # at the last publication
    lag_tilts: int = 0
    history: list[float] = field(default_factory=list)  # every settled tilt's processing

    def settled(self, t: float, arrivals: Sequence[float],
                pending_arrivals: Sequence[float]) -> list[float]:
        """Tilts that arrived at `arrivals` were published at `t`; `pending_arrivals` are the
        tilts still waiting. Returns each settled tilt's processing time."""
        start = self.last_published
        out = [max(t - (a if start is None else max(a, start)), 0.0) for a in arrivals]
        self.last_published = t
        if out:
            self.processing_s = out[-1]
            self.history.extend(out)
        self.lag_tilts, self.lag_s = lag_of(t, pending_arrivals)
        return out


def lag_of(now: float, pending_arrivals: Sequence[float]) -> tuple[int, float]:
    """(tilts not yet in the published reconstruction, seconds the oldest has waited)."""
    if not pending_arrivals:
        return 0, 0.0
    return len(pending_arrivals), max(now - min(pending_arrivals), 0.0)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and np.isfinite(v) else None


def timing_summary(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's figures from its recorded `latency` events: per-tilt processing time
    (median, p90), lag behind the newest tilt at each publication (median, max; seconds
    and tilts), and arrival -> published (median, p90)."""
    rows = [e for e in events if e.get("kind") == "latency"]

    def col(name: str) -> list[float]:
        return [v for v in (_num(e.get(name)) for e in rows) if v is not None]

    proc, lag, lag_n, lat = col("processing_s"), col("lag_s"), col("lag_tilts"), col(
        "latency_s")

    def q(values: list[float], p: float) -> float | None:
        return float(np.percentile(values, p)) if values else None

    return {"processing_s_median": q(proc, 50), "processing_s_p90": q(proc, 90),
            "lag_s_median": q(lag, 50), "lag_s_max": q(lag, 100),
            "lag_tilts_median": q(lag_n, 50), "lag_tilts_max": q(lag_n, 100),
            "latency_s_median": q(lat, 50), "latency_s_p90": q(lat, 90)}
