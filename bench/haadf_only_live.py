"""A HAADF-only series live (issue 15): the controller's HAADF volume against the offline
HAADF SIRT of the same recorded images, on data this project's simulator did not make.

- Simulated by the robustness bench's other projector (rotate-and-sum on a 2x finer grid,
  bench/robustness.py), HAADF images only, with a detector offset of 10 % of the peak; both
  volumes scored (<NRMSE>, standardised) against the specimen's binned HAADF signal
  sum_i (Z_i c_i)^1.7. Specimens: nanocubes, and the film and rod the defaults were not
  tuned on.
- The public etspy needle (raw int16 MRC with its .rawtlt, 77 tilts, binned 4x to 64^2):
  no truth; the live volume's correlation with the offline one, and how much of the
  offline volume's support (above 10 % of its max) the live one also puts above 10 %.

Each series goes through `fusetomo replay` (a real instrument process, ZeroMQ, the
controller, the run file), as a microscope's would.

    python bench/haadf_only_live.py            # writes bench/results/haadf_only_live.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from robustness import CELLS, OVERSAMPLE, Simulator

from fusetomo.adapters.runfile import read_run, read_snapshot
from fusetomo.adapters.series import TiltSeries
from fusetomo.adapters.seriesfile import read_series, write_series
from fusetomo.cli import main
from fusetomo.controller.reconstruct import reconstruct
from fusetomo.simulators.forward import bin_volume, haadf_signal
from fusetomo.solver.metrics import nrmse

RESULTS = Path(__file__).resolve().parent / "results"


def live_and_offline(series_path: Path, work: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """The live HAADF volume (replayed through the controller), the offline HAADF SIRT of
    the recorded images, and the replay's wall time."""
    run = work / "run.h5"
    t0 = time.perf_counter()
    code = main(["replay", str(series_path), "--speed", "1e4", "--record", str(run),
                 "--device", "cpu", "--timeout", "60", "--log-level", "WARNING"])
    if code != 0:
        raise RuntimeError(f"replay of {series_path} exited {code}")
    seconds = time.perf_counter() - t0
    _, vols = read_snapshot(run)
    offline = reconstruct(read_run(run).series, "haadf", device="cpu", progress=False)
    return vols["HAADF"], offline.volumes["HAADF"], seconds


def simulated(name: str, size: int, work: Path) -> dict[str, Any]:
    sim = Simulator(name, size, seed=0)
    acq = sim.acquire(CELLS["offset10"])
    raw = acq.raw
    path = write_series(work / f"{name}.h5", TiltSeries(raw.haadf, raw.haadf_angles, {}, {},
                                                        pixel_size_nm=0.5))
    truth = bin_volume(haadf_signal(sim.spec.volumes, np.asarray(sim.spec.Z), 1.7),
                       OVERSAMPLE)
    live, offline, seconds = live_and_offline(path, work)
    return {"data": f"{name} {size}^3, other projector, offset 10 %",
            "live_nrmse": nrmse(truth, live), "offline_nrmse": nrmse(truth, offline),
            "replay_s": seconds}


def needle(work: Path) -> dict[str, Any]:
    from realdata import require

    mrc = require("etspy/HAADF.mrc")
    require("etspy/HAADF.rawtlt")
    series = work / "needle.h5"
    if main(["import", str(mrc), "--out", str(series), "--bin", "4"]) != 0:
        raise RuntimeError(f"import of {mrc} failed")
    s = read_series(series)
    live, offline, seconds = live_and_offline(series, work)
    sup = offline > 0.1 * offline.max()
    return {"data": f"etspy needle MRC, {s.haadf.shape[0]} tilts of "
                    f"{s.haadf.shape[1]}x{s.haadf.shape[2]} (binned 4x), raw offset",
            "correlation_live_offline": float(np.corrcoef(live.ravel(), offline.ravel())[0, 1]),
            "support_kept": float(np.mean(live[sup] > 0.1 * live.max())),
            "replay_s": seconds}


def run() -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in ("nanocubes", "film", "rod"):
            work = Path(d) / name
            work.mkdir()
            rows.append(simulated(name, 48, work))
            print(json.dumps(rows[-1]), flush=True)
        work = Path(d) / "needle"
        work.mkdir()
        rows.append(needle(work))
        print(json.dumps(rows[-1]), flush=True)
    doc = {"command": "python bench/haadf_only_live.py", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "haadf_only_live.json").write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    run()
