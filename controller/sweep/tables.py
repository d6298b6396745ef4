"""The sweep's journal (results.csv): every finished task, appended and synced."""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fusetomo.controller.sweep.config import SweepConfig, SweepConfigError


# -- the results table (journal) ----------------------------------------------------------------
def elements_of(cfg: SweepConfig) -> list[str]:
    """Element symbols of the sweep's specimen (for the table's columns)."""
    if cfg.specimen.series:
        from fusetomo.adapters.seriesfile import read_series

        return list(read_series(cfg.specimen.series[0]).elements)
    from fusetomo.simulators.specimens import BUILTIN, load_specimen

    if cfg.specimen.name in BUILTIN:
        return list(BUILTIN[cfg.specimen.name](cfg.specimen.size, 0).elements)
    return list(load_specimen(cfg.specimen.name).elements)


class Journal:
    """`results.csv`: one row per finished attempt, appended, flushed and fsynced."""

    BASE = ("task_key", "cell", "point", "replicate", "source", "status", "attempt",
            "nrmse_mean")
    TAIL = ("elapsed_s", "worker", "error")

    def __init__(self, path: Path, elements: Sequence[str], params: Sequence[str]) -> None:
        self.path = path
        self.columns = [*self.BASE, *(f"nrmse_{e}" for e in elements), *params, *self.TAIL]
        if path.exists() and path.stat().st_size > 0:
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            if header != self.columns:
                raise SweepConfigError(
                    f"{path}: its columns {header} differ from this sweep's {self.columns}; "
                    "the folder holds another sweep: use a new --out")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def rows(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def append(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else row.get(c)
                                    for c in self.columns])
            f.flush()
            os.fsync(f.fileno())


def _ok_rows(journal: Journal) -> dict[str, dict[str, str]]:
    return {r["task_key"]: r for r in journal.rows() if r["status"] == "ok"}
