"""`fusetomo report`: figures, report.json and index.html of run, reconstruction and series
files, checked against numbers computed here from the files themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from live_fixtures import SMALL, controller_thread, instrument_thread, wait_for
from matplotlib.image import imread

from fusetomo.adapters.runfile import read_run
from fusetomo.adapters.seriesfile import write_series
from fusetomo.cli import main
from fusetomo.cli.demo import live_summary
from fusetomo.controller.report import ReportParams, composition_fractions
from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.solver.stopping import StopRule

ELEMENTS = ["Co", "Cu", "O", "Au"]
ALWAYS = ["overlay", "convergence", "dose", "stoichiometry", "fractions",
          *(f"orthoslices_{e}" for e in ELEMENTS)]


def _nrmse(y: np.ndarray, x: np.ndarray) -> float:
    """science.md §5, written out again here."""
    y = (y - y.mean()) / y.std()
    x = (x - x.mean()) / x.std()
    return float(np.sqrt(np.sum((y - x) ** 2) / np.sum(y**2)))


def _simulation():
    scheme = TiltScheme(tilt_range=SMALL["tilt_range"], haadf_step=SMALL["haadf_step"],
                        chem_step=SMALL["chem_step"])
    return simulate("nanocubes", SMALL["size"], scheme, seed=SMALL["seed"])


@pytest.fixture(scope="module")
def sim():
    return _simulation()


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A run recorded by the live controller from the simulated instrument over ZeroMQ
    (16^3, 11 HAADF + 3 chemical tilts, a deterministic schedule on the CPU)."""
    run = tmp_path_factory.mktemp("run") / "run.h5"
    with instrument_thread() as inst, controller_thread(inst.endpoint, run) as (_c, result):
        wait_for(lambda: "code" in result or "error" in result, 120, "the live run")
    assert result.get("code") == 0, result
    return run


def _check_figures(out: Path, names: list[str]) -> None:
    page = (out / "index.html").read_text()
    for name in names:
        png = out / f"{name}.png"
        assert png.is_file(), name
        img = imread(png)
        assert img.ndim == 3 and min(img.shape[:2]) > 100, (name, img.shape)
        assert float(img[..., :3].std()) > 0, f"{name}.png is blank"
        assert f"src='{name}.png'" in page, name


def _report(src: Path, out: Path, *extra: str) -> dict:
    assert main(["report", str(src), "--out", str(out), *extra]) == 0
    return json.loads((out / "report.json").read_text())


# -- run files ------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_of_a_run_file_matches_the_file(tmp_path, live_run, sim, capsys):
    doc = _report(live_run, tmp_path / "rep")
    expected = [*ALWAYS, "std_error", "progress"]
    _check_figures(tmp_path / "rep", expected)
    assert sorted(doc["figures"]) == sorted(expected)
    assert set(doc["skipped"]) == {"advice"}  # the instrument ran its plan unadvised
    assert "no spectroscopy advice" in (tmp_path / "rep" / "index.html").read_text()

    with h5py.File(live_run, "r") as f:  # closed cleanly: any HDF5 reader opens it
        final = f["run/snapshots/volumes"][-1]
        std = f["run/std_error/volumes"][-1]
        n_snap = f["run/snapshots/volumes"].shape[0]
        n_std = f["run/std_error/volumes"].shape[0]
        dose = {m: f[f"run/{m}/dose_e_per_A2"][()] for m in ("haadf", "chem")}
    # <NRMSE> of the final snapshot against the simulated truth (which the report
    # re-simulates from the run's start header; here it is the test's own simulation).
    want = {e: _nrmse(sim.truth[e].astype(np.float64), final[i].astype(np.float64))
            for i, e in enumerate(ELEMENTS)}
    assert doc["nrmse"] == pytest.approx(want, rel=1e-9)
    assert doc["nrmse_mean"] == pytest.approx(np.mean(list(want.values())), rel=1e-9)
    assert f"<NRMSE> = {doc['nrmse_mean']:.3f}" in capsys.readouterr().out
    # ... and the same as the demo's summary of the run.
    demo = live_summary(live_run, "nanocubes", SMALL["size"], SMALL["seed"])
    assert doc["nrmse_mean"] == pytest.approx(demo["nrmse_mean"], rel=1e-9)
    # Mean standard error over the truth's support (summed truth > 25% of its max).
    total = sum(sim.truth[e] for e in ELEMENTS)
    mask = total > 0.25 * total.max()
    for i, e in enumerate(ELEMENTS):
        assert doc["mean_std_error"][e] == pytest.approx(float(std[i][mask].mean()), rel=1e-6)
    # One point per snapshot (standard error) in tilt order, the last with every tilt.
    per_tilt, std_tilt = doc["nrmse_per_tilt"], doc["std_error_per_tilt"]
    assert (len(per_tilt), len(std_tilt)) == (n_snap, n_std) and min(n_snap, n_std) >= 2
    for pts in (per_tilt, std_tilt):
        assert [q["n_haadf"] for q in pts] == sorted(q["n_haadf"] for q in pts)
    assert (per_tilt[-1]["n_haadf"], per_tilt[-1]["n_chem"]) == (11, 3)
    assert per_tilt[-1]["values"] == pytest.approx(want, rel=1e-9)
    assert doc["images"] == {"haadf": 11, "chem": 3}
    for m in ("haadf", "chem"):
        assert doc["dose_e_per_A2"][m] == pytest.approx(float(np.sum(dose[m])), rel=1e-12)
    # The nanocubes' truth is CoO and CuO (fraction 0.5 each) with Au spheres that replace
    # them (1.0; at 16^3 the spheres are smaller than a voxel, so mixed voxels pull it down).
    st = doc["stoichiometry_truth"]
    for e in ("Co", "Cu", "O"):
        assert abs(st[e]["mean"] - 0.5) < 0.05, (e, st[e])
    assert st["Au"]["mean"] > 0.5
    # The truth is drawn in the reconstruction's quantity: the instrument's counts per
    # voxel of a unit concentration, recovered from the run's start header.
    assert doc["truth_counts_per_unit"] == pytest.approx(
        float(sim.series.attrs["counts_per_unit"]), rel=1e-6)
    assert doc["units"]["volumes"] == doc["units"]["std_error"] == "counts per voxel"
    # The live run records the volumes' change: the verdict is the stopping rule's, on the
    # final iterations (after the last tilt joined).
    rec = read_run(live_run)
    c = rec.costs
    last = int(np.flatnonzero(np.diff(c["n_haadf"]) + np.diff(c["n_chem"]))[-1]) + 1
    seg = slice(last, None)
    want_state = StopRule().check(c["change"][seg].tolist(), c["haadf"][seg].tolist(),
                                  c["chem"][seg].tolist(), c["change"][seg].size)
    names = {"converged": "converged", "data terms rising": "stopped: data terms rising",
             None: "not yet converged"}
    assert doc["convergence"]["state"] == names[want_state]
    # Region table: the atomic fractions of the stoichiometry module, per region.
    assert doc["regions"] and all(abs(sum(r["fraction"].values()) - 1) < 1e-9
                                  for r in doc["regions"])


# -- reconstruction and series files ----------------------------------------------------------
@pytest.mark.slow
def test_report_of_a_reconstruction_file(tmp_path, sim, capsys):
    series = tmp_path / "series.h5"
    write_series(series, sim.series, sim.truth)
    recon = tmp_path / "recon.h5"
    assert main(["reconstruct", str(series), "--out", str(recon), "--iterations", "15",
                 "--uncertainty", "cheap", "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    doc = _report(recon, tmp_path / "rep")
    _check_figures(tmp_path / "rep", [*ALWAYS, "std_error"])
    assert set(doc["skipped"]) == {"progress", "advice"}
    assert "one result, not one per tilt" in (tmp_path / "rep" / "index.html").read_text()
    with h5py.File(recon, "r") as f, h5py.File(series, "r") as g:
        want = {e: _nrmse(g[f"truth/{e}"][()].astype(np.float64),
                          f[f"volumes/{e}"][()].astype(np.float64)) for e in ELEMENTS}
        conv = f["convergence/chem"].shape[0]
    assert doc["nrmse"] == pytest.approx(want, rel=1e-9)
    assert f"<NRMSE> = {doc['nrmse_mean']:.3f}" in printed  # as reconstruct printed it
    assert conv == 15
    with h5py.File(recon, "r") as f:
        hist = {k: f[f"convergence/{k}"][()].tolist() for k in ("change", "haadf", "chem")}
    want_state = StopRule().check(hist["change"], hist["haadf"], hist["chem"], 15)
    assert doc["convergence"]["state"] == {"converged": "converged", None: "not yet converged",
                                           "data terms rising": "stopped: data terms rising"
                                           }[want_state]
    attrs = sim.series.attrs
    assert doc["dose_e_per_A2"]["chem"] == pytest.approx(3 * attrs["chem_dose_e_per_A2"])

    # Without --uncertainty there is no standard error: skipped, and the page says how.
    plain = tmp_path / "plain.h5"
    assert main(["reconstruct", str(series), "--out", str(plain), "--iterations", "5",
                 "--quiet", "--device", "cpu"]) == 0
    doc = _report(plain, tmp_path / "rep2")
    assert set(doc["skipped"]) == {"progress", "std_error", "advice"}
    assert "--uncertainty" in (tmp_path / "rep2" / "index.html").read_text()


def test_report_of_a_series_file_shows_its_truth(tmp_path, sim):
    series = tmp_path / "series.h5"
    write_series(series, sim.series, sim.truth)
    doc = _report(series, tmp_path / "rep")
    _check_figures(tmp_path / "rep", ["overlay", "dose", "stoichiometry", "orthoslices_Au"])
    assert {"convergence", "std_error", "progress"} <= set(doc["skipped"])
    assert "nrmse" not in doc  # the volumes are the truth itself
    want = composition_fractions(sim.truth)
    assert doc["stoichiometry"]["O"]["mean"] == pytest.approx(float(want["O"].mean()))


def test_composition_fractions_known_answer():
    a = np.zeros((8, 8, 8), np.float32)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6], b[2:6, 2:6, 2:6] = 1.0, 3.0
    b[0, 0, 0] = 0.2  # below the support threshold: left out
    f = composition_fractions({"A": a, "B": b}, ReportParams(support_fraction=0.25))
    assert f["A"].size == f["B"].size == 64
    np.testing.assert_allclose(f["A"], 0.25)
    np.testing.assert_allclose(f["B"], 0.75)


# -- bad input --------------------------------------------------------------------------------
def _fails(capsys, src: Path, out: Path, *names: str) -> None:
    assert main(["report", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusetomo: error: ") and str(src) in err, err
    for n in names:
        assert n in err, err
    assert not (out / "index.html").exists()


def test_bad_input_exits_2_naming_file_and_dataset(tmp_path, live_run, capsys):
    junk = tmp_path / "junk.h5"
    junk.write_text("not HDF5")
    _fails(capsys, junk, tmp_path / "o1", "not a readable HDF5 file")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(live_run.read_bytes()[:3000])
    _fails(capsys, cut, tmp_path / "o2", "truncated at byte 3000 of ", "past the cut")
    gone = tmp_path / "gone.h5"
    shutil.copy(live_run, gone)
    with h5py.File(gone, "a") as f:
        del f["run/snapshots/volumes"]
    _fails(capsys, gone, tmp_path / "o3", "/run/snapshots/volumes", "missing")
    _fails(capsys, tmp_path / "absent.h5", tmp_path / "o4", "no such file")
    no_truth = tmp_path / "no-truth.h5"
    shutil.copy(live_run, no_truth)
    assert main(["report", str(live_run), "--out", str(tmp_path / "o5"), "--truth",
                 str(no_truth)]) == 2
    assert "/truth is missing" in capsys.readouterr().err


def test_report_of_a_run_with_fewer_slices_than_detector_pixels(tmp_path):
    """[8, 16] images, volumes [8, 16, 16]: every figure is drawn (the planes of each axis
    within its own length), and the numbers are those of the recorded volumes."""
    from fusetomo.adapters.protocol import CHEM_TILT, HAADF_TILT, SERIES_END, SERIES_START, make
    from fusetomo.adapters.runfile import RunFile
    from fusetomo.controller.report import make_report
    from fusetomo.controller.report.numbers import _cut, _planes

    ns, nd, els = 8, 16, ["Co", "O"]
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(0)
    start = make(SERIES_START, "flat", 0, elements=els, Z={"Co": 27, "O": 8}, shape=[ns, nd],
                 scheme={}, dose_budget_e_per_A2=None, pixel_size_nm=0.5)
    vols = {}
    with RunFile.create(path, start) as run:
        seq = 1
        for i, a in enumerate(np.arange(-60.0, 61.0, 20.0)):
            run.record_tilt(make(HAADF_TILT, "flat", seq, [rng.random((ns, nd), np.float32)],
                                 angle=float(a), dose_e_per_A2=1.0))
            seq += 1
            if i % 2 == 0:
                run.record_tilt(make(CHEM_TILT, "flat", seq,
                                     [rng.random((ns, nd), np.float32) for _ in els],
                                     angle=float(a), elements=els, dose_e_per_A2=5.0))
                seq += 1
            run.record_costs(i, {"haadf": 1.0, "chem": 1.0, "tv": 1.0, "n_haadf": i + 1,
                                 "n_chem": i // 2 + 1})
            vols = {e: rng.random((ns, nd, nd), dtype=np.float32) for e in els}
            run.record_snapshot(i, vols)
            run.record_std_error(i, vols)
        run.mark_complete(make(SERIES_END, "flat", seq, n_haadf=run.haadf_count,
                               n_chem=run.chem_count))
    doc = make_report(path, tmp_path / "report")
    assert set(doc["figures"]) >= {"orthoslices_Co", "orthoslices_O", "overlay", "std_error",
                                   "stoichiometry", "convergence", "dose", "progress"}
    planes = _planes(vols)
    assert 0 <= planes["s"] < ns and 0 <= planes["u"] < nd and 0 <= planes["v"] < nd
    assert _cut(vols["Co"], "s", planes["s"]).shape == (nd, nd)
    assert _cut(vols["Co"], "u", planes["u"]).shape == (ns, nd)
    assert doc["mean_std_error"]["Co"] == pytest.approx(float(vols["Co"][
        (vols["Co"] + vols["O"]) > 0.25 * (vols["Co"] + vols["O"]).max()].mean()), rel=1e-5)
