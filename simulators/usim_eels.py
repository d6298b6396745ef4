"""usim's EELS camera with a fusetomo specimen: each element's edge (a hydrogenic sawtooth
above its onset) scaled by the element's projection at the stage tilt, over usim's
background (simulators/usim_tomo.py plugs it in)."""

from __future__ import annotations

import logging
import typing
from typing import Any

import numpy as np
from nion.data import Calibration, DataAndMetadata
from nion.usim_device import CameraSimulator
from nion.usim_device import InstrumentDevice as UsimInstrument
from nion.utils import Geometry
from scipy.special import ndtr

from fusetomo.adapters.spectra import DEFAULT_EELS_EDGES
from fusetomo.core.angles import angle_key
from fusetomo.simulators.usim_tomo import (
    EDGE_EXPONENT,
    EDGE_ONSET_WIDTH_EV,
    EELS_CHANNELS,
    SpecimenScanGenerator,
    TomoSpecimen,
    UsimTomoError,
    _frame_geometry,
    _sample,
)

log = logging.getLogger("fusetomo.usim")


class TomoEELSSimulator(CameraSimulator.CameraSimulator):
    """An EELS camera whose spectra carry the specimen's edges at the probe's pixel."""

    depends_on: typing.ClassVar[list[str]] = ["probe_state", "probe_position"]

    def __init__(self, instrument: UsimInstrument.Instrument, specimen: TomoSpecimen,
                 scan_generator: SpecimenScanGenerator, *, seed: int = 0) -> None:
        sensor = Geometry.IntSize.make(instrument.camera_sensor_dimensions("eels"))
        super().__init__(instrument, "eels", sensor, instrument.counts_per_electron)
        if sensor.width != EELS_CHANNELS:
            raise UsimTomoError(f"the EELS sensor has {sensor.width} channels, expected "
                                f"{EELS_CHANNELS}")
        p = specimen.params
        self.specimen = specimen
        self._scan_generator = scan_generator
        self._rng = np.random.default_rng([seed, 0xEE15])
        E = p.energy_ev
        dE = p.eels_dispersion_ev
        self._background = (E / 500.0) ** -p.background_exponent * dE  # per count/eV at 500
        edges = []
        for e in specimen.elements:
            onset = DEFAULT_EELS_EDGES[e].signal_ev[0]
            edges.append(ndtr((E - onset) / EDGE_ONSET_WIDTH_EV)
                         * (np.maximum(E, onset) / onset) ** -EDGE_EXPONENT * dE)
        self._edges = np.asarray(edges)  # [n_el, channels]: counts per unit projection
        self._grid_key: tuple | None = None
        self._grid: np.ndarray | None = None  # [n_el, h, w] per-element maps on the scan grid

    def edge_window_counts(self, element: str, exposure_ms: float = 1.0) -> float:
        """Counts per unit projection that a perfect background subtraction finds in the
        element's default signal window (what an EELS map is expected to be, per unit)."""
        p = self.specimen.params
        i = self.specimen.elements.index(element)
        E = p.energy_ev
        w = DEFAULT_EELS_EDGES[element].signal_ev
        sel = (E >= w[0]) & (E <= w[1])  # noqa: SIM300 (E is the energy axis, not a constant)
        return float(self._edges[i, sel].sum() * p.edge_counts_per_ms * exposure_ms)

    def get_dimensional_calibrations(self, readout_area: Geometry.IntRect | None,
                                     binning_shape: Geometry.IntSize | None) -> list:
        p = self.specimen.params
        bw = binning_shape.width if binning_shape else 1
        return [Calibration.Calibration(),
                Calibration.Calibration(offset=p.eels_offset_ev + 0.5 * (bw - 1)
                                        * p.eels_dispersion_ev,
                                        scale=p.eels_dispersion_ev * bw, units="eV")]

    def _pixel(self) -> tuple[np.ndarray, int, int] | None:
        """(per-element maps on the scan grid, row, column) of the probe, None if unknown."""
        inst = self.instrument
        hs = inst.scan_controller
        dev = getattr(hs, "scan_device", None) if hs is not None else None
        if dev is None:
            return None
        fp = dev.current_frame_parameters
        size, fov, center, rot = _frame_geometry(fp)
        scanning = bool(getattr(dev, "is_scanning", False))
        if scanning:
            pt = dev.current_probe_position
        elif inst.probe_position is not None:
            pt = Geometry.FloatPoint.make(inst.probe_position)
        else:
            pt = Geometry.FloatPoint(0.5, 0.5)
        # Undo ScanDevice.current_probe_position: pt = rotate(r + centre/fov) + 0.5
        q = (pt - Geometry.FloatPoint(0.5, 0.5)).rotate(-rot)
        fov_nm = float(fp.fov_nm) if fp.fov_nm else max(fov.height, fov.width)
        ry = q.y - center.y / fov_nm
        rx = q.x - center.x / fov_nm
        # the probe position is a pixel's top-left corner: (index / size) - 0.5
        row = min(max(round((ry + 0.5) * size.height), 0), size.height - 1)
        col = min(max(round((rx + 0.5) * size.width), 0), size.width - 1)
        angle = self._scan_generator.tilt_deg(inst)
        key = (angle_key(angle), tuple(size), tuple(fov), tuple(center), rot)
        if key != self._grid_key:
            _, c = self.specimen.projections(angle)
            self._grid = _sample(c, size, fov, center, rot, self.specimen.params.pixel_size_nm)
            self._grid_key = key
        assert self._grid is not None
        return self._grid, row, col

    def get_frame_data(self, readout_area: Geometry.IntRect, binning_shape: Geometry.IntSize,
                       exposure_s: float, scan_context: Any,
                       parked_probe_position: Geometry.FloatPoint | None
                       ) -> DataAndMetadata.DataAndMetadata:
        p = self.specimen.params
        ms = exposure_s * 1000.0
        got = self._pixel()
        if got is None:
            conc = np.zeros(len(self.specimen.elements))
        else:
            grid, row, col = got
            conc = grid[:, row, col]
        b = p.background_counts_per_ms + p.background_per_projection * float(conc.sum())
        spectrum = ms * (b * self._background + p.edge_counts_per_ms * (conc @ self._edges))
        if p.noise:
            spectrum = self._rng.poisson(spectrum).astype(np.float64)
        data = np.zeros(tuple(self._sensor_dimensions), np.float32)
        data[data.shape[0] // 2] = spectrum
        data = self._get_binned_data(data, binning_shape)
        return DataAndMetadata.new_data_and_metadata(
            data.astype(np.float32), intensity_calibration=Calibration.Calibration(units="counts"),
            dimensional_calibrations=self.get_dimensional_calibrations(readout_area,
                                                                       binning_shape))
