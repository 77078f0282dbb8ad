"""Hand-written torch pieces the influence benchmarks compare embgrad with (issue 19).

- :func:`by_length`: texts tokenized in batches of similar length (the order kept);
- :func:`lookup_grads`: the *floor* of index building: one forward with the word lookups'
  output as a leaf (``inputs_embeds``) and one ``torch.autograd.grad`` of the summed per-example
  losses to it: the activation-only backward every exact method must at least run;
- :func:`self_influence_by_hand`: Σ_c w_c ||G_c(z)||² from those lookup gradients, scattered by
  token id per example: an independent check of embgrad's self-influence (the table gradient of
  one example is its lookup gradients summed per token id, on the lookup path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def by_length(
    tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int
) -> tuple[list[Any], list[int]]:
    """(batches of ``BatchEncoding``, order): ``texts`` sorted by token count, then cut into
    batches padded to their longest; ``order[k]`` is the text index of the k-th example."""
    lengths = [
        len(ids)
        for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    ]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches = [
        tokenizer(
            [texts[i] for i in order[s : s + batch_size]],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        for s in range(0, len(order), batch_size)
    ]
    return batches, order


def word_table(model: Any) -> torch.nn.Embedding:
    return model.get_input_embeddings()


def lookup_grads(model: Any, batch: Any, labels: torch.Tensor) -> torch.Tensor:
    """(B, T, D) gradient of the summed cross-entropy losses w.r.t. the word lookups' output."""
    ids = batch["input_ids"]
    emb = word_table(model)(ids).detach().requires_grad_(True)
    kwargs = {k: v for k, v in batch.items() if k != "input_ids"}
    logits = model(inputs_embeds=emb, **kwargs).logits
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, emb)
    return grad


def floor_pass(model: Any, batches: Sequence[Any], labels: Sequence[torch.Tensor]) -> float:
    """The floor over all batches; returns a checksum so the work cannot be skipped."""
    total = 0.0
    for batch, y in zip(batches, labels, strict=True):
        total += float(lookup_grads(model, batch, y).abs().sum())
    return total


def table_rows(grad: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> list[dict[int, Any]]:
    """Per example: {token id: (D,) row of its word-table gradient}."""
    out = []
    for b in range(ids.shape[0]):
        keep = mask[b].bool()
        tok, g = ids[b][keep], grad[b][keep].double()
        uniq, inv = torch.unique(tok, return_inverse=True)
        rows = torch.zeros(len(uniq), g.shape[1], dtype=torch.float64).index_add_(0, inv, g)
        out.append({int(t): rows[k] for k, t in enumerate(uniq)})
    return out


def self_influence_by_hand(
    model: Any,
    states: Sequence[dict[str, Any]],
    weights: Sequence[float],
    batches: Sequence[Any],
    labels: Sequence[torch.Tensor],
    skip: Sequence[int] = (),
    top_rows: int | None = None,
) -> list[float]:
    """Σ_c w_c ||G_c(z)||² per example in batch order (the ``skip`` token ids left out; with
    ``top_rows`` only each example's k largest-norm rows per checkpoint)."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    n = sum(int(b["input_ids"].shape[0]) for b in batches)
    scores = [0.0] * n
    try:
        for state, w in zip(states, weights, strict=True):
            model.load_state_dict(state)
            k = 0
            for batch, y in zip(batches, labels, strict=True):
                grad = lookup_grads(model, batch, y)
                for rows in table_rows(grad, batch["input_ids"], batch["attention_mask"]):
                    norms = sorted(
                        (float(r @ r) for t, r in rows.items() if t not in skip), reverse=True
                    )
                    scores[k] += w * sum(norms[:top_rows] if top_rows else norms)
                    k += 1
    finally:
        model.load_state_dict(saved)
    return scores
