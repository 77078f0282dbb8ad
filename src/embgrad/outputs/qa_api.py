"""``embgrad.attribute`` for extractive question answering (``attribute_qa``) and its result,
``SpanAttribution``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..items import StepAttribution
from ..methods._passes import forward_losses
from ..render.matrix_views import MatrixViews
from ..tasks.base import TOKENIZER_LOCK
from ..tasks.inputs import is_texts, tokenized
from . import qa
from .api import step_method
from .driver import explain
from .rows import has_head
from .tokens import ids_and_mask


def is_qa_model(model: Any) -> bool:
    """An HF ``...ForQuestionAnswering`` model (by its class or its config's architectures)."""
    return has_head(model, "ForQuestionAnswering")


@dataclass
class SpanAttribution(MatrixViews):
    """Per (question, context) pair, the attribution of the explained span.

    Attributes:
        method: the registered method's name.
        scores: (B, T) the span's quantity log p(start = s) + log p(end = e), per token.
        parts: ``{"start": (B, T), "end": (B, T)}`` the two terms alone (they sum to
            ``scores`` for gradient × input and integrated gradients, which are linear).
        span: (B, 2) the explained (start, end) token positions (inclusive).
        probabilities: (B, 3) p(span) = p(s)·p(e), p(s), p(e) at the inputs.
        quantity: (B, 3) log p of the span, its start and its end.
        question_mask, context_mask: (B, T) bool, the question's and the context's tokens.
        tokens: per pair its T token strings; ``answer`` the span's tokens joined.
        delta: (B, 3) completeness deltas (integrated gradients), else None.
        grads: (B, 3, T, D) with ``return_grads`` (span, start, end), else None.
        max_answer_len: the longest predicted span considered (tokens).
    """

    method: str
    scores: np.ndarray
    parts: dict[str, np.ndarray] = field(repr=False)
    span: np.ndarray
    probabilities: np.ndarray
    quantity: np.ndarray = field(repr=False)
    question_mask: np.ndarray = field(repr=False)
    context_mask: np.ndarray = field(repr=False)
    tokens: list[list[str]] = field(repr=False)
    delta: np.ndarray | None = field(default=None, repr=False)
    grads: np.ndarray | None = field(default=None, repr=False)
    max_answer_len: int = qa.MAX_ANSWER_LEN
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    kind = "question_answering"

    def __repr__(self) -> str:
        return (
            f"SpanAttribution(method={self.method!r}, pairs={self.scores.shape[0]}, "
            f"spans={self.span.tolist()}, tokens={self.scores.shape[1]})"
        )

    @property
    def answer(self) -> list[str]:
        return [" ".join(t[s : e + 1]) for t, (s, e) in zip(self.tokens, self.span, strict=True)]

    _title = "embgrad QA"

    def _view_meta(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind, "max_answer_len": self.max_answer_len}

    @property
    def items(self) -> list[StepAttribution]:
        """Per pair a matrix of 3 rows (span, start, end) × the question's then the context's
        tokens (``source_length``: the question's, drawn apart in every view)."""
        out = []
        for b in range(self.scores.shape[0]):
            q = np.flatnonzero(self.question_mask[b])
            c = np.flatnonzero(self.context_mask[b])
            cols = np.concatenate([q, c])
            toks = self.tokens[b]
            s, e = (int(v) for v in self.span[b])
            mat = np.stack([self.scores[b], self.parts["start"][b], self.parts["end"][b]])
            out.append(
                StepAttribution(
                    text="Q: " + " ".join(toks[j] for j in q) + " | C: "
                    + " ".join(toks[j] for j in c),
                    tokens=[toks[j] for j in cols],
                    generated=[f"span {toks[s]}…{toks[e]}", f"start {toks[s]}", f"end {toks[e]}"],
                    scores=mat[:, cols].tolist(),
                    step_scores={"probability": self.probabilities[b].tolist()},
                    quantity=self.quantity[b].tolist(),
                    method=self.method,
                    kind=self.kind,
                    delta=None if self.delta is None else self.delta[b].tolist(),
                    source_length=int(q.size),
                )
            )  # fmt: skip
        return out

    def run_rows(self) -> list[dict[str, Any]]:
        """Per pair the fields of one data-run row (``data.writer.outputs_fields``)."""
        return [
            item.run_fields(span=[int(v) for v in self.span[b]])
            for b, item in enumerate(self.items)
        ]


def attribute_qa(
    model: Any,
    inputs: Any,
    pairs: Any = None,
    *,
    span: Any = None,
    method: str = "gradient",
    tokenizer: Any = None,
    max_answer_len: int = qa.MAX_ANSWER_LEN,
    return_grads: bool = False,
    layer: str = "word",
    mode: str = "eval",
    check: str = "auto",
    tokens_per_pass: int | None = None,
    **options: Any,
) -> SpanAttribution:
    """The attribution of log p(start = s) + log p(end = e) of each pair's span.

    Args:
        model: an HF ``...ForQuestionAnswering`` model.
        inputs: the questions (texts, with ``pairs`` the contexts and ``tokenizer``), or the
            tokenized pairs (``input_ids``, ``attention_mask``, ``token_type_ids``).
        span: None (the predicted span: best start ≤ end within the context, at most
            ``max_answer_len`` tokens), one (s, e) for all, or (B, 2) token positions.
    """
    cls = step_method(method, "answer spans")
    cls.validate(options)
    if not isinstance(max_answer_len, int) or max_answer_len < 1:
        raise InputError(f"max_answer_len must be a positive integer, got {max_answer_len!r}")
    seq_ids = None
    if is_texts(inputs):
        if pairs is None or not is_texts(pairs):
            raise InputError("question answering needs the contexts: pairs=[context, ...]")
        qs = [inputs] if isinstance(inputs, str) else list(inputs)
        cs = [pairs] if isinstance(pairs, str) else list(pairs)
        if len(qs) != len(cs):
            raise InputError(f"got {len(qs)} questions but {len(cs)} contexts; give one each")
        if tokenizer is not None:
            with TOKENIZER_LOCK:
                enc = tokenizer(qs, cs)
            if hasattr(enc, "sequence_ids"):
                seq_ids = [enc.sequence_ids(b) for b in range(len(qs))]
        inputs = tokenized(model, qs, tokenizer, "attribute", text_pair=cs)
        if seq_ids is not None:
            width = len(next(iter(inputs.values()))[0])
            seq_ids = [list(r) + [None] * (width - len(r)) for r in seq_ids]
    elif pairs is not None:
        raise InputError("pairs= are context texts: give the questions as texts too")
    if isinstance(inputs, Mapping):
        inputs = dict(inputs)
    ids, mask = ids_and_mask(inputs)
    if ids is None or mask is None:
        raise InputError("question answering needs HF inputs: a dict with input_ids")
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    context = qa.context_mask(inputs, ids, mask, special, seq_ids)
    question = mask & ~context & ~np.isin(ids, list(special)) if special else mask & ~context
    batch, width = ids.shape
    chosen = _span(model, inputs, span, context, max_answer_len, mode, batch, width)
    builder = qa.SpanRows(inputs, chosen, width, mask)
    explainer = cls(model, layer=layer, mode=mode, check=check)
    driver = explain(
        builder, explainer, options, tokens_per_pass=tokens_per_pass, return_grads=return_grads
    )
    sc = driver.scores["word"]
    names = (
        [[str(t) for t in tokenizer.convert_ids_to_tokens(r.tolist())] for r in ids]
        if tokenizer is not None and hasattr(tokenizer, "convert_ids_to_tokens")
        else [[str(int(i)) for i in r] for r in ids]
    )
    return SpanAttribution(
        method=cls.name,
        scores=sc[:, 0],
        parts={"start": sc[:, 1], "end": sc[:, 2]},
        span=chosen,
        probabilities=driver.seen.get("probability", np.full((batch, 3), np.nan)),
        quantity=driver.quantity,
        question_mask=question,
        context_mask=context,
        tokens=names,
        delta=driver.delta,
        grads=driver.grads.get("word"),
        max_answer_len=max_answer_len,
        info=driver.info,
    )


def _span(
    model: Any, inputs: Any, span: Any, context: np.ndarray, max_len: int, mode: str,
    batch: int, width: int,
) -> np.ndarray:  # fmt: skip
    if span is not None:
        a = np.asarray(span, dtype=np.int64)
        a = np.broadcast_to(a, (batch, 2)).copy() if a.shape == (2,) else a
        if a.shape != (batch, 2) or a.min() < 0 or a.max() >= width or np.any(a[:, 0] > a[:, 1]):
            raise InputError(
                f"span must be (start, end) token positions with start ≤ end < {width}, one "
                f"pair or one per pair ({batch}, 2); got {np.asarray(span).tolist()}"
            )
        return a
    kept: dict[str, np.ndarray] = {}

    def logits(outputs: Any) -> Any:
        start, end = qa._span_logits(outputs)
        from ..backends import ops_for

        ops = ops_for(start)
        kept["start"], kept["end"] = ops.to_numpy(start), ops.to_numpy(end)
        return start[:, 0]

    forward_losses(model, inputs, logits, mode=mode)
    return qa.best_span(kept["start"], kept["end"], context, max_len)
