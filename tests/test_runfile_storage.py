"""Run-file storage (adapters/runfile/storage.py): images, maps and volumes are compressed
and read back exactly as given (previews within their rounding bound); files written before
compression still read and resume."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fusetomo.adapters.protocol import CHEM_TILT, HAADF_TILT, SERIES_END, SERIES_START, make
from fusetomo.adapters.runfile import RunFile, read_run, read_snapshot, storage, verify_run
from fusetomo.adapters.runfile.storage import PREVIEW_BITS, Codec, quantise

ELEMENTS = ["Co", "O"]
SHAPE = (6, 8)
SID = "storage"


def _start():
    return make(SERIES_START, SID, 0, elements=ELEMENTS, Z={"Co": 27, "O": 8},
                shape=list(SHAPE), scheme={}, dose_budget_e_per_A2=None, pixel_size_nm=0.5)


def _frames(seq: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seq)
    n = len(ELEMENTS) if seq % 3 == 0 else 1
    return [(rng.random(SHAPE) * 100).astype(np.float32) for _ in range(n)]


def _tilt(seq: int):
    kind = CHEM_TILT if seq % 3 == 0 else HAADF_TILT
    extra = {"elements": ELEMENTS} if kind == CHEM_TILT else {}
    return make(kind, SID, seq, _frames(seq), angle=-50.0 + 5 * seq, dose_e_per_A2=1.0,
                **extra)


def _volumes(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ns, nd = SHAPE
    return {e: (rng.random((ns, nd, nd)) * (10 + 5 * i)).astype(np.float32)
            for i, e in enumerate(ELEMENTS)}


def _write(path, seqs=range(1, 10)) -> dict[str, dict[str, np.ndarray]]:
    """A run with tilts `seqs`, a preview and a final snapshot and standard error."""
    given = {"preview": _volumes(1), "final": _volumes(2), "std": _volumes(3)}
    with RunFile.create(path, _start()) as run:
        for seq in seqs:
            run.record_tilt(_tilt(seq))
        run.record_snapshot(5, given["preview"])
        run.record_std_error(5, given["std"])
        run.record_snapshot(9, given["final"], final=True)
        run.record_std_error(9, given["std"], final=True)
        run.mark_complete(make(SERIES_END, SID, 99, n_haadf=run.haadf_count,
                               n_chem=run.chem_count))
    return given


def _check_tilts(path, seqs) -> None:
    rec = read_run(path)
    for i, seq in enumerate(rec.seq["haadf"]):
        np.testing.assert_array_equal(rec.series.haadf[i], _frames(int(seq))[0])
    for i, seq in enumerate(rec.seq["chem"]):
        for k, e in enumerate(ELEMENTS):
            np.testing.assert_array_equal(rec.series.chem[e][i], _frames(int(seq))[k])
    assert sorted([*rec.seq["haadf"], *rec.seq["chem"]]) == list(seqs)


def test_a_run_file_is_compressed_and_reads_back_what_it_was_given(tmp_path):
    path = tmp_path / "run.h5"
    given = _write(path)
    with h5py.File(path, "r") as f:
        for name in ("haadf/data", "chem/Co/data", "chem/O/data", "run/snapshots/volumes",
                     "run/std_error/volumes"):
            ds = f[name]
            assert (ds.compression, ds.compression_opts, ds.shuffle) == ("gzip", 1, True), name
            assert ds.chunks[0] == 1, name  # one row per chunk, written once
        for name in ("haadf/angles", "run/haadf/seq", "run/events", "run/costs/iteration"):
            assert f[name].compression is None, name
    _check_tilts(path, range(1, 10))
    # The final volumes are stored bit for bit.
    it, final = read_snapshot(path, -1)
    assert it == 9
    for e in ELEMENTS:
        np.testing.assert_array_equal(final[e], given["final"][e])
    _, std = read_snapshot(path, -1, group="std_error")
    for e in ELEMENTS:
        np.testing.assert_array_equal(std[e], given["std"][e])
    # A preview is rounded to at most half a step of max / 2^bits (storage.py).
    for group, key in (("snapshots", "preview"), ("std_error", "std")):
        _, got = read_snapshot(path, 0, group=group)
        for e in ELEMENTS:
            ref = given[key][e]
            bound = float(np.abs(ref).max()) / 2.0 ** (PREVIEW_BITS[group] + 1)
            err = np.abs(got[e].astype(np.float64) - ref)
            assert 0 < err.max() <= bound, (group, e, err.max(), bound)
    assert verify_run(path)["snapshots"] == 2


def test_an_uncompressed_run_file_still_reads_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "old.h5"
    monkeypatch.setattr(storage, "CODEC", Codec("none"))
    with RunFile.create(path, _start()) as run:
        for seq in range(1, 6):
            run.record_tilt(_tilt(seq))
        run.record_snapshot(5, _volumes(7), final=True)
    monkeypatch.undo()
    with h5py.File(path, "r") as f:
        assert f["haadf/data"].compression is None
        assert f["run/snapshots/volumes"].compression is None
    _check_tilts(path, range(1, 6))
    _, vols = read_snapshot(path, -1)
    for e in ELEMENTS:
        np.testing.assert_array_equal(vols[e], _volumes(7)[e])
    with RunFile.resume(path) as run:  # appends to the old layout as it is
        for seq in range(6, 9):
            run.record_tilt(_tilt(seq))
    _check_tilts(path, range(1, 9))
    assert verify_run(path)["haadf_tilts"] == 6


def test_quantise_keeps_integers_zeros_and_its_bound():
    stack = np.stack([np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                      np.zeros((2, 3, 4), np.float32)])[None]
    np.testing.assert_array_equal(quantise(stack, 4), stack)  # step 1: integers exact
    x = np.random.default_rng(0).normal(size=(1, 1, 5, 5, 5)).astype(np.float32)
    q = quantise(x, 8)
    step = 2.0 ** np.floor(np.log2(np.abs(x).max() / 2**8))
    assert np.abs(q - x).max() <= step / 2
    np.testing.assert_array_equal(np.rint(q / step) * step, q)
    with pytest.raises(ValueError, match="got 0"):
        quantise(x, 0)


def test_codec_names_bad_values():
    assert Codec("gzip", 4).h5_kwargs() == {"compression": "gzip", "compression_opts": 4,
                                            "shuffle": True}
    assert Codec("lzf", None).h5_kwargs() == {"compression": "lzf", "shuffle": True}
    assert Codec("none").h5_kwargs() == {}
    with pytest.raises(ValueError, match="'zstd'"):
        Codec("zstd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 12"):
        Codec("gzip", 12)
