"""`fusetomo reconstruct --align`: a drifted series (drift of a few pixels and a tilt-axis
offset) is aligned and reconstructed as well as with the true shifts; the shifts are recorded
in the reconstruction file; bad combinations are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from shifted_series import shifted_series

from fusetomo.adapters.reconfile import read_recon
from fusetomo.adapters.seriesfile import write_series
from fusetomo.cli import main
from fusetomo.controller.offline_align import aligned_solver
from fusetomo.controller.reconstruct import MethodError, reconstruct
from fusetomo.simulators.forward import TiltScheme, simulate
from fusetomo.solver import alignment as al
from fusetomo.solver.metrics import nrmse

SCHEME = TiltScheme(tilt_range=(-60.0, 60.0), haadf_step=4.0, chem_step=20.0)


@pytest.fixture(scope="module")
def series_pair():
    sim = simulate("nanocubes", 32, SCHEME, seed=3)
    ang = sim.series.haadf_angles
    rng = np.random.default_rng(11)
    drift = al.gauge_free(ang, rng.uniform(-2.0, 2.0, (ang.size, 2)))
    drift[:, 1] += 1.0  # tilt-axis offset
    return sim, shifted_series(sim, np.zeros_like(drift), 5), shifted_series(sim, drift, 5), drift


def _error(sim, volumes) -> float:
    return float(np.mean([nrmse(sim.truth[e], volumes[e]) for e in sim.truth]))


@pytest.mark.slow
def test_reconstruct_align_matches_the_true_shifts(series_pair, tmp_path, capsys):
    sim, still, drifted, drift = series_pair
    e_still = _error(sim, reconstruct(still, iterations=60, device="cpu",
                                      progress=False).volumes)
    # The reference: the true shifts in the model (what perfect alignment gives; a little
    # worse than no drift at 32^3, as the drifted images lose what left the field and were
    # made with the model's linear split of a fraction of a row)
    partner = [int(np.argmin(np.abs(drifted.haadf_angles - a)))
               for a in drifted.common_chem_angles]
    true = aligned_solver(drifted, drift, drift[partner], 0.0)
    true.run(60)
    e_true = _error(sim, true.volumes())
    e_raw = _error(sim, reconstruct(drifted, iterations=60, device="cpu",
                                    progress=False).volumes)
    path = tmp_path / "drifted.h5"
    write_series(path, drifted, sim.truth)
    out = tmp_path / "recon.h5"
    assert main(["reconstruct", str(path), "--out", str(out), "--align", "--iterations", "60",
                 "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "aligned: rotation" in printed
    rec = read_recon(out)
    e_al = _error(sim, rec.volumes)
    assert e_raw > 1.3 * e_true
    assert e_true < 1.15 * e_still
    assert e_al < 1.03 * e_true, (e_al, e_true, e_still, e_raw)
    sh = np.asarray(rec.attrs["align_haadf_shifts_px"])
    assert sh.shape == drift.shape
    ang = drifted.haadf_angles
    err = al.gauge_free(ang, sh) - al.gauge_free(ang, drift)
    assert np.sqrt(np.mean(np.sum(err**2, axis=1))) < 0.1
    assert abs(rec.attrs["align_axis_offset_px"] - al.fit_axis(ang, drift[:, 1])[0]) < 0.2
    assert np.asarray(rec.attrs["align_chem_shifts_px"]).shape == (7, 2)
    assert abs(rec.attrs["align_rotation_deg"]) < 0.3


def test_align_is_for_the_fused_haadf_and_sirt_methods_only(series_pair):
    _, still, _, _ = series_pair
    with pytest.raises(MethodError, match="'hebt' has no aligned form"):
        reconstruct(still, method="hebt", align=True, progress=False)
