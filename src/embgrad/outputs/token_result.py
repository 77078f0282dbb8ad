"""``TokenClassAttribution``: what ``embgrad.attribute`` returns for token classification —
per text a matrix of explained positions × input tokens, shown with the generation views
(``render.matrix``: HTML, PNG, terminal, JSON, notebook)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..items import StepAttribution
from ..render.matrix_views import MatrixViews


@dataclass
class TokenClassAttribution(MatrixViews):
    """Per text, one row per explained position, one score per input token.

    Attributes:
        method: the registered method's name.
        scores: (B, K, T) float64; K the most explained positions of any text; rows past a
            text's own count are NaN.
        signed: (B, K, T) signed sums over D (``gradient`` with ``reduce="norm"`` scores norms).
        positions: (B, K) int, the explained input positions (−1 where none).
        labels: (B, K) int, the explained label indices (−1 where none, or unknown: a custom
            ``loss_fn``); ``label_names`` per text and row (None without the model's labels).
        probabilities: (B, K) p(label | x) at the inputs (NaN where none or unknown).
        quantity: (B, K) the explained value, log p(label) (or the ``loss_fn``'s).
        delta: (B, K) completeness deltas (integrated gradients), else None.
        grads: (B, K, T, D) float32 with ``return_grads``, else None.
        tokens: per text its T token strings (ids as text without a tokenizer).
        mask: (B, T) bool, the real tokens (columns shown).
        words: the rows are words (their first sub-token's label, as HF pipelines do);
            ``row_names`` then the words as written in the text (else None: the row's token).
    """

    method: str
    scores: np.ndarray
    signed: np.ndarray = field(repr=False)
    positions: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    quantity: np.ndarray = field(repr=False)
    tokens: list[list[str]] = field(repr=False)
    mask: np.ndarray = field(repr=False)
    label_names: list[list[str]] | None = field(default=None, repr=False)
    delta: np.ndarray | None = field(default=None, repr=False)
    grads: np.ndarray | None = field(default=None, repr=False)
    words: bool = False
    row_names: list[list[str]] | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    kind = "token_classification"

    def __repr__(self) -> str:
        b, k, t = self.scores.shape
        return (
            f"TokenClassAttribution(method={self.method!r}, texts={b}, "
            f"explained={int((self.positions >= 0).sum())} positions (K={k}), tokens={t})"
        )

    _title = "embgrad token classification"

    def _view_meta(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind, "words": self.words}

    @property
    def items(self) -> list[StepAttribution]:
        """One :class:`~embgrad.items.StepAttribution` per text: its explained positions
        (rows, "token → label") × its real tokens (columns)."""
        out = []
        for b in range(self.scores.shape[0]):
            rows = np.flatnonzero(self.positions[b] >= 0)
            cols = np.flatnonzero(self.mask[b])
            toks = self.tokens[b]
            names = self.label_names[b] if self.label_names is not None else None
            shown = self.row_names[b] if self.row_names is not None else None
            gen = [
                f"{shown[k] if shown is not None else toks[int(self.positions[b, k])]} → "
                + (names[k] if names is not None else str(int(self.labels[b, k])))
                for k in rows
            ]
            prob = self.probabilities[b, rows]
            out.append(
                StepAttribution(
                    text=" ".join(toks[j] for j in cols),
                    tokens=[toks[j] for j in cols],
                    generated=gen,
                    scores=self.scores[b][np.ix_(rows, cols)].tolist(),
                    step_scores={} if np.isnan(prob).all() else {"probability": prob.tolist()},
                    quantity=self.quantity[b, rows].tolist(),
                    method=self.method,
                    kind=self.kind,
                    delta=None if self.delta is None else self.delta[b, rows].tolist(),
                )
            )
        return out

    def run_rows(self) -> list[dict[str, Any]]:
        """Per text the fields of one data-run row (``data.writer.outputs_fields``): its
        matrix, and the explained labels (names where the model has them) and positions."""
        out = []
        for b, item in enumerate(self.items):
            keep = np.flatnonzero(self.positions[b] >= 0)
            names = self.label_names[b] if self.label_names is not None else None
            labels = [names[k] if names is not None else str(int(self.labels[b, k])) for k in keep]
            positions = [int(self.positions[b, k]) for k in keep]
            out.append(item.run_fields(labels=labels, positions=positions))
        return out
