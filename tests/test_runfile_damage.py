"""Damaged run files: every truncation, and every byte flipped in what matters (tilts,
angles, doses, snapshots, standard errors), is found by `fusetomo inspect --verify` (exit 2,
naming the file and the dataset) and by the readers (RunFileError, never another
exception); a random flip is either found or changed nothing that matters."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fusetomo.adapters.protocol import CHEM_TILT, HAADF_TILT, SERIES_END, SERIES_START, make
from fusetomo.adapters.runfile import RunFile, RunFileError, read_run, read_snapshot, verify_run
from fusetomo.cli import main

ELEMENTS = ["Co", "O"]
SHAPE = (6, 8)
SID = "damage"


def _tilt(seq: int):
    rng = np.random.default_rng(seq)
    angle = -60.0 + 7.5 * seq
    if seq % 3 == 0:
        return make(CHEM_TILT, SID, seq, [rng.random(SHAPE, dtype=np.float32) * 50
                                          for _ in ELEMENTS],
                    angle=angle, elements=ELEMENTS, dose_e_per_A2=20.0 + seq)
    return make(HAADF_TILT, SID, seq, [rng.random(SHAPE, dtype=np.float32)], angle=angle,
                dose_e_per_A2=1.0 + seq / 8)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A complete run: 12 tilts, events, cost rows, 3 snapshots and standard errors."""
    path = tmp_path_factory.mktemp("damage") / "run.h5"
    start = make(SERIES_START, SID, 0, elements=ELEMENTS, Z={"Co": 27, "O": 8},
                 shape=list(SHAPE), scheme={}, dose_budget_e_per_A2=None, pixel_size_nm=0.5)
    with RunFile.create(path, start) as run:
        for seq in range(1, 13):
            run.record_tilt(_tilt(seq))
            run.record_event("tick", seq=seq)
            run.record_costs(seq, {"haadf": 1.0 / seq, "n_haadf": seq, "n_chem": seq // 3})
            if seq % 4 == 0:
                vols = {e: np.full((SHAPE[0], SHAPE[1], SHAPE[1]), seq + i, np.float32)
                        for i, e in enumerate(ELEMENTS)}
                run.record_snapshot(seq, vols)
                run.record_std_error(seq, vols)
        run.mark_complete(make(SERIES_END, SID, 13, n_haadf=run.haadf_count,
                               n_chem=run.chem_count))
    assert verify_run(path) == {"haadf_tilts": 8, "chem_tilts": 4, "events": 13,
                                "snapshots": 3, "std_errors": 3}
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _inspect_verify(path: Path, capsys) -> tuple[int, str]:
    code = main(["inspect", str(path), "--verify"])
    return code, capsys.readouterr().err


# -- truncation ----------------------------------------------------------------------------
def _cuts(size: int) -> list[int]:
    """48 lengths: every 8 bytes of the last 128, and 32 spread over the file."""
    return sorted({size - 8 * k for k in range(1, 17)}
                  | {int(size * f) for f in np.linspace(0.02, 0.98, 32)})


def test_every_truncation_is_refused_with_a_clear_error(good_run, tmp_path, capsys):
    size = good_run.stat().st_size
    cuts = _cuts(size)
    assert len(cuts) == 48
    for n in cuts:
        cut = tmp_path / f"cut{n}.h5"
        cut.write_bytes(good_run.read_bytes()[:n])
        code, err = _inspect_verify(cut, capsys)
        assert code == 2, (n, err)
        assert err.startswith("fusetomo: error: ") and str(cut) in err, (n, err)
        assert "Traceback" not in err
        for reader in (read_run, RunFile.resume, verify_run):
            with pytest.raises(RunFileError, match=str(cut)):
                reader(cut)


# -- byte flips ---------------------------------------------------------------------------
def _chunk_bytes(path: Path, name: str, rows: int) -> tuple[int, int]:
    """(file offset, length) of the committed bytes of dataset `name`'s first chunk."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        info = ds.id.get_chunk_info(0)
        row = ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
        return int(info.byte_offset), min(int(info.size), row * rows)


MATTERS = {  # dataset: committed rows in its first chunk
    "haadf/data": 1, "haadf/angles": 8, "chem/Co/data": 1, "chem/O/data": 1,
    "chem/Co/angles": 4, "run/haadf/dose_e_per_A2": 8, "run/chem/dose_e_per_A2": 4,
    "run/haadf/seq": 8, "run/chem/cumulative_dose_e_per_A2": 4, "run/haadf/crc32": 8,
    "run/snapshots/volumes": 1, "run/std_error/volumes": 1, "run/snapshots/iteration": 3,
    "run/snapshots/n_tilts": 3, "run/std_error/crc32": 3, "run/haadf/meta_crc32": 8,
}


@pytest.mark.parametrize("name", list(MATTERS))
@pytest.mark.parametrize("where", [0.0, 0.5, 0.99])
def test_a_flipped_byte_in_what_matters_is_found(good_run, tmp_path, capsys, name, where):
    path = _copy(good_run, tmp_path / "flipped.h5")
    offset, length = _chunk_bytes(path, name, MATTERS[name])
    at = offset + min(int(where * length), length - 1)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    code, err = _inspect_verify(path, capsys)
    assert code == 2, (name, err)
    assert err.startswith("fusetomo: error: ") and "Traceback" not in err
    assert "CRC-32" in err or "damaged" in err, err


def _what_matters(path: Path) -> list[np.ndarray]:
    rec = read_run(path)
    s = rec.series
    out = [s.haadf, s.haadf_angles, *(s.chem[e] for e in ELEMENTS), s.common_chem_angles,
           *rec.dose_e_per_A2.values(), *rec.seq.values()]
    for group in ("snapshots", "std_error"):
        for i in range(3):
            it, vols = read_snapshot(path, i, group)
            out += [np.asarray(it), *vols.values()]
    return out


def test_a_random_flip_is_found_or_changes_nothing_that_matters(good_run, tmp_path, capsys):
    reference = _what_matters(good_run)
    size = good_run.stat().st_size
    rng = random.Random(18)
    found = 0
    for k in range(20):
        path = _copy(good_run, tmp_path / f"random{k}.h5")
        data = bytearray(path.read_bytes())
        at = rng.randrange(size)
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        code, err = _inspect_verify(path, capsys)
        assert code in (0, 2) and "Traceback" not in err, (at, err)
        if code == 2:
            found += 1
            continue
        for a, b in zip(_what_matters(path), reference, strict=True):
            np.testing.assert_array_equal(a, b)  # passed the checks: nothing changed
    print(f"{found} of 20 random flips found; the others changed nothing that matters")
