"""Whether a series fits this machine's memory, decided when its series_start arrives (a
series that cannot fit is refused then, with the estimate, rather than accepted and
killed by the first tilts that overflow it, again on every --resume)."""

from __future__ import annotations

import os

from fusetomo.adapters.protocol import ProtocolError, SeriesStart
from fusetomo.controller.live.params import LiveParams

# Measured peaks of the fused solver (FusedSolver, 4 elements, 47 HAADF + 10 chemical
# tilts, 3 iterations, CPU): 27 and 22 times the volumes' bytes at 64^3 and 128^3, most of
# it the projectors and the iteration's temporaries; 32 leaves room. The data are held
# about twice (images and their model), with room for the run file's buffers.
VOLUME_FACTOR = 32
DATA_FACTOR = 8
PLANNED_DEFAULT = (181, 37)  # HAADF, chemical tilts when the scheme does not list them


def available_memory() -> int | None:
    """Bytes this process may still use: MemAvailable (Linux), else the free physical
    pages; None when neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_needed(start: SeriesStart, params: LiveParams) -> int:
    """An estimate (bytes) of what recording and reconstructing the series takes."""
    ns, nd = start.shape
    n_el = len(start.elements)
    n_h = start.planned_haadf or PLANNED_DEFAULT[0]
    n_c = start.planned_chem if start.planned_chem is not None else PLANNED_DEFAULT[1]
    frame = ns * nd * 8  # the largest frame (float64) held while it is recorded
    data = (n_h + n_c * n_el) * ns * nd * 4
    if not params.reconstruct:
        return 16 * frame
    return VOLUME_FACTOR * n_el * ns * nd * nd * 4 + DATA_FACTOR * data + 16 * frame


def check_fits(start: SeriesStart, params: LiveParams) -> None:
    """ProtocolError `too_big_for_memory` when the estimate exceeds the memory limit
    (`params.memory_limit_bytes`, else the memory available now)."""
    limit = params.memory_limit_bytes or available_memory()
    if limit is None:
        return
    need = memory_needed(start, params)
    if need > limit:
        ns, nd = start.shape
        raise ProtocolError(
            "too_big_for_memory",
            f"series_start: a series of {len(start.elements)} elements on [{ns}, {nd}] "
            f"images needs about {need / 2**30:.3g} GiB to reconstruct live, "
            f"{limit / 2**30:.3g} GiB are available; refused (bin the images, or record "
            "only with a controller that does not reconstruct)", seq=start.seq,
            mtype=start.type, series=start.series)
