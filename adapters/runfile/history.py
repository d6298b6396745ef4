"""Reading back what a run recorded (committed rows only) and shaping rows to record: the
tilt bookkeeping with its checksums, events, cost rows, volume stacks, the iteration
schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fusetomo.adapters.runfile.layout import Layout, frames_crc, meta_crc
from fusetomo.adapters.runfile.store import (
    MODALITIES,
    RunFileError,
    State,
    events_from_rows,
    rows,
)
from fusetomo.core.angles import angle_key


@dataclass
class Book:
    """What a writer must know of the committed tilts to refuse what does not fit."""

    seqs: set[int]
    last_seq: int
    angles: dict[str, dict[int, float]]  # modality -> {angle_key: angle}
    dose: dict[str, float]


def angle_dataset(modality: str, elements: tuple[str, ...] | list[str]) -> str:
    if modality == "haadf":
        return "haadf/angles"
    return f"chem/{elements[0]}/angles" if elements else "chem/angles"  # HAADF-only: empty


def tilt_frames(f: h5py.File, modality: str, elements: list[str] | tuple[str, ...],
                start: int, stop: int, path: Path) -> np.ndarray:
    """Frames of tilts [start, stop) as [k, n_frames, ns, nd] float32 (element order)."""
    if modality == "haadf":
        return rows(f, "haadf/data", stop, path, start)[:, None]
    return np.stack([rows(f, f"chem/{e}/data", stop, path, start) for e in elements], axis=1)


def check_tilts(f: h5py.File, path: Path, state: State, lay: Layout,
                book: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                angles: Mapping[str, np.ndarray] | None = None) -> None:
    """RunFileError naming the first committed tilt whose crc32 does not match its frames,
    or whose meta_crc32 (where the file has it) its seq, angle and doses. Reads 64 tilts
    at a time."""
    names = ["seq", "dose_e_per_A2", "cumulative_dose_e_per_A2", "crc32"]
    names += ["meta_crc32"] if lay.checksums else []
    for m in MODALITIES:
        n = getattr(state, m)
        b = {k: (book[m][k] if book is not None and k in book[m]
                 else rows(f, f"run/{m}/{k}", n, path)) for k in names}
        ang = angles[m] if angles is not None else rows(f, angle_dataset(m, lay.elements), n,
                                                        path)
        for i0 in range(0, n, 64):
            frames = _readable_frames(f, m, lay.elements, i0, min(n, i0 + 64), path, b["seq"])
            for j, fr in enumerate(frames):
                i = i0 + j
                seq = int(b["seq"][i])
                if frames_crc(fr) != int(b["crc32"][i]):
                    raise RunFileError(f"{path}: {m} tilt {i} (seq {seq}) fails its CRC-32 "
                                       f"(/run/{m}/crc32 of its frames); file damaged")
                if lay.checksums and meta_crc(
                        seq, float(ang[i]), float(b["dose_e_per_A2"][i]),
                        float(b["cumulative_dose_e_per_A2"][i])) != int(b["meta_crc32"][i]):
                    raise RunFileError(f"{path}: {m} tilt {i} (seq {seq}) fails its CRC-32 "
                                       f"(/run/{m}/meta_crc32 of its seq, angle and doses: "
                                       f"/{angle_dataset(m, lay.elements)} or "
                                       f"/run/{m}/dose_e_per_A2 damaged)")


def _readable_frames(f: h5py.File, m: str, elements: list[str] | tuple[str, ...], start: int,
                    stop: int, path: Path, seqs: np.ndarray) -> np.ndarray:
    """tilt_frames, or a RunFileError naming the first tilt whose stored frames cannot be
    read (a damaged compressed chunk fails zlib's own checksum before ours is reached)."""
    try:
        return tilt_frames(f, m, elements, start, stop, path)
    except RunFileError:
        for i in range(start, stop):
            try:
                tilt_frames(f, m, elements, i, i + 1, path)
            except RunFileError as e:
                raise RunFileError(f"{path}: {m} tilt {i} (seq {int(seqs[i])}): its frames "
                                   f"cannot be read, file damaged ({e})") from None
        raise


def load_book(f: h5py.File, path: Path, state: State, lay: Layout) -> Book:
    """The committed tilts' seqs, angles and doses; every tilt's CRC is checked."""
    seqs: set[int] = set()
    angles: dict[str, dict[int, float]] = {}
    dose: dict[str, float] = {}
    for m in MODALITIES:
        n = getattr(state, m)
        seqs.update(int(q) for q in rows(f, f"run/{m}/seq", n, path))
        dose[m] = float(np.sum(rows(f, f"run/{m}/dose_e_per_A2", n, path)))
        angles[m] = {angle_key(a): float(a)
                     for a in rows(f, angle_dataset(m, lay.elements), n, path)}
    check_tilts(f, path, state, lay)
    return Book(seqs, max(seqs, default=-1), angles, dose)


def cost_rows(iteration: int, costs: Mapping[str, float], terms: tuple[str, ...],
              where: str) -> dict[str, Any]:
    if isinstance(iteration, bool) or not isinstance(iteration, int | np.integer):
        raise RunFileError(f"{where}: iteration must be an integer")
    unknown = [k for k in costs if k not in terms]
    if unknown:
        raise RunFileError(f"{where}: unknown cost term {unknown[0]!r}; this run records "
                           f"{list(terms)}")
    out: dict[str, Any] = {"run/costs/iteration": [int(iteration)]}
    for t in terms:
        v = costs.get(t, math.nan)
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise RunFileError(f"{where}: cost {t!r} must be a number, got {v!r}")
        out[f"run/costs/{t}"] = [float(v)]
    return out


def volume_stack(volumes: Mapping[str, np.ndarray], elements: list[str],
                 shape: tuple[int, int], iteration: int, where: str) -> np.ndarray:
    if isinstance(iteration, bool) or not isinstance(iteration, int | np.integer):
        raise RunFileError(f"{where}: iteration must be an integer")
    if set(volumes) != set(elements):
        raise RunFileError(f"{where}: volumes for {sorted(volumes)}, the series has "
                           f"{elements}")
    ns, nd = shape
    stack = np.empty((1, len(elements), ns, nd, nd), np.float32)
    for i, e in enumerate(elements):
        v = np.asarray(volumes[e])
        if v.shape != (ns, nd, nd):
            raise RunFileError(f"{where}: volume {e} has shape {v.shape}, expected "
                               f"{(ns, nd, nd)}")
        stack[0, i] = v
    return stack


def tilts(f: h5py.File, path: Path, s: State, elements: list[str]
          ) -> tuple[list[tuple[float, np.ndarray]], list[tuple[float, dict[str, np.ndarray]]]]:
    h_data, h_ang = rows(f, "haadf/data", s.haadf, path), rows(f, "haadf/angles", s.haadf,
                                                               path)
    haadf = [(float(a), h_data[i]) for i, a in enumerate(h_ang)]
    maps = {e: rows(f, f"chem/{e}/data", s.chem, path) for e in elements}
    c_ang = rows(f, angle_dataset("chem", elements), s.chem, path)
    chem = [(float(a), {e: maps[e][i] for e in elements}) for i, a in enumerate(c_ang)]
    return haadf, chem


def events(f: h5py.File, path: Path, s: State) -> list[dict[str, Any]]:
    return events_from_rows(rows(f, "run/events", s.events, path), path)


def costs(f: h5py.File, path: Path, s: State, terms: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {k: rows(f, f"run/costs/{k}", s.costs, path) for k in ("iteration", *terms)}


def iteration_schedule(c: Mapping[str, np.ndarray], path: Path,
                       terms: tuple[str, ...]) -> list[tuple[int, int]]:
    """(HAADF, chemical) tilts the solver held at each recorded iteration, from the cost
    terms n_haadf and n_chem (or n_haadf_tilts and n_chem_tilts), to replay them."""
    for h, k in (("n_haadf", "n_chem"), ("n_haadf_tilts", "n_chem_tilts")):
        if h in c and k in c:
            if np.any(~np.isfinite(c[h])) or np.any(~np.isfinite(c[k])):
                raise RunFileError(f"{path}: /run/costs/{h} or /{k} has rows without a tilt "
                                   "count")
            return [(int(a), int(b)) for a, b in zip(c[h], c[k], strict=True)]
    raise RunFileError(f"{path}: the cost terms {list(terms)} hold no tilt counts (n_haadf "
                       "and n_chem)")


def tilts_since_ready(seqs: Mapping[str, np.ndarray], need_haadf: bool) -> int:
    order = sorted([(int(q), "haadf") for q in seqs["haadf"]]
                   + [(int(q), "chem") for q in seqs["chem"]])
    seen = {"haadf": 0, "chem": 0}
    for i, (_, m) in enumerate(order):
        seen[m] += 1
        if seen["chem"] and (seen["haadf"] or not need_haadf):
            return len(order) - i
    return 0
