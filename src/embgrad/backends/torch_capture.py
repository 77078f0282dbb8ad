"""Discovery of every embedding lookup a torch forward performs, with no edits to the model.

A :class:`LookupRecorder` (a ``TorchFunctionMode``, active only while the model runs) sees every
call of ``F.embedding``, ``F.embedding_bag``, ``torch.embedding`` and ``torch.embedding_bag``,
whatever module or nesting makes it (``nn.Embedding`` / ``nn.EmbeddingBag`` call the ``F``
functions).  For each call it validates the ids *before* the real lookup, runs the lookup, and
records a :class:`Capture` whose ``handle`` is the lookup output (a fresh leaf when the table is
frozen or ``replace`` substituted it).  The model receives a clone of it, so in-place edits of
the output inside the model cannot change what is differentiated.

The mode costs a Python call for every torch function of the forward (≈ 210 for MiniLM), so the
fast path (:class:`ModuleHooks`) records the same captures from hooks on the stock lookup modules,
and :func:`unrecorded_lookup` audits the graph for any lookup the hooks did not see.
"""

from __future__ import annotations

import inspect
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..core.site import CallSite
from ..errors import InputError
from .base import Capture, Replace
from .torch_bags import bag_rows
from .torch_tables import TableNames, check_ids, norm_pad

_EMB_SIG = inspect.signature(F.embedding)
_BAG_SIG = inspect.signature(F.embedding_bag)
_BAG_MODES = ("sum", "mean", "max")


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


class LookupRecorder(TorchFunctionMode):
    """Records every embedding lookup made while active (one :class:`Capture` per call)."""

    def __init__(self, names: TableNames, replace: Replace | None = None) -> None:
        super().__init__()
        self.names = names
        self.replace = replace
        self.captures: list[Capture] = []
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
        edits inside the model leave the target as looked up.
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
                ids=ids,
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
        a = _EMB_SIG.bind(*args, **kwargs).arguments
        ids, weight = a["input"], a["weight"]
        pad = norm_pad(a.get("padding_idx"), weight.shape[0], negative_is_none=False)
        return self._embedding(func, args, kwargs, ids, weight, pad, "F.embedding", a)

    def _t_embedding(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        weight = _arg(args, kwargs, 0, "weight", None)
        ids = _arg(args, kwargs, 1, "indices", None)
        pad_arg = _arg(args, kwargs, 2, "padding_idx", -1)
        pad = norm_pad(pad_arg, weight.shape[0], negative_is_none=True)
        extra = {"scale_grad_by_freq": _arg(args, kwargs, 3, "scale_grad_by_freq", False)}
        return self._embedding(func, args, kwargs, ids, weight, pad, "torch.embedding", extra)

    def _embedding(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ids: torch.Tensor,
        weight: torch.Tensor,
        pad: int | None,
        kind: str,
        opts: dict[str, Any],
    ) -> Any:
        info = self._site(weight, kind)
        check_ids(info["name"], ids, weight.shape[0])
        out = func(*args, **kwargs)
        info["note"] = _join(info["note"], _option_note(opts))
        return self._record(out, weight, info, ids=ids, padding_idx=pad)

    # -- F.embedding_bag / torch.embedding_bag -------------------------------------------------
    def _f_bag(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = _BAG_SIG.bind(*args, **kwargs).arguments
        info = self._bag_site(a)
        if info is None:
            return func(*args, **kwargs)  # malformed: PyTorch's own error
        return self._bag_record(a, func(*args, **kwargs), info)

    def _bag_site(self, a: dict[str, Any]) -> dict[str, Any] | None:
        """The site of an embedding_bag call with arguments ``a`` (ids checked), or None when
        the call is malformed (PyTorch raises its own error)."""
        ids, weight, offsets = a["input"], a["weight"], a.get("offsets")
        if not isinstance(ids, torch.Tensor) or getattr(ids, "is_nested", False):
            raise InputError("embedding_bag with nested-tensor or non-tensor ids is not supported")
        if ids.dim() not in (1, 2) or (ids.dim() == 2) == (offsets is not None):
            return None
        info = self._site(weight, "F.embedding_bag")
        check_ids(info["name"], ids, weight.shape[0])
        return info

    def _bag_record(self, a: dict[str, Any], out: torch.Tensor, info: dict[str, Any]) -> Any:
        ids, weight, offsets = a["input"], a["weight"], a.get("offsets")
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
        weight = _arg(args, kwargs, 0, "weight", None)
        ids = _arg(args, kwargs, 1, "indices", None)
        offsets = _arg(args, kwargs, 2, "offsets", None)
        mode = _BAG_MODES[int(_arg(args, kwargs, 4, "mode", 0))]
        weights = _arg(args, kwargs, 6, "per_sample_weights", None)
        last = bool(_arg(args, kwargs, 7, "include_last_offset", False))
        pad = norm_pad(
            _arg(args, kwargs, 8, "padding_idx", None), weight.shape[0], negative_is_none=False
        )
        info = self._site(weight, "torch.embedding_bag")
        check_ids(info["name"], ids, weight.shape[0])
        out, *rest = func(*args, **kwargs)
        rows = bag_rows(
            ids.reshape(-1),
            offsets,
            mode=mode,
            include_last=last,
            padding_idx=pad,
            weights=weights,
            argmax=rest[2] if mode == "max" else None,
            vocab=weight.shape[0],
        )
        opts = {"scale_grad_by_freq": _arg(args, kwargs, 3, "scale_grad_by_freq", False)}
        info["note"] = _join(info["note"], _option_note(opts))
        new = self._record(out, weight, info, ids=ids, padding_idx=pad, rows=rows)
        return (new, *rest)


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


# -- the fast path: hooks on the model's stock lookup modules ------------------------------------
#: autograd node types of F.embedding / F.embedding_bag outputs (what the audit looks for)
_LOOKUP_NODES = ("EmbeddingBackward", "EmbeddingBagBackward")


def stock_modules(names: TableNames) -> list[torch.nn.Module] | None:
    """The model's ``nn.Embedding`` / ``nn.EmbeddingBag`` modules with PyTorch's own forward, or
    None when hooks on them might not see every lookup the audit cannot see either.

    The fast path hooks these modules instead of intercepting every torch call; a lookup made
    any other way (``F.embedding`` on a parameter, a subclass's own forward) on a table that
    requires grad leaves an ``Embedding*Backward`` node in the graph, which
    :func:`unrecorded_lookup` finds.  One on a frozen 2-D floating tensor leaves no node, so a
    model holding such a tensor outside a stock module is not eligible (the mode path is used).
    """
    stock: list[torch.nn.Module] = []
    owned: set[int] = set()
    frozen: list[torch.Tensor] = []
    for m in names.submodules:
        forward = type(m).forward
        if forward is torch.nn.Embedding.forward or forward is torch.nn.EmbeddingBag.forward:
            stock.append(m)
            owned.add(id(m.weight))
        for members in (m._parameters, m._buffers):
            for t in members.values():
                if t is not None and t.ndim == 2 and t.is_floating_point() and not t.requires_grad:
                    frozen.append(t)
    if any(id(t) not in owned for t in frozen):
        return None
    return stock


class ModuleHooks:
    """Forward pre-hooks and hooks on ``modules`` (stock lookups) that record into ``recorder``,
    for the calling thread only; every hook is removed on exit, errors included."""

    def __init__(self, recorder: LookupRecorder, modules: list[torch.nn.Module]) -> None:
        self.recorder = recorder
        self.modules = modules
        self.thread = threading.get_ident()
        self._pending: dict[int, list[tuple[dict[str, Any] | None, dict[str, Any]]]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> ModuleHooks:
        try:
            for m in self.modules:
                self._handles.append(
                    m.register_forward_pre_hook(self._pre, prepend=True, with_kwargs=True)
                )
                self._handles.append(
                    m.register_forward_hook(self._post, prepend=True, with_kwargs=True)
                )
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if threading.get_ident() != self.thread:
            return
        rec = self.recorder
        ids = _arg(args, kwargs, 0, "input", None)
        if isinstance(m, torch.nn.EmbeddingBag):
            a = {
                "input": ids,
                "weight": m.weight,
                "offsets": _arg(args, kwargs, 1, "offsets", None),
                "per_sample_weights": _arg(args, kwargs, 2, "per_sample_weights", None),
                "mode": m.mode,
                "include_last_offset": m.include_last_offset,
                "padding_idx": m.padding_idx,
                "max_norm": m.max_norm,
                "scale_grad_by_freq": m.scale_grad_by_freq,
            }
            info = rec._bag_site(a)
        else:
            a = {"input": ids, "max_norm": m.max_norm, "scale_grad_by_freq": m.scale_grad_by_freq}
            info = rec._site(m.weight, "F.embedding")
            check_ids(info["name"], ids, m.weight.shape[0])
        self._pending.setdefault(id(m), []).append((info, a))

    def _post(self, m: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        if threading.get_ident() != self.thread:
            return None
        info, a = self._pending[id(m)].pop()
        if info is None:
            return None
        rec = self.recorder
        if isinstance(m, torch.nn.EmbeddingBag):
            return rec._bag_record(a, out, info)
        pad = norm_pad(m.padding_idx, m.weight.shape[0], negative_is_none=False)
        info["note"] = _join(info["note"], _option_note(a))
        return rec._record(out, m.weight, info, ids=a["input"], padding_idx=pad)


def unrecorded_lookup(outputs: Any, captures: list[Capture]) -> bool:
    """Whether the autograd graph of ``outputs`` holds a lookup that is not in ``captures``
    (a lookup the hooks did not see: the forward is then rerun with the interception mode)."""
    known = {c.handle.grad_fn for c in captures if c.handle.grad_fn is not None}
    stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node in seen or node in known:
            continue
        seen.add(node)
        if type(node).__name__.startswith(_LOOKUP_NODES):
            return True
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return False


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    return []
