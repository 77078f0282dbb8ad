"""The task interface: texts in, the loss a method explains out."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError

#: HF tokenizers set padding/truncation on the shared tokenizer object before each call (not
#: atomic): every tokenizer call embgrad makes holds this lock, so concurrent explain() calls do
#: not tokenize with each other's settings.
TOKENIZER_LOCK = threading.Lock()


class Task(abc.ABC):
    """Turns texts into batch rows and a per-sample quantity f_i over a batch of them.

    A task fixes the rows (``rows``: the texts that go into the model, e.g. both sentences of
    every pair), how many consecutive rows belong together and must share a batch
    (``group``), and builds the loss of one batch (``loss``) whose outputs are the explained
    quantity, ``quantity`` in words.
    """

    #: rows that belong together and must share a batch (a pair: 2)
    group: ClassVar[int] = 1
    #: what f_i is, for people (``None``: log p(target))
    quantity: ClassVar[str | None] = None
    #: f_i reads no padded position's output (a class's log-probability, a mean pooled over
    #: the attention mask): a pass may stop at its samples' last real token
    padding_free: ClassVar[bool] = True

    #: the texts fed to the model, in output order; None for a task built on a batch that is
    #: already tokenized (``embgrad.attribute`` on token ids), whose rows are the batch's
    _rows: list[str] | None = None

    def rows(self) -> list[str]:
        """The texts fed to the model, in output order."""
        if self._rows is None:
            raise InputError("this task was built for a tokenized batch: it has no texts")
        return self._rows

    @abc.abstractmethod
    def loss(self, start: int, batch: Any) -> Any:
        """The loss (``loss_fn(outputs, rows)``) of rows ``start .. start + n`` given their
        tokenized ``batch`` (a :class:`~embgrad.models.encode.TextBatch`)."""

    def labels(self, loss: Any) -> list[str | None] | None:
        """The explained label of each row of a batch after ``loss`` ran, or None."""
        return None

    def prepare(self, embed_texts: Callable[[list[str]], np.ndarray]) -> None:  # noqa: B027
        """Compute the task's constants before the first batch, given ``embed_texts(texts) ->
        (n, D)`` sentence embeddings by the model (the zero-shot labels'); nothing by default."""

    @property
    def note(self) -> str | None:
        """A line the outputs show about what was chosen for the user (a default), or None."""
        return None

    def batch_rows(self, batch_size: int) -> int:
        """Rows per batch: ``batch_size`` rounded down to whole groups."""
        return max(self.group, batch_size - batch_size % self.group)


def checked_texts(texts: Any, what: str) -> list[str]:
    """``texts`` as a list of non-empty strings; InputError naming the first bad one."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InputError(f"{what}s must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise InputError(f"no {what}s given")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"{what} {i} is a {type(t).__name__}, not a string")
        if not t.strip():
            raise InputError(f"{what} {i} is empty; give non-empty texts")
    return list(texts)
