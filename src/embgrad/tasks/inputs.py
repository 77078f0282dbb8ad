"""Texts given where a model's inputs are expected: tokenized for the user when a tokenizer is
given, else an error saying how to tokenize first (never "no array found")."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import backend_for
from ..errors import InputError
from .base import TOKENIZER_LOCK


def is_texts(inputs: Any) -> bool:
    """Whether ``inputs`` is a string or a non-empty list/tuple of strings."""
    if isinstance(inputs, str):
        return True
    return (
        isinstance(inputs, (list, tuple))
        and bool(inputs)
        and all(isinstance(t, str) for t in inputs)
    )


def tokenized(model: Any, inputs: Any, tokenizer: Any, what: str, **kwargs: Any) -> Any:
    """``inputs`` as they are, or — given texts — the tokenizer's ``input_ids`` and
    ``attention_mask`` (right-padded, special tokens added, native arrays of ``model``'s
    framework; ``kwargs`` go to the tokenizer, e.g. ``text_pair``). Texts without a tokenizer:
    InputError with the line that tokenizes them."""
    if not is_texts(inputs):
        return inputs
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if tokenizer is None or not callable(tokenizer):
        raise InputError(
            f"{what} got text, not token ids: tokenize first, e.g. inputs = tokenizer(texts, "
            f"padding=True, return_tensors='pt'), or pass tokenizer=tokenizer and embgrad "
            "tokenizes for you"
        )
    with TOKENIZER_LOCK:
        enc = tokenizer(texts, **kwargs)
    rows = enc["input_ids"]
    if any(len(r) == 0 for r in rows):
        raise InputError(f"{what}: a text has no tokens; give non-empty texts")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None) or 0
    width = max(len(r) for r in rows)
    out: dict[str, np.ndarray] = {}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key not in enc and key != "attention_mask":
            continue
        fill = int(pad) if key == "input_ids" else 0
        a = np.full((len(rows), width), fill, dtype=np.int64)
        for b, row in enumerate(rows):
            a[b, : len(row)] = 1 if key == "attention_mask" else enc[key][b]
        out[key] = a
    backend = backend_for(model)
    return {k: backend.array(model, v) for k, v in out.items()}
