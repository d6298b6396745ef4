"""What a report is made from: its parameters, its input and its errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusetomo.core.errors import FusetomoError

MODALITIES = ("haadf", "chem")
PLANES = ("s", "u", "v")
PLANE_TITLES = {"s": "s (normal to the tilt axis)", "u": "u", "v": "v"}
# distinct additive colours for the overlay (RGB first, then yellow, magenta, cyan, ...)
PALETTE = ((1.0, 0.1, 0.1), (0.1, 1.0, 0.1), (0.2, 0.45, 1.0), (1.0, 0.85, 0.0),
           (1.0, 0.1, 1.0), (0.0, 1.0, 1.0), (1.0, 0.55, 0.0), (0.7, 0.7, 0.7))


class ReportError(FusetomoError, ValueError):
    """Input a report cannot be made from; the message names the file and what is wrong."""


class Skip(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """A figure whose input is absent; the message says which."""


@dataclass(frozen=True)
class ReportParams:
    """How the report reads its input."""

    # the specimen support: voxels whose summed volumes exceed this fraction of their max
    support_fraction: float = 0.25
    # an element is present in a support voxel above this fraction of its own max there
    presence_fraction: float = 0.25
    bins: int = 50                 # stoichiometry histogram bins on [0, 1]
    # atomic fractions (maps and the region table) where the summed volumes exceed this
    # fraction of their max (controller/report/stoichiometry.py)
    fraction_support: float = 0.10
    dpi: int = 110
    max_snapshots: int = 60        # per-tilt curves read at most this many snapshots
    truth: Path | None = None      # a series file with /truth (overrides the automatic one)

    def __post_init__(self) -> None:
        for name in ("support_fraction", "presence_fraction", "fraction_support"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ReportError(f"{name} must lie in [0, 1), got {v}")
        for name in ("bins", "dpi", "max_snapshots"):
            if getattr(self, name) < 2:
                raise ReportError(f"{name} must be >= 2, got {getattr(self, name)}")


@dataclass
class TiltPoint:
    """A value recorded after `n_haadf` HAADF and `n_chem` chemical tilts."""

    n_haadf: int
    n_chem: int
    iteration: int
    values: dict[str, float]


@dataclass
class ReportInput:
    """What the figures are drawn from (None / empty: absent, with the reason in notes)."""

    path: Path
    kind: str                                  # run | recon | series
    elements: list[str]
    volumes: dict[str, np.ndarray] | None = None
    volumes_label: str = ""
    std_error: dict[str, np.ndarray] | None = None
    truth: dict[str, np.ndarray] | None = None
    truth_note: str = ""
    # counts per voxel of a unit truth concentration (the simulated instrument's dose scale),
    # so that the truth is shown in the reconstruction's quantity; None: not known
    truth_counts_per_unit: float | None = None
    pixel_size_nm: float | None = None
    fit_params: dict[str, Any] = field(default_factory=dict)  # lambdas, stop_reason
    convergence: dict[str, np.ndarray] = field(default_factory=dict)
    chem_added: list[int] = field(default_factory=list)   # iterations a chemical tilt joined
    nrmse_per_tilt: list[TiltPoint] = field(default_factory=list)
    std_per_tilt: list[TiltPoint] = field(default_factory=list)
    dose: dict[str, np.ndarray] = field(default_factory=dict)      # per image, by modality
    dose_seq: dict[str, np.ndarray] | None = None  # acquisition order (None: unknown)
    dose_budget: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    advice: list[dict[str, Any]] = field(default_factory=list)  # the advisor's log
    notes: dict[str, str] = field(default_factory=dict)  # figure -> why its input is absent
    # a run's record counts and cost rows, for the per-tilt curves
    snapshots: int = 0
    std_errors: int = 0
    costs: dict[str, np.ndarray] = field(default_factory=dict)
    series: Any = None  # the TiltSeries of a series file (raw tilts figure)
