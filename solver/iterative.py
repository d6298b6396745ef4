"""Single updates of the classic iterative reconstructions, shared by the fused solver's
initialisation and the conventional baselines. Each takes the current estimate and returns
the next; arrays may carry leading (element) axes and live on CPU or GPU."""

from __future__ import annotations

from typing import Any

from fusetomo.solver.projector import ParallelProjector

_TINY = 1e-12


def sirt_weights(projector: ParallelProjector) -> tuple[Any, Any]:
    """(1 / row sums, 1 / column sums), zero where a ray or pixel sees nothing."""
    xp = projector.device.xp
    with projector.device:
        r = projector.row_sums()
        c = projector.col_sums()
        r_inv = xp.where(r > _TINY, 1.0 / xp.maximum(r, _TINY), 0).astype(xp.float32)
        c_inv = xp.where(c > _TINY, 1.0 / xp.maximum(c, _TINY), 0).astype(xp.float32)
    return r_inv, c_inv


def sirt_step(
    projector: ParallelProjector,
    x: Any,
    b: Any,
    weights: tuple[Any, Any],
    *,
    relaxation: float = 1.0,
    nonnegative: bool = True,
) -> Any:
    """x + relaxation * C^-1 A^T R^-1 (b - A x), clipped at 0 when asked."""
    xp = projector.device.xp
    r_inv, c_inv = weights
    resid = (b - projector.forward(x)) * r_inv
    x = x + relaxation * c_inv * projector.adjoint(resid)
    return xp.maximum(x, 0) if nonnegative else x


def mlem_step(
    projector: ParallelProjector,
    x: Any,
    b: Any,
    c_inv: Any,
    *,
    background: Any = 0.0,
    relaxation: float = 1.0,
    eps: float = 1e-6,
) -> Any:
    """Relaxed Poisson ML-EM: x + relaxation * x C^-1 A^T (b / (A x + bg) - 1)."""
    xp = projector.device.xp
    ratio = b / (projector.forward(x) + background + eps)
    em = x * c_inv * projector.adjoint(ratio)
    if relaxation == 1.0:
        return em
    return xp.maximum(x + relaxation * (em - x), 0)
