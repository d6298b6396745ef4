"""Accuracy figures used by tests, benches and the demo summary (science.md §5)."""

from __future__ import annotations

import numpy as np


def nrmse(truth: np.ndarray, recon: np.ndarray) -> float:
    """NRMSE of the 3D paper: both standardised to zero mean and unit std, then
    sqrt(sum (y - x)^2 / sum y^2)."""
    y = np.asarray(truth, dtype=np.float64).ravel()
    x = np.asarray(recon, dtype=np.float64).ravel()
    if y.shape != x.shape:
        raise ValueError(f"truth shape {np.shape(truth)} != reconstruction {np.shape(recon)}")
    y = (y - y.mean()) / (y.std() or 1.0)
    sx = x.std()
    x = (x - x.mean()) / (sx if sx > 0 else 1.0)
    return float(np.sqrt(np.sum((y - x) ** 2) / np.sum(y**2)))


def nrmse_per_element(
    truth: dict[str, np.ndarray], recon: dict[str, np.ndarray]
) -> dict[str, float]:
    missing = sorted(set(truth) - set(recon))
    if missing:
        raise KeyError(f"reconstruction lacks elements {missing}")
    return {el: nrmse(truth[el], recon[el]) for el in truth}


def psnr(truth: np.ndarray, recon: np.ndarray) -> float:
    """Peak SNR in dB of `recon` against `truth`, both scaled to the truth's range by a
    least-squares gain so that a global intensity scale does not count as error."""
    y = np.asarray(truth, dtype=np.float64).ravel()
    x = np.asarray(recon, dtype=np.float64).ravel()
    a = np.vstack([x, np.ones_like(x)]).T
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    mse = float(np.mean((a @ coef - y) ** 2))
    peak = float(y.max() - y.min()) or 1.0
    return float(10 * np.log10(peak**2 / max(mse, 1e-30)))
