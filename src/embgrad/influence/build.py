"""Running examples through every checkpoint into index segments (shared by the in-memory
and the stored index)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from ..backends.weights import CheckpointSlot
from ..errors import InputError
from .batches import bound_loss
from .rows import TableRows, batch_rows, squared_norms, top_rows
from .segment import Postings, Segment

LossFn = Callable[..., Any]
#: batches run per checkpoint load when there are several checkpoints (the local engine)
GROUP = 8


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
        return self.run_group([(batch, first, count)], loss)[0]

    def run_group(
        self, jobs: list[Job], loss: LossFn, reverse: bool = False
    ) -> list[list[TableRows]]:
        """Each job's rows per checkpoint, the checkpoints outermost: each is loaded once for
        the whole group (``reverse``: last first, so consecutive groups share the checkpoint
        at their boundary); the same numbers as one job at a time."""
        out: list[list[TableRows]] = [[{} for _ in self.states] for _ in jobs]
        order = list(enumerate(self.states))
        for c, state in reversed(order) if reverse else order:
            m = self.slot.load(state, f"checkpoint {c}")
            for k, (batch, first, count) in enumerate(jobs):
                tables, roles = batch_rows(
                    m, batch, bound_loss(loss, np.arange(first, first + count)), first=first,
                    count=count, layer=self.layer, skip=self.skip,
                )  # fmt: skip
                self.roles.update(roles)
                out[k][c] = tables
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
        # several checkpoints given as state dicts: each load copies the whole model, so
        # batches go in groups with the checkpoints outermost (one load per checkpoint and
        # group, not per batch); one checkpoint: one batch at a time, as it streams
        size = GROUP if len(self.runner.states) > 1 else 1
        it = iter(jobs)
        reverse = True  # validate() loaded the last checkpoint last
        while group := list(itertools.islice(it, size)):
            per_job = self.runner.run_group(group, self.loss, reverse)
            reverse = not reverse
            for (_, first, count), per_ckpt in zip(group, per_job, strict=True):
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
