"""A fusetomo specimen inside nionswift-usim: HAADF scans and EELS spectrum images of a 3D
specimen at the stage tilt, through the real nionswift-instrumentation hardware sources.

What is plugged in, and where (nionswift-usim 5.4, nionswift-instrumentation 23.6):

- **HAADF.** usim's `Instrument` takes a scan-data generator (`ScanDataGeneratorLike`:
  `generate_scan_data(instrument, scan_frame_parameters) -> image`). `SpecimenScanGenerator`
  returns the HAADF projection A_t sum_i (Z_i x_i)^gamma of the specimen at the tilt read from
  the instrument's tilt control (radians), sampled at the scan's pixel centres (field of view,
  centre and rotation of the scan frame honoured; outside the specimen: 0), plus Gaussian
  noise whose SNR grows as sqrt(dwell / 1 us). Projections are computed on a grid
  `oversample` times finer than `size` and binned, as `simulators/forward.py` does.
- **Tilt.** A usim `Control` named `tilt_control` (default `StageOutA`, radians) is added to
  the instrument's value manager, so `SetValAndConfirm`/`TryGetVal` work on it as on a Nion
  microscope.
- **EELS.** usim's own `EELSCameraSimulator` cannot be fed per-element projections: its
  spectra come from the sample's `Feature`s (rectangles in the stage plane, each with a fixed
  list of (edge onset, width) pairs), every edge of every feature under the probe is drawn
  with the same strength (0.1, then all features rescaled together so that the spectrum's
  total matches the beam current and the ZLP/total ratio matches T/lambda for 30 nm per
  feature layer). Edge strengths are thus binary per feature and normalised across edges,
  not proportional to a projected concentration, and there is no hook to change that short
  of replacing the simulator. So this module replaces it, the way usim builds its cameras:
  `TomoEELSSimulator` (a usim `CameraSimulator`) is handed to device_kit's `Camera`. At each
  camera frame it finds the probe's pixel in the scan (during a synchronized acquisition:
  the scan device's `current_probe_position`; otherwise the parked probe position) and
  returns a spectrum: a power-law background b(p) (E/500 eV)^-r plus, per element, a
  hydrogenic edge (step at the onset of the element's default edge, smoothed by 1 eV,
  decaying as (E/onset)^-3) whose strength is that element's projection A_t x_i at the
  pixel; counts scale with the exposure and are Poisson-distributed.

`UsimTomo` brings the instrument, scan and EELS camera up headless (no Swift UI, no
document): it starts nionswift-instrumentation's hardware-source machinery if no Swift is
running (`HardwareSource.run`, `camera_base.run`, `scan_base.run`), registers the
components under ids of its own (so it can sit beside usim's own plug-in), and takes them
down in `close`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nion.device_kit import CameraDevice
from nion.device_kit import ScanDevice as KitScanDevice
from nion.instrumentation import HardwareSource, camera_base, scan_base
from nion.usim_device import InstrumentDevice as UsimInstrument
from nion.usim_device import ScanDevice as UsimScanDevice
from nion.utils import Geometry, Registry
from scipy.ndimage import map_coordinates

from fusetomo.adapters.spectra import DEFAULT_EELS_EDGES
from fusetomo.core.angles import angle_key
from fusetomo.core.errors import FusetomoError
from fusetomo.simulators.forward import bin_projections, haadf_signal
from fusetomo.simulators.specimens import Specimen, check_size, make_specimen, resample
from fusetomo.solver.projector import ParallelProjector

log = logging.getLogger("fusetomo.usim")

EELS_CHANNELS = 1024  # device_kit's EELS sensor is 256 x 1024 (rows x energy channels)
EDGE_EXPONENT = 3.0  # hydrogenic sawtooth decay above the onset
EDGE_ONSET_WIDTH_EV = 1.0


class UsimTomoError(FusetomoError, ValueError):
    """Bad simulator parameters, or usim components that cannot be brought up."""


@dataclass(frozen=True)
class UsimTomoParams:
    """The specimen and the simulated detectors. Counts are per ms of camera exposure."""

    specimen: str = "nanocubes"  # built-in name or HDF5 specimen file
    size: int = 32  # projection grid (pixels a side); the specimen spans size * pixel_size_nm
    seed: int = 0
    oversample: int = 2
    gamma: float = 1.7
    pixel_size_nm: float = 0.5
    haadf_snr: float = 300.0  # at 1 us dwell (mean over the specimen / noise std)
    tilt_control: str = "StageOutA"
    eels_offset_ev: float = 400.0  # energy of channel 0
    eels_dispersion_ev: float = 2.0  # eV per channel
    edge_counts_per_ms: float = 2.0  # edge jump, counts per eV per unit projection per ms
    background_counts_per_ms: float = 1.0  # at 500 eV, counts per eV per ms, in vacuum
    background_per_projection: float = 0.5  # added per unit of total projection
    background_exponent: float = 3.0
    noise: bool = True
    instrument_id: str = "fusetomo_usim_stem_controller"
    scan_id: str = "fusetomo_usim_scan"
    eels_id: str = "fusetomo_usim_eels"

    def __post_init__(self) -> None:
        try:
            check_size(self.size)
        except ValueError as e:
            raise UsimTomoError(str(e)) from None
        for name in ("pixel_size_nm", "haadf_snr", "eels_dispersion_ev", "gamma"):
            v = getattr(self, name)
            if not math.isfinite(v) or v <= 0:
                raise UsimTomoError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("edge_counts_per_ms", "background_counts_per_ms",
                     "background_per_projection", "background_exponent"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise UsimTomoError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.oversample < 1:
            raise UsimTomoError(f"oversample must be >= 1, got {self.oversample}")
        if self.eels_offset_ev <= 0:
            raise UsimTomoError(f"eels_offset_ev must be > 0 (the edges' power laws need E > "
                                f"0), got {self.eels_offset_ev}")

    @property
    def energy_ev(self) -> np.ndarray:
        return self.eels_offset_ev + self.eels_dispersion_ev * np.arange(EELS_CHANNELS)

    @property
    def fov_nm(self) -> float:
        return self.size * self.pixel_size_nm


class TomoSpecimen:
    """A specimen and its projections at any tilt: HAADF signal and per-element maps on the
    `size` grid (binned from the `oversample`-times finer grid), cached per angle."""

    def __init__(self, params: UsimTomoParams) -> None:
        p = params
        n = p.size * p.oversample
        spec: Specimen = make_specimen(p.specimen, n, seed=p.seed)
        if spec.size != n:
            spec = resample(spec, n)
        for e in spec.elements:
            if e not in DEFAULT_EELS_EDGES:
                raise UsimTomoError(f"element {e!r} of specimen {spec.name!r} has no default "
                                    "EELS edge to simulate")
        self.params = p
        self.name = spec.name
        self.elements = list(spec.elements)
        self.Z = [int(z) for z in spec.Z]
        self._fine = spec.volumes
        self._hsig = haadf_signal(spec.volumes, np.asarray(spec.Z), p.gamma)
        self._cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def projections(self, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """(HAADF [size, size], per-element [n_el, size, size]) at `angle_deg`, noiseless.
        Axis 0 runs along the tilt axis (science.md §5)."""
        key = angle_key(angle_deg)
        with self._lock:
            got = self._cache.get(key)
            if got is None:
                o = self.params.oversample
                proj = ParallelProjector(self.params.size * o, [key])
                h = bin_projections(proj.forward(self._hsig), o)[0]
                c = bin_projections(proj.forward(self._fine), o)[:, 0]
                got = (np.asarray(h, np.float64), np.asarray(c, np.float64))
                if len(self._cache) > 64:
                    self._cache.clear()
                self._cache[key] = got
            return got

    def haadf_reference(self, angle_deg: float) -> float:
        """Mean HAADF signal over the specimen (> 10% of max) at this tilt: the noise scale."""
        h, _ = self.projections(angle_deg)
        sup = h > 0.1 * h.max()
        return float(h[sup].mean()) if sup.any() else 1.0


def _sample(images: np.ndarray, size: Geometry.IntSize, fov_nm: Geometry.FloatSize,
            center_nm: Geometry.FloatPoint, rotation_rad: float, pixel_nm: float) -> np.ndarray:
    """Images [k, n, n] (pixel size `pixel_nm`, centred on the optic axis) sampled at the
    pixel centres of a scan frame: [k, height, width], 0 outside."""
    h, w = int(size.height), int(size.width)
    n = images.shape[-1]
    yy = center_nm.y + (np.arange(h) + 0.5 - h / 2) * (fov_nm.height / h)
    xx = center_nm.x + (np.arange(w) + 0.5 - w / 2) * (fov_nm.width / w)
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    if rotation_rad:
        c, s = math.cos(rotation_rad), math.sin(rotation_rad)
        Y, X = s * X + c * Y, c * X - s * Y
    coords = [Y / pixel_nm + (n - 1) / 2, X / pixel_nm + (n - 1) / 2]
    return np.stack([map_coordinates(im, coords, order=1, mode="constant", cval=0.0)
                     for im in images])


def _frame_geometry(fp: Any) -> tuple[Geometry.IntSize, Geometry.FloatSize, Geometry.FloatPoint,
                                      float]:
    size = Geometry.IntSize.make(fp.subscan_pixel_size if fp.subscan_pixel_size
                                 else fp.pixel_size)
    fov = Geometry.FloatSize.make(fp.fov_size_nm) if fp.fov_size_nm \
        else Geometry.FloatSize(fp.fov_nm, fp.fov_nm)
    return size, fov, Geometry.FloatPoint.make(fp.center_nm), float(fp.rotation_rad)


class SpecimenScanGenerator:
    """usim's `ScanDataGeneratorLike`: the HAADF projection at the stage tilt."""

    def __init__(self, specimen: TomoSpecimen, *, seed: int = 0) -> None:
        self.specimen = specimen
        self._rng = np.random.default_rng([seed, 0x4AADF])
        self._rng_lock = threading.Lock()

    def tilt_deg(self, instrument: Any) -> float:
        name = self.specimen.params.tilt_control
        ok, v = instrument.TryGetVal(name)
        if not ok or v is None:
            raise UsimTomoError(f"the simulated instrument has no control {name!r}")
        return math.degrees(float(v))

    def generate_scan_data(self, instrument: Any, scan_frame_parameters: Any) -> np.ndarray:
        p = self.specimen.params
        angle = self.tilt_deg(instrument)
        h, _ = self.specimen.projections(angle)
        size, fov, center, rot = _frame_geometry(scan_frame_parameters)
        img = _sample(h[None], size, fov, center, rot, p.pixel_size_nm)[0]
        if p.noise:
            dwell = max(float(scan_frame_parameters.pixel_time_us), 1e-3)
            sigma = self.specimen.haadf_reference(angle) / p.haadf_snr / math.sqrt(dwell)
            with self._rng_lock:
                img = img + self._rng.normal(0.0, sigma, img.shape)
        return img.astype(np.float32)


class _SyncScanBox(UsimScanDevice.ScanBoxSimulator):
    """usim's scan box with the camera-clocked (synchronized) pixel count fixed.

    usim's `ScanBoxSimulator` moves the probe one pixel before the camera frame that belongs
    to it: of the `flyback_pixels` + width frames of a line, the first two (cropped as
    flyback) sit at pixel 0 and the first kept frame already at pixel 1, so a spectrum image
    comes out shifted by one pixel against its simultaneous HAADF image (and the last column
    repeats). Here each line is `flyback_pixels` frames parked at the line's first pixel,
    then one frame per pixel, so frame k of the kept ones sits at pixel k, as on a
    microscope whose scan advances on the camera's end-of-frame pulse. Free-running scans
    (no external clock) advance as before, without flyback.
    """

    def __init__(self, scan_data_generator: Any) -> None:
        super().__init__(scan_data_generator)
        self._lock = threading.RLock()
        self._flat = 0
        self._row = 0
        self._k = 0  # camera frames so far in this line

    def reset_frame(self) -> None:
        with self._lock:
            super().reset_frame()
            self._flat = self._row = self._k = 0

    @property
    def current_pixel_flat(self) -> int:
        return self._flat

    @property
    def probe_position_pixels(self) -> Geometry.IntPoint:
        w = self.scan_shape_pixels.width
        if w == 0:
            return Geometry.IntPoint()
        return Geometry.IntPoint(y=self._flat // w, x=self._flat % w)

    def _advance_pixel(self, n: int) -> None:
        with self._lock:
            w = self.scan_shape_pixels.width
            if not self.external_clock or w == 0:
                self._flat += n
                return
            f = self.flyback_pixels
            for _ in range(n):
                if self._k == w + f:  # the line is done: the next frame starts a new one
                    self._row += 1
                    self._k = 0
                    with self.blanker_signal_condition:
                        self.blanker_signal_condition.notify_all()
                self._k += 1
                self._flat = self._row * w + max(self._k - f - 1, 0)


class _ScanModule(scan_base.ScanModule):
    """A scan module like usim's, under an id of our own."""

    def __init__(self, instrument: UsimInstrument.Instrument, device_id: str) -> None:
        self.stem_controller_id = instrument.instrument_id
        sim = _SyncScanBox(instrument.scan_data_generator)
        self.device = KitScanDevice.Device(device_id, "fusetomo usim scan", instrument, sim)
        fov = 100.0
        modes = tuple(scan_base.ScanSettingsMode(name, key, KitScanDevice.ScanFrameParameters(
            pixel_size=(256, 256), pixel_time_us=1, fov_nm=fov))
            for name, key in (("Fast", "fast"), ("Slow", "slow"), ("Record", "record")))
        self.settings = scan_base.ScanSettings(device_id, modes,
                                               lambda d: KitScanDevice.ScanFrameParameters(d), 0,
                                               2)


class UsimTomo:
    """usim with a fusetomo specimen, headless. Use as a context manager:

        with UsimTomo(UsimTomoParams(size=32)) as sim:
            sim.instrument, sim.scan, sim.eels   # stem controller and hardware sources
    """

    def __init__(self, params: UsimTomoParams | None = None, *,
                 configuration_location: Path | None = None) -> None:
        self.params = params or UsimTomoParams()
        self.specimen = TomoSpecimen(self.params)
        self._config_dir = configuration_location
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._started_framework = False
        self._components: list[tuple[Any, set[str]]] = []
        self.instrument: UsimInstrument.Instrument | None = None
        self.scan: Any = None
        self.eels: Any = None
        self.eels_simulator: Any = None  # a usim_eels.TomoEELSSimulator once started
        self._camera: CameraDevice.Camera | None = None

    @property
    def elements(self) -> list[str]:
        return self.specimen.elements

    @property
    def Z(self) -> dict[str, int]:  # noqa: N802 (the protocol's name)
        return {e: z for e, z in zip(self.specimen.elements, self.specimen.Z, strict=True)}

    def start(self) -> UsimTomo:
        p = self.params
        if Registry.get_component("hardware_source_manager") is None:
            if self._config_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="fusetomo-usim-")
                self._config_dir = Path(self._tmp.name)
            HardwareSource.run()
            camera_base.run(self._config_dir)
            scan_base.run(self._config_dir)
            self._started_framework = True
        hsm = HardwareSource.HardwareSourceManager()
        for hid in (p.scan_id, p.eels_id):
            if hsm.get_hardware_source_for_hardware_source_id(hid) is not None:
                raise UsimTomoError(f"a hardware source {hid!r} is already registered")
        generator = SpecimenScanGenerator(self.specimen, seed=p.seed)
        value_manager = UsimInstrument.ValueManager()
        inst = UsimInstrument.Instrument(p.instrument_id, value_manager,
                                         UsimInstrument.AxisManager(), generator)
        inst.add_control(inst.create_control(p.tilt_control, 0.0))
        self.instrument = inst
        from fusetomo.simulators.usim_eels import TomoEELSSimulator  # it imports this module

        sim = TomoEELSSimulator(inst, self.specimen, generator, seed=p.seed)
        self.eels_simulator = sim
        self._camera = CameraDevice.Camera(p.eels_id, "eels", "fusetomo usim EELS", sim, inst)
        # the energy calibration reaches the data through the `eels_x_offset`/`eels_x_scale`
        # controls, which usim's value manager answers from this camera
        value_manager.eels_camera = self._camera
        settings = CameraDevice.CameraSettings(p.eels_id)
        camera_module = CameraDevice.CameraModule(p.instrument_id, self._camera, settings)
        self._register(inst, {"instrument_controller", "stem_controller"})
        self._register(camera_module, {"camera_module"})
        self._register(_ScanModule(inst, p.scan_id), {"scan_module"})
        self.scan = hsm.get_hardware_source_for_hardware_source_id(p.scan_id)
        self.eels = hsm.get_hardware_source_for_hardware_source_id(p.eels_id)
        if self.scan is None or self.eels is None:
            self.close()
            raise UsimTomoError("usim's hardware sources did not come up (is "
                                "nionswift-instrumentation's plug-in machinery running?)")
        inst.set_scan_controller(self.scan)
        inst.set_eels_camera(self.eels)
        fp = self.scan.get_current_frame_parameters()
        fp.fov_nm = p.fov_nm
        fp.pixel_size = Geometry.IntSize(p.size, p.size)
        self.scan.set_current_frame_parameters(fp)
        log.info("usim with specimen %s (%s) at %d px, %.3g nm field of view, tilt control %r",
                 self.specimen.name, ", ".join(self.elements), p.size, p.fov_nm,
                 p.tilt_control)
        return self

    def _register(self, component: Any, types: set[str]) -> None:
        Registry.register_component(component, types)
        self._components.append((component, types))

    def close(self) -> None:
        for component, types in reversed(self._components):
            Registry.unregister_component(component, types)
        self._components.clear()
        if self._camera is not None:
            # unregistering the camera module closes its hardware source, not the device
            try:
                self._camera.close()
            except Exception:  # already closed by the hardware source
                log.debug("camera already closed", exc_info=True)
            self._camera = None
        if self._started_framework:
            scan_base.stop()
            camera_base.stop()
            HardwareSource.stop()
            HardwareSource.HardwareSourceManager().close()
            self._started_framework = False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.scan = self.eels = self.instrument = None

    def __enter__(self) -> UsimTomo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

