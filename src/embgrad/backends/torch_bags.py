"""Embedding bags: map a bag's output gradient back to the table rows it read.

``F.embedding_bag`` reduces the rows of each bag (sum, mean or max) into one output row, so
the per-id gradient that reaches the table is the bag's output gradient scaled by the id's
per_sample_weight (sum), divided by the bag's non-padding size (mean), or masked to the
dimensions where the id was the argmax (max).

The bag layout (which bag each id belongs to) is only needed for table gradients, so it is
worked out on the first call, not during the forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class BagLayout:
    """Which ids reach the table, and from which bag: ``bag`` and ``ids`` (M,), with ids outside
    any bag or equal to padding_idx dropped; ``weights`` (M,) the per_sample_weights (sum mode),
    ``count`` (n_bags,) the non-padding bag sizes (mean mode)."""

    bag: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor | None
    count: torch.Tensor | None


@dataclass(eq=False)
class BagRows:
    """Maps an embedding bag's output gradient (n_bags, D) to per-id table-row gradients.

    Holds the lookup's flat ids (N,) and PyTorch's ``starts`` (offsets); ``argmax`` (n_bags, D)
    is the row chosen per dimension (max mode), taken during the forward.
    """

    mode: str
    flat: torch.Tensor
    starts: torch.Tensor
    vocab: int
    include_last: bool = False
    padding_idx: int | None = None
    per_sample_weights: torch.Tensor | None = None
    argmax: torch.Tensor | None = None
    _layout: BagLayout | None = field(default=None, repr=False)

    def layout(self) -> BagLayout:
        """The bag layout (computed once)."""
        if self._layout is None:
            self._layout = _layout(self)
        return self._layout

    def __call__(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bag index (M,), ids (M,), gradient rows (M, D)) for the output gradient ``grad``."""
        lay = self.layout()
        if self.mode == "max" and self.argmax is not None:
            keys = torch.unique(lay.bag * self.vocab + lay.ids)
            bag, ids = keys // self.vocab, keys % self.vocab
            hit = self.argmax[bag] == ids[:, None]
            return bag, ids, grad[bag] * hit.to(grad.dtype)
        rows = grad[lay.bag]
        if lay.weights is not None:
            rows = rows * lay.weights[:, None].to(rows.dtype)
        if lay.count is not None:
            rows = rows / lay.count[lay.bag][:, None].to(rows.dtype)
        return lay.bag, lay.ids, rows


def _layout(r: BagRows) -> BagLayout:
    """The bag layout of a flat id list (N,) cut at ``starts`` (PyTorch's offsets)."""
    flat, starts = r.flat, r.starts
    n_bags = int(starts.numel()) - (1 if r.include_last else 0)
    pos = torch.arange(flat.numel(), device=flat.device)
    bag = torch.bucketize(pos, starts[:n_bags].to(torch.int64), right=True) - 1
    keep = bag >= 0
    if r.include_last and starts.numel():
        keep &= pos < starts[-1]
    if r.padding_idx is not None:
        keep &= flat != r.padding_idx
    bag, ids = bag[keep], flat[keep].to(torch.int64)
    w = r.per_sample_weights
    weights = w.detach().reshape(-1)[keep] if w is not None else None
    count = None
    if r.mode == "mean":
        count = torch.bincount(bag, minlength=max(n_bags, 0)).clamp(min=1)
    return BagLayout(bag, ids, weights, count)


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
    """The row map of a flat id list (N,) cut at ``starts``; its layout is computed on first use.

    ``flat``, ``starts`` and ``weights`` are copied (detached): the user may refill them for the
    next batch before asking for this one's table rows.
    """
    return BagRows(
        mode,
        flat.detach().clone(),
        starts.detach().clone(),
        vocab,
        include_last=include_last,
        padding_idx=padding_idx,
        per_sample_weights=None if weights is None else weights.detach().clone(),
        argmax=argmax,
    )
