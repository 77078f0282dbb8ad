"""Discovery of every embedding lookup a torch forward performs, with no edits to the model.

A :class:`LookupRecorder` (a ``TorchFunctionMode``, active only while the model runs) sees every
call of ``F.embedding``, ``F.embedding_bag``, ``torch.embedding`` and ``torch.embedding_bag``,
whatever module or nesting makes it (``nn.Embedding`` / ``nn.EmbeddingBag`` call the ``F``
functions).  For each call it validates the ids (without a read from the device per lookup:
see :meth:`~.torch_record.Recorder._call`), runs the lookup, and records a :class:`Capture` whose
``handle`` is the lookup output (a fresh leaf when the table is frozen or ``replace``
substituted it).  The model receives a clone of it, so in-place edits of
the output inside the model cannot change what is differentiated.

This module is the mode itself: the table from intercepted function to handler, and the tables
found tied after the forward (:meth:`LookupRecorder.finish`). The handlers live by kind of
lookup: the embedding functions in ``torch_functional``, lookups written as indexing in
``torch_indexing``; the record they write to (captures, id checks, other uses of tables) in
``torch_record``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..core.contract import Replace
from .torch_functional import FunctionalLookups
from .torch_indexing import IndexLookups, UnsupportedLookupWarning
from .torch_record import join_notes
from .torch_tables import TableNames

__all__ = ["LookupRecorder", "UnsupportedLookupWarning"]


class LookupRecorder(FunctionalLookups, IndexLookups):
    """Records every embedding lookup made while active (one :class:`Capture` per call)."""

    def __init__(self, names: TableNames, replace: Replace | None = None) -> None:
        super().__init__(names, replace)
        self._handlers: dict[Any, Callable[..., Any]] = {
            F.embedding: self._f_embedding,
            torch.embedding: self._t_embedding,
            F.embedding_bag: self._f_bag,
            torch.embedding_bag: self._t_bag,
            torch.Tensor.__getitem__: self._getitem,
            torch.index_select: self._index_select,
            torch.Tensor.index_select: self._index_select,
            torch.take: self._take,
            torch.Tensor.take: self._take,
        }

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        handler = self._handlers.get(func)
        if handler is not None:
            return handler(func, args, kwargs)
        out = func(*args, **kwargs)
        known = self._known
        for a in args:
            if id(a) in known:
                self._use(a, func, out)
        if func in _SEQ_OPS:  # tensors passed in a list (torch.cat([emb.weight, extra]))
            for a in args:
                if type(a) is list or type(a) is tuple:
                    for x in a:
                        if id(x) in known:
                            self._use(x, func, out)
        if kwargs:
            for a in kwargs.values():
                if id(a) in known:
                    self._use(a, func, out)
        return out

    def finish(self) -> None:
        """After the forward: mark each lookup whose table fed an op other than a lookup in
        this forward as ``tied`` (an output projection, ``F.linear(h, emb.weight)``), with a
        note naming the op."""
        if not self.used:
            return
        for c, table in zip(self.captures, self._tables, strict=True):
            func = self.used.get(table)
            if func is None:
                continue
            op = _op_name(func)
            note = (
                f"tied: table {c.site.table} also feeds {op} in this forward (e.g. an output "
                "projection); this lookup's table gradient covers the lookup's path only "
                "(Gradients.table_grad sums all captured lookups of the table), not the "
                "table's other uses, so it differs from weight.grad"
            )
            c.site = dataclasses.replace(c.site, tied=True, note=join_notes(c.site.note, note))


def _op_name(func: Any) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    if name.startswith(("_TensorBase.", "TensorBase.")):
        name = "Tensor." + name.split(".", 1)[1]
    elif module in ("torch.nn.functional", "torch._C._nn"):
        name = "F." + name
    elif name.startswith("_VariableFunctionsClass."):
        name = "torch." + name.split(".", 1)[1]
    elif module == "torch" and "." not in name:
        name = "torch." + name
    return name


#: ops that take tensors in a list or tuple
_SEQ_OPS = frozenset(
    {
        torch.cat,
        torch.concat,
        torch.concatenate,
        torch.stack,
        torch.hstack,
        torch.vstack,
        torch.dstack,
        torch.block_diag,
        torch.einsum,
        torch.broadcast_tensors,
    }
)
