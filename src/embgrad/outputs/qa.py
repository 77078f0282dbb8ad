"""Extractive question answering: the attribution of the chosen span's log p(start = s) +
log p(end = e), with its start and end parts as two more rows, over the (question, context)
tokens of an HF ``...ForQuestionAnswering`` model.

Rows per pair (:class:`SpanRows`): output 0 the span, 1 its start, 2 its end — each a row of
the engine (replicated inputs), or all three from one forward with batched cotangents where
the backend allows (``outputs.shared``). The predicted span is the best start ≤ end, both in
the context, at most ``max_answer_len`` tokens long (15, as HF's pipeline), by
start_logit + end_logit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..backends import ops_for
from ..errors import InputError
from ..methods._arrays import repeat_samples
from .rows import Chunk, Outputs, WholeInputRows, logits_of

PARTS = ("span", "start", "end")
#: the longest predicted answer, in tokens (HF's question-answering pipeline's default)
MAX_ANSWER_LEN = 15


class SpanLoss:
    """Per row (b, part): log p_start(s_b) + log p_end(e_b) (span), or one of the two."""

    def __init__(
        self, samples: np.ndarray, parts: np.ndarray, span: np.ndarray, pick: Any, mask: np.ndarray
    ) -> None:
        self.samples, self.parts, self.span, self.pick = samples, parts, span, pick
        #: padding leaves the distributions: p(start = t) over the pair's real tokens only, so a
        #: padded batch explains what the pair alone would (HF QA heads do not mask it)
        self.bias = np.where(mask, 0.0, -1e9)
        self.seen: dict[str, np.ndarray] = {}

    def __call__(self, outputs: Any, rows: np.ndarray | None = None) -> Any:
        index = np.arange(self.samples.shape[0]) if rows is None else np.asarray(rows)
        start, end = self.pick(outputs, index)  # (N', T) each, native
        ops = ops_for(start)
        b = self.samples[index]
        bias = ops.from_numpy(self.bias[b, : int(start.shape[1])], start)
        start, end = start + bias, end + bias
        if not self.seen and np.array_equal(index, np.arange(self.samples.shape[0])):
            self._keep(ops.to_numpy(ops.detach(start)), ops.to_numpy(ops.detach(end)), b)
        ls = ops.log_softmax_pick(start, self.span[b, 0])
        le = ops.log_softmax_pick(end, self.span[b, 1])
        part = self.parts[index]
        w_s = ops.from_numpy((part != 2).astype(np.float64), ls)
        w_e = ops.from_numpy((part != 1).astype(np.float64), le)
        return ls * w_s + le * w_e

    def _keep(self, start: np.ndarray, end: np.ndarray, b: np.ndarray) -> None:
        def lsm(x: np.ndarray) -> np.ndarray:
            x = x.astype(np.float64)
            top = x.max(axis=1, keepdims=True)
            return x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))

        n = np.arange(b.shape[0])
        ps = np.exp(lsm(start)[n, self.span[b, 0]])
        pe = np.exp(lsm(end)[n, self.span[b, 1]])
        part = self.parts
        self.seen["probability"] = np.where(part == 0, ps * pe, np.where(part == 1, ps, pe))


class SpanRows(WholeInputRows):
    """Rows (b, part) of a question-answering model: pair b's inputs, part 0/1/2."""

    kind: ClassVar[str] = "question_answering"

    def __init__(self, inputs: Any, span: np.ndarray, width: int, mask: np.ndarray) -> None:
        batch = int(span.shape[0])
        super().__init__(
            Outputs(np.tile(np.arange(3), (batch, 1)), np.ones((batch, 3), dtype=bool))
        )
        self.inputs, self.span, self._width, self.mask = inputs, span, width, mask

    def shared(self) -> tuple[Any, Any]:
        """The B pairs as given; every row's loss picked from their outputs (one forward)."""
        rows = self.outputs.rows(0, 3)
        b = rows[:, 0]

        def pick(outputs: Any, index: np.ndarray) -> tuple[Any, Any]:
            start, end = _span_logits(outputs)
            ops = ops_for(start)
            return ops.take_rows(start, b[index], 0), ops.take_rows(end, b[index], 0)

        return self.inputs, SpanLoss(b, rows[:, 1], self.span, pick, self.mask)

    def chunk(self, k0: int, k1: int) -> Chunk:
        rows = self.outputs.rows(k0, k1)
        sub = repeat_samples(self.inputs, rows[:, 0], self.outputs.shape[0], 0)

        def pick(outputs: Any, index: np.ndarray) -> tuple[Any, Any]:
            return _span_logits(outputs)

        loss = SpanLoss(rows[:, 0], rows[:, 1], self.span, pick, self.mask)
        return Chunk(sub, loss, rows, {"word": None})


def _span_logits(outputs: Any) -> tuple[Any, Any]:
    hint = "a question-answering model returns start_logits and end_logits (N, T)"
    return logits_of(outputs, "start_logits", hint), logits_of(outputs, "end_logits", hint)


def best_span(start: np.ndarray, end: np.ndarray, context: np.ndarray, max_len: int) -> np.ndarray:
    """(B, 2): per pair the (s, e) with s ≤ e < s + max_len, both context tokens, maximising
    start[s] + end[e]."""
    out = np.zeros((start.shape[0], 2), dtype=np.int64)
    for b in range(start.shape[0]):
        ctx = context[b]
        if not ctx.any():
            raise InputError(f"pair {b} has no context tokens to answer from")
        s = np.where(ctx, start[b], -np.inf)  # only context tokens: padding never wins
        e = np.where(ctx, end[b], -np.inf)
        total = s[:, None] + e[None, :]
        t = np.arange(ctx.shape[0])
        ok = (t[None, :] >= t[:, None]) & (t[None, :] < t[:, None] + max_len)
        total = np.where(ok, total, -np.inf)
        i = int(np.argmax(total))
        out[b] = divmod(i, ctx.shape[0])
    return out


def context_mask(
    inputs: dict[str, Any], ids: np.ndarray, mask: np.ndarray, special: set[int], seq_ids: Any
) -> np.ndarray:
    """(B, T) bool: the context's tokens — the tokenizer's sequence 1 where known, else
    ``token_type_ids == 1`` — real and not special."""
    if seq_ids is not None:
        ctx = np.array([[s == 1 for s in row] for row in seq_ids], dtype=bool)
    elif "token_type_ids" in inputs:
        tt = np.asarray(ops_for(inputs["token_type_ids"]).to_numpy(inputs["token_type_ids"]))
        ctx = tt == 1
    else:
        raise InputError(
            "cannot tell the question's tokens from the context's: give texts with a tokenizer "
            "(text=question, pair=context) or inputs with token_type_ids"
        )
    keep = ctx & mask
    if special:
        keep &= ~np.isin(ids, list(special))
    return keep
