"""The results of one call: each lookup's :class:`LookupGrad`, with its sparse table rows built lazily."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .contract import Capture, Forward, Session
from .results import Gradients, LookupGrad
from .sparse import SparseRows, build_rows


def rows_fast(session: Session, c: Capture, grad: Any, axis: int | None, batch: int) -> SparseRows:
    """Lookup ``c``'s sparse table rows from the one backward's output gradient: per sample
    along ``axis``, or one batch-sum row set without a batch axis."""
    ops = session.ops
    if c.rows is not None:
        out_index, ids, vals = c.rows(grad)
        sample = out_index if axis is not None else ops.full_int(int(ids.shape[0]), 0, ids)
    else:
        ids = ops.as_int64(ops.work(c.ids))
        shape = tuple(ids.shape)
        if axis is None:
            sample = ops.full_int(int(np.prod(shape)), 0, ids)
        else:
            sample = ops.reshape(ops.batch_index(shape, axis, ids), (-1,))
        ids = ops.reshape(ids, (-1,))
        vals = ops.reshape(ops.work(grad), (-1, c.dim))
    return build_rows(
        ops,
        [(sample, ids, vals)],
        (batch if axis is not None else 1, c.vocab_size, c.dim),
        padding_idx=c.padding_idx,
        per_sample=axis is not None,
    )


def _note(c: Capture, axis: int | None) -> str:
    notes = [c.site.note] if c.site.note else []
    if axis is None:
        notes.append("ids have no batch axis: output_grad and table gradient are batch sums")
    return "; ".join(notes)


def lookup_result(
    c: Capture, grad: Any, axis: int | None, rows: Callable[[], SparseRows]
) -> LookupGrad:
    """The result for capture ``c``: its output gradient and how to build its table rows."""
    return LookupGrad(
        c.site,
        output_grad=grad,
        ids=c.ids,
        batch_axis=axis,
        note=_note(c, axis),
        rows=rows,
        output=c.output,
        weight=c.weight,
    )


def wrap(
    session: Session,
    fwd: Forward,
    lookups: list[LookupGrad],
    input_grads: dict[str | int, Any],
    how: str,
    residual: float | None,
    mode: str,
    unreached: dict[str, str],
) -> Gradients:
    """The call's :class:`Gradients`; lookups the backend could not split are reported beside
    the unreached ones."""
    return Gradients(
        losses=fwd.losses,
        lookups=lookups,
        input_grads=input_grads,
        check=how,
        probe_residual=residual,
        mode=mode,
        framework=session.framework,
        unreached={**unreached, **fwd.unsplit},
    )
