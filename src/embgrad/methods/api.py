"""One quantity per text, from a model and a tokenized batch to token attributions (where
``embgrad.attribute`` lands for it), and the per-text items every caller builds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends import is_array
from ..models.encode import TextBatch
from ..tasks.zeroshot import label_embedder
from ._arrays import to_numpy
from ._passes import batch_size_hint, ignores_padding

__all__ = ["attribute_task", "batch_size_hint", "build_items", "rank_key"]
from .base import Context, Scores, get_method
from .hotflip import flip_key
from .result import Attribution, TokenAttribution

if TYPE_CHECKING:
    from ..tasks import Task


def attribute_task(
    model: Any,
    inputs: Any,
    task: Task,
    *,
    method: str = "gradient",
    tokenizer: Any = None,
    layer: str = "word",
    mode: str = "eval",
    check: str = "auto",
    **options: Any,
) -> Attribution:
    """Token attributions of ``model`` on a tokenized batch for one quantity per text, the
    ``task``'s (``tasks.task_for``: the caller's ``loss_fn``, a class target, zero-shot labels
    or a pair's similarity), by the registered ``method``. ``embgrad.attribute`` lands here for
    every request that is not about several outputs per text (``outputs.route``).

    Args:
        model: a ``torch.nn.Module`` or ``mxnet.gluon.Block`` with an embedding lookup.
        inputs: as for :func:`embgrad.gradients` (an array, a tuple, or a dict or other
            ``Mapping`` such as a tokenizer's ``BatchEncoding``); batch first. A dict's
            ``attention_mask`` marks the tokens kept.
        task: what is explained; its ``prepare`` gets the labels' embedder of zero-shot
            labels (``tokenizer`` embeds them).
        method: one of :func:`embgrad.list_methods`.
        tokenizer: optional, to display tokens (``convert_ids_to_tokens``), to exclude its
            special tokens from HotFlip, and to embed zero-shot labels.
        layer: which lookup to attribute to (default the word lookup).
        mode: the model's mode, ``"eval"`` (default) or ``"train"``.
        check: the independence check of :func:`embgrad.gradients`.
        **options: the method's options (``embgrad methods`` lists them). For a quantity that
            reads no padding (``Task.padding_free``: a class, labels, a pair) on a HuggingFace
            or gluonnlp model with an ``attention_mask`` among the inputs, integrated gradients
            and SmoothGrad skip the padding (their ``mask=`` option).

    Returns:
        :class:`Attribution`: ``.tokens``, ``.scores``, ``.delta``, ``.items``, ``.to_html()``,
        ``.to_json()``, ``.plot()``, ``.show()``.
    """
    cls = get_method(method)
    if isinstance(inputs, Mapping) and not isinstance(inputs, dict):
        inputs = dict(inputs)  # a tokenizer's BatchEncoding, or any other Mapping
    mask = _attention_mask(inputs)
    n = batch_size_hint(inputs)
    native = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    batch = TextBatch(inputs, mask if mask is not None else np.ones((n, 0), bool), native,
                      [False] * n)  # fmt: skip
    task.prepare(label_embedder(model, inputs, tokenizer, mode))
    loss_fn = task.loss(0, batch)
    ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else None
    auto = task.padding_free and mask is not None and mask.shape == getattr(ids, "shape", None)
    # a quantity that reads no padding does not care where the passes stop
    ctx = Context(mask=mask, tokenizer=tokenizer, skip_padding=auto and ignores_padding(model))
    for key, value in cls.defaults(ctx).items():
        options.setdefault(key, value)
    scores = cls(model, layer=layer, mode=mode, check=check).attribute(inputs, loss_fn, **options)
    keep = _keep(scores, mask)
    items = build_items(
        scores,
        keep,
        tokens_of=_token_namer(tokenizer),
        texts=None,
        targets=task.labels(loss_fn),
        truncated=None,
        flips=scores.hotflip,
        hotflip_k=None,
        direction=str(scores.info.get("direction", "increase")),
    )
    return Attribution(items=items, method=cls.name, raw=scores, mask=keep)


def _attention_mask(inputs: Any) -> np.ndarray | None:
    if isinstance(inputs, Mapping) and is_array(inputs.get("attention_mask")):
        return to_numpy(inputs["attention_mask"]).astype(bool)
    return None


def _keep(scores: Scores, mask: np.ndarray | None) -> np.ndarray:
    if mask is not None and mask.shape == scores.ids.shape:
        return mask
    pad = scores.base.padding_idx if scores.base is not None else None
    return scores.ids != pad if pad is not None else np.ones(scores.ids.shape, dtype=bool)


def _token_namer(tokenizer: Any) -> Callable[[list[int]], list[str]]:
    if tokenizer is not None and hasattr(tokenizer, "convert_ids_to_tokens"):
        return lambda ids: [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    return lambda ids: [str(i) for i in ids]


def rank_key(direction: str) -> Callable[[dict[str, Any]], tuple[bool, float]]:
    """Sort key (descending) of HotFlip candidates for ``direction``: verified candidates
    first, by their measured change, then the others by their estimate."""
    return lambda c: flip_key(c, direction)


def build_items(
    scores: Scores,
    keep: np.ndarray,
    *,
    tokens_of: Callable[[list[int]], list[str]],
    texts: Sequence[str] | None,
    targets: Sequence[str | None] | None,
    truncated: Sequence[bool] | None,
    flips: list[list[dict[str, Any]]] | None,
    hotflip_k: int | None,
    direction: str = "increase",
) -> list[TokenAttribution]:
    """One :class:`TokenAttribution` per sample, keeping the positions where ``keep`` (B, T).

    HotFlip candidates get token strings and positions among the kept tokens; with
    ``hotflip_k``, each position's best candidate (by ``direction``: verified change first, see
    :func:`rank_key`) is kept and the best ``hotflip_k`` positions remain: the swaps that change
    f most, at distinct positions. Each keeps ``estimate``, ``verified`` (None where not
    measured) and the ``direction`` it was ranked by.
    """
    norms = np.zeros(scores.losses.shape[0])
    if scores.base is not None:
        norms = to_numpy(scores.base.lookup.table_grad_norms()).astype(np.float64)
    items = []
    for b in range(scores.ids.shape[0]):
        pos = np.flatnonzero(keep[b])
        where = {int(p): i for i, p in enumerate(pos)}
        ids = scores.ids[b, pos].tolist()
        cands = [c for c in (flips[b] if flips is not None else []) if c["position"] in where]
        if hotflip_k is not None and not any("step" in c for c in cands):  # a search: all steps
            best: dict[int, dict[str, Any]] = {}
            for c in sorted(cands, key=rank_key(direction), reverse=True):
                best.setdefault(c["position"], c)
            cands = list(best.values())[:hotflip_k]
        names = tokens_of([c["replacement_id"] for c in cands]) if cands else []
        current = tokens_of(ids)
        hot = [
            {
                "position": where[c["position"]],
                "token": current[where[c["position"]]],
                "replacement": name,
                "estimate": float(c["estimate"]),
                "verified": None if c.get("verified") is None else float(c["verified"]),
                "direction": direction,
                **({"step": int(c["step"])} if "step" in c else {}),
            }
            for c, name in zip(cands, names, strict=True)
        ]
        items.append(
            TokenAttribution(
                text=texts[b] if texts is not None else " ".join(current),
                tokens=current,
                scores=[float(s) for s in scores.scores[b, pos]],
                loss=float(scores.losses[b]),
                table_grad_norm=float(norms[b]),
                delta=None if scores.delta is None else float(scores.delta[b]),
                hotflip=hot,
                truncated=bool(truncated[b]) if truncated is not None else False,
                method=scores.method,
                target=targets[b] if targets is not None else None,
            )
        )
    return items
