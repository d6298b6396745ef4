"""What the live session hands to the sockets (`Outputs`), and the published previews of
the reconstruction (`orthoslices`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusetomo.adapters.protocol import ACK, COMMAND, ERROR, HELLO, Message
from fusetomo.solver.backend import to_numpy

HEADER_BUDGET = 48 * 1024  # bytes of orthoslice values in one published header


@dataclass
class Outputs:
    """Messages the session produced, in order: `to_instrument` (replies, hellos and
    commands, for the data socket), `events` (topic, message) for the status PUB, and
    `operator_reply` for the operator who sent the message being answered."""

    to_instrument: list[Message] = field(default_factory=list)
    events: list[tuple[str, Message]] = field(default_factory=list)
    operator_reply: Message | None = None

    @property
    def replies(self) -> list[Message]:
        """Acks, error replies and hellos sent to the instrument."""
        return [m for m in self.to_instrument if m.type in (ACK, ERROR, HELLO)]

    @property
    def commands(self) -> list[Message]:
        return [m for m in self.to_instrument if m.type == COMMAND]

    def topics(self, topic: str) -> list[dict[str, Any]]:
        """The headers published on `topic`."""
        return [m.header for t, m in self.events if t == topic]

    def extend(self, other: Outputs) -> None:
        self.to_instrument += other.to_instrument
        self.events += other.events
        if other.operator_reply is not None:
            self.operator_reply = other.operator_reply


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    if f <= 1:
        return img
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    if h == 0 or w == 0:
        return img
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def block_factor(ns: int, n: int, n_elements: int, size: int) -> int:
    """The block size `orthoslices` averages over: the published slices are at most `size`
    pixels a side, and smaller for many elements (the header's budget)."""
    # Keep the header small: 3 slices per element, about 4 characters per value.
    budget = max(int(math.sqrt(HEADER_BUDGET / (12 * max(n_elements, 1)))), 4)
    side = min(size, budget)
    return max(math.ceil(max(ns, n) / side), 1)


def slice_calibration(shape: tuple[int, ...], n_elements: int, size: int,
                      pixel_size_nm: float | None) -> dict[str, Any]:
    """What the published slices' pixels are (the `calibration` of a `slices` message,
    docs/protocol.md): the volume's shape [n_slices, n, n], the block factor, the side of
    one published pixel in nm (None when the series states no pixel size), the index of
    each central slice and the volumes' quantity and unit."""
    ns, n = int(shape[-3]), int(shape[-1])
    f = block_factor(ns, n, n_elements, size)
    px = (float(pixel_size_nm) if isinstance(pixel_size_nm, int | float)
          and math.isfinite(pixel_size_nm) and pixel_size_nm > 0 else None)
    return {"volume_shape": [ns, n, n], "block": f, "voxel_nm": px,
            "pixel_nm": None if px is None else px * f,
            "central": {"s": ns // 2, "u": n // 2, "v": n // 2},
            "quantity": "counts per voxel", "units": "counts/voxel"}


def orthoslices(x: Any, elements: list[str], size: int,
                n_volumes: int | None = None) -> dict[str, dict[str, Any]]:
    """Central slices of each element volume x[i] ([n_slices, n, n], on any device),
    normal to each axis ('s' tilt axis, 'u', 'v'), block-averaged to at most `size` pixels
    a side and quantised to integers 0..255 of `vmax` (value = q * vmax / 255).
    `n_volumes`: the volumes sharing the header's budget (default: the elements; twice as
    many when the standard errors go in the same message)."""
    ns, n = int(x.shape[1]), int(x.shape[2])
    f = block_factor(ns, n, n_volumes or len(elements), size)
    out: dict[str, dict[str, Any]] = {}
    for i, e in enumerate(elements):
        cuts = {"s": to_numpy(x[i, ns // 2, :, :]), "u": to_numpy(x[i, :, n // 2, :]),
                "v": to_numpy(x[i, :, :, n // 2])}
        small = {k: _block_mean(np.asarray(v, dtype=np.float64), f) for k, v in cuts.items()}
        vmax = max(float(v.max()) for v in small.values())
        vmax = vmax if vmax > 0 and math.isfinite(vmax) else 1.0
        out[e] = {"vmax": vmax, **{k: np.clip(np.rint(v / vmax * 255), 0, 255).astype(int)
                                  .tolist() for k, v in small.items()}}
    return out
