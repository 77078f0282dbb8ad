"""The text tasks of the Explainer: pair similarity (encoders) and a class target."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..backends import ops_for
from ..errors import InputError
from .base import Task, checked_texts
from .heads import ClassLogProb, PairSimilarity, resolve_targets


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


def task_for(
    kind: str,
    texts: Any,
    pairs: Any = None,
    targets: Any = None,
    *,
    labels: dict[int, str] | None = None,
    model_name: str = "",
) -> Task:
    """The task for ``texts`` on a model of ``kind`` (``"encoder"``, ``"classifier"`` or
    ``"auto"``): pairs → :class:`PairTask`, else :class:`ClassTask`. Every check of the texts,
    pairs and targets runs here, before any model work."""
    texts = checked_texts(texts, "text")
    who = model_name or "this model"
    labels = labels or {}
    if pairs is not None:
        pairs = checked_texts(pairs, "pair")
        if kind == "classifier":
            raise InputError(
                f"{who} is a sequence classifier: pairs explain the similarity of sentence "
                "embeddings and need an encoder; give a target instead"
            )
        if targets is not None:
            raise InputError("targets apply to classifiers; with pairs the similarity is explained")
        return PairTask(texts, pairs)
    if kind == "encoder":
        if targets is not None:
            raise InputError(
                f"{who} is a plain encoder with no classes; a target needs a sequence classifier "
                "(give pairs to explain a similarity)"
            )
        raise InputError(
            f"{who} is a plain encoder: give pairs (--pair) to explain their similarity, or use "
            "a sequence classifier with a target"
        )
    resolved = None
    if targets is not None:
        items = list(targets) * len(texts) if len(targets) == 1 else list(targets)
        label2id = {v: k for k, v in labels.items()} or None
        resolved = resolve_targets(items, len(texts), label2id)
    return ClassTask(texts, resolved, labels)
