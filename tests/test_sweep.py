"""`fusetomo sweep`: configuration, task results against direct reconstructions, resume,
retries of failed tasks and Bayesian ask/tell, on a local Dask cluster of 2 workers."""

from __future__ import annotations

import csv
import math

import h5py
import numpy as np
import pytest

from fusetomo.adapters.seriesfile import write_series
from fusetomo.cli import main
from fusetomo.controller.sweep import (
    SweepConfigError,
    SweepFailedError,
    build_parameters,
    evaluate,
    load_config,
    make_task,
    parse_config,
    run_sweep,
)
from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.solver.fusion import FusedSolver, FusionParams
from fusetomo.solver.metrics import nrmse

distributed = pytest.importorskip("distributed")
pytest.importorskip("skopt")

GRID = """
name = "t-grid"
iterations = 4
seeds = [0, 1]
retries = 1
device = "cpu"
[specimen]
size = 16
[fixed]
chem_step = 30
[space]
lambda_tv = [0.002, 0.02]
"""


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster) as cl:
        yield cl


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _quiet(_: str) -> None:
    pass


def test_config_errors_name_the_value(tmp_path):
    with pytest.raises(SweepConfigError, match="'lambda_foo' is not a parameter"):
        parse_config('name = "x"\n[space]\nlambda_foo = [1]\n')
    with pytest.raises(SweepConfigError, match="non-empty list"):
        parse_config('name = "x"\n[space]\nlambda_tv = 0.1\n')
    with pytest.raises(SweepConfigError, match="needs a \\[space\\]"):
        parse_config('name = "x"\nmethod = "bayes"\n')
    with pytest.raises(SweepConfigError, match="lambda_tv must be >= 0"):
        parse_config('name = "x"\n[space]\nlambda_tv = [-1.0]\n')
    with pytest.raises(SweepConfigError, match="log-uniform range needs low > 0"):
        parse_config('name = "x"\nmethod = "bayes"\n[space]\n'
                     'lambda_tv = {low = 0, high = 1, prior = "log-uniform"}\n')
    with pytest.raises(SweepConfigError, match="both \\[fixed\\] and \\[space\\]"):
        parse_config('name = "x"\n[fixed]\ngamma = 1.7\n[space]\ngamma = [1.5]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(SweepConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_parameters_map_to_the_simulation():
    b = build_parameters({"dose": 4.0, "chem_snr": 2.0, "n_chem_tilts": 5, "tilt_max": 60,
                          "lambda_tv": 0.01, "acq_gamma": 1.8})
    assert b.acquisition.chem_snr == pytest.approx(4.0)  # SNR grows as sqrt(dose)
    assert b.acquisition.gamma == 1.8
    np.testing.assert_allclose(b.scheme.chem(), [-60, -30, 0, 30, 60])
    assert b.fusion == {"lambda_tv": 0.01}


def test_task_equals_a_direct_reconstruction():
    cfg = parse_config(GRID)
    task = make_task(cfg, 0, {"lambda_tv": 0.02}, 1, "nanocubes:16:seed1")
    row = evaluate(task)
    sim = simulate("nanocubes", 16, TiltScheme(chem_step=30), seed=1)
    s = sim.series
    solver = FusedSolver(16, 16, s.elements, [s.Z[e] for e in s.elements],
                         FusionParams(gamma=s.gamma, lambda_tv=0.02), device="cpu",
                         background=[s.background[e] for e in s.elements])
    solver.add_haadf(s.haadf_angles, s.haadf)
    solver.add_chem(s.common_chem_angles, s.chem)
    solver.run(4)
    vols = solver.volumes()
    per = {e: nrmse(sim.truth[e], vols[e]) for e in s.elements}
    for e, v in per.items():
        assert row[f"nrmse_{e}"] == pytest.approx(v, rel=1e-9)
    assert row["nrmse_mean"] == pytest.approx(np.mean(list(per.values())), rel=1e-9)


def test_grid_sweep_resume_and_extension(client, tmp_path):
    cfg = parse_config(GRID)
    out = tmp_path / "grid"
    res = run_sweep(cfg, out, client, log=_quiet)
    rows = _rows(out / "results.csv")
    assert res.submitted == 4 and res.skipped == 0 and len(rows) == 4
    assert {r["status"] for r in rows} == {"ok"}
    assert len({r["worker"] for r in rows}) >= 1
    # Each worker's result equals the same task evaluated here.
    r0 = rows[0]
    task = make_task(cfg, 0, {"lambda_tv": float(r0["lambda_tv"])}, int(r0["replicate"]),
                     r0["source"])
    assert r0["task_key"] == task.key
    assert float(r0["nrmse_mean"]) == pytest.approx(evaluate(task)["nrmse_mean"], rel=1e-9)
    # Points: the mean over both seeds.
    for p in res.points:
        vals = [float(r["nrmse_mean"]) for r in rows if r["point"] == p["point"]]
        assert p["nrmse_mean"] == pytest.approx(np.mean(vals))
        assert p["replicates"] == 2
    with h5py.File(out / "results.h5") as f:
        assert f.attrs["format"] == "fusetomo-sweep"
        np.testing.assert_allclose(f["results/nrmse_mean"][()],
                                   [float(r["nrmse_mean"]) for r in rows])
        assert f["points/nrmse_mean"].shape == (2,)
    assert (out / "nrmse_map.png").stat().st_size > 0
    # Resume: nothing is redone.
    again = run_sweep(cfg, out, client, log=_quiet)
    assert again.submitted == 0 and again.skipped == 4
    assert len(_rows(out / "results.csv")) == 4
    # An extended grid runs only the new point.
    more = parse_config(GRID.replace("[0.002, 0.02]", "[0.002, 0.02, 0.005]"))
    ext = run_sweep(more, out, client, log=_quiet)
    assert ext.submitted == 2 and ext.skipped == 4
    assert len(ext.points) == 3


def test_failed_task_is_reported_retried_and_resumed(client, tmp_path):
    """A missing series file fails on the workers: every attempt is journalled, the sweep
    raises naming it, and running again once the file exists completes it."""
    sim = simulate("nanocubes", 16, TiltScheme(chem_step=30), seed=0)
    good = write_series(tmp_path / "a.h5", sim.series, sim.truth)
    later = tmp_path / "b.h5"
    cfg_text = f"""
name = "t-fail"
iterations = 3
retries = 1
device = "cpu"
[specimen]
series = ["{good}", "{later}"]
[space]
lambda_tv = [0.005]
"""
    cfg = parse_config(cfg_text)
    out = tmp_path / "fail"
    logs: list[str] = []
    with pytest.raises(SweepFailedError, match="1 task\\(s\\) failed after 1 retries"):
        run_sweep(cfg, out, client, log=logs.append)
    rows = _rows(out / "results.csv")
    bad = [r for r in rows if r["replicate"] == "1"]
    assert [r["status"] for r in bad] == ["error", "failed"]
    assert [r["attempt"] for r in bad] == ["1", "2"]
    assert "b.h5" in bad[-1]["error"]
    assert any("retrying" in m for m in logs) and any("FAILED" in m for m in logs)
    write_series(later, sim.series, sim.truth)
    res = run_sweep(cfg, out, client, log=_quiet)
    assert res.submitted == 1 and res.skipped == 1 and not res.failed
    ok = [r for r in _rows(out / "results.csv") if r["status"] == "ok"]
    assert sorted(r["replicate"] for r in ok) == ["0", "1"]
    # The same data twice: both replicates score the same.
    assert float(ok[0]["nrmse_mean"]) == pytest.approx(float(ok[1]["nrmse_mean"]), rel=1e-9)


def test_bayes_ask_tell_and_resume(client, tmp_path):
    cfg = parse_config("""
name = "t-bayes"
method = "bayes"
iterations = 3
seeds = [0]
device = "cpu"
[specimen]
size = 16
[fixed]
chem_step = 30
[space]
lambda_tv = {low = 0.001, high = 0.05, prior = "log-uniform"}
[bayes]
n_calls = 4
n_initial_points = 2
parallel = 2
""")
    out = tmp_path / "bayes"
    res = run_sweep(cfg, out, client, log=_quiet)
    assert res.submitted == 4
    lam = sorted(p["lambda_tv"] for p in res.points)
    assert len(set(lam)) == 4 and all(0.001 <= v <= 0.05 for v in lam)
    best = min(res.points, key=lambda p: p["nrmse_mean"])
    task = make_task(cfg, 0, {"lambda_tv": best["lambda_tv"]}, 0, "nanocubes:16:seed0")
    assert best["nrmse_mean"] == pytest.approx(evaluate(task)["nrmse_mean"], rel=1e-9)
    again = run_sweep(cfg, out, client, log=_quiet)
    assert again.submitted == 0 and again.skipped == 4


def test_cli_on_an_existing_scheduler(cluster, tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(GRID.replace("[0.002, 0.02]", "[0.01]").replace("[0, 1]", "[2]"))
    out = tmp_path / "cli"
    code = main(["sweep", str(cfg), "--out", str(out), "--scheduler",
                 cluster.scheduler_address, "--json"])
    assert code == 0
    import json

    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tasks_run"] == 1 and summary["points"] == 1
    rows = _rows(out / "results.csv")
    assert math.isclose(summary["best"][0]["nrmse_mean"], float(rows[0]["nrmse_mean"]))
