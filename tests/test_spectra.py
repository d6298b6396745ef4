"""Element maps from synthetic spectrum images with known edge and line strengths.

Tolerances:
- Noiseless EELS with edges of finite extent (each pre-edge window sees only the power-law
  background): the power-law fit is exact, so maps match to 1e-6 relative (float32 output).
- Noiseless EELS with hydrogenic edges (sawtooth decaying as E^-3, so a lower edge's tail
  reaches into the next pre-edge): the fit absorbs most of the tail; maps stay within 3% of
  the truth and correlate > 0.999 with it.
- Poisson noise: the map's error divided by its standard deviation predicted from the
  counts (signal window + the extrapolated background, propagated through the log-log fit)
  must look like N(0, 1): mean within 4 standard errors of 0, std within 0.85..1.2.
- Low counts (zeros in the pre-edge): the fixed-exponent fallback is linear in the counts,
  so the map's mean over 4096 pixels is within 3% of the true mean.
- EDX on a linear background: the side-window line fit is exact, so maps match the
  Gaussian's window sum to 1e-5 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusetomo.adapters.spectra import (
    DEFAULT_EDX_LINES,
    DEFAULT_EELS_EDGES,
    EdgeWindow,
    EdxWindow,
    SpectrumError,
    edx_maps,
    eels_maps,
)

ev = np.arange(200.0, 1200.0, 1.0)  # eV, 1 eV channels
ELEMENTS = ["C", "O", "Co"]


def _strengths(shape: tuple[int, ...], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {e: rng.uniform(0.2, 1.0, shape) for e in ELEMENTS}


def _background(shape, rng, scale=1e9):
    A = rng.uniform(0.5, 2.0, shape)[..., None] * scale
    r = rng.uniform(2.5, 3.5, shape)[..., None]
    return A * ev ** -r


def _edge_shape(onset: float, *, extent: float | None) -> np.ndarray:
    """Edge profile per eV: a step at the onset decaying as (E/onset)^-3 (hydrogenic
    sawtooth), cut off `extent` eV above the onset when given."""
    s = np.where(ev >= onset, (ev / onset) ** -3.0, 0.0)
    if extent is not None:
        s[ev > onset + extent] = 0.0
    return s


def _synthetic(shape, rng, *, extent, edge_counts=2e4, bg_scale=1e9):
    c = _strengths(shape, rng)
    si = _background(shape, rng, bg_scale)
    truth = {}
    for e in ELEMENTS:
        w = DEFAULT_EELS_EDGES[e]
        onset = w.signal_ev[0]
        prof = _edge_shape(onset, extent=extent) * edge_counts
        si = si + c[e][..., None] * prof
        sig = (ev >= w.signal_ev[0]) & (ev <= w.signal_ev[1])
        truth[e] = c[e] * prof[sig].sum()
    return si, truth


def test_noiseless_isolated_edges_are_recovered_exactly():
    rng = np.random.default_rng(0)
    si, truth = _synthetic((7, 5), rng, extent=80.0)
    maps = eels_maps(si, ev, ELEMENTS, min_fit_counts=0)  # every pixel its own fit
    for e in ELEMENTS:
        assert maps[e].shape == (7, 5) and maps[e].dtype == np.float32
        np.testing.assert_allclose(maps[e], truth[e], rtol=1e-6)


def test_hydrogenic_edges_with_overlapping_tails_stay_close():
    rng = np.random.default_rng(1)
    si, truth = _synthetic((16, 16), rng, extent=None)
    maps = eels_maps(si, ev, ELEMENTS)
    for e in ELEMENTS:
        rel = np.abs(maps[e] - truth[e]) / truth[e]
        assert rel.max() < 0.03, (e, rel.max())
        assert np.corrcoef(maps[e].ravel(), truth[e].ravel())[0, 1] > 0.999


def _predicted_var(clean: np.ndarray, w: EdgeWindow) -> np.ndarray:
    """Variance of the map from counting noise: the signal window's Poisson variance plus the
    extrapolated background's, propagated from var(log n_j) = 1/n_j through the closed-form
    log-log least squares (delta method; accurate for pre-edge counts >> 1)."""
    pre = (ev >= w.pre_edge_ev[0]) & (ev <= w.pre_edge_ev[1])
    sig = (ev >= w.signal_ev[0]) & (ev <= w.signal_ev[1])
    X = np.stack([np.ones(pre.sum()), -np.log(ev[pre])], axis=1)
    M = np.linalg.solve(X.T @ X, X.T)  # beta = (log A, r) = M log n
    n = clean[..., pre]
    cov = np.einsum("ij,...j,kj->...ik", M, 1.0 / n, M)
    beta = np.einsum("ij,...j->...i", M, np.log(n))
    b = np.exp(beta[..., :1] - beta[..., 1:] * np.log(ev[sig]))  # background per channel
    g = np.stack([b.sum(-1), -(b * np.log(ev[sig])).sum(-1)], axis=-1)
    return clean[..., sig].sum(-1) + np.einsum("...i,...ik,...k->...", g, cov, g)


def test_poisson_noise_error_matches_counting_statistics():
    rng = np.random.default_rng(2)
    shape = (48, 48)
    c = _strengths(shape, rng)
    # r = 3 everywhere and >= 300 counts per pre-edge channel, so every pixel gets its own
    # fit and the bias of log(Poisson count), -1/(2n), stays below 0.05 standard deviations
    clean = rng.uniform(0.5, 2.0, shape)[..., None] * (300 * 774.0**3) * ev**-3.0
    truth = {}
    for e in ELEMENTS:
        w = DEFAULT_EELS_EDGES[e]
        prof = _edge_shape(w.signal_ev[0], extent=80.0) * 1000.0
        clean = clean + c[e][..., None] * prof
        truth[e] = c[e] * prof[(ev >= w.signal_ev[0]) & (ev <= w.signal_ev[1])].sum()
    noisy = rng.poisson(clean).astype(np.float32)
    maps = eels_maps(noisy, ev, ELEMENTS)
    for e in ELEMENTS:
        var = _predicted_var(clean, DEFAULT_EELS_EDGES[e])
        err = maps[e].astype(np.float64) - truth[e]
        z = err / np.sqrt(var)  # should be ~ N(0, 1)
        assert abs(z.mean()) < 4 / np.sqrt(z.size), (e, z.mean())
        assert 0.85 < z.std() < 1.2, (e, z.std())


def test_low_counts_fall_back_to_the_summed_exponent_without_bias():
    rng = np.random.default_rng(3)
    shape = (64, 64)
    # a 1/E background of ~1-2 counts per channel: nearly every pixel has zeros in its
    # pre-edge windows; edges of 50-260 counts sit far enough above 0 that clipping at 0
    # does not bias the maps' mean
    c = _strengths(shape, rng)
    clean = rng.uniform(0.5, 1.5, shape)[..., None] * 500.0 / ev
    truth = {}
    for e in ELEMENTS:
        w = DEFAULT_EELS_EDGES[e]
        prof = _edge_shape(w.signal_ev[0], extent=80.0) * 10.0
        clean = clean + c[e][..., None] * prof
        truth[e] = c[e] * prof[(ev >= w.signal_ev[0]) & (ev <= w.signal_ev[1])].sum()
    noisy = rng.poisson(clean)
    maps = eels_maps(noisy, ev, ELEMENTS)
    for e in ELEMENTS:
        pre = DEFAULT_EELS_EDGES[e].pre_edge_ev
        sel = (ev >= pre[0]) & (ev <= pre[1])
        assert np.mean(np.any(noisy[..., sel] == 0, axis=-1)) > 0.5, e
        assert np.mean(maps[e] == 0) < 0.01, e
        assert maps[e].mean() == pytest.approx(truth[e].mean(), rel=0.03), e
        assert np.corrcoef(maps[e].ravel(), truth[e].ravel())[0, 1] > 0.9, e


def test_decreasing_and_non_uniform_axes_give_the_same_maps():
    rng = np.random.default_rng(4)
    si, truth = _synthetic((3, 4), rng, extent=80.0)
    a = eels_maps(si, ev, ELEMENTS)
    b = eels_maps(si[..., ::-1], ev[::-1], ELEMENTS)
    for e in ELEMENTS:
        np.testing.assert_allclose(a[e], b[e], rtol=1e-6)
    # a 1-D spectrum (no pixel axes) gives 0-d maps
    one = eels_maps(si[0, 0], ev, ["O"])
    assert one["O"].shape == () and one["O"] == pytest.approx(truth["O"][0, 0], rel=1e-6)


def test_custom_windows_override_defaults():
    rng = np.random.default_rng(5)
    si, _ = _synthetic((2, 2), rng, extent=80.0)
    w = EdgeWindow("O", "K", (490.0, 525.0), (532.0, 552.0))
    got = eels_maps(si, ev, ["O"], {"O": w})["O"]
    default = eels_maps(si, ev, ["O"])["O"]
    ratio = got / default  # window 20 eV of the 43 eV default, same edge shape
    prof = _edge_shape(532.0, extent=80.0)
    expect = prof[(ev >= 532) & (ev <= 552)].sum() / prof[(ev >= 532) & (ev <= 575)].sum()
    np.testing.assert_allclose(ratio, expect, rtol=1e-5)


def test_edx_line_windows_on_a_linear_background():
    rng = np.random.default_rng(6)
    Ek = np.arange(0.1, 12.0, 0.01)  # keV, 10 eV channels
    els = ["O", "Co", "Cu", "Au"]
    shape = (6, 5)
    amp = {e: rng.uniform(10, 100, shape) for e in els}
    bg = (rng.uniform(5, 10, shape)[..., None] - rng.uniform(0.1, 0.4, shape)[..., None] * Ek)
    si = np.clip(bg, 0, None).copy()
    assert np.all(bg > 0)
    truth = {}
    for e in els:
        w = DEFAULT_EDX_LINES[e]
        centre = 0.5 * (w.window_kev[0] + w.window_kev[1])
        sigma = (w.window_kev[1] - w.window_kev[0]) / 6  # side windows >= 8 sigma away
        g = np.exp(-0.5 * ((Ek - centre) / sigma) ** 2)
        si = si + amp[e][..., None] * g
        # what lands in the window (the Gaussian's far tails in the side windows are < 1e-6)
        sel = (Ek >= w.window_kev[0]) & (Ek <= w.window_kev[1])
        truth[e] = amp[e] * g[sel].sum()
    maps = edx_maps(si, Ek, els)
    for e in els:
        np.testing.assert_allclose(maps[e], truth[e], rtol=1e-5)
    # without side windows: the raw window sum
    w = DEFAULT_EDX_LINES["Co"]
    raw = edx_maps(si, Ek, ["Co"], {"Co": EdxWindow("Co", "Ka", w.window_kev)})["Co"]
    sel = (Ek >= w.window_kev[0]) & (Ek <= w.window_kev[1])
    np.testing.assert_allclose(raw, si[..., sel].sum(axis=-1), rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda si: eels_maps(si, ev, ["Xx"]), "'Xx'"),
        (lambda si: eels_maps(si, ev, ["Au"]), "(2025.0, 2201.0)"),  # outside 200..1199 eV
        (lambda si: eels_maps(si, ev[:-1], ["O"]), "(999,)"),
        (lambda si: eels_maps(si, np.r_[ev[:500], ev[499:-1]], ["O"]), "not strictly monotonic"),
        (lambda si: eels_maps(np.where(si > 1e3, np.nan, si), ev, ["O"]), "NaN"),
        (lambda si: eels_maps(si, ev, "O"), "'O'"),
        (lambda si: eels_maps(si, ev, ["O", "O"]), "duplicate"),
        (lambda si: eels_maps(si, np.where(ev == 300, np.inf, ev), ["O"]), "channel 100"),
        (lambda si: edx_maps(si, ev / 1000, ["Cu"]), "Cu Ka line window"),
    ],
)
def test_bad_input_raises_spectrum_error_naming_the_value(call, needle):
    rng = np.random.default_rng(7)
    si, _ = _synthetic((2, 3), rng, extent=80.0)
    with pytest.raises(SpectrumError, match=None) as info:
        call(si)
    assert needle in str(info.value), str(info.value)


def test_bad_windows_are_refused():
    with pytest.raises(SpectrumError, match="above 0"):
        EdgeWindow("C", "K", (-10.0, 279.0), (284.0, 314.0))
    with pytest.raises(SpectrumError, match="end at or below"):
        EdgeWindow("C", "K", (249.0, 290.0), (284.0, 314.0))
    with pytest.raises(SpectrumError, match="overlaps"):
        EdxWindow("Cu", "Ka", (7.9, 8.1), ((8.0, 8.3),))
    with pytest.raises(SpectrumError, match="low < high"):
        EdxWindow("Cu", "Ka", (8.1, 7.9))


def test_defaults_cover_common_edges_and_lines():
    for e in ("C", "N", "O", "Fe", "Co", "Ni", "Cu", "S", "Ti", "Mn", "Ce", "Au"):
        w = DEFAULT_EELS_EDGES[e]
        assert w.element == e and w.pre_edge_ev[1] < w.signal_ev[0]
        assert e in DEFAULT_EDX_LINES and DEFAULT_EDX_LINES[e].element == e
    # the L2,3 and M4,5 edges are what an EELS user expects for these
    assert DEFAULT_EELS_EDGES["Fe"].edge == "L2,3" and DEFAULT_EELS_EDGES["Au"].edge == "M4,5"


def test_maps_are_not_clipped_and_the_subtracted_level_is_recorded():
    """Pixels without the element scatter around 0 after the power-law subtraction: the
    negative values stay (clipping would bias the mean upwards), and the mean integrated
    background under each signal window is returned."""
    from fusetomo.adapters.spectra import eels_maps_with_background

    rng = np.random.default_rng(11)
    shape = (40, 40)
    bg = 2e6 * ev ** -2.0  # counts per 1-eV channel, no edge anywhere
    noisy = rng.poisson(np.broadcast_to(bg, (*shape, ev.size))).astype(np.float32)
    maps, level = eels_maps_with_background(noisy, ev, ["O"])
    m = maps["O"]
    assert (m < 0).mean() > 0.3  # about half the pixels, as noise around 0 should be
    assert abs(float(m.mean())) < 4 * float(m.std()) / np.sqrt(m.size)
    w = DEFAULT_EELS_EDGES["O"]
    sig = (ev >= w.signal_ev[0]) & (ev <= w.signal_ev[1])
    assert level["O"] == pytest.approx(float(bg[sig].sum()), rel=0.02)


def test_edx_maps_keep_negative_values_and_report_the_side_window_background():
    from fusetomo.adapters.spectra import edx_maps_with_background

    rng = np.random.default_rng(12)
    Ek = np.arange(0.0, 12.0, 0.01)
    flat = np.full((30, 30, Ek.size), 3.0)
    maps, level = edx_maps_with_background(rng.poisson(flat).astype(np.float32), Ek, ["Cu"])
    assert (maps["Cu"] < 0).any()
    w = DEFAULT_EDX_LINES["Cu"]
    n = int(((Ek >= w.window_kev[0]) & (Ek <= w.window_kev[1])).sum())
    assert level["Cu"] == pytest.approx(3.0 * n, rel=0.05)


def test_lines_and_edges_come_from_the_element_database_for_z_3_to_92():
    from fusetomo.adapters import elementdb
    from fusetomo.adapters.spectra import edx_window, eels_window
    from fusetomo.core.elements import ATOMIC_NUMBER

    symbols = elementdb.elements_with_data()
    assert [ATOMIC_NUMBER[s] for s in symbols] == list(range(3, 93))
    for s in symbols:
        assert s in DEFAULT_EELS_EDGES
    # every element but Li (no X-ray line in the database) has a default EDX line
    assert [s for s in symbols if s not in DEFAULT_EDX_LINES] == ["Li"]
    # Nb, missing from the old hand-typed table: L-alpha by default, K-alpha on request
    nb = DEFAULT_EDX_LINES["Nb"]
    assert nb.line == "La" and nb.window_kev[0] < 2.166 < nb.window_kev[1]
    ka = edx_window("Nb", "Ka")
    assert ka.window_kev[0] < 16.615 < ka.window_kev[1]
    assert eels_window("Nb", "L2,3").signal_ev[0] == pytest.approx(2371.0)
    with pytest.raises(SpectrumError, match=r"Nb has no X-ray line 'Kq'.*La"):
        edx_window("Nb", "Kq")


def test_a_window_outside_the_energy_range_names_element_line_and_range():
    Ek = np.arange(0.0, 10.0, 0.01)
    si = np.ones((2, 2, Ek.size), dtype=np.float32)
    from fusetomo.adapters.spectra import edx_window

    with pytest.raises(SpectrumError, match=r"Nb Ka line window .* lies outside the energy "
                                            r"axis \[0, 9\.99\] keV"):
        edx_maps(si, Ek, ["Nb"], {"Nb": edx_window("Nb", "Ka")})
    with pytest.raises(SpectrumError, match=r"Au M4,5 pre-edge window \(2025.0, 2201.0\) eV "
                                            r"lies outside"):
        eels_maps(np.ones((2, 2, ev.size)), ev, ["Au"])
