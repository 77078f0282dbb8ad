"""Running examples through every checkpoint into index segments (shared by the in-memory
and the stored index)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from ..backends.weights import CheckpointSlot
from ..errors import InputError
from .batches import bound_loss
from .rows import TableRows, batch_rows, squared_norms, top_rows
from .segment import Postings, Segment

LossFn = Callable[..., Any]


class _Keep:
    """``InfluenceIndex.open``'s default: the value the stored index was built with."""

    def __repr__(self) -> str:
        return "<as built>"


KEEP: Any = _Keep()


def checkpoints_and_weights(
    model: Any, checkpoints: Any, weights: Any
) -> tuple[list[Any], list[float]]:
    """The states the sum runs over (None = ``model`` itself) and their weights."""
    if checkpoints is None:
        states: list[Any] = [None]
    elif isinstance(checkpoints, (str, bytes)) or not isinstance(checkpoints, Sequence):
        raise InputError(
            "checkpoints must be a list of models or state dicts of the model's architecture, "
            f"got {type(checkpoints).__name__}"
        )
    else:
        states = list(checkpoints)
        if not states:
            raise InputError("checkpoints is empty: pass at least one, or None for `model`")
    if weights is None:
        w = [1.0] * len(states)
    else:
        try:
            w = [float(x) for x in weights]
        except (TypeError, ValueError):
            raise InputError(f"weights must be a list of numbers, got {weights!r}") from None
        if len(w) != len(states):
            raise InputError(
                f"{len(w)} weights for {len(states)} checkpoint(s): pass one weight per "
                "checkpoint (e.g. its learning rate)"
            )
        if not all(np.isfinite(w)):
            raise InputError(f"weights must be finite, got {w}")
    return states, w


def check_top_rows(top: Any) -> int | None:
    if top is None:
        return None
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top_rows must be None (exact) or a positive int, got {top!r}")
    return int(top)


class Examples:
    """Runs batches of one side (train or test) through every checkpoint."""

    def __init__(
        self,
        slot: CheckpointSlot,
        states: list[Any],
        layer: Any,
        skip: np.ndarray | None,
    ) -> None:
        self.slot, self.states, self.layer, self.skip = slot, states, layer, skip
        self.roles: dict[str, str] = {}

    def validate(self) -> None:
        """Load every checkpoint once: a wrong architecture fails before any batch runs."""
        for c, state in enumerate(self.states):
            self.slot.load(state, f"checkpoint {c}")

    def run(self, batch: Any, loss: LossFn, first: int, count: int) -> list[TableRows]:
        rows = np.arange(first, first + count)
        out = []
        for c, state in enumerate(self.states):
            m = self.slot.load(state, f"checkpoint {c}")
            tables, roles = batch_rows(
                m, batch, bound_loss(loss, rows), first=first, count=count,
                layer=self.layer, skip=self.skip,
            )  # fmt: skip
            self.roles.update(roles)
            out.append(tables)
        return out


#: (batch, first example number, number of examples)
Job = tuple[Any, int, int]


class Engine(Protocol):
    """Turns jobs into segments, in order."""

    def map(self, jobs: Iterable[Job]) -> Iterator[Segment]: ...


class LocalEngine:
    """Runs the jobs one after the other in this process."""

    def __init__(self, runner: Examples, loss: LossFn, top: int | None) -> None:
        self.runner, self.loss, self.top = runner, loss, top

    def map(self, jobs: Iterable[Job]) -> Iterator[Segment]:
        for batch, first, count in jobs:
            per_ckpt = self.runner.run(batch, self.loss, first, count)
            yield make_segment(per_ckpt, first, count, self.top, self.runner.roles)


def make_segment(
    per_ckpt: list[TableRows], first: int, count: int, top: int | None, roles: dict[str, str]
) -> Segment:
    """A batch's segment: its rows per (checkpoint, table), top rows kept, squared norms."""
    postings: dict[tuple[int, str], Postings] = {}
    selfsq = np.zeros((len(per_ckpt), count), dtype=np.float64)
    for c, tables in enumerate(per_ckpt):
        if top is not None:
            tables = top_rows(tables, top)
        selfsq[c] = squared_norms(tables, first, count)
        for t, r in tables.items():
            postings[(c, t)] = Postings.build([r])
    return Segment(first, count, postings, selfsq, dict(roles))


def check_count(labels: np.ndarray | None, n: int, what: str = "training") -> None:
    if labels is not None and len(labels) != n:
        raise InputError(
            f"{len(labels)} labels for {n} {what} examples: pass one label per example"
        )
