"""Reading the fields of published status messages (docs/protocol.md §2): a field is taken
only if it has the type it should, else treated as absent (None), so that the receivers
tolerate older and newer controllers. Shared by ui/alignment.py and the viewer's model."""

from __future__ import annotations

import math
from typing import Any


def number(v: Any) -> float | None:
    """A finite int or float as float; None for anything else (bools, strings, NaN)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def integer(v: Any) -> int | None:
    """An int (not a bool); None for anything else."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None
