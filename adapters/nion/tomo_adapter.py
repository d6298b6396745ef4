"""The Nion microscope as a fusetomo instrument: an `InstrumentSession`
(adapters/instrument: the socket, delivery, commands, plan walking and holding, exactly as
the simulated instrument) over a `NionMicroscope` (or anything that is a `Microscope`),
whose spectrum images become element maps here (`element_maps`: EELS edges or EDX lines,
from `fusetomo.adapters.spectra`).

At each plan step the session tilts the stage (`Microscope.set_tilt`, which confirms),
takes a HAADF-only scan, or at chemical steps a spectrum image with its simultaneous HAADF
image (whose dose is counted once, with the spectrum image). A failed plan step (stage not
confirming, device error) pauses the plan and is kept in `last_error`; `resume` retries
the step. The same commands can be given locally (a Swift panel) with `command(...)`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
import zmq

from fusetomo.adapters.instrument.commands import InstrumentStats
from fusetomo.adapters.instrument.microscope import Microscope, SpectrumImage, pixel_dose
from fusetomo.adapters.instrument.session import InstrumentSession, SessionConfig
from fusetomo.adapters.nion.config import EELS, NionAdapterError, NionTomoConfig
from fusetomo.adapters.spectra import (
    DEFAULT_EDX_LINES,
    DEFAULT_EELS_EDGES,
    SpectrumError,
    edx_maps,
    eels_maps,
)

log = logging.getLogger("fusetomo.nion")

AdapterStats = InstrumentStats  # what one `serve` did (the session's stats)


class NionTomoAdapter(InstrumentSession):
    """A Nion microscope (or anything that is a `Microscope`) behind an `InstrumentServer`."""

    def __init__(self, config: NionTomoConfig, microscope: Microscope, *,
                 ctx: zmq.Context | None = None) -> None:
        self.nion = config
        plan = config.acquisition_plan()
        self._planned_chem = config.plan().n_chem  # for the dose budget
        self.beam_current_pa = microscope.beam_current_pa()
        fov = microscope.field_of_view_nm()
        self.pixel_nm = None if fov is None else fov / config.size
        # nominal doses per image (e/A^2): every pixel gets the beam for one dwell
        self.haadf_dose = pixel_dose(self.beam_current_pa, config.haadf_dwell_us * 1e-6,
                                     self.pixel_nm)
        self.chem_dose = pixel_dose(self.beam_current_pa, config.exposure_ms * 1e-3,
                                    self.pixel_nm)
        budget = config.dose_budget
        if budget is None and self.haadf_dose > 0:
            budget = (len(plan) - self._planned_chem) * self.haadf_dose \
                + self._planned_chem * self.chem_dose
        self.dose_budget = budget
        session = SessionConfig(
            config.series_id or f"nion-{uuid.uuid4().hex[:12]}", plan, tuple(config.elements),
            self._start_fields(plan), haadf_dwell_us=config.haadf_dwell_us,
            exposure_ms=config.exposure_ms, haadf_dose=self.haadf_dose,
            chem_dose=self.chem_dose, beam_current_pa=self.beam_current_pa,
            chem_fields={"spectra": config.spectra}, bind=config.bind, curve=config.curve,
            window=config.window, auto=config.auto, hold_for_advice=config.hold_for_advice,
            hold_timeout_s=config.hold_timeout_s, settle_s=config.settle_s)
        super().__init__(session, microscope, ctx=ctx, error_type=NionAdapterError,
                         maps_of=lambda sp: element_maps(sp, config))

    # -- the series header ----------------------------------------------------------------
    def _windows(self) -> dict[str, Any]:
        c = self.nion
        if c.spectra == EELS:
            table = {**DEFAULT_EELS_EDGES, **(c.edge_windows or {})}
            return {e: {"edge": table[e].edge, "pre_edge_ev": list(table[e].pre_edge_ev),
                        "signal_ev": list(table[e].signal_ev)} for e in c.elements}
        table = {**DEFAULT_EDX_LINES, **(c.edx_windows or {})}
        return {e: {"line": table[e].line, "window_kev": list(table[e].window_kev),
                    "background_kev": [list(b) for b in table[e].background_kev]}
                for e in c.elements}

    def _start_fields(self, plan: Any) -> dict[str, Any]:
        c = self.nion
        fields: dict[str, Any] = {
            "elements": list(c.elements),
            "Z": {e: c.z_of(e) for e in c.elements},
            "shape": [c.size, c.size],
            "scheme": plan.as_header(),
            "dose_budget_e_per_A2": self.dose_budget,
            "pixel_size_nm": self.pixel_nm,
            "haadf_dose_e_per_A2": self.haadf_dose,
            "chem_dose_e_per_A2": self.chem_dose,
            "instrument": "nion",
            "tilt_control": c.tilt_control,
            "spectra": c.spectra,
            "windows": self._windows(),
            "haadf_dwell_us": c.haadf_dwell_us,
            "exposure_ms": c.exposure_ms,
            "beam_current_pa": self.beam_current_pa,
            "auto": c.auto,
            "window": c.window,
            "holds_for_advice": c.hold_for_advice,
            **dict(c.extra),
        }
        if c.gamma is not None:
            fields["gamma"] = c.gamma
        return fields


def element_maps(sp: SpectrumImage, config: NionTomoConfig) -> dict[str, np.ndarray]:
    """One float32 count map per element from a spectrum image (EELS edges or EDX lines)."""
    units = sp.energy_units.strip()
    try:
        if config.spectra == EELS:
            scale = {"eV": 1.0, "keV": 1000.0}.get(units)
            if scale is None:
                raise NionAdapterError(f"the spectrum's energy axis is in {units!r}; EELS maps "
                                       "need 'eV' or 'keV'")
            maps = eels_maps(sp.si, sp.energy * scale, config.elements, config.edge_windows)
        else:
            scale = {"eV": 1e-3, "keV": 1.0}.get(units)
            if scale is None:
                raise NionAdapterError(f"the spectrum's energy axis is in {units!r}; EDX maps "
                                       "need 'eV' or 'keV'")
            maps = edx_maps(sp.si, sp.energy * scale, config.elements, config.edx_windows)
    except SpectrumError as e:
        raise NionAdapterError(f"element maps: {e}") from None
    return {e: np.ascontiguousarray(_counts_for_protocol(e, maps[e]), dtype=np.float32)
            for e in config.elements}


def _counts_for_protocol(element: str, m: np.ndarray) -> np.ndarray:
    """The wire protocol (adapters/protocol.py) carries maps as counts >= 0, while
    background-subtracted maps (adapters/spectra.py) scatter around 0 where the element is
    absent: until the protocol carries background-subtracted maps, the negative pixels are
    set to 0 here, and how many is logged (never silently)."""
    neg = int(np.count_nonzero(m < 0))
    if neg:
        log.warning(
            "%s map: %d of %d pixels negative after background subtraction (min %.3g) set "
            "to 0 for the protocol, which carries counts >= 0", element, neg, m.size,
            float(m.min()))
    return np.maximum(m, 0)

