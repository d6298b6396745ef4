"""Run-file size against write time, per codec: re-record a finished run file, row by row
in the order its writer wrote them, into fresh run files built with each codec
(adapters/runfile/storage.py), with the preview volumes stored exactly or rounded
(storage.PREVIEW_BITS), and time the writing (resize, write, flush, as RunFile._append does;
no fsync, which is the same for every codec).

    python bench/runfile_size.py RUN.h5 [--codecs none lzf gzip-1 gzip-4 gzip-9] [--repeats 2]

RUN.h5 should hold exact previews (written with the preview rounding switched off) for the
"exact" rows to be fair; the rounded rows round them here. Writes
bench/results/runfile_size.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from fusetomo.adapters.runfile import read_run, storage
from fusetomo.adapters.runfile.layout import build, layout_from_file
from fusetomo.adapters.runfile.store import VOLUME_GROUPS, read_state, rows
from fusetomo.adapters.seriesfile import open_h5


def parse_codec(text: str) -> storage.Codec:
    name, _, level = text.partition("-")
    return storage.Codec(name, int(level) if level else None)  # type: ignore[arg-type]


def _records(path: Path) -> tuple[object, list[tuple[str, dict[str, np.ndarray]]]]:
    """The layout and the rows of `path` as (kind, {dataset: rows}) in the writer's order:
    tilts by seq; each volume row after the tilt it followed (by its n_tilts)."""
    with open_h5(path, RuntimeError, swmr=True) as f:
        lay = layout_from_file(f, path)
        st = read_state(f, path)
        tilts = []
        for m in ("haadf", "chem"):
            n = getattr(st, m)
            seq = rows(f, f"run/{m}/seq", n, path)
            names = ["haadf/data"] if m == "haadf" else [f"chem/{e}/data"
                                                         for e in lay.elements]
            data = {k: rows(f, k, n, path) for k in names}
            for i in range(n):
                tilts.append((int(seq[i]), m, {k: v[i:i + 1] for k, v in data.items()}))
        tilts.sort(key=lambda t: t[0])
        vols = []
        for g in VOLUME_GROUPS:
            n = getattr(st, g)
            v = rows(f, f"run/{g}/volumes", n, path)
            nt = rows(f, f"run/{g}/n_tilts", n, path).sum(axis=1)
            final = rows(f, f"run/{g}/final", n, path)
            for i in range(n):
                vols.append((int(nt[i]), g, bool(final[i]), v[i:i + 1]))
    vols.sort(key=lambda v: v[0])  # stable: a snapshot before its standard error
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    k = 0
    for j, (_seq, m, data) in enumerate(tilts, start=1):
        out.append((m, data))
        while k < len(vols) and vols[k][0] <= j:
            _n, g, fin, v = vols[k]
            out.append((f"{g}{'-final' if fin else ''}", {f"run/{g}/volumes": v}))
            k += 1
    out += [(f"{g}{'-final' if fin else ''}", {f"run/{g}/volumes": v})
            for _n, g, fin, v in vols[k:]]
    return lay, out


def _write(dst: Path, lay: object, records: list, codec: storage.Codec,
           rounded: bool) -> dict[str, float]:
    storage_codec = storage.CODEC
    storage.CODEC = codec
    try:
        with h5py.File(dst, "w", libver=("v110", "latest")) as f:
            build(f, lay)  # type: ignore[arg-type]
            f.swmr_mode = True
            counts: dict[str, int] = {}
            t_tilts = t_vols = 0.0
            for kind, data in records:
                group = kind.removesuffix("-final")
                if rounded and group in VOLUME_GROUPS and not kind.endswith("-final"):
                    data = {k: storage.quantise(v, storage.PREVIEW_BITS[group])
                            for k, v in data.items()}
                t0 = time.perf_counter()
                for name, v in data.items():
                    ds = f[name]
                    n = counts.get(name, 0)
                    ds.resize(n + 1, axis=0)
                    ds[n:n + 1] = v
                    counts[name] = n + 1
                f.flush()
                dt = time.perf_counter() - t0
                if group in VOLUME_GROUPS:
                    t_vols += dt
                else:
                    t_tilts += dt
    finally:
        storage.CODEC = storage_codec
    return {"t_tilts_s": t_tilts, "t_volumes_s": t_vols, "bytes": dst.stat().st_size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--codecs", nargs="+", default=["none", "lzf", "gzip-1", "gzip-4",
                                                     "gzip-9"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/runfile_size.json"))
    ap.add_argument("--scratch", type=Path, default=Path("/tmp"))
    a = ap.parse_args()
    lay, records = _records(a.run)
    rec = read_run(a.run)
    n_tilts = rec.series.haadf.shape[0] + rec.series.common_chem_angles.size
    results = []
    print(f"{a.run}: {a.run.stat().st_size / 1e6:.1f} MB as written, {n_tilts} tilts, "
          f"{sum(1 for k, _ in records if k.startswith(VOLUME_GROUPS))} volume rows")
    print(f"{'codec':<8} {'previews':<8} {'MB':>7} {'ms/tilt':>8} {'of which volumes':>16}")
    for text in a.codecs:
        codec = parse_codec(text)
        for rounded in (False, True):
            best = None
            for r in range(a.repeats):
                dst = a.scratch / f"runfile_size_{os.getpid()}_{r}.h5"
                got = _write(dst, lay, records, codec, rounded)
                dst.unlink()
                if best is None or got["t_tilts_s"] + got["t_volumes_s"] < \
                        best["t_tilts_s"] + best["t_volumes_s"]:
                    best = got
            assert best is not None
            row = {"codec": str(codec), "previews": "rounded" if rounded else "exact",
                   "MB": best["bytes"] / 1e6,
                   "ms_per_tilt": 1e3 * (best["t_tilts_s"] + best["t_volumes_s"]) / n_tilts,
                   "volumes_ms_per_tilt": 1e3 * best["t_volumes_s"] / n_tilts}
            results.append(row)
            print(f"{row['codec']:<8} {row['previews']:<8} {row['MB']:7.1f} "
                  f"{row['ms_per_tilt']:8.1f} {row['volumes_ms_per_tilt']:16.1f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "run": str(a.run),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load "
                   f"{os.getloadavg()[0]:.2f}", "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version, "tilts": int(n_tilts), "results": results},
        indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
