"""``GenerationAttribution``: what ``embgrad.attribute_generation`` returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..items import StepAttribution
from ..render.matrix_views import MatrixViews

#: prompts longer than this are decoded token by token (each alone), not in context
CONTEXT_DECODE_TOKENS = 1024


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token's text as the tokenizer decodes it in its context: piece k is what token k
    adds to the decoded text of the tokens before it (GPT-2's ``Ġtime`` → ``" time"``,
    WordPiece's ``##s`` → ``"s"``, SentencePiece's ``▁the`` → ``" the"``), so the pieces join
    into the decoded text. A token whose bytes complete a character begun by the one before,
    or any other piece the prefix rule cannot split, is decoded alone."""
    ids = [int(i) for i in ids]

    def decode(part: list[int]) -> str:
        return str(
            tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    if len(ids) > CONTEXT_DECODE_TOKENS:
        return [decode([i]) for i in ids]
    out, before = [], ""
    for k in range(len(ids)):
        now = decode(ids[: k + 1])
        out.append(now[len(before) :] if now.startswith(before) else decode([ids[k]]))
        before = now
    return out


def _ids(tokenizer: Any, tokens: Sequence[str]) -> list[int] | None:
    """The ids of token strings the tokenizer made (None if it cannot say)."""
    try:
        ids = tokenizer.convert_tokens_to_ids(list(tokens))
    except Exception:  # a tokenizer without a vocabulary lookup: the raw tokens stay
        return None
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        return None
    return ids


@dataclass(repr=False)
class GenerationAttribution(MatrixViews):
    """Per step (generated token) of each sample, one score per attributed token.

    Attributes:
        method: the registered method's name; ``kind``: ``"decoder"``, ``"seq2seq"`` or
            ``"custom"`` (a model with ``logprobs_fn``).
        scores: (B, K, L) float64. Decoder-only: L = P + K, the prompt positions as given
            (padding scored 0) then the K targets; step k scores 0 at and after P + k.
            Encoder–decoder: (B, K, S) over the source. ``custom``: over the lookup's positions
            as the model saw them.
        signed: (B, K, L) signed sums over D (for ``gradient`` with ``reduce="norm"``, whose
            scores are L2 norms).
        target_scores: (B, K, K) over the decoder inputs (encoder–decoder: column j = decoder
            input j, the start token then y_0 … y_{K−2}; step k reads columns 0 … k), else
            None; ``target_signed`` its signed sums.
        step_scores: name → (B, K): ``probability`` of y_k, ``entropy`` (nats) of step k's
            distribution (NaN at padded steps).
        quantity: (B, K) the explained quantity log p(y_k) (− log p(y'_k)).
        targets, target_mask, contrast: (B, K) the continuation explained.
        prompt_length: P (decoder-only), else 0.
        column_mask: (B, L) bool, the columns that are real tokens.
        tokens: per sample the L column tokens (decoder-only, with a tokenizer), else None.
        target_tokens: per sample its continuation's tokens (with a tokenizer), else None.
        grads: (B, K, L, D) float32 with ``return_grads`` (the method's per-dimension values:
            the gradient for ``gradient`` / ``smoothgrad``), else None; ``target_grads``
            (B, K, K, D) for encoder–decoders.
        delta: (B, K) completeness deltas (integrated gradients), else None.
        info: the passes run ((rows, width) each) and method facts.
        tokenizer: the tokenizer given, else None: with it, :attr:`items` show every token as
            text (the tokenizer's own decoding, in context) and say when the end-of-sequence
            token ended a generation early.
        prompts: per sample the prompt as given (the headings and each item's ``text``);
            None: the prompt decoded from its tokens (or its tokens joined).
    """

    method: str
    kind: str
    scores: np.ndarray
    signed: np.ndarray
    step_scores: dict[str, np.ndarray]
    quantity: np.ndarray
    targets: np.ndarray
    target_mask: np.ndarray
    contrast: np.ndarray | None
    prompt_length: int
    column_mask: np.ndarray = field(repr=False)
    tokens: list[list[str]] | None = None
    target_tokens: list[list[str]] | None = None
    grads: np.ndarray | None = field(default=None, repr=False)
    delta: np.ndarray | None = None
    target_scores: np.ndarray | None = None
    target_signed: np.ndarray | None = field(default=None, repr=False)
    target_grads: np.ndarray | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)
    prompts: list[str] | None = None

    _title = "embgrad generation"

    @property
    def items(self) -> list[StepAttribution]:
        """One :class:`~embgrad.items.StepAttribution` per sample: its real steps (rows) × the
        input tokens they can read (columns; prompt padding and the last target dropped)."""
        out = []
        for b in range(self.targets.shape[0]):
            steps = np.flatnonzero(self.target_mask[b])
            cols, mat, src = self._columns(b, steps)
            names = self._names(b)
            gen = (
                self.target_tokens[b]
                if self.target_tokens is not None
                else [str(int(t)) for t in self.targets[b, steps]]
            )
            text = " ".join(names[j] for j in self._prompt_cols(b))
            decoded = self._decoded(b, steps)
            if decoded is not None:
                names, gen, text = decoded
            if self.prompts is not None and b < len(self.prompts):
                text = str(self.prompts[b])
            out.append(
                StepAttribution(
                    text=text,
                    tokens=[names[j] for j in np.flatnonzero(cols)],
                    generated=list(gen),
                    scores=mat[:, cols].tolist(),
                    step_scores={n: v[b, steps].tolist() for n, v in self.step_scores.items()},
                    quantity=self.quantity[b, steps].tolist(),
                    method=self.method,
                    kind=self.kind,
                    delta=None if self.delta is None else self.delta[b, steps].tolist(),
                    source_length=int(self.column_mask[b].sum()) if src else 0,
                    requested=int(self.targets.shape[1]),
                    stopped_at_eos=self._stopped_at_eos(b, steps),
                )
            )
        return out

    def _stopped_at_eos(self, b: int, steps: np.ndarray) -> bool:
        """The tokenizer's end-of-sequence token ended sample ``b`` before the steps asked."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if not isinstance(eos, int) or not 0 < steps.size < self.targets.shape[1]:
            return False
        return int(self.targets[b, steps[-1]]) == eos

    def _decoded(self, b: int, steps: np.ndarray) -> tuple[list[str], list[str], str] | None:
        """(column texts, generated texts, prompt text) of sample ``b`` by the tokenizer's own
        decoding in context, or None without a tokenizer (or tokens it cannot map back)."""
        tok = self.tokenizer
        if tok is None or not hasattr(tok, "decode") or self.tokens is None:
            return None
        raw = list(self.tokens[b])
        ids = _ids(tok, raw)
        if ids is None:
            return None
        names = list(raw)
        if self.kind == "decoder":
            real = [j for j in np.flatnonzero(self.column_mask[b, : self.prompt_length])]
            prompt_ids = [ids[j] for j in real]
            gen_ids = [int(t) for t in self.targets[b, steps]]
            pieces = token_texts(tok, prompt_ids + gen_ids)
            for j, piece in zip(real, pieces, strict=False):
                names[j] = piece
            gen = pieces[len(prompt_ids) :]
            for k, piece in zip(steps, gen, strict=True):  # the targets' columns
                if self.prompt_length + k < len(names):
                    names[self.prompt_length + k] = piece
        elif self.kind == "seq2seq":
            real = [j for j in np.flatnonzero(self.column_mask[b])]
            prompt_ids = [ids[j] for j in real]
            for j, piece in zip(real, token_texts(tok, prompt_ids), strict=True):
                names[j] = piece
            gen = token_texts(tok, [int(t) for t in self.targets[b, steps]])
            names = names + ["<start>", *gen][: self.targets.shape[1]]
        else:
            return None
        text = str(tok.decode(prompt_ids, skip_special_tokens=True)).strip()
        return names, gen, text

    def _prompt_cols(self, b: int) -> np.ndarray:
        if self.kind == "decoder":
            return np.flatnonzero(self.column_mask[b, : self.prompt_length])
        return np.flatnonzero(self.column_mask[b])

    def _columns(self, b: int, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(kept columns (L,) bool, the (steps, L) matrix, source columns or 0)."""
        scores = self.scores[b, steps]
        if self.kind == "seq2seq" and self.target_scores is not None:
            n = steps.shape[0]
            dec = np.zeros(self.target_scores.shape[2], dtype=bool)
            dec[:n] = True  # decoder inputs 0 … n − 1 (start, y_0 … y_{n−2})
            cols = np.concatenate([self.column_mask[b], dec])
            return cols, np.concatenate([scores, self.target_scores[b, steps]], axis=1), 1
        cols = self.column_mask[b].copy()
        if self.kind == "decoder" and steps.size:
            cols[self.prompt_length + steps[-1] :] = False  # no step reads the last target
        return cols, scores, 0

    def _names(self, b: int) -> list[str]:
        """The token of every column (ids as text without a tokenizer)."""
        if self.kind == "seq2seq":
            src = self.tokens[b] if self.tokens is not None else None
            width = self.scores.shape[2]
            src = src or [str(i) for i in range(width)]
            start = "<start>"
            tgt = self.target_tokens[b] if self.target_tokens is not None else None
            tgt = tgt or [str(int(t)) for t in self.targets[b]]
            return list(src) + [start, *tgt][: self.targets.shape[1]]
        if self.tokens is not None:
            return list(self.tokens[b])
        if self.kind == "decoder":
            return [f"#{j}" for j in range(self.prompt_length)] + [
                str(int(t)) for t in self.targets[b]
            ]
        return [f"#{j}" for j in range(self.scores.shape[2])]

    def _view_meta(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind}

    def __repr__(self) -> str:
        items = self.items
        texts = ", ".join(
            repr(i.text if len(i.text) <= 40 else i.text[:39] + "…") for i in items[:3]
        )
        more = f", … ({len(items) - 3} more)" if len(items) > 3 else ""
        steps = sum(len(i.generated) for i in items)
        return (
            f"<GenerationAttribution method={self.method!r} kind={self.kind!r}: "
            f"{len(items)} generation(s), {steps} step(s): {texts}{more}>"
        )

    __str__ = __repr__
