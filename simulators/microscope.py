"""A simulated microscope: the physics behind the simulated instrument, as a `Microscope`.

The plan's images are simulated up front (one `forward.simulate` call, so the live series
equals the offline one) or read from a series or run file (replay); an acquisition at a
tilt of the series at the nominal dwell returns those frames, any other one is projected on
demand at its dose (a replayed file has one dose per image and no other tilts). Moving the
stage and scanning take the instrument's times divided by the speed factor (an `abort`
cuts them short). Optional drift moves each stage position's images (HAADF and spectrum
image alike) by a random sub-pixel offset N(0, sigma) px per axis, plus a constant tilt-axis
offset along the detector axis; the offsets go into the tilt headers (`drift_px` [ds, dd],
`axis_offset_px`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import shift as nd_shift

from fusetomo.adapters.instrument.microscope import (
    AcquisitionAbortedError,
    HaadfScan,
    SpectrumImage,
)
from fusetomo.adapters.series import TiltSeries
from fusetomo.core.angles import angle_key
from fusetomo.core.errors import FusetomoError
from fusetomo.simulators.forward import AcquisitionParams, bin_projections, haadf_signal
from fusetomo.solver.projector import ParallelProjector


class InstrumentError(FusetomoError, ValueError):
    """Bad instrument parameters or replay source; the message names the value."""


def apply_shift(image: np.ndarray, shift_px: tuple[float, float] | list[float],
                *, counts: bool = False) -> np.ndarray:
    """An image moved by shift_px = (ds, dd) pixels (linear interpolation, edges repeated;
    counts stay >= 0). The instrument's drift uses exactly this."""
    out = nd_shift(np.asarray(image, dtype=np.float32), tuple(float(s) for s in shift_px),
                   order=1, mode="nearest")
    return np.clip(out, 0, None) if counts else out


@dataclass(frozen=True)
class Timing:
    """Seconds at speed 1 (divided by `speed`), and the drift."""

    speed: float = 1.0
    t_tilt: float = 2.0
    t_track: float = 1.0
    t_haadf_scan: float = 4.0
    t_spectrum_image: float = 60.0
    drift_sigma_px: float = 0.0
    axis_offset_px: float = 0.0
    seed: int = 0


class SimulatedMicroscope:
    """Frames of `series` (and, with `fine` volumes, on-demand projections of them)."""

    def __init__(self, series: TiltSeries, timing: Timing, *, fine: np.ndarray | None = None,
                 Z: np.ndarray | None = None, acq: AcquisitionParams | None = None,
                 haadf_dose: float = 0.0, chem_dose: float = 0.0) -> None:
        self.series, self.timing = series, timing
        self.fine, self.Z = fine, Z
        self.acq = acq or AcquisitionParams()
        self.haadf_dose, self.chem_dose = haadf_dose, chem_dose
        self.elements = list(series.elements)
        ns, nd = series.shape
        # nominal per-pixel times of the plan's scans (what a dwell of 1x means)
        self.haadf_dwell_us = 1e6 * max(timing.t_haadf_scan, 1e-9) / (ns * nd)
        self.exposure_ms = 1e3 * max(timing.t_spectrum_image, 1e-9) / (ns * nd)
        self._h_index = {angle_key(a): i for i, a in enumerate(series.haadf_angles)}
        self._c_index = {angle_key(a): i for i, a in enumerate(series.common_chem_angles)}
        self._drift_rng = np.random.default_rng([timing.seed, 0x0D71F7])
        self._demand_rng = np.random.default_rng([timing.seed, 0xDE3A4D])
        self._hsig: Any = None
        self._abort = threading.Event()
        self.angle = 0.0
        self._shift = np.zeros(2)
        self._shift_fields: dict[str, Any] = {}

    def has_haadf(self, angle: float) -> bool:
        return angle_key(angle) in self._h_index

    def has_chem(self, angle: float) -> bool:
        return angle_key(angle) in self._c_index

    # -- Microscope -----------------------------------------------------------------------
    def tilt_deg(self) -> float:
        return self.angle

    def set_tilt(self, angle_deg: float) -> float:
        t = self.timing
        self._abort.clear()
        self._wait(t.t_tilt + t.t_track)
        self.angle = float(angle_deg)
        shift, fields = np.zeros(2), {}
        if t.drift_sigma_px > 0:
            drift = self._drift_rng.normal(0.0, t.drift_sigma_px, 2)
            shift += drift
            fields["drift_px"] = [float(drift[0]), float(drift[1])]
        if t.axis_offset_px != 0:
            shift[1] += t.axis_offset_px
            fields["axis_offset_px"] = float(t.axis_offset_px)
        self._shift, self._shift_fields = shift, fields
        return self.angle

    def acquire_haadf(self, dwell_us: float) -> HaadfScan:
        ratio = self._ratio(dwell_us, self.haadf_dwell_us)
        self._abort.clear()
        self._wait(self.timing.t_haadf_scan * ratio)
        image, _ = self._frames(spectrum=False, ratio=ratio)
        return HaadfScan(self._shifted(image), float(dwell_us), self.series.pixel_size_nm,
                         dose_e_per_A2=self.haadf_dose * ratio, fields=self._shift_fields)

    def acquire_spectrum_image(self, exposure_ms: float) -> SpectrumImage:
        ratio = self._ratio(exposure_ms, self.exposure_ms)
        self._abort.clear()
        self._wait(self.timing.t_spectrum_image * ratio)
        image, chem = self._frames(spectrum=True, ratio=ratio)
        assert chem is not None
        background = {e: float(self.series.background.get(e, 0.0)) * ratio
                      for e in self.elements}
        maps = {e: self._shifted(chem[i], counts=True) for i, e in enumerate(self.elements)}
        return SpectrumImage(self._shifted(image), None, None, "", float(exposure_ms),
                             self.series.pixel_size_nm, maps=maps,
                             dose_e_per_A2=self.chem_dose * ratio,
                             haadf_dose_e_per_A2=self.haadf_dose, fields=self._shift_fields,
                             chem_fields={"background": background})

    def abort(self) -> None:
        self._abort.set()

    def beam_current_pa(self) -> float | None:
        return None

    def field_of_view_nm(self) -> float | None:
        px = self.series.pixel_size_nm
        return None if px is None else px * self.series.shape[1]

    # -- physics ----------------------------------------------------------------------------
    def _wait(self, seconds: float) -> None:
        if self._abort.wait(max(seconds, 0.0) / self.timing.speed):
            raise AcquisitionAbortedError("aborted")

    def _ratio(self, dwell: float, nominal: float) -> float:
        ratio = float(dwell) / nominal
        if math.isclose(ratio, 1.0, rel_tol=1e-9):
            return 1.0
        if self.fine is None:
            raise InstrumentError(f"a replayed series has one dose per image; cannot "
                                  f"acquire at {ratio:.3g} times the nominal dose")
        return ratio

    def _shifted(self, image: np.ndarray, counts: bool = False) -> np.ndarray:
        if not self._shift_fields:
            return np.asarray(image, dtype=np.float32)
        return apply_shift(image, self._shift, counts=counts)

    def _frames(self, spectrum: bool, ratio: float) -> tuple[np.ndarray, np.ndarray | None]:
        """The series' frames at the current tilt, or (off the series, or at another dose)
        frames projected now at dose ratio `ratio` (of the nominal spectrum dose for
        spectra, of the HAADF dose for HAADF images)."""
        key = angle_key(self.angle)
        s = self.series
        if ratio == 1.0 and key in self._h_index and (not spectrum or key in self._c_index):
            chem = None
            if spectrum:
                ci = self._c_index[key]
                chem = np.stack([s.chem[e][ci] for e in self.elements])
            return s.haadf[self._h_index[key]], chem
        if self.fine is None:
            what = "chemical maps" if spectrum and key in self._h_index else "HAADF image"
            raise InstrumentError(f"the replay source has no {what} at {self.angle} deg")
        return self._project(spectrum, ratio)

    def _project(self, spectrum: bool, ratio: float) -> tuple[np.ndarray, np.ndarray | None]:
        acq, o, n = self.acq, self.acq.oversample, self.series.shape[1]
        proj = ParallelProjector(n * o, [self.angle])
        if self._hsig is None:
            self._hsig = haadf_signal(self.fine, self.Z, acq.gamma)
        rng = self._demand_rng
        clean_h = bin_projections(proj.forward(self._hsig), o)[0]
        support = clean_h > 0.1 * clean_h.max()
        mu = float(clean_h[support].mean()) if support.any() else 1.0
        h_ratio = 1.0 if spectrum else ratio  # a spectrum's HAADF is at the nominal dose
        sigma = mu / acq.haadf_snr / math.sqrt(h_ratio)
        haadf = (clean_h + rng.normal(0.0, sigma, clean_h.shape)).astype(np.float32)
        chem = None
        if spectrum:
            base = float(self.series.attrs["counts_per_unit"])
            kappa = base * ratio
            clean_c = bin_projections(proj.forward(self.fine), o)[:, 0]
            bg = np.array([self.series.background.get(e, 0.0) / base for e in self.elements])
            chem = rng.poisson(kappa * (clean_c + bg[:, None, None])).astype(np.float32)
        return haadf, chem
