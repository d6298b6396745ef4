"""The orthoslices the controller publishes (topic `slices`, docs/protocol.md), decoded:
shared by the viewer (ui/viewer) and the Nion Swift panel (ui/nion).

Each element's central slices arrive quantised to integers 0..255 with their `vmax`
(value = q * vmax / 255): `s` normal to the tilt axis, `u` and `v` normal to the two
other axes. Decoding checks every value and raises the caller's error type naming the
field and the value, so that a bad message changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusetomo.core.errors import FusetomoError

PLANES = ("s", "u", "v")  # slice normal to the tilt axis, then the two other axes


class SliceDataError(FusetomoError, ValueError):
    """A published slice that cannot be decoded; the message names the field and value."""


@dataclass(frozen=True)
class OrthoSlices:
    """The central slices of one element volume, in the volume's units: `s` [n, n] normal to
    the tilt axis, `u` and `v` [n_slices, n] normal to the other two axes."""

    vmax: float
    s: np.ndarray
    u: np.ndarray
    v: np.ndarray

    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.s, self.u, self.v

    def plane(self, name: str) -> np.ndarray:
        if name not in PLANES:
            raise SliceDataError(f"no slice plane {name!r}; choose from {list(PLANES)}")
        return getattr(self, name)


def decode_plane(q: Any, vmax: float, where: str,
                 error: type[Exception] = SliceDataError) -> np.ndarray:
    """A quantised slice (list of rows of integers 0..255) -> float32 values q * vmax / 255."""
    try:
        arr = np.asarray(q, dtype=np.float64)
    except (TypeError, ValueError):
        raise error(f"{where}: not a rectangular list of numbers") from None
    if arr.ndim != 2 or arr.size == 0:
        raise error(f"{where}: expected a non-empty 2D list, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 255)
    if bad.any():
        raise error(f"{where}: quantised values must be 0..255, got {arr[bad].ravel()[0]}")
    return (arr * (vmax / 255.0)).astype(np.float32)


def decode_slices(doc: Any, where: str,
                  error: type[Exception] = SliceDataError) -> dict[str, OrthoSlices]:
    """`slices` / `std_slices` {element: {vmax, s, u, v}} -> element -> OrthoSlices."""
    if not isinstance(doc, Mapping):
        raise error(f"{where}: expected an object element -> slices, got {doc!r:.80}")
    out: dict[str, OrthoSlices] = {}
    for element, d in doc.items():
        if not isinstance(d, Mapping):
            raise error(f"{where}.{element}: expected an object, got {d!r:.80}")
        vmax = d.get("vmax")
        if (isinstance(vmax, bool) or not isinstance(vmax, int | float)
                or not math.isfinite(vmax) or vmax < 0):
            raise error(f"{where}.{element}.vmax: must be a finite number >= 0, got {vmax!r}")
        planes = {p: decode_plane(d.get(p), float(vmax), f"{where}.{element}.{p}", error)
                  for p in PLANES}
        out[str(element)] = OrthoSlices(float(vmax), **planes)
    return out
