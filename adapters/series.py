"""The tilt series as fusetomo holds it in memory, and its validation.

Conventions: images are [n_slices, n_det]; stacks [n_tilts, n_slices, n_det]; angles in
degrees. Chemical maps are one stack per element; all elements of one spectrum image share its
tilt angles. They are either raw counts (`chem_kind` "counts", >= 0) or counts from which a
background was subtracted (`chem_kind` "subtracted", e.g. EELS after a power-law fit), which
may be negative; `subtracted_level` holds the level that was removed, per element, when known.

A series may hold no element maps at all (a HAADF-only series: `chem` and `chem_angles`
empty); most tomography sessions are HAADF-only, and spectrum images come later or never.

Nuisances the file may state or leave to the solver: `background` (counts per pixel of each
element's maps; an element missing from the mapping has an unknown background, which the
fused solver estimates) and `gamma` (None: estimated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fusetomo.core.angles import angle_key
from fusetomo.core.elements import atomic_number
from fusetomo.core.errors import FusetomoError

ChemKind = Literal["counts", "subtracted"]
CHEM_KINDS: tuple[str, ...] = ("counts", "subtracted")


class SeriesError(FusetomoError, ValueError):
    """A tilt series that breaks the contract; the message names the dataset and value."""


@dataclass
class TiltSeries:
    haadf: np.ndarray
    haadf_angles: np.ndarray
    chem: dict[str, np.ndarray]
    chem_angles: dict[str, np.ndarray]
    Z: dict[str, int] = field(default_factory=dict)
    background: dict[str, float] = field(default_factory=dict)
    gamma: float | None = None
    pixel_size_nm: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    chem_kind: ChemKind = "counts"
    subtracted_level: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.haadf = np.asarray(self.haadf, dtype=np.float32)
        self.haadf_angles = np.asarray(self.haadf_angles, dtype=np.float64).ravel()
        self.chem = {e: np.asarray(v, dtype=np.float32) for e, v in self.chem.items()}
        self.chem_angles = {
            e: np.asarray(v, dtype=np.float64).ravel() for e, v in self.chem_angles.items()
        }
        for e in self.chem:
            self.Z.setdefault(e, atomic_number(e))
        self.background = {e: float(v) for e, v in self.background.items()}
        self.subtracted_level = {e: float(v) for e, v in self.subtracted_level.items()}
        self.validate()

    @property
    def elements(self) -> list[str]:
        return list(self.chem)

    @property
    def haadf_only(self) -> bool:
        """True when the series holds no element maps (no spectrum image)."""
        return not self.chem

    @property
    def shape(self) -> tuple[int, int]:
        """(n_slices, n_det)."""
        return int(self.haadf.shape[1]), int(self.haadf.shape[2])

    def stated_background(self) -> list[float | None]:
        """The background of each element's maps in element order; None where the series
        does not state it (the fused solver then estimates it)."""
        return [self.background.get(e) for e in self.elements]

    def stated_subtracted(self) -> list[float | None]:
        """For background-subtracted maps, the level subtracted from each element's maps
        (None where unknown); for raw counts, all zeros."""
        if self.chem_kind == "counts":
            return [0.0 for _ in self.elements]
        return [self.subtracted_level.get(e) for e in self.elements]

    @property
    def common_chem_angles(self) -> np.ndarray:
        """The chemical tilt angles, shared by all elements."""
        first = next(iter(self.chem_angles.values()), np.zeros(0))
        return first

    def validate(self) -> None:
        h = self.haadf
        if h.ndim != 3:
            raise SeriesError(f"/haadf/data: expected 3 axes [n_tilts, n_slices, n_det], "
                              f"got shape {h.shape}")
        if h.shape[0] != self.haadf_angles.size:
            raise SeriesError(f"/haadf/angles: {self.haadf_angles.size} angles for "
                              f"{h.shape[0]} HAADF images")
        _check_values("/haadf/data", h, counts=False)
        _check_angles("/haadf/angles", self.haadf_angles)
        if self.chem_kind not in CHEM_KINDS:
            raise SeriesError(f"/chem: kind must be one of {list(CHEM_KINDS)}, got "
                              f"{self.chem_kind!r}")
        orphans = sorted(set(self.chem_angles) - set(self.chem))
        if orphans:
            raise SeriesError(f"/chem: angles given for elements {orphans} that have no maps")
        unknown = sorted((set(self.background) | set(self.subtracted_level)) - set(self.chem))
        if unknown:
            raise SeriesError(f"/chem: background or subtracted level given for elements "
                              f"{unknown} that have no maps")
        ref = None
        for e, m in self.chem.items():
            name = f"/chem/{e}/data"
            atomic_number(e)
            if e not in self.chem_angles:
                raise SeriesError(f"/chem/{e}/angles: missing")
            if m.ndim != 3 or m.shape[1:] != h.shape[1:]:
                raise SeriesError(f"{name}: shape {m.shape} does not match HAADF images "
                                  f"[m, {h.shape[1]}, {h.shape[2]}]")
            if m.shape[0] != self.chem_angles[e].size:
                raise SeriesError(f"/chem/{e}/angles: {self.chem_angles[e].size} angles for "
                                  f"{m.shape[0]} maps")
            _check_values(name, m, counts=self.chem_kind == "counts")
            _check_angles(f"/chem/{e}/angles", self.chem_angles[e])
            if ref is None:
                ref = (e, self.chem_angles[e])
            elif not np.allclose(self.chem_angles[e], ref[1]):
                raise SeriesError(f"/chem/{e}/angles {self.chem_angles[e].tolist()} differ from "
                                  f"/chem/{ref[0]}/angles {ref[1].tolist()}: all elements of a "
                                  "spectrum image share its tilts")
            for what, table in (("background", self.background),
                                ("subtracted level", self.subtracted_level)):
                v = table.get(e, 0.0)
                if not np.isfinite(v) or v < 0:
                    raise SeriesError(f"/chem/{e}: {what} must be finite and >= 0, got {v}")
        if self.gamma is not None and not 1.0 <= self.gamma <= 2.5:
            raise SeriesError(f"gamma attribute must lie in [1, 2.5], got {self.gamma}")


def _check_values(name: str, data: np.ndarray, *, counts: bool) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise SeriesError(f"{name}: {int(bad.sum())} NaN/inf values (first at index {idx})")
    if counts and data.size and float(data.min()) < 0:
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmin(data)), data.shape))
        raise SeriesError(f"{name}: negative counts (min {float(data.min())} at index {idx}); "
                          "maps with a background subtracted must say so (chem kind "
                          "'subtracted')")


def _check_angles(name: str, angles: np.ndarray) -> None:
    if not np.all(np.isfinite(angles)):
        raise SeriesError(f"{name}: non-finite angle in {angles.tolist()}")
    if np.any(np.abs(angles) > 90):
        raise SeriesError(f"{name}: angle outside [-90, 90] degrees: {angles.tolist()}")
    seen: set[int] = set()
    for a in angles:
        if angle_key(a) in seen:
            raise SeriesError(f"{name}: duplicate tilt angle {float(a)}")
        seen.add(angle_key(a))
