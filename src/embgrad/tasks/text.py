"""The text tasks of the Explainer: pair similarity and zero-shot labels (encoders), and a
class target (classifiers)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..backends import ops_for
from ..errors import InputError
from .base import Task, checked_texts
from .heads import ClassLogProb, PairSimilarity, resolve_targets
from .zeroshot import DEFAULT_LABELS, ZeroShotTask, check_labels, label_targets


class PairTask(Task):
    """cos(e_j, stopgrad(e_partner(j))) for both sentences of every pair (two rows a pair:
    text, then its partner), so one backward is exact (see ``heads.PairSimilarity``)."""

    group: ClassVar[int] = 2
    quantity: ClassVar[str | None] = "cosine similarity"

    def __init__(self, texts: list[str], pairs: list[str]) -> None:
        if len(pairs) != len(texts):
            raise InputError(f"got {len(texts)} texts but {len(pairs)} pairs; give one each")
        self._rows = [s for tp in zip(texts, pairs, strict=True) for s in tp]

    def rows(self) -> list[str]:
        return self._rows

    def loss(self, start: int, batch: Any) -> PairSimilarity:
        partner = np.arange(len(batch.truncated)) ^ 1
        mask = batch.mask_native
        return PairSimilarity(partner, lambda rows: ops_for(mask).take_rows(mask, rows, 0))


class ClassTask(Task):
    """log p(target | text): the given targets, or each text's predicted class."""

    def __init__(self, texts: list[str], targets: np.ndarray | None, names: dict[int, str]) -> None:
        self._rows, self.targets, self.names = texts, targets, names

    def rows(self) -> list[str]:
        return self._rows

    def loss(self, start: int, batch: Any) -> ClassLogProb:
        n = len(batch.truncated)
        return ClassLogProb(None if self.targets is None else self.targets[start : start + n])

    def labels(self, loss: Any) -> list[str | None] | None:
        if loss.targets is None:
            return None
        return [self.names.get(int(t), str(int(t))) for t in loss.targets]


def check_request(
    texts: Any,
    pairs: Any = None,
    targets: Any = None,
    candidate_labels: Any = None,
) -> None:
    """Every check of a request that needs no model (texts, pairs, labels, targets against the
    labels): run before a model is loaded. :func:`task_for` runs them too."""
    texts = checked_texts(texts, "text")
    if pairs is not None:
        pairs = checked_texts(pairs, "pair")
        if len(pairs) != len(texts):
            raise InputError(f"got {len(texts)} texts but {len(pairs)} pairs; give one each")
        if candidate_labels is not None:
            raise InputError(
                "labels classify single texts; with pairs their similarity is explained: give "
                "one or the other"
            )
        if targets is not None:
            raise InputError("targets apply to labels or classifiers; with pairs the similarity "
                             "is explained")  # fmt: skip
    if candidate_labels is not None:
        labels = check_labels(candidate_labels)
        label_targets(targets, len(texts), labels)
    elif targets is not None:
        items = list(targets) if isinstance(targets, (list, tuple, np.ndarray)) else [targets]
        if len(items) not in (1, len(texts)):
            raise InputError(
                f"got {len(items)} targets for {len(texts)} texts; give one, or one per text"
            )


def task_for(
    kind: str,
    texts: Any,
    pairs: Any = None,
    targets: Any = None,
    *,
    labels: dict[int, str] | None = None,
    candidate_labels: Any = None,
    model_name: str = "",
) -> Task:
    """The task for ``texts`` on a model of ``kind`` (``"encoder"``, ``"classifier"`` or
    ``"auto"``): pairs → :class:`PairTask`; ``candidate_labels`` (or single texts on an
    encoder, with :data:`~.zeroshot.DEFAULT_LABELS`) → :class:`~.zeroshot.ZeroShotTask`; else
    :class:`ClassTask` (``labels``: the model's id → label names). Every check of the texts,
    pairs, labels and targets runs here, before any model work."""
    check_request(texts, pairs, targets, candidate_labels)
    texts = list(texts)
    who = model_name or "this model"
    labels = labels or {}
    if pairs is not None:
        if kind == "classifier":
            raise InputError(
                f"{who} is a sequence classifier: pairs explain the similarity of sentence "
                "embeddings and need an encoder; give a target instead"
            )
        return PairTask(texts, list(pairs))
    if candidate_labels is not None or kind == "encoder":
        if kind == "classifier":
            raise InputError(
                f"{who} is a sequence classifier with its own classes"
                + (f" ({', '.join(labels.values())})" if labels else "")
                + ": zero-shot labels need a sentence encoder; give --target instead"
            )
        default = candidate_labels is None
        names = list(DEFAULT_LABELS) if default else check_labels(candidate_labels)
        return ZeroShotTask(texts, names, label_targets(targets, len(texts), names),
                            default=default)  # fmt: skip
    resolved = None
    if targets is not None:
        items = list(targets) * len(texts) if len(targets) == 1 else list(targets)
        label2id = {v: k for k, v in labels.items()} or None
        resolved = resolve_targets(items, len(texts), label2id)
    return ClassTask(texts, resolved, labels)
