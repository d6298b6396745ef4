"""Reading header fields safely: every number is checked for its type, finiteness and range
before it is converted (a JSON integer may have hundreds of digits, which `float()` and
`math.isfinite` refuse with OverflowError), so that reading a field either returns a value
in range or raises `ProtocolError` naming the field and the value."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fusetomo.adapters.protocol.errors import ProtocolError
from fusetomo.core.elements import ATOMIC_NUMBER

MAX_SEQ = 2**53 - 1  # sequence numbers stay exact in a float64 (and in every JSON reader)
MAX_ID = 2**63 - 1  # command and advice ids: int64
MAX_DOSE = 1e9  # e/A^2 of one image or a budget: far above any specimen's survival
_MISSING = object()


def finite_float(v: Any) -> float | None:
    """`v` as a finite float, or None when it is not a real number or not finite (bools,
    strings, containers, NaN, inf, integers too large for a float are all None)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return float(v) if -1e300 < v < 1e300 else None
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return None


def show(v: Any, limit: int = 80) -> str:
    """A short repr of a received value for an error message."""
    try:
        text = repr(v)
    except ValueError:  # an integer with too many digits to print
        text = f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Fields:
    """Typed access to one header's fields; errors name the message type and its seq."""

    def __init__(self, header: Mapping[str, Any], mtype: str, seq: int | None = None) -> None:
        self.h = header
        self.mtype = mtype
        self.seq = seq

    def fail(self, code: str, text: str) -> ProtocolError:
        seq = self.seq if self.seq is not None and 0 <= self.seq <= MAX_SEQ else None
        series = self.h.get("series")
        return ProtocolError(code, f"{self.mtype}: {text}", seq=seq, mtype=self.mtype,
                             series=series if isinstance(series, str) else None)

    def _get(self, name: str, required: bool) -> Any:
        v = self.h.get(name, _MISSING)
        if v is _MISSING and required:
            raise self.fail("missing_field", f"missing field {name!r}")
        return v

    def _bad(self, name: str, v: Any, want: str, code: str = "bad_field") -> ProtocolError:
        return self.fail(code, f"field {name!r} must be {want}, got {type(v).__name__} "
                               f"{show(v)}")

    def integer(self, name: str, lo: int, hi: int, *, required: bool = True,
                nullable: bool = False, default: int | None = None,
                code: str = "bad_field") -> int | None:
        v = self._get(name, required)
        if v is _MISSING or (v is None and nullable):
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(name, v, f"an integer in {lo}..{hi}", code)
        if not lo <= v <= hi:
            raise self._bad(name, v, f"an integer in {lo}..{hi}", code)
        return v

    def number(self, name: str, lo: float = -math.inf, hi: float = math.inf, *,
               required: bool = True, nullable: bool = False, default: float | None = None,
               above: bool = False, code: str = "bad_field") -> float | None:
        """A finite number within [lo, hi] ((lo, hi] with `above`)."""
        v = self._get(name, required)
        if v is _MISSING or (v is None and nullable):
            return default
        f = finite_float(v)
        want = f"a finite number in {'(' if above else '['}{lo:g}, {hi:g}]"
        if f is None or f > hi or f < lo or (above and f == lo):
            raise self._bad(name, v, want, code)
        return f

    def text(self, name: str, max_len: int, *, required: bool = True, nullable: bool = False,
             min_len: int = 0, default: str | None = None) -> str | None:
        v = self._get(name, required)
        if v is _MISSING or (v is None and nullable):
            return default
        if not isinstance(v, str) or not min_len <= len(v) <= max_len:
            raise self._bad(name, v, f"a string of {min_len}..{max_len} characters")
        return v

    def boolean(self, name: str, default: bool = False) -> bool:
        v = self._get(name, False)
        if v is _MISSING or v is None:
            return default
        if not isinstance(v, bool):
            raise self._bad(name, v, "true or false")
        return v

    def mapping(self, name: str, *, required: bool = True,
                nullable: bool = False) -> dict[str, Any] | None:
        v = self._get(name, required)
        if v is _MISSING or (v is None and nullable):
            return None
        if not isinstance(v, dict):
            raise self._bad(name, v, "a JSON object")
        return v

    def elements(self, name: str = "elements", *,
                 allow_empty: bool = False) -> tuple[str, ...]:
        """A list of distinct element symbols; empty only where `allow_empty` (a HAADF-only
        series announces no element)."""
        v = self._get(name, True)
        if (not isinstance(v, list) or (not v and not allow_empty)
                or len(v) > len(ATOMIC_NUMBER) or not all(isinstance(e, str) for e in v)):
            what = "a list" if allow_empty else "a non-empty list"
            raise self.fail("bad_field", f"{name} must be {what} of element "
                                         f"symbols, got {show(v)}")
        unknown = [e for e in v if e not in ATOMIC_NUMBER]
        if unknown:
            raise self.fail("unknown_element", f"unknown element {show(unknown[0])}")
        if len(set(v)) != len(v):
            raise self.fail("bad_field", f"duplicate element in {show(v)}")
        return tuple(v)

    def angles(self, name: str, values: Any, code: str = "bad_series") -> tuple[float, ...]:
        """A list of tilt angles (degrees, within +-90) found under `name`."""
        if not isinstance(values, list):
            raise self.fail(code, f"{name} must be a list of angles, got {show(values)}")
        out = []
        for a in values:
            f = finite_float(a)
            if f is None or abs(f) > 90:
                raise self.fail(code, f"{name}: angle {show(a)} is not a number within "
                                      "[-90, 90]")
            out.append(f)
        return tuple(out)
