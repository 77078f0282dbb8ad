"""Remembered probe verdicts (``check="auto"``): the batch axes a passed probe resolved, per model
and lookup structure, so a loop over batches probes once."""

from __future__ import annotations

import contextlib
import inspect
import weakref
from typing import Any

from .arguments import BatchAxis
from .contract import Forward

#: model -> {(structure key): resolved batch axes}; remembers probes that passed (check="auto").
_PROBED: weakref.WeakKeyDictionary[Any, dict[Any, tuple[int | None, ...]]] = (
    weakref.WeakKeyDictionary()
)


def probe_key(
    loss_fn: Any,
    mode: str,
    fwd: Forward,
    batch: int,
    select: list[int],
    batch_axis: BatchAxis,
) -> Any:
    """What a remembered probe verdict is keyed on: the loss code, the mode and the lookup
    structure (every lookup's name and rank, in call order), not the sizes, so a loop over
    ragged batches probes once; the batch axes are re-derived at each shape (:func:`remembered`).
    A lookup set that changes (another branch) is another key and is probed again.  The selection
    and ``batch_axis`` are part of it: remembered axes are per selected lookup, and must not
    override a given batch_axis.  This assumes cross-sample coupling does not depend on the
    sizes alone; ``check="probe"`` probes every call."""
    user_fn = inspect.unwrap(loss_fn)  # through wrappers such as the methods' row binding
    code = getattr(user_fn, "__code__", None) or type(user_fn)
    structure = tuple((c.name, len(c.out_shape)) for c in fwd.captures)
    return (code, mode, batch > 1, structure, tuple(select), repr(batch_axis))


def remembered(model: Any, key: Any, axes: list[list[int]]) -> tuple[int | None, ...] | None:
    """The remembered batch axes for ``key``, if each is still a candidate at this call's shapes
    (an axis of the batch size; None stays None), else None (the call probes)."""
    try:
        found = _PROBED.get(model, {}).get(key)
    except TypeError:
        return None
    if found is None or any(a is not None and a not in c for a, c in zip(found, axes, strict=True)):
        return None
    return found


def remember(model: Any, key: Any, axes: list[int | None]) -> None:
    with contextlib.suppress(TypeError):  # a model that is not weak-referenceable
        _PROBED.setdefault(model, {})[key] = tuple(axes)
