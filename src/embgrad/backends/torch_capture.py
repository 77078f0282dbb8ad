"""Discovery of every embedding lookup a torch forward performs, with no edits to the model.

A :class:`LookupRecorder` (a ``TorchFunctionMode``, active only while the model runs) sees every
call of ``F.embedding``, ``F.embedding_bag``, ``torch.embedding`` and ``torch.embedding_bag``,
whatever module or nesting makes it (``nn.Embedding`` / ``nn.EmbeddingBag`` call the ``F``
functions).  For each call it validates the ids (without a read from the device per lookup:
see :meth:`LookupRecorder._call`), runs the lookup, and records a :class:`Capture` whose
``handle`` is the lookup output (a fresh leaf when the table is frozen or ``replace``
substituted it).  The model receives a clone of it, so in-place edits of
the output inside the model cannot change what is differentiated.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..core.contract import Capture, Replace
from ..core.site import CallSite
from ..errors import InputError
from .torch_bags import bag_rows
from .torch_tables import TableNames, check_dtype, check_ids, check_index_ids, norm_pad

_BAG_MODES = ("sum", "mean", "max")


class LookupRecorder(TorchFunctionMode):
    """Records every embedding lookup made while active (one :class:`Capture` per call)."""

    def __init__(self, names: TableNames, replace: Replace | None = None) -> None:
        super().__init__()
        self.names = names
        self.replace = replace
        self.captures: list[Capture] = []
        #: (site, ids, vocab, any id outside the table) of lookups whose check is deferred
        self.deferred: list[tuple[str, torch.Tensor, int, torch.Tensor]] = []
        self._calls: Counter[str] = Counter()
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
        #: registered tensors (by id) that fed an op other than a lookup: the op, first seen
        self.used: dict[int, Any] = {}
        self._known = names.names  # every registered tensor, by id
        self._tables: list[int] = []  # id of each capture's table tensor (as registered)
        #: ids as written of deferred checks (by index) of lookups written as indexing
        self._wraps: dict[int, torch.Tensor] = {}

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

    def _use(self, t: Any, func: Any, out: Any) -> None:
        """Note a registered tensor passed to a non-lookup op as used otherwise when the op
        computed from its values: a tensor result, attached to the graph when the tensor
        requires grad (``.shape``, ``.detach()``, ``new_zeros`` are not uses)."""
        if id(t) in self.used or func in _NOT_USES:
            return
        res = out[0] if type(out) is tuple and out else out
        if isinstance(res, torch.Tensor) and (res.requires_grad or not t.requires_grad):
            self.used[id(t)] = func

    def _used(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """:meth:`_use` for every registered tensor among an op's arguments."""
        known = self.names.names
        for a in (*args, *kwargs.values()):
            if id(a) in known:
                self._use(a, func, out)

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
            c.site = dataclasses.replace(c.site, tied=True, note=_join(c.site.note, note))

    def verify(self) -> None:
        """The deferred id checks, in one read from the device: InputError naming the first bad
        id (looked up as 0 meanwhile, so no kernel read outside a table)."""
        if not self.deferred:
            return
        by_device: dict[torch.device, list[int]] = {}  # a model may be split over devices
        for k, (*_, bad) in enumerate(self.deferred):
            by_device.setdefault(bad.device, []).append(k)
        flags = [False] * len(self.deferred)
        for ks in by_device.values():
            read = torch.stack([self.deferred[k][3] for k in ks]).tolist()
            for k, flag in zip(ks, read, strict=True):
                flags[k] = bool(flag)
        for k, ((site, ids, vocab, _), flag) in enumerate(zip(self.deferred, flags, strict=True)):
            if flag:
                if k in self._wraps:  # indexing: negative ids wrap
                    check_index_ids(site, self._wraps[k], vocab)
                check_ids(site, ids, vocab)  # names the id and its position
                raise InputError(  # the model changed its ids in place after the lookup
                    f"lookup {site!r} got an id outside its table of {vocab} rows (valid ids "
                    f"are 0..{vocab - 1}); the model edited its ids in place afterwards, so "
                    "which one is no longer known. Check that the tokenizer / vocabulary "
                    "matches the model."
                )

    def _call(
        self,
        site: str,
        ids: Any,
        weight: torch.Tensor,
        opts: dict[str, Any],
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        where: tuple[tuple[str, ...], str],
    ) -> tuple[Any, torch.Tensor]:
        """``func(*args, **kwargs)`` with ids outside the table refused as InputError, and the
        ids to use from here on (those the lookup ran with).

        On the CPU PyTorch refuses such ids itself (before writing anything), so the ids are
        only examined when it does. On other devices a bad id would fail inside a kernel (a CUDA
        device-side assert, fatal to the process's context), and checking each lookup before it
        runs would wait for the device once per lookup: the lookup runs with bad ids replaced by
        0 and :meth:`verify` checks them all at once after the backward is queued. With
        ``max_norm``, which renormalises the table in place first, ids are checked before the call.
        ``where`` is the function's parameter names and the ids' parameter.
        """
        check_dtype(site, ids)
        vocab = int(weight.shape[0])
        if opts.get("max_norm") is not None or vocab == 0:  # (0 rows: no id to look up instead)
            check_ids(site, ids, vocab)
            return func(*args, **kwargs), ids
        if ids.device.type == "cpu" and weight.device.type == "cpu" and not _DEFER_ON_CPU:
            try:
                out = func(*args, **kwargs)
            except (IndexError, RuntimeError):
                try:
                    check_ids(site, ids, vocab)
                except InputError as refused:
                    raise refused from None  # the user's mistake, not an error in PyTorch
                raise
            if opts.get("include_last_offset") and ids.dim() == 1:
                check_ids(site, ids, vocab)  # ids after the last offset: PyTorch skips them
            return out, ids
        bad = (ids < 0) | (ids >= vocab)
        self.deferred.append((site, ids, vocab, bad.any()))
        safe = ids.masked_fill(bad, 0)
        args, kwargs = _replaced(where, args, kwargs, safe)
        return func(*args, **kwargs), safe

    # -- naming and recording ------------------------------------------------------------------
    def _site(self, weight: torch.Tensor, kind: str) -> dict[str, Any]:
        info = self.names.describe(weight, kind)
        self._calls[info["name"]] += 1
        k = self._calls[info["name"]]
        if k > 1:
            info["name"] = f"{info['name']}#{k}"
        return info

    def _record(
        self,
        out: torch.Tensor,
        weight: torch.Tensor,
        info: dict[str, Any],
        *,
        ids: torch.Tensor,
        padding_idx: int | None,
        rows: Callable[[Any], tuple[Any, Any, Any]] | None = None,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Record ``out`` as a capture; return the tensor the model should continue with.

        The differentiation target is ``out`` itself, or a fresh leaf when it does not require
        grad (frozen table) or ``replace`` substituted it; the model gets a clone, so in-place
        edits inside the model leave the target as looked up. The ids are copied: the caller
        may refill its id tensor for the next batch before asking for this one's table rows.
        """
        sub = self._substitute(out, info)
        if sub is not None:
            target = sub.detach().requires_grad_()
        else:
            target = out if out.requires_grad else out.detach().requires_grad_()
        v, d = weight.shape
        site = CallSite(vocab_size=int(v), dim=int(d), padding_idx=padding_idx, **info)
        base = weight if table is None else table
        self._tables.append(id(base if base._base is None else base._base))
        self.captures.append(
            Capture(
                site=site,
                ids=ids.detach().clone(),
                out_shape=tuple(out.shape),
                handle=target,
                rows=rows,
                output=target.detach(),
                weight=weight.detach(),
            )
        )
        return target.clone()

    def _substitute(self, out: torch.Tensor, info: dict[str, Any]) -> torch.Tensor | None:
        """``replace(name, role, output)``'s substitute for ``out`` (checked), or None."""
        if self.replace is None:
            return None
        sub = self.replace(info["name"], info["role"], out.detach())
        if sub is None:
            return None
        if not isinstance(sub, torch.Tensor) or sub.shape != out.shape or sub.dtype != out.dtype:
            got = (
                f"{tuple(sub.shape)} {sub.dtype}"
                if isinstance(sub, torch.Tensor)
                else type(sub).__name__
            )
            raise InputError(
                f"replace() for lookup {info['name']!r} returned {got}; it must return None or a "
                f"tensor of the output's shape {tuple(out.shape)} and dtype {out.dtype}"
            )
        return sub

    # -- F.embedding / torch.embedding ---------------------------------------------------------
    def _f_embedding(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = _bind(_EMB_ARGS, args, kwargs)
        ids: Any = a.get("input")
        weight = a.get("weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return func(*args, **kwargs)  # malformed: PyTorch's own error
        pad = norm_pad(a.get("padding_idx"), weight.shape[0], negative_is_none=False)
        where = (_EMB_ARGS, "input")
        return self._embedding(func, args, kwargs, ids, weight, pad, "F.embedding", a, where)

    def _t_embedding(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = _bind(_T_EMB_ARGS, args, kwargs)
        ids: Any = a.get("indices")
        weight = a.get("weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return func(*args, **kwargs)
        pad = norm_pad(a.get("padding_idx", -1), weight.shape[0], negative_is_none=True)
        where = (_T_EMB_ARGS, "indices")
        return self._embedding(func, args, kwargs, ids, weight, pad, "torch.embedding", a, where)

    def _embedding(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ids: Any,
        weight: torch.Tensor,
        pad: int | None,
        kind: str,
        opts: dict[str, Any],
        where: tuple[tuple[str, ...], str],
    ) -> Any:
        info = self._site(weight, kind)
        out, ids = self._call(info["name"], ids, weight, opts, func, args, kwargs, where)
        info["note"] = _join(info["note"], _option_note(opts))
        return self._record(out, weight, info, ids=ids, padding_idx=pad)

    # -- F.embedding_bag / torch.embedding_bag -------------------------------------------------
    def _f_bag(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = _bind(_BAG_ARGS, args, kwargs)
        ids, weight, offsets = a.get("input"), a.get("weight"), a.get("offsets")
        if not isinstance(ids, torch.Tensor) or getattr(ids, "is_nested", False):
            raise InputError("embedding_bag with nested-tensor or non-tensor ids is not supported")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return func(*args, **kwargs)
        if ids.dim() not in (1, 2) or (ids.dim() == 2) == (offsets is not None):
            return func(*args, **kwargs)  # malformed: PyTorch's own error
        info = self._site(weight, "F.embedding_bag")
        where = (_BAG_ARGS, "input")
        out, ids = self._call(info["name"], ids, weight, a, func, args, kwargs, where)
        flat = ids.reshape(-1)
        last = bool(a.get("include_last_offset", False)) and ids.dim() == 1
        starts: torch.Tensor = (
            offsets
            if offsets is not None
            else torch.arange(0, ids.numel(), ids.shape[1], device=ids.device)
        )
        mode = a.get("mode", "mean")
        pad = norm_pad(a.get("padding_idx"), weight.shape[0], negative_is_none=False)
        argmax = None
        if mode == "max":
            with torch.no_grad():
                argmax = torch.embedding_bag(
                    weight.detach(), flat, starts.to(flat.dtype), False, 2, False, None, last, pad
                )[3]
        rows = bag_rows(
            flat,
            starts,
            mode=mode,
            include_last=last,
            padding_idx=pad,
            weights=a.get("per_sample_weights"),
            argmax=argmax,
            vocab=weight.shape[0],
        )
        info["note"] = _join(info["note"], _option_note(a))
        return self._record(out, weight, info, ids=ids, padding_idx=pad, rows=rows)

    def _t_bag(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = _bind(_T_BAG_ARGS, args, kwargs)
        ids: Any = a.get("indices")
        offsets: Any = a.get("offsets")  # required by torch.embedding_bag
        weight = a.get("weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return func(*args, **kwargs)
        mode = _BAG_MODES[int(a.get("mode", 0))]
        last = bool(a.get("include_last_offset", False))
        pad = norm_pad(a.get("padding_idx"), weight.shape[0], negative_is_none=False)
        info = self._site(weight, "torch.embedding_bag")
        where = (_T_BAG_ARGS, "indices")
        (out, *rest), ids = self._call(info["name"], ids, weight, a, func, args, kwargs, where)
        rows = bag_rows(
            ids.reshape(-1),
            offsets,
            mode=mode,
            include_last=last,
            padding_idx=pad,
            weights=a.get("per_sample_weights"),
            argmax=rest[2] if mode == "max" else None,
            vocab=weight.shape[0],
        )
        info["note"] = _join(info["note"], _option_note(a))
        new = self._record(out, weight, info, ids=ids, padding_idx=pad, rows=rows)
        return (new, *rest)

    # -- lookups written as indexing -------------------------------------------------------------
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
        a = _bind(("input", "dim", "index"), args, kwargs)
        weight, dim, ids = a.get("input"), a.get("dim"), a.get("index")
        if not isinstance(weight, torch.Tensor) or not self._table(weight):
            return self._plain(func, args, kwargs)
        if dim in (0, -2) and _is_ids(ids) and ids.dim() == 1 and "out" not in a:
            return self._rows(weight, ids, "torch.index_select", None, wrap=False)
        self._unsplit(weight, "torch.index_select", f"dim={dim}")
        return self._plain(func, args, kwargs)

    def _take(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = _bind(("input", "index"), args, kwargs)
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
            where = (_T_EMB_ARGS, "indices")
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
        info["note"] = _join(
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
        where = (_T_EMB_ARGS, "indices")
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

#: ops that take a table but compute nothing from its values
_NOT_USES = frozenset(
    {
        torch.Tensor.detach,
        torch.Tensor.data.__get__,  # type: ignore[attr-defined,union-attr]
        torch.Tensor.grad.__get__,  # type: ignore[attr-defined,union-attr]
        torch.Tensor.requires_grad_,
        torch.zeros_like,
        torch.ones_like,
        torch.empty_like,
        torch.full_like,
        torch.Tensor.new_zeros,
        torch.Tensor.new_ones,
        torch.Tensor.new_empty,
        torch.Tensor.new_full,
        torch.Tensor.new_tensor,
    }
)


#: parameter names, in order, of the intercepted functions (torch 2.x signatures)
_EMB_ARGS = tuple(inspect.signature(F.embedding).parameters)
_BAG_ARGS = tuple(inspect.signature(F.embedding_bag).parameters)
_T_EMB_ARGS = ("weight", "indices", "padding_idx", "scale_grad_by_freq", "sparse")
_T_BAG_ARGS = (
    "weight",
    "indices",
    "offsets",
    "scale_grad_by_freq",
    "mode",
    "sparse",
    "per_sample_weights",
    "include_last_offset",
    "padding_idx",
)


def _bind(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """{parameter: value} of a call (what ``inspect.Signature.bind`` gives, without its cost;
    a malformed call is left to the function itself to refuse)."""
    a = dict(zip(names, args, strict=False))  # fewer arguments than parameters
    if kwargs:
        a.update(kwargs)
    return a


#: tests set this to exercise the deferred id check (the path of non-CPU devices) on the CPU
_DEFER_ON_CPU = False


def _replaced(
    where: tuple[tuple[str, ...], str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    value: Any,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with the parameter ``where[1]`` set to ``value``."""
    names, key = where
    if key in kwargs:
        return args, {**kwargs, key: value}
    i = names.index(key)
    return (*args[:i], value, *args[i + 1 :]), kwargs


def _option_note(opts: dict[str, Any]) -> str:
    notes = []
    if opts.get("scale_grad_by_freq"):
        notes.append(
            "scale_grad_by_freq is not applied: table rows are the plain per-sample gradients"
        )
    if opts.get("max_norm") is not None:
        notes.append("max_norm renormalises the table in place during the forward (PyTorch)")
    return "; ".join(notes)


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)
