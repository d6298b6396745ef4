"""Element symbols and atomic numbers (Z = 1..92)."""

from __future__ import annotations

from fusetomo.core.errors import FusetomoError

_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge "
    "As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm "
    "Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th "
    "Pa U"
).split()
ATOMIC_NUMBER: dict[str, int] = {s: i + 1 for i, s in enumerate(_SYMBOLS)}


class UnknownElementError(FusetomoError, KeyError):
    """An element symbol that is not in the periodic table (1 <= Z <= 92)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown element"


def atomic_number(symbol: str) -> int:
    """Z of an element symbol, case as written in the periodic table ('Co', not 'CO')."""
    try:
        return ATOMIC_NUMBER[symbol]
    except KeyError:
        raise UnknownElementError(
            f"unknown element symbol {symbol!r} (expected e.g. 'Co', 'O', 'Au')"
        ) from None
