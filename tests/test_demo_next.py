"""`fusetomo demo` ends by naming what to open next, and each command it names works: the
report it wrote, the viewer on the run, the stoichiometry table and the export of the
reconstruction file it wrote (a small, fast series)."""

from __future__ import annotations

import json
import shlex
import subprocess

import numpy as np
import pytest

from fusetomo.adapters.reconfile import read_recon
from fusetomo.adapters.runfile import read_snapshot
from fusetomo.cli import main
from fusetomo.cli.children import fusetomo_argv

FAST = ["--specimen", "core-shell", "--size", "16", "--speed", "1e4", "--tilt-range", "-60",
        "60", "--haadf-step", "12", "--chem-step", "60", "--final-iterations", "5",
        "--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_demo_writes_the_report_and_names_the_next_commands(tmp_path, capsys):
    out = tmp_path / "demo"
    proc = subprocess.run(fusetomo_argv("demo", "--out", str(out), *FAST),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    at = lines.index("what next:")
    tail = [line.strip() for line in lines[at + 1:]]
    report, run, recon = out / "report" / "index.html", out / "run.h5", out / "recon.h5"
    assert tail[0].startswith(f"report:  open {report}")
    assert tail[1] == f"viewer:  fusetomo view --run {run}"
    assert tail[2] == f"regions: fusetomo stoichiometry {recon}"
    assert tail[3].startswith(f"export:  fusetomo export {recon} --mrc {out / 'recon.mrc'}")
    assert report.is_file() and (out / "report" / "fractions.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == {"run": str(run), "recon": str(recon), "report": str(report)}
    assert summary["next"] == tail
    # The reconstruction file holds the run's final snapshot, exactly.
    _, final = read_snapshot(run)
    rec = read_recon(recon)
    for e, v in final.items():
        np.testing.assert_array_equal(rec.volumes[e], v)
    assert set(rec.std_error) == set(final)
    # The commands it names run as printed.
    for line in tail[2:]:
        argv = shlex.split(line.split(":", 1)[1].split("(or")[0])
        assert argv[0] == "fusetomo"
        assert main(argv[1:]) == 0, line
    assert (out / "recon_Co.mrc").is_file() or (out / "recon.mrc").is_file()
    assert "region" in capsys.readouterr().out
    # --no-report: no report, and the lines say nothing of one.
    proc = subprocess.run(fusetomo_argv("demo", "--out", str(tmp_path / "d2"), "--no-report",
                                        *FAST), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "d2" / "report").exists() and "report:" not in proc.stdout
