"""Rows of explained outputs: the records the driver and every row builder share.

An explained output is (sample b, output k): a generation step, a token's label, a span part.
Each gets its own row of the engine's batch (the one backward needs every sample to own its
rows of the lookup output). A :class:`RowBuilder` — one small class per kind of model — turns
consecutive outputs [k0, k1) into a :class:`Chunk` (the inputs of those rows, their loss and
where each row's positions go in the result); the driver (``outputs.driver``) plans the chunks
and runs them, never asking which kind it holds.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..backends import ops_for
from ..errors import InputError
from .scores import StepArgs, compute


@dataclass
class Outputs:
    """The outputs to explain, numpy (B, K): ``targets`` (the explained ids: tokens, labels),
    ``active`` (which outputs exist; trailing padding excluded), optional ``contrast`` ids."""

    targets: np.ndarray
    active: np.ndarray
    contrast: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.targets.shape[0]), int(self.targets.shape[1])

    def rows(self, k0: int, k1: int) -> np.ndarray:
        """(N, 2) (b, k) of the active outputs in [k0, k1), output-major (one k together)."""
        b, k = np.nonzero(self.active[:, k0:k1])
        order = np.lexsort((b, k))
        return np.stack([b[order], k[order] + k0], axis=1).astype(np.int64)

    def contrast_of(self, rows: np.ndarray) -> np.ndarray | None:
        return None if self.contrast is None else self.contrast[rows[:, 0], rows[:, 1]]


@dataclass
class Chunk:
    """One pass of rows: ``inputs`` (native, N rows), their ``loss`` and where rows go.

    ``rows`` (N, 2): (b, k) per row. ``columns[key]`` (N, W_key) int: for each position of
    the row in that lookup's output, the result column it belongs to, −1 for none (None: the
    positions as the model saw them, each its own column). With two lookups (``"source"``,
    ``"target"``), ``ids[key]`` (N, W_key) tells them apart."""

    inputs: Any
    loss: Any
    rows: np.ndarray
    columns: dict[str, np.ndarray | None]
    ids: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class StepLoss:
    """The rows' quantity from the model's outputs: log p(y) (− log p(y')) at each row's output.

    ``pick(outputs, rows) -> (N', V)`` native log-probabilities or logits of the rows' outputs
    (``normalized``: they are log-probabilities, checked to sum to 1). The first call (the
    forward at the inputs) keeps the registered step scores (``outputs.scores``) in ``seen``;
    a target < 0 means "the predicted one": the argmax there, kept in ``targets`` for the
    later calls and in ``seen["target"]``."""

    pick: Callable[[Any, np.ndarray], Any]
    targets: np.ndarray
    contrast: np.ndarray | None
    normalized: bool = False
    seen: dict[str, np.ndarray] = field(default_factory=dict)

    def __call__(self, outputs: Any, rows: np.ndarray | None = None) -> Any:
        """(N',) quantities; ``rows`` (N',): the chunk row of each row of the outputs (repeated
        rows of integrated gradients / SmoothGrad), all rows in order when None."""
        n = self.targets.shape[0]
        index = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        scores = self.pick(outputs, index)
        ops = ops_for(scores)
        if not self.seen and np.array_equal(index, np.arange(n)):
            self._keep(ops.to_numpy(ops.detach(scores)).astype(np.float64))
        q = ops.log_softmax_pick(scores, self.targets[index])
        if self.contrast is not None:
            q = q - ops.log_softmax_pick(scores, self.contrast[index])
        return q

    def _keep(self, s: np.ndarray) -> None:
        n = self.targets.shape[0]
        if s.shape[0] != n or s.ndim != 2:
            raise InputError(f"the step log-probabilities have shape {s.shape}; expected ({n}, V)")
        guess = self.targets < 0
        if guess.any():
            self.targets = np.where(guess, s.argmax(axis=1), self.targets).astype(np.int64)
            self.seen["target"] = self.targets.astype(np.float64)
        top = s.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
        if self.normalized and not np.all(np.abs(lse) < 1e-3):
            raise InputError(
                "logprobs_fn must return log-probabilities: its rows sum to "
                f"{float(np.exp(lse).min()):.4g}…{float(np.exp(lse).max()):.4g} in probability, "
                "not 1 (apply log_softmax over the vocabulary)"
            )
        self.seen.update(compute(StepArgs(s - lse[:, None], self.targets, self.contrast)))


class RowBuilder(abc.ABC):
    """One kind of model's rows of explained outputs (decoder-only LM, encoder–decoder, a
    custom ``logprobs_fn``, token classification, question answering).

    The driver asks it for the result's column widths per lookup (``widths``), the row width of
    a chunk of outputs (``width``, for planning) and the chunk itself (``chunk``)."""

    #: the kind's name, as results report it
    kind: ClassVar[str]

    def __init__(self, outputs: Outputs) -> None:
        self.outputs = outputs

    @property
    @abc.abstractmethod
    def widths(self) -> dict[str, int | None]:
        """Result columns per lookup key (None: as wide as the lookup's output)."""

    @abc.abstractmethod
    def width(self, k1: int) -> int:
        """Positions per row of a chunk of outputs ending before ``k1`` (its longest row)."""

    @abc.abstractmethod
    def chunk(self, k0: int, k1: int) -> Chunk:
        """The rows of outputs [k0, k1)."""


class WholeInputRows(RowBuilder):
    """Rows fed their sample's inputs unchanged (token classification, question answering):
    one lookup, ``"word"``, as wide as those inputs (``_width``, set by the subclass)."""

    main = "word"
    _width: int

    @property
    def widths(self) -> dict[str, int | None]:
        return {"word": None}

    def width(self, k1: int) -> int:
        return self._width


def has_head(model: Any, suffix: str) -> bool:
    """Whether ``model`` is an HF model with the head ``suffix`` (``"ForQuestionAnswering"``),
    by its class name or its config's ``architectures``."""
    names = [type(model).__name__]
    names += list(getattr(getattr(model, "config", None), "architectures", None) or [])
    return any(str(n).endswith(suffix) for n in names)


def logits_of(outputs: Any, name: str = "logits", hint: str = "") -> Any:
    """``outputs.<name>`` (an HF ModelOutput or a dict); InputError (with ``hint``) if absent."""
    got = getattr(outputs, name, None)
    if got is None and isinstance(outputs, Mapping):
        got = outputs.get(name)
    if got is None:
        raise InputError(f"the model's outputs have no {name}" + (f"; {hint}" if hint else ""))
    return got
