"""A Nion microscope as a fusetomo instrument (nionswift-instrumentation).

- `NionTomoConfig`: what to acquire (elements, tilt plan, scan size, dwell, exposure, the
  tilt control's name, devices, spectra kind and windows) and how to serve it.
- `NionTomoAdapter(config, microscope)`: the instrument side of the fusetomo protocol
  (binds an `InstrumentServer`; `serve()` runs until the series end is acknowledged).
- `NionMicroscope(config)`: the `Microscope` through Nion Swift's STEM controller, scan and
  camera (imports Nion code; needs nionswift-instrumentation); `open_adapter(config)` makes
  both from whatever is registered in the running Swift.
- `element_maps(spectrum_image, config)`: the maps a spectrum image gives.

docs/nionswift.md says how to install and run it at a microscope.
"""

from __future__ import annotations

from typing import Any

from fusetomo.adapters.instrument.delivery import Outbox
from fusetomo.adapters.instrument.microscope import (
    AcquisitionAbortedError,
    HaadfScan,
    Microscope,
    SpectrumImage,
    pixel_dose,
)
from fusetomo.adapters.nion.config import EDX, EELS, NionAdapterError, NionTomoConfig
from fusetomo.adapters.nion.tomo_adapter import AdapterStats, NionTomoAdapter, element_maps

__all__ = [
    "EDX",
    "EELS",
    "AcquisitionAbortedError",
    "AdapterStats",
    "HaadfScan",
    "Microscope",
    "NionAdapterError",
    "NionMicroscope",
    "NionTomoAdapter",
    "NionTomoConfig",
    "Outbox",
    "SpectrumImage",
    "element_maps",
    "open_adapter",
    "pixel_dose",
]


def __getattr__(name: str) -> Any:
    if name == "NionMicroscope":  # imports Nion code only when asked for
        from fusetomo.adapters.nion.microscope import NionMicroscope

        return NionMicroscope
    raise AttributeError(name)


def open_adapter(config: NionTomoConfig, **devices: Any) -> NionTomoAdapter:
    """An adapter on the microscope registered in this Python (Swift, or a headless usim):
    `devices` may pass stem_controller=, scan=, camera= explicitly."""
    from fusetomo.adapters.nion.microscope import NionMicroscope

    return NionTomoAdapter(config, NionMicroscope(config, **devices))
