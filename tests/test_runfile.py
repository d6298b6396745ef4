"""The run file: round trip into the series format, resume, refusals that leave the file as
it was, a reader beside a live writer, and tilts that survive `kill -9` of the writer."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from fusetomo.adapters.protocol import (
    SERIES_END,
    SERIES_START,
    Message,
    make,
)
from fusetomo.adapters.runfile import (
    EVENT_ROW_BYTES,
    FORMAT,
    RunFile,
    RunFileError,
    _event_rows,
    _events_from_rows,
    describe_run,
    read_run,
    read_snapshot,
)
from fusetomo.adapters.seriesfile import SeriesFileError, read_series, write_series

ELEMENTS = ["Co", "O"]
SHAPE = (6, 8)
SERIES = "run-test"

# The writer of the kill -9 test: tilts are a deterministic function of seq (seq % 3 == 0
# is a chemical tilt), so the test can regenerate and compare every one of them.
TILTS = textwrap.dedent('''
    import numpy as np
    from fusetomo.adapters.protocol import CHEM_TILT, HAADF_TILT, SERIES_START, make

    ELEMENTS, SHAPE, SERIES = ["Co", "O"], (6, 8), "run-test"

    def start():
        return make(SERIES_START, SERIES, 0, elements=ELEMENTS, Z={"Co": 27, "O": 8},
                    shape=list(SHAPE), scheme={"name": "test"}, dose_budget_e_per_A2=1e4,
                    pixel_size_nm=0.5, gamma=1.7, background={"Co": 0.5, "O": 1.0})

    def angle(seq):
        return -89.0 + 0.25 * seq

    def frames(seq):
        rng = np.random.default_rng(seq)
        n = len(ELEMENTS) if seq % 3 == 0 else 1
        return [rng.random(SHAPE, dtype=np.float32) * 100 for _ in range(n)]

    def tilt(seq):
        if seq % 3 == 0:
            return make(CHEM_TILT, SERIES, seq, frames(seq), angle=angle(seq),
                        dose_e_per_A2=10.0, elements=ELEMENTS, t_acquired=1.0e9 + seq)
        return make(HAADF_TILT, SERIES, seq, frames(seq), angle=angle(seq), dose_e_per_A2=1.0)
''')
exec(TILTS)  # the same definitions here: start, angle, frames, tilt

WRITER = TILTS + textwrap.dedent('''
    import sys
    from pathlib import Path
    from fusetomo.adapters.protocol import SERIES_END
    from fusetomo.adapters.runfile import RunFile

    path, last = Path(sys.argv[1]), int(sys.argv[2])
    run = RunFile.resume(path) if path.exists() else RunFile.create(path, start())
    vols = {e: np.full((SHAPE[0], SHAPE[1], SHAPE[1]), i, np.float32)
            for i, e in enumerate(ELEMENTS)}
    for seq in range(run.last_seq + 1, last + 1):
        if seq == 0:
            continue
        run.record_tilt(tilt(seq))
        print(seq, flush=True)
        if seq % 5 == 0:
            run.record_event("tick", seq=seq, pad="x" * (seq * 97 % 2500))
        if seq % 7 == 0:
            run.record_costs(seq, {"haadf": seq / 2, "n_haadf": seq, "n_chem": seq // 3})
        if seq % 11 == 0:
            run.record_snapshot(seq, vols)
    run.mark_complete(make(SERIES_END, SERIES, last + 1, n_haadf=run.haadf_count,
                           n_chem=run.chem_count))
    run.close()
    print("done", flush=True)
''')


def start_msg() -> Message:
    return start()  # noqa: F821 (defined by exec(TILTS))


def make_tilt(seq: int) -> Message:
    return tilt(seq)  # noqa: F821


def expected_frames(seq: int) -> list[np.ndarray]:
    return frames(seq)  # noqa: F821


def tilt_angle(seq: int) -> float:
    return angle(seq)  # noqa: F821


def volumes(value: float) -> dict[str, np.ndarray]:
    ns, nd = SHAPE
    return {e: np.full((ns, nd, nd), value + i, np.float32) for i, e in enumerate(ELEMENTS)}


def fill(run: RunFile, seqs: range) -> None:
    for seq in seqs:
        run.record_tilt(make_tilt(seq))


def as_series_file(run_path: Path, tmp: Path) -> Path:
    """A copy whose root `format` says fusetomo-series: the layout check of read_series
    without its format check (see test_read_series_accepts_run_files)."""
    out = tmp / f"as-series-{run_path.name}"
    shutil.copy(run_path, out)
    with h5py.File(out, "r+") as f:
        f.attrs["format"] = "fusetomo-series"
    return out


def check_against_truth(path: Path, seqs: list[int]) -> None:
    """Every seq is recorded exactly once, in order, with the data it was sent with."""
    rec = read_run(path)  # also checks every CRC
    got = sorted([*rec.seq["haadf"].tolist(), *rec.seq["chem"].tolist()])
    assert got == sorted(seqs) and len(set(got)) == len(got)
    for i, seq in enumerate(rec.seq["haadf"]):
        np.testing.assert_array_equal(rec.series.haadf[i], expected_frames(int(seq))[0])
        assert rec.series.haadf_angles[i] == tilt_angle(int(seq))
    for i, seq in enumerate(rec.seq["chem"]):
        for k, e in enumerate(ELEMENTS):
            np.testing.assert_array_equal(rec.series.chem[e][i], expected_frames(int(seq))[k])


# -- round trip ---------------------------------------------------------------------------
def test_round_trip_into_the_series_format(tmp_path):
    path = tmp_path / "run.h5"
    with RunFile.create(path, start_msg()) as run:
        assert (run.series_id, run.elements, run.shape) == (SERIES, ELEMENTS, SHAPE)
        assert run.last_seq == -1 and run.start_header["scheme"] == {"name": "test"}
        fill(run, range(1, 13))
        run.record_event("advice", angle=12.5, scores=np.arange(3.0))
        long_text = "y" * (3 * EVENT_ROW_BYTES)  # spans several rows
        run.record_event("note", text=long_text)
        run.record_costs(1, {"haadf": 2.0, "chem": 3.0, "tv": 0.5})
        run.record_costs(2, {"haadf": 1.5})
        run.record_snapshot(2, volumes(1.0))
        run.record_snapshot(3, volumes(5.0), final=True)
        run.record_std_error(3, volumes(0.25))
        assert run.haadf_count == 8 and run.chem_count == 4
        assert run.dose_e_per_A2 == {"haadf": 8.0, "chem": 40.0, "total": 48.0}
        haadf, chem = run.tilts()
        assert [a for a, _ in chem] == [tilt_angle(s) for s in (3, 6, 9, 12)]
        np.testing.assert_array_equal(chem[1][1]["O"], expected_frames(6)[1])
        np.testing.assert_array_equal(haadf[0][1], expected_frames(1)[0])
        events = run.events()
        assert [e["kind"] for e in events] == ["advice", "note"]
        assert events[0]["scores"] == [0.0, 1.0, 2.0] and events[1]["text"] == long_text
        costs = run.costs()
        assert costs["iteration"].tolist() == [1, 2] and np.isnan(costs["chem"][1])
    check_against_truth(path, list(range(1, 13)))

    series = read_series(as_series_file(path, tmp_path))
    rec = read_run(path)
    np.testing.assert_array_equal(series.haadf, rec.series.haadf)
    for e in ELEMENTS:
        np.testing.assert_array_equal(series.chem[e], rec.series.chem[e])
        np.testing.assert_array_equal(series.chem_angles[e], rec.series.chem_angles[e])
    assert series.Z == {"Co": 27, "O": 8} and series.background == {"Co": 0.5, "O": 1.0}
    assert series.gamma == pytest.approx(1.7) and series.pixel_size_nm == 0.5
    assert series.attrs["series_id"] == SERIES

    it, vols = read_snapshot(path)
    assert it == 3 and float(vols["O"][0, 0, 0]) == 6.0
    it, err = read_snapshot(path, 0, group="std_error")
    assert it == 3 and float(err["Co"].max()) == 0.25
    info = describe_run(path)
    assert info["kind"] == "run" and info["series_id"] == SERIES
    assert (info["haadf_tilts"], info["chem_tilts"], info["elements"]) == (8, 4, ELEMENTS)
    assert (info["events"], info["snapshots"], info["std_errors"], info["cost_rows"]) == \
        (2, 2, 1, 2)
    assert info["dose_e_per_A2"] == 48.0 and info["duplicates"] == 0
    assert info["complete"] is False and info["problem"] is None
    assert info["writer_live"] is False and info["last_seq"] == 12


def test_layout_and_attributes(tmp_path):
    path = tmp_path / "run.h5"
    with RunFile.create(path, start_msg()) as run:
        fill(run, range(1, 4))
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["version"] == 2
        assert f.attrs["series_id"] == SERIES and "created" in f.attrs
        assert json.loads(f.attrs["start_header"])["type"] == SERIES_START
        assert list(f["chem"]) == ELEMENTS
        assert f["haadf/data"].shape == (2, *SHAPE) and f["haadf/data"].dtype == np.float32
        assert f["run/haadf/seq"][()].tolist() == [1, 2]
        assert f["run/chem/cumulative_dose_e_per_A2"][()].tolist() == [12.0]
        assert f["run/chem/t_acquired"][0] == 1.0e9 + 3 and np.isnan(f["run/haadf/t_acquired"][0])
        crc = zlib.crc32(np.concatenate(expected_frames(3)).astype("<f4").tobytes())
        assert int(f["run/chem/crc32"][0]) == crc
        assert f["run/snapshots/volumes"].shape == (0, 2, SHAPE[0], SHAPE[1], SHAPE[1])
        assert "std_error" in f["run"] and f["run/events"].maxshape == (None,)


def test_read_series_accepts_run_files(tmp_path):
    """The contract: a closed run file is a series file. Until seriesfile accepts the
    `fusetomo-run` format this is an expected failure (the layout itself is covered by the
    round-trip test)."""
    path = tmp_path / "run.h5"
    with RunFile.create(path, start_msg()) as run:
        fill(run, range(1, 7))
    try:
        series = read_series(path)
    except SeriesFileError as e:
        if "expected 'fusetomo-series'" in str(e):
            pytest.xfail(f"read_series refuses format {FORMAT!r}: {e}")
        raise
    assert series.haadf.shape == (4, *SHAPE)


# -- resume ------------------------------------------------------------------------------
def test_resume_continues_appending(tmp_path):
    path = tmp_path / "run.h5"
    with RunFile.create(path, start_msg()) as run:
        fill(run, range(1, 8))
        run.record_costs(1, {"n_haadf": 4, "n_chem": 1})
        run.record_costs(2, {"n_haadf": 5, "n_chem": 2})
    stale = tmp_path / ".run.h5.999999999.dead.tmp"  # left by a writer that died
    stale.write_bytes(b"")
    with RunFile.resume(path) as run:
        assert not stale.exists()
        assert run.last_seq == 7 and run.has_seq(3) and not run.has_seq(8)
        assert (run.haadf_count, run.chem_count) == (5, 2)
        assert run.iteration_schedule() == [(4, 1), (5, 2)]
        assert run.tilts_since_ready() == 5  # seq 3 made it ready: 3, 4, 5, 6, 7
        assert run.dose_e_per_A2["total"] == 25.0
        fill(run, range(8, 11))
        run.record_event("resumed", last_seq=7)
        assert run.last_seq == 10
        with pytest.raises(RunFileError, match="seq 9 is already recorded"):
            run.record_tilt(make_tilt(9))
        run.mark_complete(make(SERIES_END, SERIES, 11, n_haadf=7, n_chem=3))
        assert run.complete
        with pytest.raises(RunFileError, match="complete"):
            run.record_tilt(make_tilt(11))
        run.record_snapshot(20, volumes(0.0), final=True)  # still allowed after the end
    check_against_truth(path, list(range(1, 11)))
    ev = read_run(path).events
    assert ev[-1]["kind"] == "series_end" and ev[-1]["match"] is True
    assert describe_run(path)["complete"] is True
    with pytest.raises(RunFileError, match="complete"):
        RunFile.resume(path)


def test_resume_and_create_refuse(tmp_path):
    with pytest.raises(RunFileError, match="no such file"):
        RunFile.resume(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(RunFileError, match="not a readable HDF5 file"):
        RunFile.resume(junk)
    ser = tmp_path / "series.h5"
    write_series(ser, read_run_series(tmp_path))
    with pytest.raises(RunFileError, match="format is 'fusetomo-series', expected 'fusetomo-run'"):
        RunFile.resume(ser)
    path = tmp_path / "run.h5"
    RunFile.create(path, start_msg()).close()
    with pytest.raises(RunFileError, match="file exists"):
        RunFile.create(path, start_msg())
    with RunFile.create(path, start_msg(), overwrite=True) as run:
        fill(run, range(1, 3))
        with pytest.raises(RunFileError, match="live process"):
            RunFile.resume(path)
        with pytest.raises(RunFileError, match="live process"):
            RunFile.create(path, start_msg(), overwrite=True)
    assert not list(tmp_path.glob(".*.tmp"))
    bad = {**start_msg().header, "elements": ["Co", "Xx"]}
    with pytest.raises(RunFileError, match="Xx"):
        RunFile.create(tmp_path / "bad.h5", bad)
    with pytest.raises(RunFileError, match="shape"):
        RunFile.create(tmp_path / "bad.h5", {**start_msg().header, "shape": [6]})
    assert not (tmp_path / "bad.h5").exists()


def read_run_series(tmp_path: Path):
    path = tmp_path / "src.h5"
    with RunFile.create(path, start_msg()) as run:
        fill(run, range(1, 4))
    return read_run(path).series


@pytest.mark.parametrize("size", [1, EVENT_ROW_BYTES - 1, EVENT_ROW_BYTES,
                                  2 * EVENT_ROW_BYTES, 2 * EVENT_ROW_BYTES + 1])
def test_event_rows_split_and_join(size):
    text = json.dumps({"k": "x" * (size - 10)}) if size > 10 else "1"
    text = text[:size] if size <= 10 else text
    rows = _event_rows(text)
    assert all(len(r) <= EVENT_ROW_BYTES for r in rows) and len(rows[-1]) < EVENT_ROW_BYTES
    joined = np.array(rows + rows, dtype=f"S{EVENT_ROW_BYTES}")
    assert _events_from_rows(joined, Path("x")) == [json.loads(text)] * 2


# -- refusals leave the file unchanged ------------------------------------------------------
def _variant(seq: int, **changes) -> Message:
    msg = make_tilt(seq)
    arrays = changes.pop("arrays", msg.arrays)
    return Message({**msg.header, **changes}, list(arrays))


BAD_TILTS = {
    "wrong shape": (lambda: _variant(4, arrays=[np.zeros((6, 9), np.float32)]), "shape"),
    "unknown element": (lambda: _variant(6, elements=["Co", "Au"]), "'Au' is not in"),
    "missing element": (lambda: _variant(6, elements=["Co"], arrays=[np.zeros(SHAPE)]),
                        "must name each"),
    "frame count": (lambda: _variant(6, arrays=[np.zeros(SHAPE)]), "1 frames for 2"),
    "duplicate seq": (lambda: _variant(2, angle=80.0), "seq 2 is already recorded"),
    "duplicate angle": (lambda: _variant(4, angle=tilt_angle(1)), "already recorded"),
    "angle range": (lambda: _variant(4, angle=91.0), "outside"),
    "negative dose": (lambda: _variant(4, dose_e_per_A2=-1.0), "dose"),
    "NaN": (lambda: _variant(4, arrays=[np.full(SHAPE, np.nan, np.float32)]), "NaN"),
    "negative counts": (lambda: _variant(6, arrays=[-np.ones(SHAPE), np.ones(SHAPE)]),
                        "negative counts"),
    "other series": (lambda: _variant(4, series="other"), "not this run"),
    "not a tilt": (lambda: make(SERIES_END, SERIES, 4, n_haadf=1, n_chem=0), "as a tilt"),
}


@pytest.mark.parametrize("case", list(BAD_TILTS))
def test_bad_tilt_raises_and_leaves_file_unchanged(tmp_path, case):
    path = tmp_path / "run.h5"
    with RunFile.create(path, start_msg()) as run:
        fill(run, range(1, 4))
        before = path.read_bytes()
        build, words = BAD_TILTS[case]
        with pytest.raises(RunFileError, match=words) as err:
            run.record_tilt(build())
        assert str(path) in str(err.value)
        assert path.read_bytes() == before
        assert (run.haadf_count, run.chem_count, run.last_seq) == (2, 1, 3)
        run.record_tilt(make_tilt(4))  # and the run goes on
    check_against_truth(path, [1, 2, 3, 4])


def test_bad_costs_and_volumes(tmp_path):
    with RunFile.create(tmp_path / "run.h5", start_msg()) as run:
        with pytest.raises(RunFileError, match="unknown cost term 'psi'"):
            run.record_costs(1, {"psi": 1.0})
        with pytest.raises(RunFileError, match="volume O has shape"):
            run.record_snapshot(1, {**volumes(0.0), "O": np.zeros((2, 2, 2))})
        with pytest.raises(RunFileError, match="volumes for"):
            run.record_snapshot(1, {"Co": volumes(0.0)["Co"]})
        with pytest.raises(RunFileError, match="'time' is reserved"):
            run.record_event("x", time=3)
        with pytest.raises(RunFileError, match="JSON"):
            run.record_event("x", obj=object())
        assert read_run(run.path).costs["iteration"].size == 0
    with pytest.raises(RunFileError, match="closed"):
        run.record_event("late")


# -- damage ---------------------------------------------------------------------------------
def test_damaged_tilt_fails_its_crc(tmp_path):
    path = tmp_path / "run.h5"
    with RunFile.create(path, start_msg()) as run:
        fill(run, range(1, 5))
    with h5py.File(path, "r") as f:
        offset = f["haadf/data"].id.get_chunk_info(1).byte_offset
    with path.open("r+b") as fh:
        fh.seek(offset + 5)
        fh.write(b"\x7f")
    # The frames are compressed (zlib checks its own Adler-32 before our CRC-32 is reached):
    # either way the damaged tilt is named.
    named = r"haadf tilt 1 \(seq 2\)(: its frames cannot be read| fails its CRC-32)"
    with pytest.raises(RunFileError, match=named):
        read_run(path)
    with pytest.raises(RunFileError, match=named):
        RunFile.resume(path)
    assert re.search(named, describe_run(path)["problem"])


def test_damaged_commit_record(tmp_path):
    path = tmp_path / "run.h5"
    RunFile.create(path, start_msg()).close()
    with h5py.File(path, "r+") as f:
        f["run/state"][:, 1] += 1  # both slots now fail their checksum
    with pytest.raises(RunFileError, match="neither commit record"):
        read_run(path)


# -- a reader beside the live writer -----------------------------------------------------------
READER = ("import json, sys\nfrom fusetomo.adapters.runfile import describe_run, read_run\n"
          "d = describe_run(sys.argv[1]); r = read_run(sys.argv[1])\n"
          "print(json.dumps([d['haadf_tilts'], d['chem_tilts'], d['writer_live'], "
          "int(r.series.haadf.sum() > 0)]))")


def test_reader_opens_the_file_while_the_writer_is_live(tmp_path):
    path = tmp_path / "run.h5"

    def reader() -> list:
        out = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    with RunFile.create(path, start_msg()) as run:
        fill(run, range(1, 4))
        assert reader() == [2, 1, True, 1]
        fill(run, range(4, 10))
        assert reader() == [6, 3, True, 1]
    assert reader() == [6, 3, False, 1]


# -- kill -9 ------------------------------------------------------------------------------------
def _read_lines(proc: subprocess.Popen, n: int, timeout: float = 30.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while len(lines) < n:
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"writer printed {len(lines)} lines of {n} in {timeout} s")
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    return lines


def _printed_seqs(lines: list[str]) -> list[int]:
    return [int(x) for x in lines if x.isdigit()]


def test_tilts_survive_kill_9_of_the_writer(tmp_path):
    rng = np.random.default_rng(20240917)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "run.h5"
    last = 120
    acknowledged: list[int] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(last)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        if round_ == 2:  # somewhere in start-up: imports, resume, the first tilts
            time.sleep(rng.uniform(0.2, 0.9))
            lines = []
        else:
            lines = _read_lines(proc, int(rng.integers(1, 15)))
            time.sleep(rng.uniform(0.0, 0.01))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        printed = _printed_seqs(lines + out.split())
        acknowledged += printed
        if not path.exists():
            assert not acknowledged
            continue
        rec = read_run(path)  # the dead writer's file, as it was left
        recorded = sorted([*rec.seq["haadf"].tolist(), *rec.seq["chem"].tolist()])
        # each printed seq exactly once; recorded seqs contiguous; at most the one in flight
        # recorded beyond the acknowledged ones
        assert recorded == list(range(1, len(recorded) + 1))
        assert set(acknowledged) <= set(recorded)
        assert len(recorded) - len(set(acknowledged)) <= 1
        check_against_truth(path, recorded)
        acknowledged = recorded  # the next writer resumes after the last recorded seq
    proc = subprocess.run([sys.executable, str(script), str(path), str(last)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "done"
    check_against_truth(path, list(range(1, last + 1)))
    info = describe_run(path)
    assert info["complete"] and info["duplicates"] == 0
    assert info["haadf_tilts"] + info["chem_tilts"] == last
    rec = read_run(path)
    # events, costs and snapshots after a tilt are lost when the kill falls between them;
    # the rest is there once, in order
    for got, every in ([e["seq"] for e in rec.events if e["kind"] == "tick"], 5), \
            (rec.costs["iteration"].tolist(), 7), (rec.snapshot_iterations.tolist(), 11):
        assert got == sorted(set(got)) and set(got) <= set(range(every, last + 1, every))
        assert len(got) >= len(range(every, last + 1, every)) - 6
    assert rec.events[-1]["kind"] == "series_end" and rec.events[-1]["match"]
    series = read_series(as_series_file(path, tmp_path))
    assert series.haadf.shape[0] == info["haadf_tilts"]
    with pytest.raises(RunFileError, match="complete"):
        RunFile.resume(path)


def test_truncated_run_file_is_refused_quickly(tmp_path):
    """An SWMR reader would retry the metadata of a truncated file for minutes; the plain
    open first names the truncation at once."""
    path = tmp_path / "run.h5"
    with RunFile.create(path, start_msg()) as run:
        fill(run, range(1, 5))
    with path.open("r+b") as fh:
        fh.truncate(3000)
    with pytest.raises((RunFileError, SeriesFileError), match="not a readable HDF5 file"):
        read_run(path)  # (a hang would hit the suite's per-test time-out)
