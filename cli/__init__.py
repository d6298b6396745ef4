"""The `fusetomo` command line: one module per command, each with `register(subparsers)`.

    simulate, reconstruct, export, offline-demo, inspect     (offline)
    instrument-sim, control, replay, demo (live-demo)        (the live loop)
    report, stoichiometry, view, import, align, sweep, reconstruct-slabs, nion-usim, keys

Every failure the user can cause (bad file, unknown specimen or element, missing GPU, a
message or run file that cannot be used, ...) is a `fusetomo.core.FusetomoError` (or an
OSError) and ends with `fusetomo: error: <message>` on stderr and exit status 2, without a
traceback (set FUSETOMO_DEBUG=1 to see one). Every command module is imported when the
parser is built: a missing one is an error, never skipped; heavy or optional libraries
(Qt, Dask, MPI, Nion Swift) are imported by the commands that need them, when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from fusetomo.core.mpi import defer_mpi_init

defer_mpi_init()  # no MPI (and its sockets) unless reconstruct-slabs asks for it

from fusetomo.cli import (  # noqa: E402 (after the MPI set-up)
    align,
    control,
    demo,
    export,
    imports,
    inspect,
    instrument,
    keys,
    nion,
    offline_demo,
    reconstruct,
    replay,
    report,
    simulate,
    slabs,
    stoichiometry,
    sweep,
    view,
)
from fusetomo.cli.argtypes import apply_threads  # noqa: E402
from fusetomo.cli.common import eprint  # noqa: E402
from fusetomo.core.errors import FusetomoError  # noqa: E402

# The order of `fusetomo --help`.
COMMANDS: tuple[ModuleType, ...] = (
    simulate, reconstruct, export, offline_demo, inspect, instrument, control, replay, demo,
    report, stoichiometry, view, imports, align, sweep, slabs, nion, keys,
)
USER_ERRORS: tuple[type[BaseException], ...] = (FusetomoError, OSError)

__all__ = ["COMMANDS", "USER_ERRORS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusetomo", description="Fused multi-modal (HAADF + EELS/EDX) electron tomography")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already reported
        return e.code if isinstance(e.code, int) else 2
    try:
        apply_threads(args)  # --threads, else FUSETOMO_THREADS, else every core
    except ValueError as e:  # a bad FUSETOMO_THREADS
        eprint(f"fusetomo: error: {e}")
        return 2
    try:
        return int(args.func(args))
    except USER_ERRORS as e:
        if os.environ.get("FUSETOMO_DEBUG"):
            raise
        eprint(f"fusetomo: error: {e}")
        return 2
    except KeyboardInterrupt:
        eprint("fusetomo: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
