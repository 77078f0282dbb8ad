"""``GenerationAttribution``: what ``embgrad.attribute_generation`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..items import StepAttribution
from ..render import matrix


@dataclass
class GenerationAttribution:
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
            out.append(
                StepAttribution(
                    text=" ".join(names[j] for j in self._prompt_cols(b)),
                    tokens=[names[j] for j in np.flatnonzero(cols)],
                    generated=list(gen),
                    scores=mat[:, cols].tolist(),
                    step_scores={n: v[b, steps].tolist() for n, v in self.step_scores.items()},
                    quantity=self.quantity[b, steps].tolist(),
                    method=self.method,
                    kind=self.kind,
                    delta=None if self.delta is None else self.delta[b, steps].tolist(),
                    source_length=int(self.column_mask[b].sum()) if src else 0,
                )
            )
        return out

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

    def to_json(self, path: str | Path | None = None) -> str:
        """The items as JSON text (``{"embgrad_version", "method", "kind", "items": [...]}``)."""
        text = matrix.to_json(self.items, {"method": self.method, "kind": self.kind})
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_html(self, path: str | Path | None = None, *, title: str = "embgrad generation") -> str:
        """One self-contained HTML report (a matrix per generation); written to ``path``."""
        text = matrix.to_html(self.items, title=title)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def plot(self, path: str | Path | None = None) -> Any:
        """The heatmaps (matplotlib Figure); saved as PNG when ``path`` is given."""
        if path is not None:
            matrix.save(self.items, "png", path)
        return matrix.figure(self.items)

    def show(self, console: Any = None, *, top: int = 3) -> None:
        """Print, for each generated token, its top input tokens (plain text when not a TTY)."""
        matrix.show(self.items, console=console, top=top)

    def _repr_html_(self) -> str:
        return self.to_html()
