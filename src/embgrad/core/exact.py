"""``check="exact"``: the exact per-sample loop, one backward of L_i alone per sample (each
re-run forward re-seeded identically), correct even when samples interact."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .arguments import LayerSpec
from .assemble import lookup_result, wrap
from .batch_axes import broadcast_to_sums
from .contract import Capture, Forward, Session
from .folded import shaped
from .probe import candidate_axes
from .reach import reached, take
from .rerun import Run
from .results import Gradients
from .sparse import SparseRows, build_rows


def exact(
    run: Run,
    fwd: Forward,
    select: list[int],
    caps: list[Capture],
    axes: list[list[int]],
    batch: int,
    mode: str,
    want_inputs: bool,
    layers: LayerSpec | Sequence[LayerSpec],
) -> Gradients:
    """The exact per-sample loop: backward of L_i alone for each i (re-seeded forwards)."""
    session, ops = run.session, run.session.ops
    caps, axes, per_i, inputs_i, unreached = _loop(
        run, fwd, select, caps, axes, batch, want_inputs, layers
    )
    resolved = [_diagonal_axis(ops, cand, [g[k] for g in per_i]) for k, cand in enumerate(axes)]
    resolved = broadcast_to_sums(caps, resolved)
    lookups = []
    for k, (c, axis) in enumerate(zip(caps, resolved, strict=True)):
        gs = [g[k] for g in per_i]
        rows = _exact_rows(session, c, gs, axis, batch)
        lookups.append(lookup_result(c, _diagonal(session, gs, axis), axis, rows))
    input_grads = {
        key: _stack_inputs(session, [d[key] for d in inputs_i], batch) for key in inputs_i[0]
    }
    return wrap(session, fwd, lookups, input_grads, "exact", None, mode, unreached)


def _loop(
    run: Run,
    fwd: Forward,
    select: list[int],
    caps: list[Capture],
    axes: list[list[int]],
    batch: int,
    want_inputs: bool,
    layers: LayerSpec | Sequence[LayerSpec],
) -> tuple[
    list[Capture], list[list[int]], list[list[Any]], list[dict[str | int, Any]], dict[str, str]
]:
    """One backward per sample i (cotangent e_i): the reached captures and their candidate
    axes, each sample's lookup gradients and input gradients, and the unreached lookups."""
    session = run.session
    per_i: list[list[Any]] = []
    inputs_i: list[dict[str | int, Any]] = []
    current = fwd
    unreached: dict[str, str] = {}
    for i in range(batch):
        e = np.zeros(batch)
        e[i] = 1.0
        last = i == batch - 1
        grads, in_grads = session.backward(
            current,
            e,
            select,
            inputs=want_inputs and bool(fwd.float_inputs),
            retain=session.retained_backward_is_exact and not last,
        )
        grads = shaped(caps, grads)
        if i == 0:  # what the graph reaches is the same for every sample's backward
            kept, unreached = reached(caps, grads, layers)
            select, caps, axes = take(select, kept), take(caps, kept), take(axes, kept)
            grads = take(grads, kept)
        per_i.append(grads)
        inputs_i.append(in_grads)
        if not last:
            current = run.again(current)
    return caps, axes, per_i, inputs_i, unreached


def _diagonal_axis(ops: Any, cand: list[int], gs: list[Any]) -> int | None:
    """Among candidate axes, the one where sample i's gradient lives in slice i."""
    if len(cand) <= 1:
        return cand[0] if cand else None
    arrays = [ops.to_numpy(ops.work(g)).astype(np.float64) for g in gs]

    def mass(a: int) -> float:
        return sum(float(np.sum(np.take(g, i, axis=a) ** 2)) for i, g in enumerate(arrays))

    return max(cand, key=mass)


def _exact_rows(
    session: Session, c: Capture, gs: list[Any], axis: int | None, batch: int
) -> Callable[[], SparseRows]:
    def build() -> SparseRows:
        ops = session.ops
        chunks = []
        for i, g in enumerate(gs):
            if c.rows is not None:
                _, ids, vals = c.rows(g)
            else:
                ids = ops.reshape(ops.as_int64(ops.work(c.ids)), (-1,))
                vals = ops.reshape(ops.work(g), (-1, c.dim))
            keep = ops.nonzero_rows(vals)
            ids, vals = ops.mask(ids, keep), ops.mask(vals, keep)
            chunks.append(
                (ops.full_int(int(ids.shape[0]), i if axis is not None else 0, ids), ids, vals)
            )
        return build_rows(
            ops,
            chunks,
            (batch if axis is not None else 1, c.vocab_size, c.dim),
            padding_idx=c.padding_idx,
            per_sample=axis is not None,
        )

    return build


def _stack_inputs(session: Session, gs: list[Any], batch: int) -> Any:
    """Per-sample input gradients from the loop: slice i of gradient i along the batch axis."""
    ops = session.ops
    cand = candidate_axes(tuple(ops.work(gs[0]).shape), batch)
    return _diagonal(session, gs, _diagonal_axis(ops, cand, gs))


def _diagonal(session: Session, gs: list[Any], axis: int | None) -> Any:
    """From the loop's gradients g_i (one per sample): slice i of g_i along ``axis``, stacked
    (native); without a batch axis, the batch sum Σ_i g_i."""
    if axis is None:
        total = gs[0]
        for g in gs[1:]:
            total = total + g
        return total
    ops = session.ops
    stacked = ops.stack([ops.take(ops.work(g), i, axis) for i, g in enumerate(gs)], axis)
    return session.to_native(stacked, gs[0])
