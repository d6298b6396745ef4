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


@dataclass(frozen=True)
class SliceCalibration:
    """What a published slice pixel is (the `calibration` of a `slices` message): `pixel_nm`
    a side (None when the series states no pixel size), the volume's shape and the index of
    each central slice, the volumes' quantity and unit (standard errors share the unit)."""

    pixel_nm: float | None = None
    voxel_nm: float | None = None
    block: int = 1
    volume_shape: tuple[int, int, int] | None = None
    central: tuple[tuple[str, int], ...] = ()
    quantity: str = "counts per voxel"
    units: str = "counts/voxel"

    def position_nm(self, plane: str) -> float | None:
        """Where the central slice normal to `plane` lies, in nm from the volume's centre
        (voxel centres: (i + 1/2 - n/2) * voxel); None without a pixel size."""
        idx = dict(self.central).get(plane)
        if idx is None or self.voxel_nm is None or self.volume_shape is None:
            return None
        n = self.volume_shape[PLANES.index(plane)]
        return (idx + 0.5 - n / 2) * self.voxel_nm

    def position_voxels(self, plane: str) -> float | None:
        """Where the central slice normal to `plane` lies, in voxels from the volume's
        centre ((i + 1/2 - n/2)); None without the volume's shape and the slice index."""
        idx = dict(self.central).get(plane)
        if idx is None or self.volume_shape is None:
            return None
        return idx + 0.5 - self.volume_shape[PLANES.index(plane)] / 2

    def title(self, plane: str) -> str:
        """A pane title: the plane and its position in nm ('s = +0.25 nm')."""
        pos = self.position_nm(plane)
        return plane if pos is None else f"{plane} = {pos:+.3g} nm"


def _positive(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v) if v > 0 else None


def decode_calibration(doc: Any, where: str = "calibration",
                       error: type[Exception] = SliceDataError) -> SliceCalibration:
    """A `calibration` object -> SliceCalibration; absent (an older controller): no pixel
    size. A present field of the wrong kind raises `error` naming it and the value."""
    if doc is None:
        return SliceCalibration()
    if not isinstance(doc, Mapping):
        raise error(f"{where}: expected an object, got {doc!r:.80}")
    out: dict[str, Any] = {}
    for name in ("pixel_nm", "voxel_nm"):
        v = doc.get(name)
        if v is not None and _positive(v) is None:
            raise error(f"{where}.{name}: must be a finite number > 0 or null, got {v!r}")
        out[name] = _positive(v)
    block = doc.get("block", 1)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise error(f"{where}.block: must be an integer >= 1, got {block!r}")
    shape = doc.get("volume_shape")
    if shape is not None:
        if (not isinstance(shape, list) or len(shape) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise error(f"{where}.volume_shape: expected 3 positive integers, got {shape!r}")
        out["volume_shape"] = tuple(shape)
    central = doc.get("central") or {}
    if not isinstance(central, Mapping) or not all(
            p in PLANES and isinstance(i, int) and not isinstance(i, bool) and i >= 0
            for p, i in central.items()):
        raise error(f"{where}.central: expected {{s, u, v: index >= 0}}, got {central!r:.80}")
    out["central"] = tuple((p, int(central[p])) for p in PLANES if p in central)
    for name in ("quantity", "units"):
        v = doc.get(name)
        if v is not None and not isinstance(v, str):
            raise error(f"{where}.{name}: expected a string, got {v!r}")
        if v:
            out[name] = v
    return SliceCalibration(block=block, **out)
