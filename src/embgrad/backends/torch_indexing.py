"""The lookups written as indexing: ``table[ids]``, ``table[ids, r]``, ``table[i, j]``,
``torch.index_select(table, 0, ids)`` and ``torch.take(table, ids)`` on a 2-D parameter of the
model, recorded as captures (row lookups, or element lookups on the table's ``numel x 1`` view).
Negative ids wrap as in Python indexing. Other integer-tensor indexing of a table runs as written
with an :class:`UnsupportedLookupWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeGuard

import torch

from ..errors import InputError
from .torch_record import T_EMB_ARGS, Recorder, bind, join_notes
from .torch_tables import check_dtype, check_index_ids


class IndexLookups(Recorder):
    """The handlers of indexing ops on a table (the interception's table in ``torch_capture``)."""

    def _table(self, x: Any) -> bool:
        """Whether ``x`` is a 2-D parameter of the model (a table indexing can look up)."""
        return id(x) in self.names.param_ids and x.dim() == 2

    def _getitem(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``table[ids]``, ``table[ids, r]`` (r a slice, an int or ``...``): a row lookup;
        ``table[i, j]`` (two id tensors): an element lookup. Other integer-tensor indexing of a
        table is run as written, with a warning that embgrad saw it and did not split it."""
        weight, index = args[0], args[1]
        if id(weight) not in self.names.names:  # the common case: not a registered tensor
            return func(*args, **kwargs)
        if not self._table(weight):
            return self._plain(func, args, kwargs)
        if _is_ids(index):
            return self._rows(weight, index, "Tensor.__getitem__", None)
        if type(index) is tuple and len(index) == 2 and _is_ids(index[0]):
            rest = index[1]
            if rest is Ellipsis or (isinstance(rest, slice) and rest == slice(None)):
                return self._rows(weight, index[0], "Tensor.__getitem__", None)
            if isinstance(rest, (int, slice)) and not isinstance(rest, bool):
                return self._rows(weight, index[0], "Tensor.__getitem__", (Ellipsis, rest))
            if _is_ids(rest):
                i, j = torch.broadcast_tensors(index[0], rest)
                v, d = weight.shape
                i, j = torch.where(i < 0, i + v, i), torch.where(j < 0, j + d, j)
                if bool(((i < 0) | (i >= v) | (j < 0) | (j >= d)).any()):  # (a rare form)
                    return self._plain(func, args, kwargs)  # PyTorch's own IndexError
                flat = i * d + j
                return self._elements(weight, flat, "Tensor.__getitem__")
        parts = index if type(index) is tuple else (index,)
        if any(isinstance(p, torch.Tensor) and not p.dtype.is_floating_point for p in parts):
            self._unsplit(weight, "Tensor.__getitem__", "an index of this form")
        return self._plain(func, args, kwargs)

    def _index_select(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = bind(("input", "dim", "index"), args, kwargs)
        weight, dim, ids = a.get("input"), a.get("dim"), a.get("index")
        if not isinstance(weight, torch.Tensor) or not self._table(weight):
            return self._plain(func, args, kwargs)
        if dim in (0, -2) and _is_ids(ids) and ids.dim() == 1 and "out" not in a:
            return self._rows(weight, ids, "torch.index_select", None, wrap=False)
        self._unsplit(weight, "torch.index_select", f"dim={dim}")
        return self._plain(func, args, kwargs)

    def _take(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = bind(("input", "index"), args, kwargs)
        weight, ids = a.get("input"), a.get("index")
        if not isinstance(weight, torch.Tensor) or not self._table(weight) or not _is_ids(ids):
            return self._plain(func, args, kwargs)
        if "out" in a:
            self._unsplit(weight, "torch.take", "out=")
            return self._plain(func, args, kwargs)
        return self._elements(weight, ids, "torch.take")

    def _plain(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run an intercepted op that is not a lookup as any other op (its table uses noted)."""
        out = func(*args, **kwargs)
        self._used(func, args, kwargs, out)
        return out

    def _unsplit(self, weight: torch.Tensor, kind: str, what: str) -> None:
        info = self.names.describe(weight, kind)
        warnings.warn(
            f"embgrad: {kind} on table {info['table']} with integer-tensor ids ({what}) is a "
            "lookup embgrad does not split into per-sample gradients; it runs as written and is "
            "not in the result. Write it as F.embedding(ids, table) or table[ids] to include it.",
            UnsupportedLookupWarning,
            stacklevel=3,
        )

    def _rows(
        self, weight: torch.Tensor, ids: torch.Tensor, kind: str, post: Any, *, wrap: bool = True
    ) -> Any:
        """``weight[ids]`` (then ``[post]``) as a captured row lookup; ``wrap``: negative ids
        count from the end (indexing; ``index_select`` refuses them)."""
        info = self._site(weight, kind)
        if not wrap:
            where = (T_EMB_ARGS, "indices")
            check_dtype(info["name"], ids)
            out, rows = self._call(
                info["name"], ids, weight, {}, torch.embedding, (weight, ids), {}, where
            )
        else:
            out, rows = self._wrapped(info["name"], ids, weight)
        new = self._record(out, weight, info, ids=rows, padding_idx=None)
        return new if post is None else new[post]

    def _elements(self, weight: torch.Tensor, flat: torch.Tensor, kind: str) -> Any:
        """``weight.flatten()[flat]`` as a captured lookup on the (numel, 1) view of the table."""
        info = self._site(weight, kind)
        n = weight.numel()
        column = weight.reshape(n, 1)
        out, ids = self._wrapped(info["name"], flat, column)
        info["note"] = join_notes(
            info["note"],
            f"element lookup: table {info['table']} is read element-wise as its {n} x 1 "
            "flattening (row k is element k of the flattened table)",
        )
        new = self._record(out, column, info, ids=ids, padding_idx=None, table=weight)
        return new[..., 0]

    def _wrapped(
        self, site: str, ids: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``torch.embedding(table, ids)`` with Python's indexing rule: negative ids wrap (made
        non-negative first, a device op, no read); ids outside ``[-V, V)`` are refused by their
        value as written. Returns the output and the (non-negative) rows."""
        check_dtype(site, ids)
        vocab = int(table.shape[0])
        rows = torch.where(ids < 0, ids + vocab, ids)
        where = (T_EMB_ARGS, "indices")
        n = len(self.deferred)
        try:
            out, rows = self._call(site, rows, table, {}, torch.embedding, (table, rows), {}, where)
        except InputError:
            check_index_ids(site, ids, vocab)
            raise
        if len(self.deferred) > n:  # the check is deferred: it must name the ids as written
            self._wraps[n] = ids.detach().clone()
        return out, rows


class UnsupportedLookupWarning(UserWarning):
    """A lookup embgrad saw (integer-tensor indexing of a table) but cannot split per sample."""


def _is_ids(x: Any) -> TypeGuard[torch.Tensor]:
    """An integer (not bool) tensor: indexing a table with it is a lookup."""
    return isinstance(x, torch.Tensor) and x.dtype in (torch.int64, torch.int32)
