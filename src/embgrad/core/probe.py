"""Cross-sample coupling probe and batch-axis resolution.

With per-sample losses L (B,), one backward of Σ L_i gives G = Σ_i dL_i/d out. When samples do
not interact, dL_i/d out is zero outside sample i's slice of the batch axis, so G's slice i *is*
sample i's gradient.  The probe takes one more backward of Σ v_i L_i and checks, slice by slice,
G_v[i] == v_i G[i].  The weights v are signed powers of two: scaling a cotangent by 2^k is exact
in floating point, so for independent samples the residual is 0 up to rounding of the probe's
own arithmetic, in any dtype; coupled samples (BatchNorm in training mode, a loss that mixes
samples) leave a residual of order 1.  Magnitudes cycle with period 5 over consecutive samples,
so neighbours never share a weight.
"""

from __future__ import annotations

import numpy as np

#: Relative residual below which the probe says "independent".
TOLERANCE = {8: 1e-9, 4: 1e-5, 2: 1e-2}


def probe_weights(batch: int, rng: np.random.Generator) -> np.ndarray:
    """Signed powers of two, float64 (B,), neighbours differing in magnitude."""
    exps = (np.arange(batch) + rng.integers(5)) % 5 - 2
    signs = rng.choice([-1.0, 1.0], size=batch)
    return signs * np.exp2(exps)


def residual(g: np.ndarray, gv: np.ndarray, v: np.ndarray, axis: int) -> float:
    """Relative residual ||G_v - v ⊙ G|| / ||G_v|| with v broadcast along ``axis``."""
    b = g.shape[axis]
    g2 = np.moveaxis(g, axis, 0).reshape(b, -1).astype(np.float64)
    gv2 = np.moveaxis(gv, axis, 0).reshape(b, -1).astype(np.float64)
    scale = max(np.linalg.norm(gv2), np.linalg.norm(v[:, None] * g2))
    if scale == 0.0:
        return 0.0
    return float(np.linalg.norm(gv2 - v[:, None] * g2) / scale)


def tolerance(itemsize: int) -> float:
    return TOLERANCE.get(itemsize, 1e-5)


def candidate_axes(shape: tuple[int, ...], batch: int) -> list[int]:
    """Axes of ``shape`` whose size equals the batch size."""
    return [a for a, n in enumerate(shape) if n == batch]
