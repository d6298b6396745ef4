"""JSON for documents that hold NumPy scalars and arrays (run-file events, reports, bench
results): one `default` hook for `json.dumps`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["lenient_default", "numpy_default"]


def numpy_default(v: Any) -> Any:
    """`json.dumps(..., default=numpy_default)`: NumPy scalars as Python numbers, arrays as
    lists, paths as strings; TypeError naming the type for anything else."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def lenient_default(v: Any) -> Any:
    """As `numpy_default`, but anything else as its `str` (human-facing documents: reports,
    bench results)."""
    try:
        return numpy_default(v)
    except TypeError:
        return str(v)
