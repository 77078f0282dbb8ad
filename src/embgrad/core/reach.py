"""Reachability: lookups the losses do not reach through the autograd graph.

A backend's backward returns None for them; their zeros would be a false answer, so they are left
out (``layers="auto"``, with a note) or refused (named in ``layers=``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from ..errors import NoLookupError
from .arguments import LayerSpec
from .contract import Capture

#: What keeps the losses from reaching a lookup's output through the autograd graph.
_CUT_CAUSES = (
    "the lookup or its output is computed under torch.no_grad() / mx.autograd.pause(), "
    "detached (.detach()), or passed through stop_gradient / BlockGrad"
)


_UNREACHED = (
    "the losses do not reach its output through the autograd graph (" + _CUT_CAUSES + "), so "
    "its gradient is undefined, not zero"
)


T = TypeVar("T")


def reached(
    caps: list[Capture], grads: list[Any], layers: LayerSpec | Sequence[LayerSpec]
) -> tuple[list[int], dict[str, str]]:
    """Positions (in ``caps``) of the lookups the losses reach, and {name: why} for the others.

    A backend's backward returns None for a lookup whose output the losses do not reach through
    the autograd graph: its zeros would say "the loss does not depend on it", which is false.
    ``layers="auto"`` leaves such lookups out (a note on the result) unless none is reached;
    lookups named in ``layers=`` must be reached. A reached lookup whose gradient is zero
    (masked positions) is kept as it is.
    """
    missing = [c for c, g in zip(caps, grads, strict=True) if g is None]
    kept = [i for i, g in enumerate(grads) if g is not None]
    if not missing:
        return kept, {}
    names = ", ".join(f"{c.name!r} ({c.role})" for c in missing)
    auto = isinstance(layers, str) and layers == "auto"
    if not auto:
        raise NoLookupError(
            f"layers={layers!r} selects lookup(s) {names} whose output the losses do not reach "
            f"through the autograd graph: {_CUT_CAUSES} inside the model or loss_fn. Their "
            "gradient would be zero, which would wrongly say the loss does not depend on them. "
            "Let the gradient flow through the lookup, or leave it out of layers=."
        )
    if not kept:
        raise NoLookupError(
            f"the losses reach none of the selected lookups through the autograd graph: {names}. "
            f"Likely cause: {_CUT_CAUSES} inside the model or loss_fn (e.g. a frozen embedding "
            "stage). embgrad differentiates the losses w.r.t. the lookup outputs; let the "
            "gradient flow through at least one of them."
        )
    return kept, {c.name: _UNREACHED for c in missing}


def take(xs: list[T], keep: list[int]) -> list[T]:
    return [xs[i] for i in keep]


def spread(values: list[Any], keep: list[int], n: int) -> list[Any]:
    """``values`` (one per kept position) back at their positions among ``n``; None elsewhere."""
    out: list[Any] = [None] * n
    for i, v in zip(keep, values, strict=True):
        out[i] = v
    return out
