"""What the command modules share: error lines, logging, signals, and the score lines of
the commands that know the truth."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import total_dose
from fusetomo.core.errors import FusetomoError
from fusetomo.solver.metrics import nrmse_per_element


class UsageError(FusetomoError, ValueError):
    """A command-line value that the parameter classes reject."""


def eprint(*args: Any) -> None:
    print(*args, file=sys.stderr)


def error(text: str) -> int:
    """Report `text` as the command's error; returns the exit status, 2."""
    print(f"fusetomo: error: {text}", file=sys.stderr)
    return 2


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event,
                    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
                    ) -> Iterator[None]:
    """`signals` set `stop` while the block runs (only the main thread can handle them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def series_dose(series: TiltSeries) -> float | None:
    return total_dose(series.attrs, series.haadf.shape[0], series.common_chem_angles.size)


def nrmse_scores(truth: dict[str, np.ndarray] | None,
                 volumes: dict[str, np.ndarray]) -> dict[str, float]:
    """<NRMSE> per element against `truth` (empty when unknown or of another shape)."""
    if not truth:
        return {}
    common = {e: truth[e] for e in truth if e in volumes}
    if not common or any(v.shape != volumes[e].shape for e, v in common.items()):
        return {}
    return nrmse_per_element(common, volumes)


def nrmse_line(scores: dict[str, float]) -> str:
    per = ", ".join(f"{e} {v:.3f}" for e, v in scores.items())
    return f"<NRMSE> = {np.mean(list(scores.values())):.3f}  ({per})"
