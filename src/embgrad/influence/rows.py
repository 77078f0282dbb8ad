"""One batch at one checkpoint → its examples' per-sample table rows, as numpy.

``batch_rows`` runs :func:`embgrad.gradients` once (one forward, one backward) and returns, for
every selected table, the coalesced sparse rows (lookup path, several call sites of a table
summed), with special rows dropped and — on the training side — each example's ``top_rows``
largest-norm rows kept (jointly over the selected tables).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.capture import gradients
from ..errors import InputError, NoLookupError


@dataclass(frozen=True)
class Rows:
    """Rows of one table for some examples: ``example`` (n,) global numbers, ``row`` (n,) table
    rows (token ids), ``values`` (n, D), sorted by (example, row), each pair once."""

    example: np.ndarray
    row: np.ndarray
    values: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.row.shape[0])


#: table name → its rows, for one checkpoint
TableRows = dict[str, Rows]


def batch_rows(
    model: Any,
    batch: Any,
    loss: Callable[[Any], Any],
    *,
    first: int,
    count: int,
    layer: Any,
    skip: np.ndarray | None,
) -> tuple[TableRows, dict[str, str]]:
    """The batch's rows per table (examples numbered from ``first``) and each table's role."""
    res = gradients(model, batch, loss, layers=layer, input_grads=False)
    if res.batch_size != count:
        raise InputError(
            f"the loss returned {res.batch_size} values for a batch of {count} examples (counted "
            "along the first axis of the batch's first array): one loss per example"
        )
    out: TableRows = {}
    roles: dict[str, str] = {}
    for table, sites in res.tables.items():
        lookups = [res[s] for s in sites]
        if not all(lk.per_sample for lk in lookups):
            continue  # a lookup without batch axis (position ids (T,)) has no per-example rows
        sample, row, values = res.table_grad(table).numpy()
        role = lookups[0].role
        if skip is not None and len(skip) and role == "word":
            keep = ~np.isin(row, skip)
            sample, row, values = sample[keep], row[keep], values[keep]
        out[table] = Rows(sample.astype(np.int64) + first, row.astype(np.int64), values)
        roles[table] = role
    if not out:
        raise NoLookupError(
            f"layer={layer!r} selects no lookup with per-example rows (ids with a batch axis): "
            f"the model's lookups are {', '.join(res.layers) or 'none'}"
        )
    return out, roles


def top_rows(tables: TableRows, k: int) -> TableRows:
    """Each example's ``k`` largest-norm rows over all tables together (ties: lower table
    order, then lower row)."""
    names = list(tables)
    ex = np.concatenate([tables[t].example for t in names])
    norms = np.concatenate(
        [np.einsum("nd,nd->n", v, v, dtype=np.float64) for v in (tables[t].values for t in names)]
    )
    which = np.concatenate([np.full(tables[t].nnz, i) for i, t in enumerate(names)])
    pos = np.concatenate([np.arange(tables[t].nnz) for t in names])
    order = np.lexsort((pos, which, -norms, ex))
    ex_sorted = ex[order]
    start = np.searchsorted(ex_sorted, ex_sorted, side="left")
    rank = np.arange(len(order)) - start
    chosen = order[rank < k]
    out: TableRows = {}
    for i, t in enumerate(names):
        keep = np.sort(pos[chosen[which[chosen] == i]])
        r = tables[t]
        out[t] = Rows(r.example[keep], r.row[keep], r.values[keep])
    return out


def squared_norms(tables: TableRows, first: int, count: int) -> np.ndarray:
    """(count,) float64: Σ over tables of each example's squared row norms."""
    out = np.zeros(count, dtype=np.float64)
    for r in tables.values():
        sq = np.einsum("nd,nd->n", r.values, r.values, dtype=np.float64)
        out += np.bincount(r.example - first, weights=sq, minlength=count)
    return out


def special_ids(skip_special: Any, tokenizer: Any) -> np.ndarray | None:
    """The rows ``skip_special`` leaves out: None, the tokenizer's special ids, or the ids."""
    if skip_special is None or skip_special is False:
        return None
    if skip_special is True:
        ids = getattr(tokenizer, "all_special_ids", None)
        if ids is None:
            raise InputError(
                "skip_special=True needs tokenizer= (a tokenizer with all_special_ids); or "
                "pass the ids to leave out as a list, e.g. skip_special=[101, 102]"
            )
        return np.unique(np.asarray(list(ids), dtype=np.int64))
    if isinstance(skip_special, (str, bytes)) or not isinstance(
        skip_special, Sequence | np.ndarray
    ):
        raise InputError(
            f"skip_special must be None, True or a list of token ids, got {skip_special!r}"
        )
    arr = np.asarray(list(skip_special))
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"skip_special must list integer token ids, got {skip_special!r}")
    return np.unique(arr.astype(np.int64))
