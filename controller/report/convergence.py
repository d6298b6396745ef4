"""The report's convergence figure and verdict: the total cost and each weighted term with
plain names, and "converged" / "not yet converged" by the solver's own stopping rule
(solver/stopping.py, StopRule with its defaults).

The terms, as the solver records them per iteration: the HAADF data term (least squares),
the chemical data term (the Poisson negative log-likelihood sum(Ax - b log Ax), which is
defined up to a data-dependent constant and is negative for counts above about e; only its
changes mean something) and the total variation of the volumes. They are weighted by the
solver's λ (lambda_haadf, lambda_chem, lambda_tv of the run or reconstruction; the defaults
when not recorded) and shown relative to their final value, so that a shifted term reads
like the others: a curve that falls to 0 has settled.

The verdict, in this order: a reconstruction's recorded `stop_reason` (what the rule said
when `fusetomo reconstruct` stopped); else the rule applied to the recorded history (the
volumes' relative change per iteration, `change`, and the two data terms) over the
iterations since the last tilt joined (a live run's final iterations), as the solver would
have applied it; a run file made before `change` was recorded gets no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fusetomo.solver.fusion import FusionParams
from fusetomo.solver.stopping import StopRule

__all__ = ["TERM_NAMES", "ConvergenceVerdict", "term_weights", "verdict"]

TERM_NAMES = {"haadf": "HAADF data term", "chem": "chemical data term (Poisson)",
              "tv": "total variation (TV)"}
_WEIGHT_KEYS = {"haadf": "lambda_haadf", "chem": "lambda_chem", "tv": "lambda_tv"}


@dataclass(frozen=True)
class ConvergenceVerdict:
    """`state`: converged | not yet converged | stopped: data terms rising | unknown."""

    state: str
    detail: str


def term_weights(params: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    """The λ of each term from recorded parameters (flat, or under "fusion"), else the
    solver's defaults; and where they came from."""
    src = params.get("fusion") if isinstance(params.get("fusion"), Mapping) else params
    d = FusionParams()
    out, recorded = {}, True
    for term, key in _WEIGHT_KEYS.items():
        v = src.get(key) if isinstance(src, Mapping) else None
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[term] = float(v)
        else:
            out[term], recorded = float(getattr(d, key)), False
    return out, "recorded" if recorded else "the solver's defaults"


def _segment(conv: Mapping[str, np.ndarray]) -> slice:
    """The iterations since the last tilt joined (all of them when no tilt counts)."""
    counts = [np.asarray(conv[k]) for k in ("n_haadf", "n_chem", "n_haadf_tilts",
                                            "n_chem_tilts") if k in conv]
    start = 0
    for c in counts:
        if c.size:
            grew = np.flatnonzero(np.diff(c) != 0)
            if grew.size:
                start = max(start, int(grew[-1]) + 1)
    return slice(start, None)


def verdict(conv: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
            rule: StopRule | None = None) -> ConvergenceVerdict:
    r = rule or StopRule()
    rule_text = (f"the rule: the volumes change by less than {100 * r.tol:g} % for "
                 f"{r.patience} iterations in a row, after at least {r.min_iterations}")
    reason = attrs.get("stop_reason")
    if isinstance(reason, str) and reason:
        if reason == "converged":
            return ConvergenceVerdict("converged", f"the solver stopped by {rule_text}")
        if reason == "data terms rising":
            return ConvergenceVerdict("stopped: data terms rising",
                                      "both data terms rose in each of the last "
                                      f"{r.patience} iterations (going on would fit worse)")
        return ConvergenceVerdict("not yet converged", f"the solver stopped at its cap of "
                                  f"{r.max_iterations} iterations before {rule_text}")
    change = np.asarray(conv.get("change", np.zeros(0)), np.float64)
    if change.size == 0 or not np.isfinite(change).any():
        return ConvergenceVerdict("unknown", "the volumes' change per iteration was not "
                                  "recorded (a run file made before it was)")
    seg = _segment(conv)
    ch = change[seg]
    h = np.asarray(conv.get("haadf", np.zeros(0)), np.float64)[seg]
    c = np.asarray(conv.get("chem", np.zeros(0)), np.float64)[seg]
    n = ch.size
    got = r.check(ch.tolist(), h.tolist(), c.tolist(), min(n, r.max_iterations - 1))
    last = f"last change {100 * ch[-1]:.2g} % after {n} iterations" if n else "no iteration"
    if got == "converged":
        return ConvergenceVerdict("converged", f"{last}; {rule_text}")
    if got == "data terms rising":
        return ConvergenceVerdict("stopped: data terms rising", f"{last}; both data terms "
                                  f"rose in each of the last {r.patience} iterations")
    return ConvergenceVerdict("not yet converged", f"{last}; {rule_text}")


def _symlog(ax: Any, y: np.ndarray) -> None:
    """A symmetric log axis spanning 4 decades below the largest |y|, with decade ticks
    (at most 4 per sign) clear of the linear band around 0."""
    top = float(np.max(np.abs(y))) or 1.0
    lt = top * 1e-4
    ax.set_yscale("symlog", linthresh=lt, linscale=1.0)
    k0, k1 = int(np.ceil(np.log10(lt * 10))), int(np.floor(np.log10(top)))
    decades = list(range(k0, k1 + 1))
    decades = decades[::-(-len(decades) // 4)] if decades else []
    ticks = [0.0]
    for sign in (1.0, -1.0):
        if np.any(sign * y > lt):
            ticks += [sign * 10.0**k for k in decades]
    ax.set_yticks(sorted(ticks))


def draw(fig: Figure, conv: Mapping[str, np.ndarray], params: Mapping[str, Any],
         chem_added: list[int]) -> ConvergenceVerdict:
    """Total and weighted terms relative to their final value, and the volumes' change."""
    it = np.asarray(conv["iteration"])
    w, src = term_weights(params)
    terms = [k for k in TERM_NAMES if k in conv]
    weighted = {k: w[k] * np.asarray(conv[k], np.float64) for k in terms}
    total = np.sum([np.nan_to_num(v) for v in weighted.values()], axis=0)
    rows = [("total cost", total), *((TERM_NAMES[k], weighted[k]) for k in terms)]
    change = np.asarray(conv.get("change", np.zeros(0)), np.float64)
    has_change = change.size == it.size and np.isfinite(change).any()
    axes = fig.subplots(len(rows) + int(has_change), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, y) in zip(axes, rows, strict=False):
        ok = np.isfinite(y)
        if ok.any():
            rel = y - y[ok][-1]
            ax.plot(it[ok], rel[ok], lw=1.0, color="k" if name == "total cost" else "C0")
            _symlog(ax, rel[ok])
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("minus final value", fontsize=8)
    if has_change:
        ax = axes[-1]
        ok = np.isfinite(change) & (change > 0)
        ax.semilogy(it[ok], 100 * change[ok], lw=1.0, color="C2")
        ax.axhline(100 * StopRule().tol, color="C3", ls="--", lw=1, label="stopping rule")
        ax.set_title("volumes' relative change per iteration", fontsize=9)
        ax.set_ylabel("change (%)", fontsize=8)
        ax.legend(fontsize=8)
    for ax in axes:
        for x in chem_added:
            ax.axvline(x, color="C3", lw=0.6, ls=":")
    axes[-1].set_xlabel("iteration" + ("  (dotted: a spectrum image joined)"
                                       if chem_added else ""))
    v = verdict(conv, params)
    weights = ", ".join(f"λ {TERM_NAMES[k].split(' (')[0]} = {w[k]:g}" for k in terms)
    fig.suptitle(f"convergence: {v.state}\n{v.detail}\nweighted terms ({weights}; "
                 f"{src}), each relative to its final value", fontsize=9)
    return v
