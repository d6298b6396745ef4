"""Tilt angles from text files: IMOD's `.tlt` / `.rawtlt` beside a stack, or any list.

IMOD writes one angle (degrees) per line: `.rawtlt` holds the angles as acquired, `.tlt`
the angles after its alignment (what belongs to an aligned `.ali`). Beside a stack
`NAME.ext`, `NAME.tlt` is taken first, then `NAME.rawtlt` (also `NAME.ext.tlt`,
`NAME.ext.rawtlt`). `read_angle_file` reads such a file, or any text file of numbers
separated by white space, commas or new lines (`#` starts a comment).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fusetomo.adapters.vendor_read import VendorFileError

__all__ = ["SIDECAR_EXTENSIONS", "find_sidecar", "read_angle_file"]

SIDECAR_EXTENSIONS = (".tlt", ".rawtlt")


def find_sidecar(stack: Path) -> Path | None:
    """The angle file beside `stack` (module docstring), or None."""
    for ext in SIDECAR_EXTENSIONS:
        for cand in (stack.with_suffix(ext), stack.with_name(stack.name + ext)):
            if cand.is_file():
                return cand
    return None


def read_angle_file(path: str | Path) -> np.ndarray:
    """The angles (degrees) listed in a text file, in order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise VendorFileError(f"{path}: cannot read the angle file ({e})") from None
    values: list[float] = []
    for i, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0]
        for tok in re.split(r"[\s,;]+", line.strip()):
            if not tok:
                continue
            try:
                v = float(tok)
            except ValueError:
                raise VendorFileError(f"{path}: line {i}: {tok!r} is not an angle in "
                                      "degrees") from None
            if not np.isfinite(v) or abs(v) > 90:
                raise VendorFileError(f"{path}: line {i}: angle {v} outside [-90, 90] degrees")
            values.append(v)
    if not values:
        raise VendorFileError(f"{path}: no angle in the file")
    return np.asarray(values, dtype=np.float64)
