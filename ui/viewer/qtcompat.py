"""A guard against a reference-count bug of PySide6 6.12.0 on CPython before 3.12.

Measured here (PySide6-Essentials 6.12.0, CPython 3.11.7): every call of a Python slot
drops one reference to `None`, and every `Signal.emit` from Python one to `True`, that
were never taken. pyqtgraph emits signals on every redraw, the window's timer calls a
slot five times a second, so within minutes the count reaches zero and the interpreter
aborts ("Fatal Python error: bool_dealloc" / "none_dealloc"), often at exit. PySide6 6.11.3
on 3.11, and 6.12.0 on 3.12 (where these objects are immortal), do not show it.

The real fix is a PySide6 without the bug (`PySide6-Essentials<6.12` on Python < 3.12).
Until then, `RefcountGuard` measures the bug once and, if it is there, keeps a large
reserve of references on `None`, `True` and `False` (written straight into CPython's
`ob_refcnt`, the first field of every object), topped up from the UI timer. Extra
references only keep these singletons alive, which they are anyway. It is hand-written
because no library offers it; it does nothing where the bug is absent.
"""

from __future__ import annotations

import ctypes
import sys
import threading

RESERVE = 1 << 24  # references held in hand; the leak is at most thousands a second
_SINGLETONS = (None, True, False)


def _refcount_field(obj: object) -> ctypes.c_ssize_t:
    # CPython < 3.12: PyObject starts with Py_ssize_t ob_refcnt.
    return ctypes.c_ssize_t.from_address(id(obj))


def leaks_references(n: int = 16) -> bool:
    """Whether emitting a PySide6 signal to a Python function loses references to None or
    True (n emits; each loses one when the bug is there)."""
    from PySide6 import QtCore

    class _Probe(QtCore.QObject):
        sig = QtCore.Signal(int)

    probe = _Probe()
    probe.sig.connect(_noop)
    before = {id(o): sys.getrefcount(o) for o in _SINGLETONS}
    for i in range(n):
        probe.sig.emit(i)
    after = {id(o): sys.getrefcount(o) for o in _SINGLETONS}
    probe.sig.disconnect(_noop)
    return any(before[k] - after[k] >= n // 2 for k in before)


def _noop(_value: int) -> None:
    return None


class RefcountGuard:
    """Keeps the singletons' reference counts at least RESERVE above where they started,
    when the running PySide6 loses references (see the module's docstring)."""

    _instance: RefcountGuard | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.active = (sys.implementation.name == "cpython" and sys.version_info < (3, 12)
                       and leaks_references())
        self.floor = {id(o): sys.getrefcount(o) + RESERVE for o in _SINGLETONS}
        self.added = 0
        self.top_up()

    @classmethod
    def install(cls) -> RefcountGuard:
        """The process's guard (measured once)."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def top_up(self) -> int:
        """Restore the reserve; returns how many references were added."""
        if not self.active:
            return 0
        added = 0
        for obj in _SINGLETONS:
            deficit = self.floor[id(obj)] - sys.getrefcount(obj)
            if deficit > 0:
                _refcount_field(obj).value += deficit
                added += deficit
        self.added += added
        return added
