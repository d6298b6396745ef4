"""The microscope behind an instrument session: what a backend must do (`Microscope`, a
`typing.Protocol`) and what its acquisitions return. The Nion adapter
(`fusetomo.adapters.nion.NionMicroscope`) and the simulated microscope
(`fusetomo.simulators.microscope.SimulatedMicroscope`) are the two backends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fusetomo.core.errors import FusetomoError

ELEMENTARY_CHARGE = 1.602176634e-19  # C


class AcquisitionAbortedError(FusetomoError, RuntimeError):
    """An acquisition stopped by `abort` before it finished."""


@dataclass
class HaadfScan:
    image: np.ndarray  # [size, size], axis 0 along the tilt axis
    dwell_us: float
    pixel_nm: float | None
    # The image's dose when the backend knows it (else from the beam current and dwell),
    # and header fields it adds to the tilt message (e.g. the drift it applied).
    dose_e_per_A2: float | None = None  # noqa: N815
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class SpectrumImage:
    haadf: np.ndarray  # [size, size], the simultaneous HAADF image
    si: np.ndarray | None  # [size, size, n_channels] (None when `maps` are given)
    energy: np.ndarray | None  # [n_channels], channel centres
    energy_units: str  # 'eV' or 'keV' (from the camera's calibration)
    exposure_ms: float
    pixel_nm: float | None
    # Element maps when the backend makes them itself (else from `si` by the session's
    # map maker), doses when it knows them, and header fields for both tilt messages
    # (`fields`) or the chem_tilt only (`chem_fields`).
    maps: Mapping[str, np.ndarray] | None = None
    dose_e_per_A2: float | None = None  # noqa: N815
    haadf_dose_e_per_A2: float | None = None  # noqa: N815
    fields: Mapping[str, Any] = field(default_factory=dict)
    chem_fields: Mapping[str, Any] = field(default_factory=dict)


class Microscope(Protocol):
    """What an instrument session needs from a microscope. Calls come from one worker
    thread, except `abort`, which may come from another while an acquisition runs."""

    def tilt_deg(self) -> float: ...

    def set_tilt(self, angle_deg: float) -> float:
        """Move the stage, wait until it is there; return the tilt read back (degrees)."""
        ...

    def acquire_haadf(self, dwell_us: float) -> HaadfScan: ...

    def acquire_spectrum_image(self, exposure_ms: float) -> SpectrumImage: ...

    def abort(self) -> None: ...

    def beam_current_pa(self) -> float | None: ...

    def field_of_view_nm(self) -> float | None: ...


def pixel_dose(current_pa: float | None, dwell_s: float, pixel_nm: float | None) -> float:
    """Electrons per square Angstrom of one pixel's dwell: I t / (e A_pixel); 0 if unknown."""
    if not current_pa or not pixel_nm:
        return 0.0
    return current_pa * 1e-12 * dwell_s / ELEMENTARY_CHARGE / (pixel_nm * 10.0) ** 2
