"""Texts → the model's inputs: tokenizing, truncation flags, and the input layout per model.

Every batch comes out as a :class:`TextBatch`: the native inputs the model's forward takes, the
(B, T) mask of real tokens (numpy and native), which texts were truncated, and the tokenizer's
own token strings when a ``tokenize`` callable gave them. Native arrays are made by the model's
backend (``backend_for(model).array``), so nothing here tests for a framework.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import FRAMEWORKS, backend_for, is_array, ops_for
from ..errors import InputError
from ..tasks.base import TOKENIZER_LOCK


@dataclass
class TextBatch:
    """One tokenized batch: native model inputs, the (B, T) mask, tokens, truncation flags."""

    inputs: Any
    mask: np.ndarray
    mask_native: Any
    truncated: list[bool]
    tokens: list[list[str]] | None = None


def from_callable(tokenize: Callable[[list[str]], Any], texts: list[str]) -> TextBatch:
    """A batch from a user's ``tokenize(texts) -> dict of native arrays`` (with
    ``attention_mask`` and/or input ids, optionally ``tokens``: token strings per text)."""
    enc = dict(tokenize(texts))
    tokens = enc.pop("tokens", None)
    ids = next((v for k, v in enc.items() if "ids" in k and is_array(v)), None)
    mask_native = enc.get("attention_mask")
    if mask_native is None:
        if ids is None:
            raise InputError("tokenize() must return input ids and/or an attention_mask")
        mask_native = ids * 0 + 1
    mask = ops_for(mask_native).to_numpy(mask_native).astype(bool)
    return TextBatch(enc, mask, mask_native, [False] * len(texts), tokens)


def tokenize(
    tokenizer: Any, texts: list[str], max_length: int
) -> tuple[dict[str, Any], list[bool]]:
    """An HF tokenizer's right-padded numpy encoding of ``texts`` (cut to ``max_length``
    tokens) and, per text, whether it was longer."""
    with TOKENIZER_LOCK:  # a fast tokenizer keeps its padding/truncation settings in itself
        longer = tokenizer(texts, truncation=True, max_length=max_length + 1)["input_ids"]
        tokenizer.padding_side = "right"
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
    truncated = [len(x) > max_length for x in longer]
    return dict(enc), truncated


def token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    """The number of tokens (special tokens included) of each text, untruncated: what a
    truncated text's heading reports (``truncated to 256 of 2,731 tokens``)."""
    with TOKENIZER_LOCK:
        ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


def hf_inputs(model: Any, enc: dict[str, Any], truncated: list[bool]) -> TextBatch:
    """Keyword inputs of a HuggingFace model: ``input_ids``, ``attention_mask``
    (and ``token_type_ids`` when the tokenizer gives them), int64."""
    backend = backend_for(model)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    inputs = {"input_ids": backend.array(model, ids), "attention_mask": backend.array(model, mask)}
    if "token_type_ids" in enc:
        types = np.asarray(enc["token_type_ids"], dtype=np.int64)
        inputs["token_type_ids"] = backend.array(model, types)
    return TextBatch(inputs, mask.astype(bool), inputs["attention_mask"], truncated)


def bert_tuple_inputs(model: Any, enc: dict[str, Any], truncated: list[bool]) -> TextBatch:
    """Positional inputs of gluonnlp's ``BERTModel``: (ids, token types, valid length), all
    float32 as gluonnlp feeds them."""
    backend = backend_for(model)
    ids = np.asarray(enc["input_ids"], dtype=np.float32)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    types = np.asarray(enc.get("token_type_ids", np.zeros_like(ids)), dtype=np.float32)
    valid = mask.sum(1).astype(np.float32)
    inputs = tuple(backend.array(model, a) for a in (ids, types, valid))
    mask_native = backend.array(model, mask.astype(np.float32))
    return TextBatch(inputs, mask.astype(bool), mask_native, truncated)


Layout = Callable[[Any, dict[str, Any], list[bool]], TextBatch]
#: the input layouts an HF tokenizer's output can be fed in, by the names the backends' table uses
_BY_NAME: dict[str, Layout] = {"hf": hf_inputs, "bert_tuple": bert_tuple_inputs}
#: the input layout of a model fed by an HF tokenizer, by its backend's framework name
LAYOUTS: dict[str, Layout] = {f.name: _BY_NAME[f.layout] for f in FRAMEWORKS}
