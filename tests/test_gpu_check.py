"""bench/gpu_check.sh keeps working without a GPU: its dry run on the CPU (what CI runs) checks
the numba kernels against the NumPy/scipy path, times tiny sizes and writes its JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu",
                           "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["dry_run"] is True
    phases = data["phases"]
    assert list(phases) == ["gpu_tests", "agreement", "timing_24", "timing_32", "live"]
    assert all(p["status"] == "ok" for p in phases.values()), phases
    tests = phases["gpu_tests"]
    assert tests["failures"] == tests["errors"] == 0 and tests["skipped"] >= 10
    agree = phases["agreement"]
    checks = {k: v for k, v in agree.items() if isinstance(v, dict) and "ok" in v}
    assert set(checks) == {"projector_forward", "projector_adjoint", "tv_prox", "tv_value",
                           "fused_3_iterations", "fused_nrmse_20_iterations",
                           "uncertainty_cheap", "uncertainty_accurate"}
    for name, c in checks.items():
        assert 0.0 <= c["max_rel_diff"] <= c["tolerance"], (name, c)
    for n in (24, 32):
        t = phases[f"timing_{n}"]
        assert t["N"] == n and t["answer_finite"] is True
        assert 0 < t["iteration_s"] < t["time_to_answer_s"]
    live = phases["live"]
    assert live["tilts"] > 30 and 0 < live["per_tilt_s_median"] <= live["per_tilt_s_p90"]
    assert "agree fused_3_iterations" in proc.stdout and f"wrote {out}" in proc.stdout
