"""How a run file stores its arrays compactly (docs/file-format.md §3, "Storage").

- Every array dataset written once per row (the HAADF images, the maps, the snapshot and
  standard-error volumes) is chunked one row at a time (a volume row in slabs of at most
  4 MiB) and compressed with HDF5's byte shuffle and gzip (`CODEC`): any HDF5 reader opens
  it, and a chunk is written once and never rewritten, which keeps SWMR's crash guarantees
  (a filtered chunk rewritten in place would be reallocated). The small per-tilt and
  per-iteration rows and the events stay uncompressed.
- The volumes recorded *during* a run are previews (the viewer's slider, the report's
  per-tilt curves): before compression they are rounded, per element, to a power-of-two
  step no larger than 1/2^bits of that element's largest |value| (`PREVIEW_BITS`), which
  makes the vacuum and the low bits compress. The error is at most half a step: 1.2e-4 of
  the element's maximum for snapshots, 4.9e-4 for standard errors, far below the
  reconstruction's own error (an NRMSE of 0.2) and the standard error's (a factor of about
  2). The final reconstruction and its standard error (`final=True`) are stored exactly:
  bit for bit what the solver returned.

Measured on the run file of `fusetomo demo --size 64` (nanocubes, 47 HAADF + 10 chemical
tilts, 11 snapshots and 11 standard-error maps of 4 x 64^3), re-recorded row by row with each
codec by `python bench/runfile_size.py RUN.h5` (2 shared CPU cores; write time of the whole
run, resize + write + flush, per tilt; the controller's median processing per tilt there is
0.32 s):

    codec    previews   MB     ms per tilt        codec    previews   MB     ms per tilt
    none     exact      93.7    1.8               gzip-1   exact      66.6   27.9
    lzf      exact      71.9   12.8               gzip-1   rounded    19.8   11.5   <- CODEC
    lzf      rounded    25.5    9.0               gzip-4   rounded    18.3   17.1
                                                  gzip-9   rounded    17.5  167.5

Exact float32 volumes hardly compress (0.7x with any codec); rounded previews do. gzip-1 is
the fastest codec that brings the file under a quarter of its uncompressed size (23.4 MB),
at 4 % of a tilt's processing; gzip-4 saves 8 % more at 1.5x the time, and lzf misses the
target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["CODEC", "PREVIEW_BITS", "Codec", "quantise", "stored"]

PREVIEW_BITS = {"snapshots": 12, "std_error": 10}


@dataclass(frozen=True)
class Codec:
    """An HDF5 filter pipeline for the run file's array datasets."""

    name: Literal["none", "gzip", "lzf"] = "gzip"
    level: int | None = 1      # gzip only: 1 (fast) .. 9 (small)
    shuffle: bool = True       # HDF5's byte shuffle before compressing

    def __post_init__(self) -> None:
        if self.name not in ("none", "gzip", "lzf"):
            raise ValueError(f"codec name must be none, gzip or lzf, got {self.name!r}")
        if self.name == "gzip" and (not isinstance(self.level, int)
                                    or not 0 <= self.level <= 9):
            raise ValueError(f"gzip level must be an integer in 0..9, got {self.level!r}")

    def h5_kwargs(self) -> dict[str, Any]:
        """h5py create_dataset keywords."""
        if self.name == "none":
            return {}
        out: dict[str, Any] = {"compression": self.name, "shuffle": self.shuffle}
        if self.name == "gzip":
            out["compression_opts"] = self.level
        return out

    def __str__(self) -> str:
        return self.name if self.name != "gzip" else f"gzip-{self.level}"


CODEC = Codec("gzip", 1)


def quantise(stack: np.ndarray, bits: int) -> np.ndarray:
    """`stack` [1, n_el, ...] float32 with each element's values rounded to a multiple of a
    power of two <= max|x| / 2^bits (so values such as small integers stay exact); an
    element that is all zeros, or not finite everywhere, is kept as it is."""
    if not 1 <= bits <= 23:
        raise ValueError(f"bits must lie in 1..23, got {bits}")
    out = np.array(stack, dtype=np.float32, copy=True)
    for i in range(out.shape[1]):
        v = out[0, i]
        top = float(np.max(np.abs(v))) if v.size else 0.0
        if not (top > 0 and np.isfinite(top)):
            continue
        step = np.float32(2.0 ** np.floor(np.log2(top / 2.0**bits)))
        if step > 0:  # a maximum near the smallest float32 keeps its values
            out[0, i] = np.rint(v / step) * step
    return out


def stored(stack: np.ndarray, group: str, final: bool) -> np.ndarray:
    """What is written of a volume stack of `group` (snapshots, std_error): exactly the
    final one; a preview rounded to PREVIEW_BITS[group] so that it compresses."""
    return stack if final else quantise(stack, PREVIEW_BITS[group])
