"""``embgrad.attribute`` for token classification: ``attribute_tokens``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import InputError
from ..tasks.base import TOKENIZER_LOCK
from ..tasks.heads import id2label
from ..tasks.inputs import is_texts, tokenized
from . import tokens as tk
from .api import step_method
from .driver import explain
from .generation import first_input, to_np
from .rows import Outputs, has_head
from .token_result import TokenClassAttribution


def is_token_classifier(model: Any) -> bool:
    """An HF ``...ForTokenClassification`` model (by its class or its config's architectures)."""
    return has_head(model, "ForTokenClassification")


def attribute_tokens(
    model: Any,
    inputs: Any,
    target: Any = None,
    *,
    positions: Any = None,
    loss_fn: Callable[..., Any] | None = None,
    method: str = "gradient",
    tokenizer: Any = None,
    words: bool = False,
    return_grads: bool = False,
    layer: str = "word",
    mode: str = "eval",
    check: str = "auto",
    batch_axis: int = 0,
    tokens_per_pass: int | None = None,
    **options: Any,
) -> TokenClassAttribution:
    """Per explained position t of each text, the attribution of log p(label_t | x) to every
    input token.

    Args:
        model: an HF ``...ForTokenClassification``, or any model (Gluon included) with
            ``loss_fn``.
        inputs: the model's inputs (HF: ``input_ids``, ``attention_mask``), or texts with
            ``tokenizer``.
        target: None (each position's predicted label), one label (name or index) for all, or
            per text a list with one label per explained position.
        positions: per text the token positions to explain; default every real token that is
            not a special token of ``tokenizer`` (every real token without one).
        loss_fn: ``loss_fn(outputs, rows) -> (N, T)`` one quantity per position for the N rows
            fed (``rows[n]`` row n's text): for models without HF token-classification logits.
        words: explain words, not sub-tokens: each word's row is its first sub-token's (its
            label, as HF pipelines do); needs texts and a fast tokenizer.
        return_grads: keep ``.grads`` (B, K, T, D).
        batch_axis: the inputs' batch axis (1 for (T, B) layouts).
        **options: the method's options (``embgrad methods``).
    """
    cls = step_method(method, "token labels")
    cls.validate(options)
    words_of = _word_starts(inputs, tokenizer) if words else None
    starts = None if words_of is None else words_of[0]
    if words and starts is None:
        raise InputError("words=True needs texts and a fast tokenizer (with word_ids)")
    inputs = tokenized(model, inputs, tokenizer, "attribute")
    if isinstance(inputs, Mapping):
        inputs = dict(inputs)  # a tokenizer's BatchEncoding, or any other Mapping
    ids, mask = tk.ids_and_mask(inputs)
    if ids is None:
        first = to_np(first_input(inputs))
        if first.ndim < 2:
            raise InputError("token classification needs (B, T) inputs (one id per token)")
        ids = np.moveaxis(first, batch_axis, 0).astype(np.int64)
        mask = np.ones(ids.shape, dtype=bool)
    assert mask is not None
    batch, width = ids.shape
    if positions is not None:
        pos_list = tk.check_positions(positions, batch, width)
    elif starts is not None:
        pos_list = starts
    else:
        special = set(getattr(tokenizer, "all_special_ids", None) or [])
        pos_list = tk.default_positions(mask, ids, special)
    config = getattr(model, "config", None)
    label2id = getattr(config, "label2id", None) or None
    names_of = id2label(model)
    if loss_fn is None and config is None:
        raise InputError(
            f"{type(model).__name__} is not an HF token classifier: pass loss_fn(outputs, rows) "
            "returning one quantity per position, (N, T)"
        )
    if loss_fn is not None and target is not None:
        raise InputError("pass either loss_fn or target, not both")
    n_labels = len(names_of) or None
    labels = tk.resolve_labels(target, pos_list, label2id, n_labels)
    pos, active = tk.as_matrix(pos_list)
    builder = tk.TokenRows(
        inputs, Outputs(labels, active), pos, batch_axis=batch_axis, width=width,
        loss_fn=loss_fn,
    )  # fmt: skip
    explainer = cls(model, layer=layer, mode=mode, check=check, batch_axis=batch_axis)
    driver = explain(
        builder, explainer, options, tokens_per_pass=tokens_per_pass, return_grads=return_grads
    )
    if "target" in driver.seen:
        got = driver.seen["target"]
        labels = np.where(active & (labels < 0), np.nan_to_num(got, nan=-1), labels)
    labels = np.where(active, labels, -1).astype(np.int64)
    nan_rows = ~active
    scores, signed = driver.scores["word"], driver.signed["word"]
    scores[nan_rows] = np.nan
    signed[nan_rows] = np.nan
    prob = driver.seen.get("probability", np.full(labels.shape, np.nan))
    names = None
    if names_of and loss_fn is None:
        names = [[names_of.get(int(x), str(int(x))) for x in row] for row in labels]
    return TokenClassAttribution(
        method=cls.name,
        scores=scores,
        signed=signed,
        positions=pos,
        labels=labels,
        probabilities=np.where(active, prob, np.nan),
        quantity=driver.quantity,
        tokens=_token_strings(tokenizer, ids),
        mask=mask,
        label_names=names,
        delta=driver.delta,
        grads=driver.grads.get("word"),
        words=starts is not None,
        row_names=None if words_of is None or positions is not None else words_of[1],
        info=driver.info,
    )


def _word_starts(
    inputs: Any, tokenizer: Any
) -> tuple[list[np.ndarray], list[list[str]] | None] | None:
    """Per text the first sub-token of every word and the words themselves (from the
    tokenizer's character offsets, None where it has none); None without texts / word ids."""
    if not is_texts(inputs) or tokenizer is None:
        return None
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    with TOKENIZER_LOCK:
        enc = tokenizer(texts)
    starts = tk.word_starts(enc, len(texts))
    if starts is None:
        return None
    try:
        names = [
            [text[sp.start : sp.end] for sp in (enc.word_to_chars(b, enc.word_ids(b)[int(t)])
                                             for t in starts[b])]
            for b, text in enumerate(texts)
        ]  # fmt: skip
    except (TypeError, ValueError, AttributeError):
        names = None
    return starts, names


def _token_strings(tokenizer: Any, ids: np.ndarray) -> list[list[str]]:
    if tokenizer is not None and hasattr(tokenizer, "convert_ids_to_tokens"):
        return [[str(t) for t in tokenizer.convert_ids_to_tokens(row.tolist())] for row in ids]
    return [[str(int(i)) for i in row] for row in ids]
