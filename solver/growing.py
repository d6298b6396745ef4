"""Arrays that grow by appending, in amortised constant time per appended row.

A live series adds one tilt at a time: concatenating the stack of every image recorded so
far to add one more copies it all, so each tilt costs more than the last (1000 tilts of
256^2: from 16 down to 2 tilts/s). `Growing` keeps a buffer with spare capacity along
one axis, doubling it when full, and hands out the filled part as a view (no copy)."""

from __future__ import annotations

from typing import Any


class Growing:
    """An array growing along `axis`; `view` is the filled part (NumPy or CuPy)."""

    def __init__(self, initial: Any, axis: int = 0) -> None:
        self.axis = axis
        self._buf = initial
        self._n = int(initial.shape[axis])

    @property
    def view(self) -> Any:
        index = [slice(None)] * self._buf.ndim
        index[self.axis] = slice(0, self._n)
        return self._buf[tuple(index)]

    def append(self, rows: Any, xp: Any) -> None:
        """Append `rows` (its other axes match) along the axis."""
        k = int(rows.shape[self.axis])
        cap = int(self._buf.shape[self.axis])
        if self._n + k > cap:
            shape = list(self._buf.shape)
            shape[self.axis] = max(2 * cap, self._n + k, 4)
            bigger = xp.empty(tuple(shape), dtype=self._buf.dtype)
            index = [slice(None)] * self._buf.ndim
            index[self.axis] = slice(0, self._n)
            bigger[tuple(index)] = self.view
            self._buf = bigger
        index = [slice(None)] * self._buf.ndim
        index[self.axis] = slice(self._n, self._n + k)
        self._buf[tuple(index)] = rows
        self._n += k
