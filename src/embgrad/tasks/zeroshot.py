"""Zero-shot classification of single texts with a sentence encoder.

A text's label is chosen by the similarity of its embedding to the embeddings of the label
descriptions (each label is its own description: ``"positive"``, ``"a question about
sport"``), all made by the same encoder: mean-pooled, L2-normalised last hidden state, as for a
pair's similarity. The explained quantity is

    f_i = log p(label | text_i) = log softmax_k(cos(e_i, l_k) / TEMPERATURE)[label]

for the given target label or, by default, the predicted (most similar) one. The label
embeddings are constants (computed once, before the texts), so f_i depends only on text i's
tokens and one backward is exact.

Why this temperature: all-MiniLM-L6-v2 (the bundled model) and most sentence-transformers
models were trained with MultipleNegativesRankingLoss, a softmax over cosine similarities
scaled by 20, i.e. ``TEMPERATURE = 0.05``: these are the probabilities the model was trained
to produce. At temperature 1 the softmax over cosines in [-1, 1] would be almost uniform and
its log-probability would mostly measure how far the other labels are.

With no labels a plain encoder explains :data:`DEFAULT_LABELS`, zero-shot sentiment
(``positive`` / ``negative``): a question about a single text that means something to a person
(unlike, say, the embedding's norm); every output says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from ..backends import ops_for
from ..core.capture import gradients
from ..errors import InputError
from .base import Task
from .heads import LabelSimilarity, first_array, pass_mask, target_items

#: the softmax temperature over cosine similarities (MultipleNegativesRankingLoss's scale 20)
TEMPERATURE = 0.05
#: the labels explained when a plain encoder gets single texts and no labels
DEFAULT_LABELS: tuple[str, ...] = ("positive", "negative")
#: what the outputs say the explained quantity is
QUANTITY = f"log p(label | text), zero-shot: softmax of cosine similarities / {TEMPERATURE}"


def default_note(labels: Sequence[str]) -> str:
    """The line that tells a user the default labels were used."""
    return (
        "no labels given: explaining zero-shot sentiment, log p(label | text) over the labels "
        + ", ".join(repr(x) for x in labels)
        + " (give --labels / candidate_labels= to choose your own)"
    )


def check_labels(labels: Any, what: str = "labels") -> list[str]:
    """``labels`` as a list of ≥ 2 distinct non-empty strings; InputError otherwise."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise InputError(f"{what} must be a list of strings, got {type(labels).__name__}")
    out = []
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise InputError(f"{what}: label {i} is a {type(label).__name__}, not a string")
        if not label.strip():
            raise InputError(f"{what}: label {i} is empty; give non-empty label descriptions")
        out.append(label.strip())
    if len(out) < 2:
        raise InputError(
            f"{what}: give at least two labels (a softmax over one label is always 1), got {out!r}"
        )
    dupes = sorted({x for x in out if out.count(x) > 1})
    if dupes:
        raise InputError(f"{what}: labels repeated: {', '.join(map(repr, dupes))}")
    return out


def label_targets(targets: Any, n: int, labels: Sequence[str]) -> np.ndarray | None:
    """Targets (a label name or index; one for all texts or one per text) → (n,) indices."""
    if targets is None:
        return None
    items = target_items(targets, n)
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for t in items:
        if isinstance(t, str) and t.strip() in index:
            out.append(index[t.strip()])
        elif (isinstance(t, (int, np.integer)) and not isinstance(t, bool)) or (
            isinstance(t, str) and t.strip().isdigit()
        ):
            k = int(t)
            if not 0 <= k < len(labels):
                raise InputError(f"target index {k} is out of range for {len(labels)} labels")
            out.append(k)
        else:
            raise InputError(
                f"target {t!r} is not one of the labels: {', '.join(map(repr, labels))}"
            )
    return np.asarray(out, dtype=np.int64)


def embed(model: Any, inputs: Any, mask: Any, *, mode: str = "eval") -> np.ndarray:
    """(B, D) float64 sentence embeddings (mean-pooled, L2-normalised last hidden state) of a
    tokenized batch, by one :func:`embgrad.gradients` call (the model's mode set and restored
    as for any explanation; the gradient is not used)."""
    kept: dict[str, np.ndarray] = {}

    def loss(outputs: Any) -> Any:
        hidden = first_array(outputs, "last_hidden_state")
        ops = ops_for(hidden)
        emb = ops.mean_pool_normalized(hidden, pass_mask(hidden, mask, "a label"))
        kept["emb"] = ops.to_numpy(emb).astype(np.float64)
        return ops.row_dot(emb, ops.detach(emb))

    gradients(model, inputs, loss, mode=mode)  # type: ignore[arg-type]
    return kept["emb"]


def label_embedder(
    model: Any, inputs: Any, tokenizer: Any, mode: str = "eval"
) -> Callable[[list[str]], np.ndarray]:
    """``embed_texts(labels) -> (n, D)`` for ``embgrad.attribute(..., candidate_labels=)`` on a
    tokenized batch (a Mapping with ``attention_mask``): the labels are tokenized by
    ``tokenizer`` into the batch's array type (``ops_for(...).from_numpy``) and embedded by one
    :func:`embed` call (the inputs and the tokenizer are checked first)."""

    def embed_texts(labels: list[str]) -> np.ndarray:
        if not hasattr(inputs, "keys") or "attention_mask" not in inputs:
            raise InputError(
                "candidate_labels need the tokenizer's output as inputs (a dict with "
                "attention_mask): the embeddings are mean-pooled over the attention mask"
            )
        if tokenizer is None or not callable(tokenizer):
            raise InputError(
                "candidate_labels need tokenizer= (the texts' tokenizer) to embed them"
            )
        enc = tokenizer(labels, padding=True, return_tensors="np")
        label_inputs = {
            k: ops_for(inputs[k]).from_numpy(np.asarray(enc[k]), inputs[k])
            for k in inputs
            if k in enc
        }
        return embed(model, label_inputs, label_inputs["attention_mask"], mode=mode)

    return embed_texts


class ZeroShotTask(Task):
    """log p(label | text) by similarity to the label descriptions (see the module docstring).

    Args:
        texts: the texts, one row each.
        labels: the label descriptions (≥ 2, distinct).
        targets: (len(texts),) label indices, or None to explain each text's predicted label.
        default: the labels are :data:`DEFAULT_LABELS`, not the user's (outputs say so).
    """

    quantity: ClassVar[str | None] = QUANTITY

    def __init__(
        self,
        texts: list[str] | None,
        labels: Sequence[str],
        targets: np.ndarray | None,
        *,
        default: bool = False,
    ) -> None:
        self._rows, self.candidate_labels = texts, list(labels)
        self.targets, self.default = targets, default
        self.label_embeddings: np.ndarray | None = None

    def prepare(self, embed_texts: Callable[[list[str]], np.ndarray]) -> None:
        self.label_embeddings = embed_texts(self.candidate_labels)

    def loss(self, start: int, batch: Any) -> LabelSimilarity:
        if self.label_embeddings is None:
            raise InputError("the zero-shot task was not prepared (label embeddings missing)")
        n = len(batch.truncated)
        targets = None if self.targets is None else self.targets[start : start + n]
        mask = batch.mask_native
        return LabelSimilarity(
            self.label_embeddings,
            targets,
            lambda rows: ops_for(mask).take_rows(mask, rows, 0),
            TEMPERATURE,
        )

    def labels(self, loss: Any) -> list[str | None] | None:
        if loss.targets is None:
            return None
        return [self.candidate_labels[int(t)] for t in loss.targets]

    @property
    def note(self) -> str | None:
        return default_note(self.candidate_labels) if self.default else None
