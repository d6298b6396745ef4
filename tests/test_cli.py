"""The `fusetomo` command line, in-process through main() and once as the console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_series import CASES
from ncempy.io import emd

from fusetomo.adapters.reconfile import read_recon
from fusetomo.adapters.seriesfile import read_series, read_truth
from fusetomo.cli import main
from fusetomo.solver.backend import gpu_available

SIM = ["--size", "24", "--haadf-step", "5", "--chem-step", "35", "--seed", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """simulate -> reconstruct through main(), once for the module."""
    d = tmp_path_factory.mktemp("cli")
    series, recon = d / "series.h5", d / "recon.h5"
    assert main(["simulate", "--specimen", "core-shell", *SIM, "--out", str(series)]) == 0
    assert main(["reconstruct", str(series), "--out", str(recon), "--iterations", "3",
                 "--device", "cpu", "--quiet"]) == 0
    return {"series": series, "recon": recon, "dir": d}


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_prints_summary_and_writes_truth(capsys, tmp_path):
    code, out, _ = _run(capsys, ["simulate", "--specimen", "nanocubes", *SIM,
                                 "--chem-snr", "3", "--out", str(tmp_path / "s.h5")])
    assert code == 0
    assert out.count("\n") == 1
    assert "29 HAADF + 5 chemical tilts" in out and "SNR Co" in out and "Au" in out
    s = read_series(tmp_path / "s.h5")
    assert s.elements == ["Co", "Cu", "O", "Au"] and s.shape == (24, 24)
    assert set(read_truth(tmp_path / "s.h5")) == set(s.elements)


def test_reconstruct_writes_recon_and_reports_nrmse(files, capsys, tmp_path):
    rec = read_recon(files["recon"])
    assert rec.names == ["Co", "S", "O"] and rec.shape == (24, 24, 24)
    assert rec.attrs["method"] == "fused" and rec.attrs["iterations"] == 3
    assert rec.attrs["source_file"] == str(files["series"])
    code, out, _ = _run(capsys, ["reconstruct", str(files["series"]), "--out",
                                 str(tmp_path / "r.h5"), "--iterations", "2", "--device",
                                 "cpu"])
    assert code == 0
    assert "<NRMSE> = " in out and "Co " in out and " S " in out


def test_export_emd(files, tmp_path):
    out = tmp_path / "r.emd"
    assert main(["export", str(files["recon"]), "--emd", str(out)]) == 0
    rec = read_recon(files["recon"])
    with emd.fileEMD(out) as f:
        assert [g.name for g in f.list_emds] == [f"/data/{e}" for e in rec.names]
        for i, e in enumerate(rec.names):
            data, _ = f.get_emdgroup(i)
            np.testing.assert_array_equal(data, rec.volumes[e])


def test_inspect_series_and_recon(files, capsys):
    code, out, _ = _run(capsys, ["inspect", str(files["series"]), "--json"])
    info = json.loads(out)
    assert code == 0 and info["kind"] == "series"
    assert (info["haadf_tilts"], info["chem_tilts"]) == (29, 5)
    assert info["elements"] == ["Co", "S", "O"] and info["shape"] == [24, 24]
    assert info["duplicates"] == 0 and info["complete"] is True
    assert info["dose_e_per_A2"] > 0
    code, out, _ = _run(capsys, ["inspect", str(files["recon"]), "--json"])
    info = json.loads(out)
    assert code == 0 and info["kind"] == "recon" and info["method"] == "fused"
    assert info["shape"] == [24, 24, 24] and info["haadf_tilts"] == 29
    code, out, _ = _run(capsys, ["inspect", str(files["series"])])
    assert code == 0 and "complete: True" in out


def test_inspect_reports_duplicates_without_failing(files, capsys, tmp_path):
    bad = tmp_path / "dup.h5"
    shutil.copy(files["series"], bad)
    CASES[[c[0] for c in CASES].index("duplicate")][1](bad)
    code, out, _ = _run(capsys, ["inspect", str(bad), "--json"])
    info = json.loads(out)
    assert code == 0 and info["duplicates"] == 1 and info["complete"] is False


@pytest.mark.parametrize(("damage", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damaged_series_exits_2_naming_the_problem(files, capsys, tmp_path, damage, words):
    bad = tmp_path / "bad.h5"
    shutil.copy(files["series"], bad)
    damage(bad)
    code, out, err = _run(capsys, ["reconstruct", str(bad), "--out", str(tmp_path / "r.h5"),
                                   "--device", "cpu"])
    assert code == 2 and out == ""
    assert err.startswith(f"fusetomo: error: {bad}: ")
    for w in words:
        assert w in err
    assert "Traceback" not in err
    assert not (tmp_path / "r.h5").exists()


@pytest.mark.parametrize(("argv", "words"), [
    (["simulate", "--specimen", "teapot", "--size", "16", "--out", "{d}/s.h5"],
     "unknown specimen 'teapot'"),
    (["simulate", "--size", "16", "--tilt-range", "50", "-50", "--out", "{d}/s.h5"],
     "tilt range"),
    (["simulate", "--size", "4", "--out", "{d}/s.h5"], "size must be in"),
    (["reconstruct", "{d}/absent.h5", "--out", "{d}/r.h5"], "absent.h5: no such file"),
    (["export", "{series}", "--emd", "{d}/r.emd"], "format is 'fusetomo-series'"),
    (["inspect", "{d}/absent.h5"], "no such file"),
])
def test_user_errors_exit_2(files, capsys, tmp_path, argv, words):
    argv = [a.format(d=tmp_path, series=files["series"]) for a in argv]
    code, _, err = _run(capsys, argv)
    assert code == 2
    assert err.startswith("fusetomo: error: ") and words in err and "Traceback" not in err


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_gpu_request_without_gpu_exits_2(files, capsys, tmp_path):
    code, _, err = _run(capsys, ["reconstruct", str(files["series"]), "--out",
                                 str(tmp_path / "r.h5"), "--device", "gpu"])
    assert code == 2 and "device 'gpu' requested" in err


def test_argparse_errors_return_2(capsys):
    assert main(["reconstruct"]) == 2
    assert main(["reconstruct", "x.h5", "--out", "y.h5", "--method", "magic"]) == 2
    assert main(["--help"]) == 0
    assert "--iterations" not in _run(capsys, ["offline-demo", "--help"])[1]


def test_demo_json(tmp_path, capsys):
    code, out, _ = _run(capsys, ["offline-demo", "--out", str(tmp_path), "--size", "16",
                                 "--iterations", "3", "--device", "cpu", "--json"])
    assert code == 0
    summary = json.loads(out)
    for key in ("nrmse_mean", "nrmse", "nrmse_conventional_mean", "haadf_tilts", "chem_tilts",
                "dose_e_per_A2", "elapsed_s"):
        assert key in summary, key
    assert set(summary["nrmse"]) == {"Co", "Cu", "O", "Au"}
    assert (summary["haadf_tilts"], summary["chem_tilts"]) == (47, 10)
    assert summary["dose_e_per_A2"] > 0 and summary["elapsed_s"] > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert read_recon(tmp_path / "recon.h5").attrs["method"] == "fused"
    assert read_series(tmp_path / "series.h5").elements == ["Co", "Cu", "O", "Au"]


def test_console_script(files, tmp_path):
    exe = shutil.which("fusetomo")
    cmd = [exe] if exe else [sys.executable, "-m", "fusetomo.cli"]
    out = tmp_path / "r.h5"
    proc = subprocess.run([*cmd, "reconstruct", str(files["series"]), "--out", str(out),
                           "--iterations", "2", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "<NRMSE>" in proc.stdout and "Traceback" not in proc.stderr
    assert read_recon(out).attrs["iterations"] == 2


def test_reconstruct_writes_standard_errors(capsys, tmp_path):
    import h5py

    series = tmp_path / "s.h5"
    assert _run(capsys, ["simulate", "--specimen", "core-shell", "--size", "16", "--out",
                         str(series)])[0] == 0
    recon = tmp_path / "r.h5"
    code, _, err = _run(capsys, ["reconstruct", str(series), "--out", str(recon),
                                 "--iterations", "5", "--quiet", "--uncertainty", "cheap"])
    assert code == 0, err
    with h5py.File(recon, "r") as f:
        for e in ("Co", "S", "O"):
            se, vol = f[f"std_error/{e}"][()], f[f"volumes/{e}"][()]
            assert se.shape == vol.shape and np.all(np.isfinite(se)) and np.all(se > 0)
    code, _, err = _run(capsys, ["reconstruct", str(series), "--out", str(tmp_path / "x.h5"),
                                 "--method", "sirt", "--uncertainty", "cheap"])
    assert code == 2 and "fused method only" in err
    # resampled: the standard errors and, in a group of its own, the bias estimate
    code, _, err = _run(capsys, ["reconstruct", str(series), "--out", str(tmp_path / "b.h5"),
                                 "--iterations", "3", "--quiet", "--uncertainty",
                                 "resample"])
    assert code == 0, err
    rec = read_recon(tmp_path / "b.h5")
    assert set(rec.std_error) == set(rec.bias) == {"Co", "S", "O"}
    assert rec.attrs["uncertainty"] == "resample" and rec.attrs["uncertainty_replicas"] == 32
    assert all(np.all(rec.std_error[e] >= 0) and np.all(np.isfinite(rec.bias[e]))
               for e in rec.bias)
