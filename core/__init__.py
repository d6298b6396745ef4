"""What every other part of fusetomo builds on and that depends on nothing of it: the
project's base exception, the element table and the one rule for "the same tilt angle".

- `errors`: `FusetomoError`, the base class of every error fusetomo raises on bad input or
  a failed job; the command line turns any of them into `fusetomo: error: ...`, exit 2.
- `elements`: element symbols and atomic numbers (Z 1..92).
- `angles`: `angle_key`, `same_angle`, `duplicate_angles`: two tilt angles are the same tilt
  when they agree to 1e-6 degree (`ANGLE_DECIMALS`).
"""

from fusetomo.core.angles import ANGLE_DECIMALS, angle_key, duplicate_angles, same_angle
from fusetomo.core.elements import ATOMIC_NUMBER, UnknownElementError, atomic_number
from fusetomo.core.errors import FusetomoError

__all__ = [
    "ANGLE_DECIMALS",
    "ATOMIC_NUMBER",
    "FusetomoError",
    "UnknownElementError",
    "angle_key",
    "atomic_number",
    "duplicate_angles",
    "same_angle",
]
