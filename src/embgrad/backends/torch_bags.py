"""Embedding bags: map a bag's output gradient back to the table rows it read.

``F.embedding_bag`` reduces the rows of each bag (sum, mean or max) into one output row, so
the per-id gradient that reaches the table is the bag's output gradient scaled by the id's
per_sample_weight (sum), divided by the bag's non-padding size (mean), or masked to the
dimensions where the id was the argmax (max).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(eq=False)
class BagRows:
    """Maps an embedding bag's output gradient (n_bags, D) to per-id table-row gradients.

    ``bag`` and ``ids`` (M,) list the ids that reach the table (outside any bag or equal to
    padding_idx dropped); ``weights`` (M,) are the per_sample_weights (sum mode), ``count``
    (n_bags,) the non-padding bag sizes (mean mode), ``argmax`` (n_bags, D) the row chosen per
    dimension (max mode).
    """

    mode: str
    bag: torch.Tensor
    ids: torch.Tensor
    vocab: int
    weights: torch.Tensor | None = None
    count: torch.Tensor | None = None
    argmax: torch.Tensor | None = None

    def __call__(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bag index (M,), ids (M,), gradient rows (M, D)) for the output gradient ``grad``."""
        if self.mode == "max" and self.argmax is not None:
            keys = torch.unique(self.bag * self.vocab + self.ids)
            bag, ids = keys // self.vocab, keys % self.vocab
            hit = self.argmax[bag] == ids[:, None]
            return bag, ids, grad[bag] * hit.to(grad.dtype)
        rows = grad[self.bag]
        if self.weights is not None:
            rows = rows * self.weights[:, None].to(rows.dtype)
        if self.count is not None:
            rows = rows / self.count[self.bag][:, None].to(rows.dtype)
        return self.bag, self.ids, rows


def bag_rows(
    flat: torch.Tensor,
    starts: torch.Tensor,
    *,
    mode: str,
    include_last: bool,
    padding_idx: int | None,
    weights: torch.Tensor | None,
    argmax: torch.Tensor | None,
    vocab: int,
) -> BagRows:
    """The bag layout of a flat id list (N,) cut at ``starts`` (PyTorch's offsets)."""
    n_bags = int(starts.numel()) - (1 if include_last else 0)
    pos = torch.arange(flat.numel(), device=flat.device)
    bag = torch.bucketize(pos, starts[:n_bags].to(torch.int64), right=True) - 1
    keep = bag >= 0
    if include_last and starts.numel():
        keep &= pos < starts[-1]
    if padding_idx is not None:
        keep &= flat != padding_idx
    bag, ids = bag[keep], flat[keep].to(torch.int64)
    w = weights.detach().reshape(-1)[keep] if weights is not None else None
    count = None
    if mode == "mean":
        count = torch.bincount(bag, minlength=max(n_bags, 0)).clamp(min=1)
    return BagRows(mode, bag, ids, vocab, weights=w, count=count, argmax=argmax)
