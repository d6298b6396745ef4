"""X-ray lines and EELS edges of the elements (Z 3-92), from exspy's element database.

exspy (the HyperSpy project's EELS/EDS package) keeps, per element, the X-ray line energies
(Chantler 2005, with approximate weights) and the EELS edge onsets (Gatan EELS Atlas, with
their relevance Major/Minor). fusetomo reads them from there rather than keeping a table of
its own; what is ours is only the choice of a default line or edge per element:

- EDX: the first of K-alpha, L-alpha, M-alpha (M-beta for Po to Ra, which have no
  M-alpha in the database) whose energy lies in [0.1, 10] keV (the
  range of most spectrum images, where the line is strong and well separated from the
  detector's low-energy cut-off); an element with none of them in that range has no default
  (choose a line by name);
- EELS: the edges are grouped as spectroscopists name them (L2 + L3 -> "L2,3" with the L3
  onset, M4 + M5 -> "M4,5", M2 + M3 -> "M2,3", N4 + N5 -> "N4,5", N6 + N7, O4 + O5; K, L1, M1
  alone); the default is the Major family with the lowest onset at or above 100 eV (the
  low-loss region below is dominated by plasmons), else the Major family with the highest
  onset.

exspy is imported on first use (it takes seconds); without it the functions raise
ElementDatabaseError naming the extra to install.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

from fusetomo.core.elements import atomic_number
from fusetomo.core.errors import FusetomoError

__all__ = ["EdgeFamily", "ElementDatabaseError", "XrayLine", "default_edge", "default_line",
           "edge", "eels_edges", "elements_with_data", "line", "xray_lines"]

INSTALL_HINT = 'pip install "fusetomo[io]"'
EDX_PREFERENCE = ("Ka", "La", "Ma", "Mb")  # Mb: Po-Ra have no M-alpha in the database
EDX_RANGE_KEV = (0.1, 10.0)
EELS_MIN_ONSET_EV = 100.0
# Edge families: members -> name (the onset is the lowest member's).
_FAMILIES = (
    (("L2", "L3"), "L2,3"), (("M2", "M3"), "M2,3"), (("M4", "M5"), "M4,5"),
    (("N2", "N3"), "N2,3"), (("N4", "N5"), "N4,5"), (("N6", "N7"), "N6,7"),
    (("O2", "O3"), "O2,3"), (("O4", "O5"), "O4,5"),
)


class ElementDatabaseError(FusetomoError, LookupError):
    """No element database, or no line/edge of that name for that element; names both."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "element database error"


@dataclass(frozen=True)
class XrayLine:
    element: str
    line: str
    energy_kev: float
    weight: float


@dataclass(frozen=True)
class EdgeFamily:
    element: str
    edge: str  # "K", "L2,3", "M4,5", ...
    onset_ev: float
    major: bool


@functools.cache
def _database() -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # HyperSpy's deprecation notices on import
            warnings.simplefilter("ignore")
            from exspy._misc.elements import elements
    except ImportError as e:
        raise ElementDatabaseError(
            f"X-ray lines and EELS edges come from exspy's element database, which is not "
            f"installed ({e}): {INSTALL_HINT}") from None
    return elements


def _entry(element: str) -> dict[str, Any]:
    atomic_number(element)  # UnknownElementError for a symbol that is no element
    db = _database()
    if element not in db:
        raise ElementDatabaseError(f"element {element!r} is not in exspy's database")
    return db[element].get("Atomic_properties", {})


def xray_lines(element: str) -> dict[str, XrayLine]:
    """Every X-ray line of `element` in the database, by name ('Ka', 'La', 'Lb1', ...)."""
    lines = _entry(element).get("Xray_lines", {}) or {}
    return {name: XrayLine(element, name, float(v["energy (keV)"]), float(v["weight"]))
            for name, v in lines.items()}


def eels_edges(element: str) -> dict[str, EdgeFamily]:
    """The EELS edges of `element`, grouped in families ('K', 'L2,3', 'M4,5', ...), with the
    lowest member's onset; `major` when any member is a Major edge."""
    raw = _entry(element).get("Binding_energies", {}) or {}
    edges = {k: (float(v["onset_energy (eV)"]), v.get("relevance") == "Major")
             for k, v in raw.items() if isinstance(v.get("onset_energy (eV)"), int | float)}
    out: dict[str, EdgeFamily] = {}
    used: set[str] = set()
    for members, name in _FAMILIES:
        have = [m for m in members if m in edges]
        if have:
            out[name] = EdgeFamily(element, name, min(edges[m][0] for m in have),
                                   any(edges[m][1] for m in have))
            used.update(have)
    for k, (onset, major) in edges.items():
        if k not in used and k[-1] != "a":  # 'K1a' and the like: duplicates of K
            out[k] = EdgeFamily(element, k, onset, major)
    return dict(sorted(out.items(), key=lambda kv: kv[1].onset_ev))


def default_line(element: str) -> XrayLine:
    """The default EDX line of `element` (module docstring)."""
    lines = xray_lines(element)
    lo, hi = EDX_RANGE_KEV
    for name in EDX_PREFERENCE:
        if name in lines and lo <= lines[name].energy_kev <= hi:
            return lines[name]
    known = ", ".join(f"{k} {v.energy_kev:.3f} keV" for k, v in lines.items()) or "none"
    raise ElementDatabaseError(
        f"{element}: no K-alpha, L-alpha or M-alpha line in {lo:g}-{hi:g} keV (lines in "
        f"exspy's database: {known}); choose one by name (--line {element}=NAME)")


def default_edge(element: str) -> EdgeFamily:
    """The default EELS edge of `element` (module docstring)."""
    edges = eels_edges(element)
    major = [e for e in edges.values() if e.major] or list(edges.values())
    if not major:
        raise ElementDatabaseError(f"{element}: no EELS edge in exspy's database")
    high = [e for e in major if e.onset_ev >= EELS_MIN_ONSET_EV]
    return min(high, key=lambda e: e.onset_ev) if high else max(major,
                                                                 key=lambda e: e.onset_ev)


def line(element: str, name: str) -> XrayLine:
    """The X-ray line `name` of `element`, or an error listing the lines there are."""
    lines = xray_lines(element)
    if name not in lines:
        raise ElementDatabaseError(f"{element} has no X-ray line {name!r} in exspy's "
                                   f"database (it has {', '.join(lines) or 'none'})")
    return lines[name]


def edge(element: str, name: str) -> EdgeFamily:
    """The EELS edge (family) `name` of `element`, or an error listing the edges there are."""
    edges = eels_edges(element)
    if name not in edges:
        raise ElementDatabaseError(f"{element} has no EELS edge {name!r} in exspy's "
                                   f"database (it has {', '.join(edges) or 'none'})")
    return edges[name]


def elements_with_data() -> list[str]:
    """Symbols of the elements Z 3-92 that the database holds."""
    from fusetomo.core.elements import ATOMIC_NUMBER

    db = _database()
    return [s for s, z in ATOMIC_NUMBER.items() if 3 <= z <= 92 and s in db]
