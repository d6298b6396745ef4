"""The one rule for "the same tilt angle": two angles (degrees) are the same tilt when they
agree to `ANGLE_DECIMALS` decimals (1e-6 degree). Run files, series files, the live
controller, the instruments, the aligner and the advisor all decide it here."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

ANGLE_DECIMALS = 6
_SCALE = 10**ANGLE_DECIMALS


def angle_key(angle: float) -> int:
    """An integer that two angles share exactly when they are the same tilt."""
    return round(float(angle) * _SCALE)


def same_angle(a: float, b: float) -> bool:
    return angle_key(a) == angle_key(b)


def duplicate_angles(angles: Iterable[float]) -> int:
    """How many angles repeat an earlier one."""
    keys = np.rint(np.asarray(list(angles) if not isinstance(angles, np.ndarray) else angles,
                              dtype=np.float64).ravel() * _SCALE)
    return int(keys.size - np.unique(keys).size)
