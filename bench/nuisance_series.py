"""Series as a microscope writes them, for issue 16's advisor and uncertainty checks.

The same acquisition model as bench/robustness.py (another projector than the solver's,
rotate-and-sum on a grid twice as fine, binned; a chemical background of a fraction of each
element's peak; a HAADF offset; gamma 1.7; HAADF SNR 300), with nothing stated in the file:
the fused solver estimates the backgrounds, the HAADF offsets and gamma (the nuisance model
of issue 14). Here the tilts are any list (a spectrum image can sit at every HAADF tilt, for
the policy runs), the geometry seed and the noise seed are separate (Monte Carlo: one
specimen, many noise draws), and the clean projections are computed once per specimen.

Specimens: the simulators' (nanocubes, core-shell), bench/robustness_specimens.py's (film,
rod, janus) and bench/heldout_specimens.py's (lamella, alloy); `NAME@G` draws geometry G.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heldout_specimens import FAMILIES as HELDOUT
from robustness_specimens import FAMILIES as ROBUST
from rotation_projector import project

from fusetomo.adapters.series import TiltSeries
from fusetomo.simulators.forward import bin_projections, bin_volume, haadf_signal
from fusetomo.simulators.specimens import Specimen, make_specimen

OVERSAMPLE = 2
HAADF_SNR = 300.0


def specimen(name: str, size: int) -> Specimen:
    """`name` or `name@G` (geometry seed G, default 0) at `size`."""
    base, _, geo = name.partition("@")
    seed = int(geo or 0)
    fams = {**ROBUST, **HELDOUT}
    if base in fams:
        return fams[base](size, seed)
    return make_specimen(base, size, seed=seed)


@dataclass(frozen=True)
class Nuisances:
    """What the data carry beyond the ideal model (none of it stated in the file)."""

    snr: float = 2.5  # mean chemical SNR over the elements at the reference background
    background: float = 0.15  # fraction of each element's peak projected signal
    offset: float = 0.10  # HAADF offset, fraction of the HAADF peak
    gamma: float = 1.7


@dataclass
class Acquired:
    """A simulated series (nothing stated), its truth, and the true nuisances."""

    series: TiltSeries
    truth: dict[str, np.ndarray]
    background_counts: np.ndarray  # [n_el], counts per pixel
    kappa: float  # counts per unit concentration and voxel


class Clean:
    """The clean projections of one specimen at given tilts, computed once."""

    def __init__(self, name: str, size: int, haadf_angles: np.ndarray,
                 chem_angles: np.ndarray, gamma: float = 1.7) -> None:
        self.name, self.size = name, size
        self.spec = specimen(name, size * OVERSAMPLE)
        self.haadf_angles = np.asarray(haadf_angles, dtype=np.float64)
        self.chem_angles = np.asarray(chem_angles, dtype=np.float64)
        self.truth_vol = bin_volume(self.spec.volumes, OVERSAMPLE)
        self.chem = bin_projections(project(self.spec.volumes, self.chem_angles), OVERSAMPLE)
        self.gamma = gamma
        sig = haadf_signal(self.spec.volumes, np.asarray(self.spec.Z), gamma)
        self.haadf = bin_projections(project(sig, self.haadf_angles), OVERSAMPLE)

    @property
    def elements(self) -> list[str]:
        return list(self.spec.elements)

    def acquire(self, noise_seed: int, nz: Nuisances | None = None) -> Acquired:
        nz = nz or Nuisances(gamma=self.gamma)
        if nz.gamma != self.gamma:
            raise ValueError(f"clean HAADF projections were made with gamma {self.gamma}")
        els = self.elements
        rng = np.random.default_rng([noise_seed, 16])
        support = self.haadf > 0.1 * self.haadf.max()
        sigma = float(self.haadf[support].mean()) / HAADF_SNR
        offset = nz.offset * float(self.haadf.max())
        haadf = (self.haadf + rng.normal(0.0, sigma, self.haadf.shape) + offset)
        peak = self.chem.reshape(len(els), -1).max(axis=1)
        bg = nz.background * peak
        snr1 = []
        for i in range(len(els)):
            sup = self.chem[i] > 0.1 * peak[i]
            mu = float(self.chem[i][sup].mean())
            snr1.append(mu / np.sqrt(mu + max(bg[i], 0.15 * peak[i])))
        kappa = (nz.snr / float(np.mean(snr1))) ** 2
        counts = rng.poisson(kappa * (self.chem + bg[:, None, None, None])).astype(np.float32)
        series = TiltSeries(
            haadf.astype(np.float32), self.haadf_angles,
            {e: counts[i] for i, e in enumerate(els)},
            {e: self.chem_angles for e in els},
            Z={e: int(z) for e, z in zip(els, self.spec.Z, strict=True)},
            pixel_size_nm=0.5,
            attrs={"specimen": self.name, "seed": noise_seed, "counts_per_unit": kappa,
                   "chem_dose_e_per_A2": 1.0, "chem_snr_mean": nz.snr})
        truth = {e: self.truth_vol[i] * kappa for i, e in enumerate(els)}
        return Acquired(series, truth, kappa * bg, kappa)
