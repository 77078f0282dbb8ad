"""The lookups made by the embedding functions: ``F.embedding``, ``torch.embedding``,
``F.embedding_bag`` and ``torch.embedding_bag`` (``nn.Embedding`` / ``nn.EmbeddingBag`` call the
``F`` functions), each run with its ids checked and recorded as a capture; a bag's per-sample
rows come from ``torch_bags``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from .torch_bags import bag_rows
from .torch_record import T_EMB_ARGS, Recorder, bind, join_notes
from .torch_tables import norm_pad

_BAG_MODES = ("sum", "mean", "max")


class FunctionalLookups(Recorder):
    """The handlers of the embedding functions (the interception's table in ``torch_capture``)."""

    # -- F.embedding / torch.embedding ---------------------------------------------------------
    def _f_embedding(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = bind(_EMB_ARGS, args, kwargs)
        ids: Any = a.get("input")
        weight = a.get("weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return func(*args, **kwargs)  # malformed: PyTorch's own error
        pad = norm_pad(a.get("padding_idx"), weight.shape[0], negative_is_none=False)
        where = (_EMB_ARGS, "input")
        return self._embedding(func, args, kwargs, ids, weight, pad, "F.embedding", a, where)

    def _t_embedding(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = bind(T_EMB_ARGS, args, kwargs)
        ids: Any = a.get("indices")
        weight = a.get("weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return func(*args, **kwargs)
        pad = norm_pad(a.get("padding_idx", -1), weight.shape[0], negative_is_none=True)
        where = (T_EMB_ARGS, "indices")
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
        info["note"] = join_notes(info["note"], _option_note(opts))
        return self._record(out, weight, info, ids=ids, padding_idx=pad)

    # -- F.embedding_bag / torch.embedding_bag -------------------------------------------------
    def _f_bag(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = bind(_BAG_ARGS, args, kwargs)
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
        info["note"] = join_notes(info["note"], _option_note(a))
        return self._record(out, weight, info, ids=ids, padding_idx=pad, rows=rows)

    def _t_bag(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        a = bind(_T_BAG_ARGS, args, kwargs)
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
        info["note"] = join_notes(info["note"], _option_note(a))
        new = self._record(out, weight, info, ids=ids, padding_idx=pad, rows=rows)
        return (new, *rest)


#: parameter names, in order, of the intercepted functions (torch 2.x signatures)
_EMB_ARGS = tuple(inspect.signature(F.embedding).parameters)
_BAG_ARGS = tuple(inspect.signature(F.embedding_bag).parameters)
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


def _option_note(opts: dict[str, Any]) -> str:
    notes = []
    if opts.get("scale_grad_by_freq"):
        notes.append(
            "scale_grad_by_freq is not applied: table rows are the plain per-sample gradients"
        )
    if opts.get("max_norm") is not None:
        notes.append("max_norm renormalises the table in place during the forward (PyTorch)")
    return "; ".join(notes)
