"""An independent projector for simulating series: rotate the volume, then sum along rays.

The robustness bench simulates its series with this projector on a finer grid than the
reconstruction, so that the solver's own projector (sparse linear-interpolation weights,
solver/projector.py) never meets data it made itself. Rotation is scipy.ndimage.rotate
(linear interpolation) in the slice plane (u, v); the sum runs along v after turning the
volume by the tilt angle, which keeps fusetomo's convention P_t[s, d] = sum along the ray
with d = u cos t + v sin t (checked against ParallelProjector in tests/test_robustness_bench.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def project(volumes: np.ndarray, angles_deg: Sequence[float]) -> np.ndarray:
    """Projections [..., n_tilts, n_slices, n] of volumes [..., n_slices, n, n]."""
    v = np.asarray(volumes, dtype=np.float32)
    lead = v.shape[:-3]
    flat = v.reshape(-1, *v.shape[-3:])
    out = np.empty((flat.shape[0], len(angles_deg), v.shape[-3], v.shape[-1]), np.float32)
    for i, vol in enumerate(flat):
        for j, a in enumerate(angles_deg):
            # Turning the (u, v) plane by -a brings the ray direction (-sin a, cos a) onto v.
            rot = ndimage.rotate(vol, -float(a), axes=(1, 2), reshape=False, order=1,
                                 mode="constant", cval=0.0, prefilter=False)
            out[i, j] = rot.sum(axis=2)
    return out.reshape(*lead, len(angles_deg), v.shape[-3], v.shape[-1])
