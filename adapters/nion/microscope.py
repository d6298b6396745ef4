"""The microscope behind the adapter: stage tilt, HAADF scans and spectrum images.

`Microscope` (adapters/instrument/microscope.py) is what the adapter needs; `NionMicroscope`
provides it through nionswift-instrumentation (23.x), the same objects Nion Swift's own
panels drive:

- the STEM controller (`stem_controller.STEMController`, registered as "stem_controller"):
  `TryGetVal(name)` to check and read the tilt control, `SetValAndConfirm(name, radians,
  tolfactor, timeout_ms)` to move the stage and wait until it is there;
- the scan hardware source (`scan_base.ScanHardwareSource`): `record_immediate(frame
  parameters)` for a HAADF-only scan, and `grab_synchronized(scan_frame_parameters=...,
  camera=..., camera_frame_parameters=...)` for a spectrum image with its simultaneous
  HAADF image (the camera clocks the scan, one frame per pixel; `processing="sum_project"`
  sums the camera rows into one spectrum per pixel); `grab_synchronized_abort()` and
  `abort_playing()` to stop;
- the spectrometer camera (`camera_base.CameraHardwareSource`): its frame parameters
  (`exposure_ms`, `binning`, `processing`) and the energy calibration of the data it returns.

Only this module imports Nion code; the adapter itself runs against any `Microscope`.
"""

from __future__ import annotations

import copy
import logging
import math
import uuid
from typing import Any

import numpy as np

from fusetomo.adapters.instrument.microscope import (
    AcquisitionAbortedError,
    HaadfScan,
    SpectrumImage,
)
from fusetomo.adapters.nion.config import NionAdapterError, NionTomoConfig

log = logging.getLogger("fusetomo.nion")

class NionMicroscope:
    """`Microscope` through nionswift-instrumentation's STEM controller, scan and camera.

    Devices are taken from the arguments, else by the ids in `config` from
    nionswift-instrumentation's `HardwareSourceManager`, else the STEM controller's own
    (`Registry.get_component("stem_controller")`, its `scan_controller` and its
    `eels_camera`). A microscope without the tilt control, scan, camera or HAADF channel
    raises `NionAdapterError` naming what is missing.
    """

    def __init__(self, config: NionTomoConfig, *, stem_controller: Any = None,
                 scan: Any = None, camera: Any = None) -> None:
        from nion.instrumentation import HardwareSource
        from nion.utils import Registry

        self.config = config
        hsm = HardwareSource.HardwareSourceManager()
        stem = stem_controller
        if stem is None and config.instrument_id is not None:
            stem = hsm.get_instrument_by_id(config.instrument_id)
            if stem is None:
                raise NionAdapterError(f"no instrument {config.instrument_id!r} is registered "
                                       f"(known: {sorted(hsm.get_all_instrument_ids())})")
        if stem is None:
            stem = Registry.get_component("stem_controller")
        if stem is None:
            raise NionAdapterError("no STEM controller is registered with Nion Swift "
                                   "(is the microscope's instrument plug-in loaded?)")
        self.stem = stem
        self.scan = scan or self._hardware(hsm, config.scan_id, "scan_id",
                                           lambda: stem.scan_controller, "scan")
        self.camera = camera or self._hardware(hsm, config.camera_id, "camera_id",
                                               lambda: stem.eels_camera, "spectrometer camera")
        name = config.tilt_control
        ok, value = stem.TryGetVal(name)
        if not ok or value is None:
            raise NionAdapterError(
                f"the microscope has no control {name!r} for the stage tilt: set "
                f"tilt_control to the name of its alpha-tilt control (radians)")
        self._channel = self._find_channel(config.haadf_channel)

    @staticmethod
    def _hardware(hsm: Any, hid: str | None, key: str, default: Any, what: str) -> Any:
        if hid is not None:
            hs = hsm.get_hardware_source_for_hardware_source_id(hid)
            if hs is None:
                raise NionAdapterError(f"no hardware source {hid!r} ({key}) is registered "
                                       f"(known: {sorted(hsm.get_all_hardware_source_ids())})")
            return hs
        hs = default()
        if hs is None:
            raise NionAdapterError(f"the STEM controller has no {what}; name one with {key}")
        return hs

    def _find_channel(self, name: str) -> int:
        names = [self.scan.get_channel_name(i) for i in range(self.scan.get_channel_count())]
        if name not in names:
            raise NionAdapterError(f"the scan {self.scan.hardware_source_id!r} has no channel "
                                   f"{name!r} (channels: {names})")
        return names.index(name)

    # -- Microscope ---------------------------------------------------------------------
    def tilt_deg(self) -> float:
        ok, value = self.stem.TryGetVal(self.config.tilt_control)
        if not ok or value is None:
            raise NionAdapterError(f"cannot read the tilt control {self.config.tilt_control!r}")
        return math.degrees(float(value))

    def set_tilt(self, angle_deg: float) -> float:
        c = self.config
        if not self.stem.SetValAndConfirm(c.tilt_control, math.radians(angle_deg),
                                          c.tilt_tolerance_factor, c.tilt_timeout_ms):
            raise NionAdapterError(f"the stage did not confirm {c.tilt_control} = "
                                   f"{angle_deg:+.3f} deg within {c.tilt_timeout_ms} ms")
        return self.tilt_deg()

    def beam_current_pa(self) -> float | None:
        if self.config.beam_current_pa is not None:
            return self.config.beam_current_pa
        ok, value = self.stem.TryGetVal("BeamCurrent")  # amperes at Nion and usim
        return float(value) * 1e12 if ok and value is not None else None

    def field_of_view_nm(self) -> float | None:
        if self.config.fov_nm is not None:
            return self.config.fov_nm
        fov = getattr(self.scan.get_current_frame_parameters(), "fov_nm", None)
        return float(fov) if fov else None

    def _scan_parameters(self, dwell_us: float) -> Any:
        from nion.utils import Geometry

        c = self.config
        fp = copy.deepcopy(self.scan.get_current_frame_parameters())
        fp.pixel_size = Geometry.IntSize(c.size, c.size)
        fp.pixel_time_us = float(dwell_us)
        fp.subscan_pixel_size = None
        fp.subscan_fractional_size = None
        fp.subscan_fractional_center = None
        if c.fov_nm is not None:
            fp.fov_nm = c.fov_nm
        if c.rotation_deg is not None:
            fp.rotation_rad = math.radians(c.rotation_deg)
        return fp

    def _pixel_nm(self, fp: Any) -> float | None:
        fov = getattr(fp, "fov_nm", None)
        return float(fov) / self.config.size if fov else None

    def _orient(self, image: np.ndarray) -> np.ndarray:
        a = np.asarray(image, dtype=np.float32)
        if a.ndim != 2:
            raise NionAdapterError(f"the scan returned an image of shape {a.shape}, not 2-D")
        return np.ascontiguousarray(a.T if self.config.transpose else a)

    def _haadf_of(self, xdatas: Any) -> np.ndarray:
        for x in xdatas or ():
            if x is None:
                continue
            hs = x.metadata.get("hardware_source", {})
            if hs.get("channel_index") == self._channel or \
                    hs.get("channel_name") == self.config.haadf_channel:
                image = self._orient(x.data)
                dwell = hs.get("pixel_time_us")
                if self.config.haadf_per_us:
                    if not dwell:
                        raise NionAdapterError("haadf_per_us: the HAADF image does not say "
                                               "its pixel time (metadata pixel_time_us)")
                    image = image / np.float32(dwell)
                return image
        raise NionAdapterError(f"the scan returned no {self.config.haadf_channel!r} image")

    def acquire_haadf(self, dwell_us: float) -> HaadfScan:
        self.scan.set_channel_enabled(self._channel, True)
        fp = self._scan_parameters(dwell_us)
        xdatas = self.scan.record_immediate(fp)
        return HaadfScan(self._haadf_of(xdatas), float(dwell_us), self._pixel_nm(fp))

    def acquire_spectrum_image(self, exposure_ms: float) -> SpectrumImage:
        c = self.config
        self.scan.set_channel_enabled(self._channel, True)
        fp = self._scan_parameters(exposure_ms * 1000.0)
        fp.scan_id = uuid.uuid4()
        cfp = copy.deepcopy(self.camera.get_current_frame_parameters())
        cfp.exposure_ms = float(exposure_ms)
        cfp.binning = c.camera_binning
        cfp.processing = "sum_project"
        result = self.scan.grab_synchronized(scan_frame_parameters=fp, camera=self.camera,
                                             camera_frame_parameters=cfp)
        if result is None:
            raise AcquisitionAbortedError("the spectrum image was aborted")
        scans, spectra = result
        if not spectra or spectra[0] is None:
            raise NionAdapterError(f"the camera {self.camera.hardware_source_id!r} returned no "
                                   "spectrum image")
        x = spectra[0]
        si = np.asarray(x.data, dtype=np.float32)
        if si.ndim != 3 or si.shape[:2] != (c.size, c.size):
            raise NionAdapterError(f"the spectrum image has shape {si.shape}; expected "
                                   f"({c.size}, {c.size}, channels)")
        if c.transpose:
            si = np.ascontiguousarray(si.transpose(1, 0, 2))
        cal = x.dimensional_calibrations[-1]
        energy = cal.offset + cal.scale * np.arange(si.shape[-1], dtype=np.float64)
        return SpectrumImage(self._haadf_of(scans), si, energy, str(cal.units or ""),
                             float(exposure_ms), self._pixel_nm(fp))

    def abort(self) -> None:
        for name in ("grab_synchronized_abort", "abort_playing"):
            fn = getattr(self.scan, name, None)
            if callable(fn):
                try:
                    fn()
                except Exception:  # nothing was running
                    log.debug("%s failed", name, exc_info=True)
