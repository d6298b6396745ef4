"""Argument types shared by the command modules (argparse reports their messages)."""

from __future__ import annotations

import argparse
import math
from typing import Any


def _int_at_least(text: str, lowest: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < lowest:
        raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {v}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """--threads N on a command that computes (the CPU kernels of solver/cpu_kernels.py);
    cli.main applies it through apply_threads before the command runs."""
    p.add_argument("--threads", type=non_negative_int, default=None, metavar="N",
                   help="CPU threads for the projector and TV kernels (default: "
                        "$FUSETOMO_THREADS, else every core; 0: every core)")


def apply_threads(args: Any) -> int:
    """Set the kernels' thread count from --threads (commands without it: from
    FUSETOMO_THREADS, else every core); returns the count. ValueError names a bad
    FUSETOMO_THREADS."""
    from fusetomo.solver.backend import set_threads

    return set_threads(getattr(args, "threads", None))
