"""Batch axes: each selected lookup's candidate axes, folds where no axis fits, and the checks
that the losses match the samples.

A lookup's candidates are the axes of its ids of the losses' length (or the one ``batch_axis``
gives); several are told apart by the probe (``probe.py``) or by the exact loop (``exact.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BatchAxisError, InputError, LossError
from .arguments import FOLDED, BatchAxis, axis_value
from .contract import Capture, Forward, Session
from .folded import foldable, is_folded, rank, refuse_unprobed_fold, unfold
from .probe import candidate_axes


def candidate_batch_axes(
    session: Session,
    fwd: Forward,
    select: list[int],
    batch: int,
    batch_axis: BatchAxis,
    check: str,
) -> tuple[list[Capture], list[list[int]], list[bool]]:
    """Step 4: the selected captures (folded ones as their unfolded views), each one's candidate
    batch axes and which were folded. Refuses losses that match no lookup (LossError) and a fold
    no probe will confirm (BatchAxisError)."""
    caps = [fwd.captures[i] for i in select]
    caps, axes = candidates(caps, batch, batch_axis, fwd.captures)
    caps, axes, folded = fold_when_no_batch_axis(session, fwd, caps, axes, batch, batch_axis)
    require_batch_axis(session, fwd, caps, axes, batch, batch_axis)
    if any(folded) and check in ("exact", "off"):
        refuse_unprobed_fold(caps, folded, check)
    return caps, axes, folded


def candidates(
    caps: list[Capture], batch: int, batch_axis: BatchAxis, found: list[Capture]
) -> tuple[list[Capture], list[list[int]]]:
    """The selected captures (folded ones as their unfolded views) and each one's candidate
    batch axes: those of size ``batch``, or the one given. ``found``: every captured lookup
    (a ``batch_axis`` key must name one of them)."""
    if isinstance(batch_axis, Mapping):
        _check_names(batch_axis, found)
    pairs = [_candidates_of(c, batch, batch_axis) for c in caps]
    return [c for c, _ in pairs], [a for _, a in pairs]


def _check_names(batch_axis: Mapping[str, Any], found: list[Capture]) -> None:
    names = {c.name for c in found}
    unknown = [k for k in batch_axis if k not in names]
    if unknown:
        raise InputError(
            f"batch_axis names {', '.join(map(repr, unknown))}, which match no lookup of "
            f"this forward; the lookups are: {', '.join(repr(c.name) for c in found)} "
            "(keys are lookup names as in res.layers, not table names or globs)"
        )


def _candidates_of(c: Capture, batch: int, batch_axis: BatchAxis) -> tuple[Capture, list[int]]:
    """One capture (or its unfolded view) and its candidate axes under ``batch_axis``."""
    shape = c.out_shape[:-1]
    given: Any = batch_axis
    where = ""
    if isinstance(batch_axis, Mapping):
        given = batch_axis.get(c.name, "auto")
        where = f"[{c.name!r}]"
    elif batch_axis is None:
        given = "auto"
    if given != "auto":
        given = axis_value(given, where)
    if given == "auto":
        return c, candidate_axes(shape, batch)
    if given is None:
        return c, []
    if given == FOLDED:
        return unfold(c, batch, declared=True), [0]
    if not -len(shape) <= given < len(shape):
        raise InputError(
            f"batch_axis{where}={given!r} for lookup {c.name!r} whose ids have shape "
            f"{shape}: there is no axis {given}"
        )
    axis = given % len(shape)
    said = f"batch_axis{where}={given}" + (f" (axis {axis})" if axis != given else "")
    if shape[axis] != batch:
        raise InputError(
            f"{said} for lookup {c.name!r}: its ids have shape {shape}, whose axis {axis} "
            f"has size {shape[axis]}, not the batch size {batch}"
        )
    return c, [axis]


def fold_when_no_batch_axis(
    session: Session,
    fwd: Forward,
    caps: list[Capture],
    axes: list[list[int]],
    batch: int,
    batch_axis: BatchAxis,
) -> tuple[list[Capture], list[list[int]], list[bool]]:
    """Where no lookup (selected or not) and no float input has an axis of the batch size, the
    batch may be folded into a leading axis (ELMo's characters: (B·T, C)): such lookups (not
    declared, not position lookups) become their unfolded views with candidate axis 0, to be
    confirmed by the probe. Returns the captures, the axes and which were folded so."""
    folded = [False] * len(caps)
    if batch <= 1 or any(axes):
        return caps, axes, folded
    shapes = [c.out_shape[:-1] for c in fwd.captures] + [
        tuple(session.ops.work(x).shape) for x in fwd.float_inputs.values()
    ]
    if any(candidate_axes(shape, batch) for shape in shapes):
        return caps, axes, folded
    given = batch_axis if isinstance(batch_axis, Mapping) else {}
    caps, axes = list(caps), list(axes)
    for i, c in enumerate(caps):
        if c.name not in given and c.role != "position" and foldable(c, batch):
            caps[i], axes[i], folded[i] = unfold(c, batch, declared=False), [0], True
    return caps, axes, folded


def require_batch_axis(
    session: Session,
    fwd: Forward,
    caps: list[Capture],
    axes: list[list[int]],
    batch: int,
    batch_axis: BatchAxis,
) -> None:
    """LossError when no lookup of the forward has an axis of the losses' length: the losses do
    not match the samples (a duplicated batch, a wrong concatenation), which is a mistake, not
    broadcast ids. Any lookup counts, selected or not (selecting only the position lookup
    beside batched word ids is fine), and so does a float input (embeddings passed in), unless
    ``batch_axis={name: None}`` declares every selected lookup without batch axis. With B = 1,
    unbatched ids (T,) are a legitimate single sample, so only B > 1 is checked."""
    if batch <= 1 or any(axes):
        return
    given = batch_axis if isinstance(batch_axis, Mapping) else {}
    if all(c.name in given for c in caps):
        return
    found = [c.out_shape[:-1] for c in fwd.captures] + [
        tuple(session.ops.work(x).shape) for x in fwd.float_inputs.values()
    ]
    if any(candidate_axes(shape, batch) for shape in found):
        return
    shapes = ", ".join(f"{c.name!r} {c.out_shape[:-1]}" for c in fwd.captures)
    raise LossError(
        f"loss_fn returned {batch} losses, but no lookup's ids has an axis of size {batch}: "
        f"{shapes}. Nor can a batch of {batch} be folded into a leading axis (B·k rows), which "
        "needs a multiple of it. loss_fn must return one loss per sample, shape (B,) with B the batch size "
        "of the ids (check for a duplicated batch or a wrong concatenation); if the ids really "
        "have no batch axis, say so with batch_axis={name: None}."
    )


def require_unambiguous(
    caps: list[Capture], axes: list[list[int]], batch: int, do_probe: bool
) -> None:
    """Several size-B axes can only be told apart by the probe. With B = 1 any size-1 axis is
    right (its one slice is the whole array), so there is nothing to tell apart."""
    ambiguous = [c.name for c, a in zip(caps, axes, strict=True) if len(a) > 1]
    if ambiguous and not do_probe and batch > 1:
        raise BatchAxisError(
            f"the batch axis of lookup(s) {', '.join(ambiguous)} is ambiguous (several axes "
            f"of size {batch}); pass batch_axis=... or use check='auto'/'probe' to resolve it"
        )


def broadcast_to_sums(caps: list[Capture], resolved: list[int | None]) -> list[int | None]:
    """The exact loop's batch axes, less those of broadcast-shaped ids: a lookup whose output has
    fewer dimensions than one with a batch axis (position ids (T,) beside (B, T) word ids) has
    no batch axis even when one of its axes has size B."""
    batched = [rank(c) for c, a in zip(caps, resolved, strict=True) if a is not None]
    dims = max(batched, default=0)
    return [
        None if a is not None and not is_folded(c) and rank(c) < dims else a
        for c, a in zip(caps, resolved, strict=True)
    ]
