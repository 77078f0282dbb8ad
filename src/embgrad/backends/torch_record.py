"""The record every torch lookup handler writes to: captures, id checks, other uses of tables.

:class:`Recorder` is the base of the interception (:class:`~.torch_capture.LookupRecorder`,
whose handlers come from ``torch_embedding`` and ``torch_indexing``). It keeps one forward's
record:

* the captures: each lookup named (:meth:`Recorder._site`, ``#k`` for a second call) and
  recorded (:meth:`Recorder._record`), its output substituted by ``replace`` when asked;
* the id checks: :meth:`Recorder._call` runs a lookup with its ids checked without a read from
  the device per lookup, :meth:`Recorder.verify` runs the deferred checks at once;
* the registered tensors that fed an op other than a lookup (:meth:`Recorder._use`), from which
  :meth:`~.torch_capture.LookupRecorder.finish` marks lookups ``tied``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..core.contract import Capture, Replace
from ..core.site import CallSite
from ..errors import InputError
from .torch_tables import TableNames, check_dtype, check_ids, check_index_ids


class Recorder(TorchFunctionMode):
    """One forward's record of lookups: captures, deferred id checks, other uses of tables."""

    def __init__(self, names: TableNames, replace: Replace | None = None) -> None:
        super().__init__()
        self.names = names
        self.replace = replace
        self.captures: list[Capture] = []
        #: (site, ids, vocab, any id outside the table) of lookups whose check is deferred
        self.deferred: list[tuple[str, torch.Tensor, int, torch.Tensor]] = []
        self._calls: Counter[str] = Counter()
        #: registered tensors (by id) that fed an op other than a lookup: the op, first seen
        self.used: dict[int, Any] = {}
        self._known = names.names  # every registered tensor, by id
        self._tables: list[int] = []  # id of each capture's table tensor (as registered)
        #: ids as written of deferred checks (by index) of lookups written as indexing
        self._wraps: dict[int, torch.Tensor] = {}

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

#: parameter names, in order, of ``torch.embedding`` (torch 2.x signature); lookups written as
#: indexing run as ``torch.embedding`` calls (``torch_indexing``)
T_EMB_ARGS = ("weight", "indices", "padding_idx", "scale_grad_by_freq", "sparse")


def bind(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
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


def join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)
