"""``GenerationAttribution``: what ``embgrad.attribute_generation`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
