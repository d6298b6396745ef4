"""Stoichiometry readout (controller/report/stoichiometry.py) against a phantom of known
composition: a CoO cube and a Cu3Au cube in vacuum, per voxel and per region, with the
standard error checked against Monte Carlo, and the `fusetomo stoichiometry` command."""

from __future__ import annotations

import numpy as np
import pytest

from fusetomo.adapters.reconfile import write_recon
from fusetomo.cli import main
from fusetomo.controller.report.stoichiometry import (
    StoichiometryError,
    StoichiometryParams,
    atomic_fractions,
    fraction_std_error,
    region_table,
    regions,
)

ELEMENTS = ("Co", "O", "Cu", "Au")
COMPOSITION = {"CoO": {"Co": 0.5, "O": 0.5}, "Cu3Au": {"Cu": 0.75, "Au": 0.25}}
COUNTS_PER_ATOM = 40.0  # counts per voxel of a voxel full of atoms


def phantom(n: int = 16) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Element volumes (counts per voxel) and the two cubes' masks."""
    vols = {e: np.zeros((n, n, n)) for e in ELEMENTS}
    masks = {"CoO": np.zeros((n, n, n), bool), "Cu3Au": np.zeros((n, n, n), bool)}
    masks["CoO"][2:8, 2:8, 2:8] = True      # 216 voxels
    masks["Cu3Au"][9:14, 9:14, 9:14] = True  # 125 voxels, not touching the first
    for phase, comp in COMPOSITION.items():
        for e, x in comp.items():
            vols[e][masks[phase]] = COUNTS_PER_ATOM * x
    return vols, masks


def test_fractions_per_voxel_and_per_region_of_a_known_phantom():
    vols, masks = phantom()
    f = atomic_fractions(vols)
    for phase, comp in COMPOSITION.items():
        for e in ELEMENTS:
            np.testing.assert_allclose(f[e][masks[phase]], comp.get(e, 0.0))
    assert np.all(np.isnan(f["Co"][~(masks["CoO"] | masks["Cu3Au"])]))  # vacuum
    found = regions(vols)
    assert list(found) == ["1", "2"]  # largest first
    assert np.array_equal(found["1"], masks["CoO"]) and np.array_equal(found["2"],
                                                                       masks["Cu3Au"])
    rows = region_table(vols)
    assert [(r.region, r.voxels) for r in rows] == [("1", 216), ("2", 125)]
    for r, phase in zip(rows, COMPOSITION, strict=True):
        for e in ELEMENTS:
            assert r.fraction[e] == pytest.approx(COMPOSITION[phase].get(e, 0.0))
            assert r.spread[e] == pytest.approx(0.0, abs=1e-12)
        assert r.std_error is None
    # A sensitivity (counts per atom) divides each element out: O seen at half its counts.
    half = {**vols, "O": vols["O"] / 2}
    rows = region_table(half, masks={"CoO": masks["CoO"]},
                        params=StoichiometryParams(sensitivity={"O": 0.5}))
    assert rows[0].fraction["O"] == pytest.approx(0.5)


def test_standard_error_matches_monte_carlo():
    vols, masks = phantom()
    sigma = {e: np.where(v > 0, 0.08 * COUNTS_PER_ATOM, 0.0) for e, v in vols.items()}
    p = StoichiometryParams(support_fraction=0.0)  # the masks decide where
    rows = region_table(vols, sigma, masks=masks, params=p)
    se_voxel = fraction_std_error(vols, sigma, p)
    rng = np.random.default_rng(0)
    draws, means = [], []
    for _ in range(400):
        noisy = {e: v + rng.normal(size=v.shape) * sigma[e] for e, v in vols.items()}
        f = atomic_fractions(noisy, p)
        draws.append(f["Co"][3, 3, 3])
        means.append([np.nanmean(f[e][masks["Cu3Au"]]) for e in ("Cu", "Au")])
    # per voxel: Co in CoO, sd of 400 draws within 15 % of the propagated value
    assert np.std(draws) == pytest.approx(se_voxel["Co"][3, 3, 3], rel=0.15)
    # per region (independent voxel errors here): the mean's scatter
    mc = np.std(np.asarray(means), axis=0)
    assert mc[0] == pytest.approx(rows[1].std_error["Cu"], rel=0.15)
    assert mc[1] == pytest.approx(rows[1].std_error["Au"], rel=0.15)


def test_bad_input_is_named():
    vols, _ = phantom(8)
    with pytest.raises(StoichiometryError, match=r"\['Co'\]"):
        atomic_fractions({"Co": vols["Co"]})
    with pytest.raises(StoichiometryError, match="'Fe'"):
        atomic_fractions(vols, StoichiometryParams(sensitivity={"Fe": 1.0}))
    with pytest.raises(StoichiometryError, match="got -1"):
        StoichiometryParams(sensitivity={"Co": -1})
    with pytest.raises(StoichiometryError, match="'Cu3Au'"):
        region_table(vols, masks={"Cu3Au": np.zeros((8, 8, 8), bool)})
    with pytest.raises(StoichiometryError, match="'mask'"):
        region_table(vols, masks={"mask": np.zeros((4, 4, 4), bool)})


def test_stoichiometry_command_prints_the_table(tmp_path, capsys):
    vols, masks = phantom()
    se = {e: np.full(v.shape, 0.4, np.float32) for e, v in vols.items()}
    path = write_recon(tmp_path / "r.h5", vols, std_error=se,
                       attrs={"method": "fused", "pixel_size_nm": 0.5})
    np.save(tmp_path / "coo.npy", masks["CoO"])
    assert main(["stoichiometry", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    row1 = next(line for line in lines if line.startswith("1 "))
    assert "216" in row1 and "0.500 ±" in row1
    assert main(["stoichiometry", str(path), "--mask", f"CoO={tmp_path / 'coo.npy'}",
                 "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["regions"][0]["region"] == "CoO"
    assert doc["regions"][0]["fraction"]["Co"] == pytest.approx(0.5)
    assert main(["stoichiometry", str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5" in capsys.readouterr().err
