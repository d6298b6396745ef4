"""2D fused multi-modal EM (solver/fusion2d.py): known answers on one chemical tilt of
simulated series (40 x 40 images, fixed seeds), invariances, the cost record, input checks.

The clean truth of a tilt is the noise-free projection of the specimen at that tilt, in the
maps' counts; the noisy maps are the simulator's Poisson counts and the HAADF image the one
taken at the same tilt. Measured when written (seeds 0-2, tilts 0 and 35 deg, chemical SNR
2.5): NRMSE of the maps falls 2.7-3.3 fold (0.51-0.64 -> 0.16-0.22), PSNR rises 8-10 dB.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import sigpy as sp

from fusetomo.simulators.forward import AcquisitionParams, TiltScheme, bin_projections, simulate
from fusetomo.simulators.specimens import make_specimen
from fusetomo.solver.backend import gpu_available
from fusetomo.solver.fusion2d import Fused2D, Fusion2DParams, _TVProx2D, fuse_2d, tv_value_2d
from fusetomo.solver.metrics import nrmse, psnr
from fusetomo.solver.projector import ParallelProjector

N = 40
requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")


def tilt_case(name: str, angle: float, seed: int = 0):
    """(HAADF, noisy maps, clean maps, Z, background) of one simulated chemical tilt."""
    scheme = TiltScheme(haadf_angles=(angle,), chem_angles=(angle,))
    sim = simulate(name, N, scheme, AcquisitionParams(), seed=seed)
    s = sim.series
    o = int(s.attrs["oversample"])
    spec = make_specimen(name, N * o, seed=seed)
    clean = bin_projections(ParallelProjector(N * o, [angle]).forward(spec.volumes), o)[:, 0]
    clean = clean * s.attrs["counts_per_unit"]
    return (s.haadf[0], {e: s.chem[e][0] for e in s.elements},
            {e: clean[i] for i, e in enumerate(s.elements)}, dict(s.Z), dict(s.background))


@pytest.fixture(scope="module")
def cubes():
    return tilt_case("nanocubes", 35.0, seed=0)


@pytest.fixture(scope="module")
def shells():
    return tilt_case("core-shell", 0.0, seed=1)


def _mean(metric, clean: dict, maps: dict) -> float:
    return float(np.mean([metric(clean[e], maps[e]) for e in clean]))


# -- known answers ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["cubes", "shells"])
def test_fusion_improves_noisy_maps(case: str, request) -> None:
    haadf, noisy, clean, Z, bg = request.getfixturevalue(case)
    fused = fuse_2d(haadf, noisy, Z, iterations=50, background=bg, device="cpu")
    assert list(fused) == list(noisy)
    assert _mean(nrmse, clean, noisy) / _mean(nrmse, clean, fused) > 2.3
    assert _mean(psnr, clean, fused) > _mean(psnr, clean, noisy) + 6.0
    for e in noisy:  # every element gains, not just the mean
        assert psnr(clean[e], fused[e]) > psnr(clean[e], noisy[e]) + 3.0


def test_consistent_data_is_a_fixed_point() -> None:
    rng = np.random.default_rng(0)
    x = {"Co": rng.uniform(1, 20, (16, 12)).astype(np.float32),
         "O": rng.uniform(1, 20, (16, 12)).astype(np.float32)}
    Z = {"Co": 27, "O": 8}
    haadf = 5.0 * ((27 * x["Co"]) ** 1.7 + (8 * x["O"]) ** 1.7)
    maps = {e: v + 2.0 for e, v in x.items()}  # background 2 counts/pixel
    f = Fused2D(haadf, maps, Z, Fusion2DParams(lambda_tv=0.0), background=[2.0, 2.0],
                device="cpu")
    f.run(10)
    for e, v in f.maps().items():
        np.testing.assert_allclose(v, x[e], rtol=1e-4)
    np.testing.assert_allclose(f.haadf_model(), haadf, rtol=1e-4)
    assert f.history.haadf[-1] < 1e-6 * float(np.sum(haadf**2))


def test_linear_amount_model_is_a_fixed_point_of_its_data() -> None:
    rng = np.random.default_rng(2)
    x = {"S": rng.uniform(1, 20, (10, 14)).astype(np.float32),
         "Co": rng.uniform(1, 20, (10, 14)).astype(np.float32)}
    haadf = 0.1 * (16**1.7 * x["S"] + 27**1.7 * x["Co"])  # sum Z^gamma x: linear in x
    p = Fusion2DParams(lambda_tv=0.0, amount_exponent=1.0)
    f = Fused2D(haadf, {e: v + 3.0 for e, v in x.items()}, None, p, background=[3.0, 3.0],
                device="cpu")
    f.run(5)
    for e, v in f.maps().items():
        np.testing.assert_allclose(v, x[e], rtol=1e-4)
    np.testing.assert_allclose(f.haadf_model(), haadf, rtol=1e-4)


def test_haadf_units_do_not_matter(cubes) -> None:
    haadf, noisy, _, Z, bg = cubes
    a = fuse_2d(haadf, noisy, Z, iterations=20, background=bg, device="cpu")
    b = fuse_2d(1e4 * haadf, noisy, Z, iterations=20, background=bg, device="cpu")
    for e in a:
        np.testing.assert_allclose(a[e], b[e], rtol=1e-3, atol=1e-3 * float(a[e].max()))


def test_costs_are_recorded_and_settle(cubes) -> None:
    haadf, noisy, _, Z, bg = cubes
    f = Fused2D(haadf, noisy, Z, background=bg, device="cpu")
    seen = []
    f.run(60, callback=lambda k, c: seen.append(k))
    h = f.history.as_arrays()
    assert seen == list(range(60)) and f.iteration == 60
    assert all(len(v) == 60 and np.all(np.isfinite(v)) for v in h.values())
    assert h["haadf"][-1] < 0.6 * h["haadf"][0]  # the HAADF is fitted
    assert h["tv"][-1] < 0.3 * h["tv"][0]  # the noise is removed
    for k in ("haadf", "chem", "tv"):  # smooth, asymptotic: last steps change little
        v = h[k]
        assert abs(v[-1] - v[-2]) < 2e-3 * abs(v[-1])
        assert abs(v[-1] - v[-10]) < 2e-2 * abs(v[-1])


def test_beats_published_package_at_defaults(shells) -> None:
    """multimodal-fusion 0.6.0 with its README parameters on the same maps."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    F = pytest.importorskip("multimodal_fusion.fusion")
    haadf, noisy, clean, Z, bg = shells
    els = list(noisy)
    df = F.DataFusion(els, gamma=1.6)
    df.load_chemical_maps({e: noisy[e].astype(np.float32) for e in els})  # normalised in place
    df.load_haadf(haadf.astype(np.float32))
    df.run(50, lambdaEDS=0.005, lambdaTV=0.1, plot_images=False, plot_convergence=False)
    ref = df.get_results()
    ours = fuse_2d(haadf, noisy, Z, iterations=50, background=bg, device="cpu")
    assert _mean(psnr, clean, ours) > _mean(psnr, clean, ref) + 3.0


# -- interface ---------------------------------------------------------------------------------
def test_z_defaults_to_atomic_numbers_and_accepts_sequences(cubes) -> None:
    haadf, noisy, _, Z, bg = cubes
    a = fuse_2d(haadf, noisy, None, iterations=5, background=bg, device="cpu")
    b = fuse_2d(haadf, noisy, [Z[e] for e in noisy], iterations=5,
                background=[bg[e] for e in noisy], device=sp.Device(-1))
    for e in a:
        np.testing.assert_array_equal(a[e], b[e])
        assert a[e].dtype == np.float32 and a[e].shape == haadf.shape


def test_tv_prox_lowers_its_objective() -> None:
    rng = np.random.default_rng(1)
    b = np.clip(rng.normal(5, 2, (2, 20, 30)), 0, None).astype(np.float32)
    w = np.array([0.5, 2.0], np.float32)[:, None, None]
    x = _TVProx2D(b.shape, sp.cpu_device)(b, w, 50)

    def obj(v):
        return 0.5 * np.sum((v - b) ** 2, axis=(1, 2)) + w.ravel() * tv_value_2d(v)

    assert x.min() >= 0
    assert np.all(obj(x) < obj(b))
    for _ in range(5):  # no nearby point does better
        y = np.clip(x + rng.normal(0, 0.05, x.shape).astype(np.float32), 0, None)
        assert np.all(obj(x) <= obj(y) + 1e-3)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"gamma": 0.5}, "gamma"),
    ({"lambda_haadf": 1.2}, "lambda_haadf"),
    ({"lambda_chem": -0.1}, "lambda_chem"),
    ({"lambda_tv": -1.0}, "lambda_tv"),
    ({"eps": 0.0}, "eps"),
    ({"tv_iterations": -1}, "tv_iterations"),
    ({"amount_exponent": 0.5}, "amount_exponent"),
])
def test_params_validation(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Fusion2DParams(**kwargs)


def test_bad_inputs_name_the_value(cubes) -> None:
    haadf, noisy, _, Z, _ = cubes
    with pytest.raises(ValueError, match=r"map Co: shape \(40, 39\)"):
        Fused2D(haadf, {**noisy, "Co": noisy["Co"][:, :-1]}, Z, device="cpu")
    with pytest.raises(ValueError, match="map O: negative"):
        Fused2D(haadf, {**noisy, "O": noisy["O"] - 1e3}, Z, device="cpu")
    with pytest.raises(ValueError, match="2D"):
        Fused2D(haadf[None], noisy, Z, device="cpu")
    with pytest.raises(KeyError, match="Au"):
        Fused2D(haadf, noisy, {"Co": 27, "Cu": 29, "O": 8}, device="cpu")
    with pytest.raises(ValueError, match="3 values for 4"):
        Fused2D(haadf, noisy, [27, 29, 8], device="cpu")
    with pytest.raises(ValueError, match="background"):
        Fused2D(haadf, noisy, Z, background=[1.0, -1.0, 0.0, 0.0], device="cpu")
    with pytest.raises(ValueError, match="iterations"):
        Fused2D(haadf, noisy, Z, device="cpu").run(-2)


@requires_gpu
@pytest.mark.gpu
def test_gpu_matches_cpu(cubes) -> None:
    haadf, noisy, _, Z, bg = cubes
    cpu = fuse_2d(haadf, noisy, Z, iterations=20, background=bg, device="cpu")
    gpu = fuse_2d(haadf, noisy, Z, iterations=20, background=bg, device="gpu")
    for e in cpu:
        np.testing.assert_allclose(gpu[e], cpu[e], rtol=1e-3, atol=1e-3 * float(cpu[e].max()))
