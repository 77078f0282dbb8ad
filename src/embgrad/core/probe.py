"""The probe: cross-sample coupling and batch-axis resolution, in one more backward.

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

from typing import Any

import numpy as np

from ..errors import BatchAxisError, CouplingError
from .contract import Capture, Forward
from .folded import rank, shaped
from .rerun import Run

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


def run_probe(
    run: Run,
    fwd: Forward,
    select: list[int],
    caps: list[Capture],
    axes: list[list[int]],
    grads: list[Any],
    rng: np.random.Generator,
    batch: int,
    folded: list[bool],
) -> tuple[list[int | None], float]:
    """One more backward, of Σ v_i L_i, checked slice by slice against ``grads`` (of Σ L_i).

    Returns each lookup's batch axis (the candidate with the smallest residual; None for a
    lookup without candidates or with broadcast ids) and the largest residual that passed.
    Raises BatchAxisError for a folded batch the probe does not confirm, CouplingError where
    samples interact."""
    session = run.session
    v = probe_weights(batch, rng)
    gv, _ = session.backward(run.again(fwd), v, select, inputs=False, retain=False)
    gv = shaped(caps, gv)
    resolved: list[int | None] = []
    failed: list[tuple[Capture, float, float]] = []
    worst = 0.0
    for c, cand, g, g_v in zip(caps, axes, grads, gv, strict=True):
        best, score, tol = _best_axis(session.ops, cand, g, g_v, v)
        if best is not None and score > tol:
            failed.append((c, score, tol))
            best = None
        elif best is not None:
            worst = max(worst, score)
        resolved.append(best)
    for c, score, tol in failed:
        if folded[caps.index(c)]:
            raise _fold_refuted(c, score, tol, batch)
        if not _broadcast_ids(c, caps, resolved):
            raise _coupled(c, score, tol)
    return resolved, worst


def _best_axis(
    ops: Any, cand: list[int], g: Any, g_v: Any, v: np.ndarray
) -> tuple[int | None, float, float]:
    """(the candidate axis with the smallest residual, that residual, the tolerance of the
    gradient's dtype); (None, 0, tol) without candidates."""
    if not cand:
        return None, 0.0, 0.0
    g_np = ops.to_numpy(ops.work(g))
    gv_np = ops.to_numpy(ops.work(g_v))
    # The native dtype's width: bfloat16 reaches numpy as float32 but rounds like a half.
    tol = tolerance(ops.itemsize(ops.work(g)))
    scores = {a: residual(g_np, gv_np, v, a) for a in cand}
    best = min(scores, key=lambda a: scores[a])
    return best, scores[best], tol


def _fold_refuted(c: Capture, score: float, tol: float, batch: int) -> BatchAxisError:
    shape = (c.out_shape[0] * c.out_shape[1], *c.out_shape[2:-1])
    return BatchAxisError(
        f"loss_fn returned {batch} losses, but no lookup's ids has an axis of size "
        f"{batch}. Lookup {c.name!r} has ids of shape {shape}, whose leading axis "
        f"{shape[0]} = {batch}·{c.out_shape[1]} could hold the batch folded in (rows "
        f"b·{c.out_shape[1]} … (b+1)·{c.out_shape[1]}−1 for sample b, as ELMo's "
        f"character CNN does), but the probe says the gradient is not split so "
        f"(residual {score:.3g}; < {tol:g} when it is). The rows may be interleaved "
        f"(row t·{batch} + b), the samples may interact (check='exact' gives the exact "
        "per-sample loop), or the losses may not match the samples (one loss per "
        f"sample, shape (B,)). batch_axis={{{c.name!r}: None}} gives batch sums."
    )


def _coupled(c: Capture, score: float, tol: float) -> CouplingError:
    return CouplingError(
        f"samples interact in lookup {c.name!r}: one backward of the summed losses does "
        f"not give per-sample gradients (probe residual {score:.3g}; independent "
        f"samples give < {tol:g}). Usual causes: BatchNorm or other batch statistics in "
        "training mode (use mode='eval'), or a loss_fn that mixes samples. Use "
        "check='exact' for the exact per-sample loop (B backwards)"
        + (
            f", or batch_axis={{{c.name!r}: None}} if these ids have no batch axis"
            if len(c.out_shape) == 2
            else ""
        )
        + "."
    )


def _broadcast_ids(c: Capture, caps: list[Capture], resolved: list[int | None]) -> bool:
    """Whether a lookup that failed the probe on its only size-B axes has no batch axis at all.

    Position ids of shape (T,) or (1, T) with T == B (or relative positions (T, T)) have an axis
    of the batch size that is not the batch: the probe fails on it although samples are
    independent.  When another lookup passed with a batch axis (so samples do not interact) and
    this one is a position lookup or its ids are broadcast-shaped (fewer dimensions than that
    lookup's, or a leading axis of size 1), its gradients are batch sums (``batch_axis=None``),
    which are exact.
    """
    passed = [rank(p) for p, a in zip(caps, resolved, strict=False) if a is not None]
    shape = c.out_shape[:-1]
    broadcast = rank(c) < max(passed, default=0) or (len(shape) > 1 and shape[0] == 1)
    return bool(passed) and (broadcast or c.role == "position")
