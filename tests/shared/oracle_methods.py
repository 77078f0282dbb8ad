"""Slow references for the attribution methods, and the shared MiniLM fixtures' loaders.

The references never call embgrad: one sample at a time, the word embeddings looked up by hand
and fed through ``inputs_embeds``, one ``torch.autograd.grad`` per sample (and per noise draw).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

PAIRS = Path(__file__).resolve().parents[2] / "src/embgrad/models/data/pairs.json"


@functools.lru_cache(maxsize=1)
def minilm() -> tuple[Any, Any]:
    """(BertModel, tokenizer): the bundled all-MiniLM-L6-v2, loaded once per test session."""
    from embgrad.models.minilm import load_minilm

    torch.set_num_threads(2)
    model, tok, _ = load_minilm()
    return model, tok


def sentences(n: int = 4) -> list[str]:
    pairs = json.loads(PAIRS.read_text())["pairs"]
    return [s for p in pairs for s in p][:n]


def encode(texts: list[str]) -> dict[str, torch.Tensor]:
    _, tok = minilm()
    enc = tok(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the mask, L2-normalised (the sentence-transformers encoding), written out."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    e = (hidden * m).sum(1) / m.sum(1)
    return e / e.norm(dim=1, keepdim=True)


class CosToConstant:
    """f_i = cos(embedding of sample i, c_i) for fixed unit vectors c (B, D): per-sample, with
    ``rows`` (the methods' contract) so it follows repeated samples."""

    def __init__(self, mask: torch.Tensor, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        c = torch.randn(mask.shape[0], 384, generator=g)
        self.c, self.mask = c / c.norm(dim=1, keepdim=True), mask

    def __call__(self, outputs: Any, rows: np.ndarray) -> torch.Tensor:
        r, hidden = torch.as_tensor(rows), outputs.last_hidden_state
        mask = self.mask[r]
        assert not mask[:, hidden.shape[1] :].any()  # a pass may stop at its samples' lengths
        mask = mask[:, : hidden.shape[1]]
        return (pooled(hidden, mask) * self.c[r]).sum(-1)

    def one(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        return (pooled(hidden, self.mask[i : i + 1]) * self.c[i : i + 1]).sum()


def naive_grads(
    enc: dict[str, torch.Tensor], f: CosToConstant, noise: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample (and per noise row, if given, sample-major): (x, g, f) by one backward each.

    Returns x (B, T, D), g (R, T, D) and f (R,), R = B or the number of noise rows.
    """
    model, _ = minilm()
    ids, mask = enc["input_ids"], enc["attention_mask"]
    table = model.embeddings.word_embeddings.weight.detach()
    x = table[ids]
    rows = range(ids.shape[0]) if noise is None else range(noise.shape[0])
    per = 1 if noise is None else noise.shape[0] // ids.shape[0]
    gs, fs = [], []
    for r in rows:
        i = r // per
        e = x[i : i + 1].clone()
        if noise is not None:
            e = e + torch.as_tensor(noise[r : r + 1])
        e.requires_grad_()
        out = model(inputs_embeds=e, attention_mask=mask[i : i + 1])
        val = f.one(out.last_hidden_state, i)
        (g,) = torch.autograd.grad(val, e)
        gs.append(g[0].numpy())
        fs.append(float(val.detach()))
    return x.numpy(), np.stack(gs), np.asarray(fs)
