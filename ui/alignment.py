"""The live aligner's shifts the controller publishes (topic `alignment`, docs/protocol.md:
`LiveAligner.status()` of a controller run with `--align`), decoded: shared by the viewer
(ui/viewer) and the Nion Swift panel (ui/nion). Decoding checks every field it keeps and
raises the caller's error type naming the field and the value, so that a bad message
changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusetomo.core.errors import FusetomoError
from fusetomo.ui.fields import integer as _int
from fusetomo.ui.fields import number as _num

DASH = "—"


class AlignmentDataError(FusetomoError, ValueError):
    """A published alignment that cannot be decoded; the message names the field and value."""


@dataclass(frozen=True, eq=False)
class Alignment:
    """The live aligner's shifts (topic `alignment`: the controller's `LiveAligner.status()`),
    one row per HAADF tilt in arrival order. Shared by the viewer and the Nion Swift panel."""

    angles: tuple[float, ...]
    shifts: np.ndarray  # [n, 2] (ds, dd) px in the measured image frame; read-only
    sources: tuple[str, ...] = ()  # how each shift was found; not in a run file's events
    axis_offset_px: float | None = None
    model_refinements: int | None = None
    last_update_px: float | None = None
    rotation_deg: float | None = None

    def by_angle(self) -> tuple[np.ndarray, np.ndarray]:
        """(angles [n], shifts [n, 2]) sorted by angle; a repeated angle keeps arrival order."""
        a = np.asarray(self.angles, dtype=np.float64)
        order = np.argsort(a, kind="stable")
        return a[order], self.shifts[order]

    def summary(self) -> str:
        offset = DASH if self.axis_offset_px is None else f"{self.axis_offset_px:+.2f}"
        steps = DASH if self.model_refinements is None else str(self.model_refinements)
        update = DASH if self.last_update_px is None else f"{self.last_update_px:.3g}"
        return f"axis offset {offset} px · {steps} model refinements · last update {update} px"



def decode_alignment(doc: Any, error: type[Exception] = AlignmentDataError
                     ) -> Alignment:
    """`alignment` (LiveAligner.status()) -> Alignment. Checks every field it keeps and
    raises `error` naming the field and the value, so that a bad message changes nothing;
    fields it does not show (n_tilts aside, which must agree) are ignored."""
    if not isinstance(doc, Mapping):
        raise error(f"alignment: expected an object, got {type(doc).__name__}")
    angles = doc.get("angles")
    if not isinstance(angles, list) or any(_num(a) is None for a in angles):
        raise error(f"alignment: angles must be a list of finite degrees, got {angles!r:.80}")
    shifts = doc.get("shifts_px")
    if not isinstance(shifts, list) or len(shifts) != len(angles):
        raise error(f"alignment: shifts_px must be a list of one [ds, dd] per angle "
                    f"({len(angles)}), got {shifts!r:.80}")
    for i, row in enumerate(shifts):
        if not isinstance(row, list) or len(row) != 2 or any(_num(v) is None for v in row):
            raise error(f"alignment: shifts_px[{i}] must be two finite numbers [ds, dd], "
                        f"got {row!r:.80}")
    n = doc.get("n_tilts")
    if n is not None and _int(n) != len(angles):
        raise error(f"alignment: n_tilts must be the number of angles ({len(angles)}), "
                    f"got {n!r}")
    sources = doc.get("sources")
    sources = [] if sources is None else sources
    if (not isinstance(sources, list) or len(sources) not in (0, len(angles))
            or not all(isinstance(x, str) for x in sources)):
        raise error(f"alignment: sources must be one string per angle, got {sources!r:.80}")

    def optional(name: str) -> float | None:
        v = doc.get(name)
        if v is not None and _num(v) is None:
            raise error(f"alignment: {name} must be a finite number or null, got {v!r:.80}")
        return None if v is None else float(v)

    axis, update, rotation = (optional(k) for k in ("axis_offset_px", "last_update_px",
                                                     "rotation_deg"))
    steps = doc.get("model_refinements")
    if steps is not None and (_int(steps) is None or steps < 0):
        raise error(f"alignment: model_refinements must be an integer >= 0, got {steps!r:.80}")
    arr = np.asarray(shifts, dtype=np.float64).reshape(len(angles), 2)
    arr.setflags(write=False)  # shared by every snapshot of the state (view() copies no arrays)
    return Alignment(tuple(float(a) for a in angles), arr, tuple(sources), axis_offset_px=axis,
                     model_refinements=steps, last_update_px=update, rotation_deg=rotation)
