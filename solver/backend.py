"""Where arrays live: NumPy on the CPU, CuPy on a GPU, from one code path.

Device handling is sigpy's (`sigpy.Device`, `sigpy.get_device`, `sigpy.to_device`); this
module only adds the choice rule of the command line (`auto|cpu|gpu`), the sparse-matrix
namespace that goes with each array module, and the number of CPU threads the kernels of
solver/cpu_kernels.py use (`--threads N`, FUSETOMO_THREADS; default: every core this
process may run on).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Literal

import numpy as np
import sigpy as sp
import sigpy.config

from fusetomo.core.errors import FusetomoError

DeviceChoice = Literal["auto", "cpu", "gpu"]


class DeviceUnavailableError(FusetomoError, RuntimeError):
    """A GPU was asked for but CuPy or a CUDA device is missing."""


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device answers."""
    if not sigpy.config.cupy_enabled:
        return False
    import cupy

    try:
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # no driver, no device: CuPy raises its own runtime errors
        return False


def resolve_device(choice: DeviceChoice | str = "auto") -> sp.Device:
    """Map a command-line choice to a sigpy device (-1 is the CPU)."""
    if choice == "cpu":
        return sp.Device(-1)
    if choice == "gpu":
        if not gpu_available():
            raise DeviceUnavailableError(
                "device 'gpu' requested but CuPy or a CUDA device is not available; "
                "install fusetomo[gpu] on a machine with an NVIDIA GPU or use --device cpu"
            )
        return sp.Device(0)
    if choice == "auto":
        return sp.Device(0) if gpu_available() else sp.Device(-1)
    raise ValueError(f"device must be one of auto|cpu|gpu, got {choice!r}")


def array_module(x: Any) -> ModuleType:
    """NumPy or CuPy, whichever holds `x`."""
    return sp.get_device(x).xp


def sparse_module(device: sp.Device) -> ModuleType:
    """`scipy.sparse` on the CPU, `cupyx.scipy.sparse` on a GPU."""
    if device == sp.cpu_device:
        import scipy.sparse

        return scipy.sparse
    import cupyx.scipy.sparse

    return cupyx.scipy.sparse


def to_device(x: Any, device: sp.Device) -> Any:
    return sp.to_device(x, device)


def to_numpy(x: Any) -> np.ndarray:
    return np.asarray(sp.to_device(x, sp.cpu_device))


# -- CPU threads ----------------------------------------------------------------------------
THREADS_ENV = "FUSETOMO_THREADS"
_threads: int | None = None


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _parse_threads(text: str, where: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{where}: not a whole number: {text!r}") from None
    if n < 0:
        raise ValueError(f"{where}: must be >= 0 (0: all cores), got {n}")
    return n


def set_threads(n: int | None) -> int:
    """Use `n` CPU threads in the multithreaded kernels (0 or None: FUSETOMO_THREADS if set,
    else all cores); returns the number now in force. Threads beyond the cores available
    are allowed (they only share the cores)."""
    global _threads
    if n is None or n == 0:
        env = os.environ.get(THREADS_ENV, "").strip()
        n = _parse_threads(env, THREADS_ENV) if env else 0
    if n < 0:
        raise ValueError(f"threads must be >= 0 (0: all cores), got {n}")
    _threads = int(n) if n > 0 else available_cores()
    return _threads


def threads() -> int:
    """The number of CPU threads the kernels use (set_threads, else FUSETOMO_THREADS, else
    all cores)."""
    return _threads if _threads is not None else set_threads(None)
