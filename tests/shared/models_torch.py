"""Small torch models for the torch-backend tests (torch only: they run in the numpy-2 venv too)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyText(nn.Module):
    """Word (nn.Embedding, padding_idx) + position (F.embedding on a bare parameter, ids (T,) or
    (1, T)) + optional token-type lookups → tanh → dropout → optional BatchNorm → attention
    pooling → classes.  ``forward(ids, type_ids=None, embeds=None)``; ``embeds`` (B, T, D)
    replaces the word lookup (for vmap through the inputs)."""

    def __init__(
        self,
        vocab: int = 40,
        dim: int = 8,
        max_len: int = 16,
        classes: int = 3,
        *,
        pad: int | None = 0,
        dropout: float = 0.0,
        batchnorm: bool = False,
        pos_shape: str = "T",
    ) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, dim, padding_idx=pad)
        self.pos_embed = nn.Parameter(torch.randn(max_len, dim) * 0.5)
        self.token_type = nn.Embedding(2, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.BatchNorm1d(dim) if batchnorm else None
        self.score = nn.Linear(dim, 1)
        self.out = nn.Linear(dim, classes)
        self.pos_shape = pos_shape

    def forward(
        self,
        ids: torch.Tensor | None = None,
        type_ids: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.word(ids) if embeds is None else embeds
        t = h.shape[1]
        pos = torch.arange(t, device=h.device)
        if self.pos_shape == "1T":
            pos = pos[None]
        h = h + F.embedding(pos, self.pos_embed)
        if type_ids is not None:
            h = h + self.token_type(type_ids)
        h = self.drop(torch.tanh(h))
        if self.norm is not None:
            h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        a = torch.softmax(self.score(h).squeeze(-1), dim=1)
        return self.out((a[..., None] * h).sum(1))


class Bag(nn.Module):
    """nn.EmbeddingBag → ReLU → Linear; ``forward(ids, offsets=None, per_sample_weights=None)``."""

    def __init__(
        self,
        vocab: int = 30,
        dim: int = 6,
        classes: int = 3,
        *,
        mode: str = "mean",
        pad: int | None = None,
        include_last_offset: bool = False,
    ) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(
            vocab, dim, mode=mode, padding_idx=pad, include_last_offset=include_last_offset
        )
        self.out = nn.Linear(dim, classes)

    def forward(
        self,
        ids: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = () if per_sample_weights is None else (per_sample_weights,)  # Opacus: no None
        return self.out(torch.relu(self.bag(ids, offsets, *extra)))


class SharedTable(nn.Module):
    """One bare parameter looked up twice with F.embedding (query and document ids)."""

    def __init__(self, vocab: int = 25, dim: int = 5) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, dim))
        self.mix = nn.Linear(2 * dim, 1)

    def forward(self, query: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
        q = F.embedding(query, self.table).mean(1)
        d = torch.tanh(F.embedding(doc, self.table)).max(1).values
        return self.mix(torch.cat([q, d], dim=1)).squeeze(-1)


class InPlace(nn.Module):
    """Scales the lookup output in place (x.mul_), as some models do."""

    def __init__(self, vocab: int = 20, dim: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h.mul_(3.0)
        return self.out(torch.sin(h)).sum((1, 2))


class NoLookup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).squeeze(-1)


class Raises(nn.Module):
    """Looks up its ids, then fails half-way through the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.emb(ids)
        raise RuntimeError("boom in the middle of the forward")


def ce_loss(labels: torch.Tensor):
    """Per-sample cross-entropy (reduction='none') against ``labels``."""

    def loss(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none")

    return loss
