"""The tasks about one quantity per text: pair similarity and zero-shot labels (encoders), a
class target (classifiers) and the caller's own ``loss_fn``; :func:`task_for` picks one for a
request, for the ``Explainer`` (texts) and ``embgrad.attribute`` (texts or a tokenized batch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from ..backends import ops_for
from ..errors import InputError
from .base import Task, checked_texts
from .heads import ClassLogProb, PairSimilarity, resolve_targets, target_items
from .zeroshot import DEFAULT_LABELS, ZeroShotTask, check_labels, label_targets

#: the texts of a request, or (a batch already tokenized) how many rows it has
Rows = Sequence[str] | int


class PairTask(Task):
    """cos(e_j, stopgrad(e_partner(j))) for both sentences of every pair (two rows a pair:
    text, then its partner), so one backward is exact (see ``heads.PairSimilarity``)."""

    group: ClassVar[int] = 2
    quantity: ClassVar[str | None] = "cosine similarity"

    def __init__(self, texts: list[str], pairs: list[str]) -> None:
        if len(pairs) != len(texts):
            raise InputError(f"got {len(texts)} texts but {len(pairs)} pairs; give one each")
        self._rows = [s for tp in zip(texts, pairs, strict=True) for s in tp]

    def loss(self, start: int, batch: Any) -> PairSimilarity:
        partner = np.arange(len(batch.truncated)) ^ 1
        mask = batch.mask_native
        return PairSimilarity(partner, lambda rows: ops_for(mask).take_rows(mask, rows, 0))


class ClassTask(Task):
    """log p(target | text): the given targets, or each text's predicted class."""

    def __init__(
        self, texts: list[str] | None, targets: np.ndarray | None, names: dict[int, str]
    ) -> None:
        self._rows, self.targets, self.names = texts, targets, names

    def loss(self, start: int, batch: Any) -> ClassLogProb:
        n = len(batch.truncated)
        return ClassLogProb(None if self.targets is None else self.targets[start : start + n])

    def labels(self, loss: Any) -> list[str | None] | None:
        if loss.targets is None:
            return None
        return [self.names.get(int(t), str(int(t))) for t in loss.targets]


class LossTask(Task):
    """The caller's own ``loss_fn(outputs)`` or ``loss_fn(outputs, rows)`` → (B,): what it
    reads is unknown, so no pass stops early at the padding (``padding_free`` False)."""

    quantity: ClassVar[str | None] = "loss_fn(outputs)"
    padding_free: ClassVar[bool] = False

    def __init__(self, texts: list[str] | None, loss_fn: Callable[..., Any]) -> None:
        if not callable(loss_fn):
            raise InputError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self._rows, self.loss_fn = texts, loss_fn

    def loss(self, start: int, batch: Any) -> Callable[..., Any]:
        return self.loss_fn


def check_request(
    texts: Any,
    pairs: Any = None,
    targets: Any = None,
    candidate_labels: Any = None,
    loss_fn: Any = None,
) -> None:
    """Every check of a request that needs no model (texts, pairs, labels, targets against the
    labels, what excludes what): run before a model is loaded. :func:`task_for` runs them too.
    ``texts`` may be a row count (a batch already tokenized)."""
    n = texts if isinstance(texts, int) else len(checked_texts(texts, "text"))
    if loss_fn is not None:
        for name, given in (("target", targets), ("candidate_labels", candidate_labels),
                            ("pairs", pairs)):  # fmt: skip
            if given is not None:
                raise InputError(f"pass either loss_fn or {name}, not both")
    if pairs is not None:
        if isinstance(texts, int):
            raise InputError("pairs are texts: give the texts too (with tokenizer=), not token ids")
        pairs = checked_texts(pairs, "pair")
        if len(pairs) != n:
            raise InputError(f"got {n} texts but {len(pairs)} pairs; give one each")
        if candidate_labels is not None:
            raise InputError(
                "labels classify single texts; with pairs their similarity is explained: give "
                "one or the other"
            )
        if targets is not None:
            raise InputError("targets apply to labels or classifiers; with pairs the similarity "
                             "is explained")  # fmt: skip
    if candidate_labels is not None:
        label_targets(targets, n, check_labels(candidate_labels))
    elif targets is not None:
        target_items(targets, n)


def task_for(
    kind: str | None,
    texts: Rows,
    pairs: Any = None,
    targets: Any = None,
    *,
    labels: dict[int, str] | None = None,
    candidate_labels: Any = None,
    loss_fn: Callable[..., Any] | None = None,
    model_name: str = "",
) -> Task:
    """The task about one quantity per text, for ``texts`` (or a tokenized batch of that many
    rows) on a model of ``kind``:

    * ``loss_fn`` → :class:`LossTask` (the caller's quantity);
    * pairs → :class:`PairTask`;
    * ``candidate_labels``, or single texts on an ``"encoder"`` (with
      :data:`~.zeroshot.DEFAULT_LABELS`) → :class:`~.zeroshot.ZeroShotTask`;
    * else :class:`ClassTask` (``labels``: the model's id → label names), for the ``targets``
      or, on a ``"classifier"`` or ``"auto"`` model, each text's predicted class.

    ``kind`` None (``embgrad.attribute``: nothing is known of the model) explains only what the
    request names. Every check runs here, before any model work; the ``Explainer`` and
    ``embgrad.attribute`` both choose their task here (``outputs.route``)."""
    check_request(texts, pairs, targets, candidate_labels, loss_fn)
    n = texts if isinstance(texts, int) else len(texts)
    rows = None if isinstance(texts, int) else list(texts)
    who = model_name or "this model"
    labels = labels or {}
    if loss_fn is not None:
        return LossTask(rows, loss_fn)
    if pairs is not None:
        if kind == "classifier":
            raise InputError(
                f"{who} is a sequence classifier: pairs explain the similarity of sentence "
                "embeddings and need an encoder; give a target instead"
            )
        return PairTask(list(texts), list(pairs))  # type: ignore[arg-type]
    if candidate_labels is not None or kind == "encoder":
        if kind == "classifier":
            raise InputError(
                f"{who} is a sequence classifier with its own classes"
                + (f" ({', '.join(labels.values())})" if labels else "")
                + ": zero-shot labels need a sentence encoder; give --target instead"
            )
        default = candidate_labels is None
        names = list(DEFAULT_LABELS) if default else check_labels(candidate_labels)
        return ZeroShotTask(rows, names, label_targets(targets, n, names), default=default)
    if targets is None and kind is None:
        raise InputError(
            "give loss_fn (outputs -> (B,) quantity), target= (a class) or "
            "candidate_labels= (zero-shot labels, for a sentence encoder)"
        )
    resolved = None
    if targets is not None:
        label2id = {v: k for k, v in labels.items()} or None
        resolved = resolve_targets(targets, n, label2id)
    return ClassTask(rows, resolved, labels)
