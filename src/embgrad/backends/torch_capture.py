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

import inspect
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..core.site import CallSite
from ..errors import InputError
from .base import Capture, Replace
from .torch_bags import bag_rows
from .torch_tables import TableNames, check_dtype, check_ids, norm_pad

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
        }

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        handler = self._handlers.get(func)
        if handler is None:
            return func(*args, **kwargs)
        return handler(func, args, kwargs)

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
        for (site, ids, vocab, _), flag in zip(self.deferred, flags, strict=True):
            if flag:
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
