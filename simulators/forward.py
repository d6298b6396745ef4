"""Forward model of the simulated microscope: HAADF and chemical projections with noise.

HAADF = A_h sum_i (Z_i x_i)^gamma plus Gaussian noise at a chosen SNR; chemical maps =
Poisson(kappa (A_c x_i + bg_i)) with one dose scale kappa for all elements and a vacuum
background bg_i at a fraction of each element's peak signal (the 3D paper uses 15%).

To avoid the inverse crime, projections are computed on a grid `oversample` times finer
than the reconstruction and binned down; the reference truth is the fine volume averaged
over the same blocks. (The reconstruction then meets partial-volume and gamma-of-average
effects as real data would.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusetomo.adapters.instrument.plans import TiltScheme
from fusetomo.adapters.series import TiltSeries
from fusetomo.simulators.specimens import Specimen, make_specimen
from fusetomo.solver.projector import ParallelProjector

# Counts per electron per unit projected concentration (per voxel length) of a chemical
# map: only used to turn the dose scale into e/A^2 for dose accounting.
CHEM_YIELD = 4e-7


@dataclass(frozen=True)
class AcquisitionParams:
    """Dose and noise of the simulated acquisition."""

    gamma: float = 1.7
    chem_snr: float | None = 2.5
    chem_dose: float | None = None  # e/A^2 per chemical map; overrides chem_snr
    background_fraction: float = 0.15
    haadf_snr: float = 300.0
    haadf_dose: float = 366.0  # e/A^2 per HAADF image (dose accounting)
    pixel_size_nm: float = 0.5
    oversample: int = 2

    def __post_init__(self) -> None:
        if self.chem_snr is None and self.chem_dose is None:
            raise ValueError("give chem_snr or chem_dose")
        if self.chem_dose is not None and self.chem_dose <= 0:
            raise ValueError(f"chem_dose must be > 0, got {self.chem_dose}")
        if self.chem_snr is not None and self.chem_snr <= 0:
            raise ValueError(f"chem_snr must be > 0, got {self.chem_snr}")
        if self.oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")
        if self.haadf_snr <= 0:
            raise ValueError(f"haadf_snr must be > 0, got {self.haadf_snr}")


@dataclass
class Simulation:
    series: TiltSeries
    truth: dict[str, np.ndarray]
    chem_snr: dict[str, float] = field(default_factory=dict)


def bin_volume(vol: np.ndarray, o: int) -> np.ndarray:
    """Block means of o x o x o voxels over the last three axes."""
    if o == 1:
        return vol
    *lead, a, b, c = vol.shape
    return vol.reshape(*lead, a // o, o, b // o, o, c // o, o).mean(axis=(-5, -3, -1))


def bin_projections(p: np.ndarray, o: int) -> np.ndarray:
    """Fine projections [..., t, o*ns, o*nd] to the coarse grid: (1/o^3) block sums."""
    if o == 1:
        return p
    *lead, t, a, b = p.shape
    return p.reshape(*lead, t, a // o, o, b // o, o).sum(axis=(-3, -1)) / o**3


def haadf_signal(volumes: np.ndarray, Z: np.ndarray, gamma: float) -> np.ndarray:
    """sum_i (Z_i x_i)^gamma over the leading element axis."""
    z = np.asarray(Z, dtype=np.float32)[:, None, None, None]
    return np.sum((z * volumes) ** gamma, axis=0)


def simulate(
    specimen: Specimen | str,
    size: int,
    scheme: TiltScheme | None = None,
    acq: AcquisitionParams | None = None,
    *,
    seed: int = 0,
) -> Simulation:
    """Simulate a tilt series of `specimen` at reconstruction size `size`."""
    scheme = scheme or TiltScheme()
    acq = acq or AcquisitionParams()
    o = acq.oversample
    spec = specimen if isinstance(specimen, Specimen) else None
    if spec is None:
        spec = make_specimen(str(specimen), size * o, seed=seed)
    elif spec.size != size * o:
        from fusetomo.simulators.specimens import resample

        spec = resample(spec, size * o)
    fine = spec.volumes
    truth = bin_volume(fine, o)
    rng = np.random.default_rng(seed + 1)

    # HAADF on the fine grid, binned.
    ph = ParallelProjector(size * o, scheme.haadf())
    clean_h = bin_projections(ph.forward(haadf_signal(fine, np.asarray(spec.Z), acq.gamma)), o)
    support_h = clean_h > 0.1 * clean_h.max()
    sigma_h = float(clean_h[support_h].mean()) / acq.haadf_snr
    haadf = clean_h + rng.normal(0.0, sigma_h, clean_h.shape).astype(np.float32)

    # Chemical maps: one dose scale for all elements, background at a fraction of the peak.
    pc = ParallelProjector(size * o, scheme.chem())
    clean_c = bin_projections(pc.forward(fine), o)  # [n_el, m, ns, nd]
    peak = clean_c.reshape(len(spec.elements), -1).max(axis=1)
    bg = acq.background_fraction * peak
    snr1 = []
    for i in range(len(spec.elements)):
        sig = clean_c[i]
        sup = sig > 0.1 * peak[i]
        mu = float(sig[sup].mean()) if sup.any() else 0.0
        snr1.append(mu / np.sqrt(mu + bg[i]) if mu > 0 else 0.0)
    px_a = acq.pixel_size_nm * 10.0
    if acq.chem_dose is not None:
        kappa = acq.chem_dose * px_a**2 * CHEM_YIELD
    else:
        kappa = (acq.chem_snr / float(np.mean(snr1))) ** 2
    dose_c = kappa / (px_a**2 * CHEM_YIELD)
    counts = rng.poisson(kappa * (clean_c + bg[:, None, None, None])).astype(np.float32)

    chem_angles = scheme.chem()
    series = TiltSeries(
        haadf=haadf.astype(np.float32),
        haadf_angles=scheme.haadf(),
        chem={e: counts[i] for i, e in enumerate(spec.elements)},
        chem_angles={e: chem_angles for e in spec.elements},
        Z={e: int(z) for e, z in zip(spec.elements, spec.Z, strict=True)},
        background={e: float(kappa * bg[i]) for i, e in enumerate(spec.elements)},
        gamma=acq.gamma,
        pixel_size_nm=acq.pixel_size_nm,
        attrs={
            "specimen": spec.name,
            "seed": seed,
            "oversample": o,
            "haadf_snr": acq.haadf_snr,
            "haadf_dose_e_per_A2": acq.haadf_dose,
            "chem_dose_e_per_A2": dose_c,
            "counts_per_unit": kappa,
            "background_fraction": acq.background_fraction,
        },
    )
    snr = {e: float(np.sqrt(kappa) * s) for e, s in zip(spec.elements, snr1, strict=True)}
    series.attrs["chem_snr"] = np.array([snr[e] for e in spec.elements])
    return Simulation(series, {e: truth[i] for i, e in enumerate(spec.elements)}, snr)
