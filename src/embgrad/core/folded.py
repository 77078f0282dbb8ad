"""Batches folded into a lookup's leading axis (ELMo's characters: ids (B·T, C)).

Such a lookup is seen through an unfolded view, ids (B, k, ...) and output (B, k, ..., D), batch
axis 0; the views made in one call are remembered by identity (:func:`is_folded`)."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

from ..errors import BatchAxisError, InputError
from .arguments import FOLDED
from .contract import Capture


def foldable(c: Capture, batch: int) -> bool:
    """Whether ``c``'s ids can hold a batch of ``batch`` folded into their leading axis."""
    shape = c.out_shape[:-1]
    return c.rows is None and len(shape) >= 1 and shape[0] > batch and shape[0] % batch == 0


def unfold(c: Capture, batch: int, *, declared: bool) -> Capture:
    """``c`` seen with its leading axis (B·k) split into (B, k): ids, output and the shape of
    its gradient. InputError when a declared fold does not fit the ids."""
    shape = c.out_shape[:-1]
    if not foldable(c, batch):
        raise InputError(
            f"batch_axis={{{c.name!r}: {FOLDED!r}}}: lookup {c.name!r} has ids of shape {shape}; "
            f"a folded batch needs a leading axis that is a multiple of the batch size {batch} "
            f"(B·k rows, k > 1)"
            + (" and a plain lookup (not an embedding bag)" if c.rows is not None else "")
        )
    k = shape[0] // batch
    out_shape = (batch, k, *c.out_shape[1:])
    how = "declared" if declared else "found by the probe"
    note = (
        f"ids {shape} hold the batch folded into their leading axis ({how}): rows b·{k} … "
        f"(b+1)·{k}−1 are sample b's; ids, output and output_grad are reported as {out_shape[:-1]}"
        f" / {out_shape}"
    )
    site = dataclasses.replace(c.site, note="; ".join(filter(None, [c.site.note, note])))
    view = dataclasses.replace(
        c,
        site=site,
        ids=c.ids.reshape(out_shape[:-1]),
        out_shape=out_shape,
        output=c.output.reshape(out_shape) if c.output is not None else None,
    )
    _FOLDED.add(view)
    return view


#: The unfolded views made by :func:`unfold` (by identity; they live for one call).
_FOLDED: weakref.WeakSet[Capture] = weakref.WeakSet()


def is_folded(c: Capture) -> bool:
    """Whether ``c`` is an unfolded view made by :func:`unfold`."""
    return c in _FOLDED


def shaped(caps: list[Capture], grads: list[Any]) -> list[Any]:
    """The backend's gradients in the shape of the captures (folded lookups unfolded)."""
    return [
        g if g is None or tuple(g.shape) == c.out_shape else g.reshape(c.out_shape)
        for c, g in zip(caps, grads, strict=True)
    ]


def refuse_unprobed_fold(caps: list[Capture], folded: list[bool], check: str) -> None:
    """A batch folded into a leading axis is only a guess until the probe confirms it."""
    names = [c.name for c, f in zip(caps, folded, strict=True) if f]
    raise BatchAxisError(
        f"no lookup's ids has an axis of the batch size; the ids of {', '.join(map(repr, names))} "
        "have a leading axis that is a multiple of it, as when the batch is folded in (B·k rows, "
        f"k consecutive rows per sample), but check={check!r} runs no probe to confirm that. "
        f"Declare it with batch_axis={{{names[0]!r}: {FOLDED!r}}}, or use check='auto'/'probe'."
    )


def rank(c: Capture) -> int:
    """The rank of the lookup's output as the model made it (a folded view has one more)."""
    return len(c.out_shape) - (1 if is_folded(c) else 0)
