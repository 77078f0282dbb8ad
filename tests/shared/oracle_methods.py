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


# --- the methods' contract (tests/methods/test_method_contract.py) ----------------------------
# A tiny classifier, the same in both frameworks: word lookup x (T, D) → tanh(x W1 + b1) → mean
# over the real tokens → · W2 + b2 → log p(target). The references below run it one text at a
# time, unpadded (so there is no mask to get wrong), in float64, one torch.autograd.grad per
# sample and per point (integrated gradients' steps, SmoothGrad's draws, flipped texts).


def pooled_params(vocab: int, dim: int, hidden: int, classes: int, seed: int = 0) -> dict:
    """The classifier's parameters, float32 numpy: ``table`` (V, D), ``w1`` (D, H), ``b1``,
    ``w2`` (H, C), ``b2``."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "table": normal(vocab, dim),
        "w1": normal(dim, hidden, scale=0.7),
        "b1": normal(hidden, scale=0.3),
        "w2": normal(hidden, classes, scale=0.7),
        "b2": normal(classes, scale=0.3),
    }


def pooled_f(p: dict, x: torch.Tensor, target: int) -> torch.Tensor:
    """log p(target | x) for ONE unpadded text's word embeddings x (L, D), float64."""
    t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in p.items()}
    h = torch.tanh(x @ t["w1"] + t["b1"])
    return torch.log_softmax(h.mean(0) @ t["w2"] + t["b2"], -1)[target]


def _fg(p: dict, x: np.ndarray, target: int) -> tuple[float, np.ndarray]:
    e = torch.as_tensor(np.asarray(x, dtype=np.float64)).requires_grad_()
    val = pooled_f(p, e, target)
    (g,) = torch.autograd.grad(val, e)
    return float(val.detach()), g.numpy()


def _embed(p: dict, ids: np.ndarray) -> np.ndarray:
    return p["table"].astype(np.float64)[np.asarray(ids)]


def _pad(rows: list[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length, *rows[0].shape[1:]))
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r
    return out


def oracle_gradient(p: dict, texts: list, targets: np.ndarray, length: int, **_: Any) -> dict:
    """``gradient`` (reduce="norm"): g = df/dx per text; scores ||g_t||₂, padding 0."""
    fg = [_fg(p, _embed(p, ids), int(c)) for ids, c in zip(texts, targets, strict=True)]
    g = _pad([g for _, g in fg], length)
    return {"losses": np.array([f for f, _ in fg]), "attributions": g,
            "scores": np.linalg.norm(g, axis=-1), "signed": g.sum(-1)}  # fmt: skip


def oracle_grad_x_input(p: dict, texts: list, targets: np.ndarray, length: int, **_: Any) -> dict:
    """``grad_x_input`` (reduce="sum"): g ⊙ x summed over the embedding."""
    out = oracle_gradient(p, texts, targets, length)
    x = _pad([_embed(p, ids) for ids in texts], length)
    out["attributions"] = out["attributions"] * x
    out["scores"] = out["signed"] = out["attributions"].sum(-1)
    return out


def oracle_integrated_gradients(
    p: dict, texts: list, targets: np.ndarray, length: int, *, n_steps: int, **_: Any
) -> dict:
    """``integrated_gradients``, zeros baseline, Gauss–Legendre (numpy's ``leggauss``):
    IG = x ⊙ Σ_s w_s g(α_s x); delta = |Σ IG − (f(x) − f(0))|."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    alphas, weights = 0.5 * (nodes + 1.0), 0.5 * weights
    igs, deltas, losses = [], [], []
    for ids, c in zip(texts, targets, strict=True):
        x = _embed(p, ids)
        path = sum(w * _fg(p, a * x, int(c))[1] for a, w in zip(alphas, weights, strict=True))
        ig = x * path
        fx, f0 = _fg(p, x, int(c))[0], _fg(p, np.zeros_like(x), int(c))[0]
        igs.append(ig)
        deltas.append(abs(ig.sum() - (fx - f0)))
        losses.append(fx)
    attr = _pad(igs, length)
    return {"losses": np.array(losses), "attributions": attr, "scores": attr.sum(-1),
            "delta": np.array(deltas)}  # fmt: skip


def oracle_smoothgrad(
    p: dict, texts: list, targets: np.ndarray, length: int, *, n_samples: int, sigma: float,
    seed: int, **_: Any,
) -> dict:  # fmt: skip
    """``smoothgrad`` (reduce="norm"): the documented noise — one draw of
    ``default_rng(seed).standard_normal((B · n, T, D), float32)`` for the padded batch, row
    b · n + k for draw k of text b, times sigma · std(table) — then one gradient per draw."""
    dim = p["table"].shape[1]
    noise = np.random.default_rng(seed).standard_normal(
        (len(texts) * n_samples, length, dim), dtype=np.float32
    )
    noise *= np.float32(sigma * p["table"].std(dtype=np.float64))
    means, norms, losses = [], [], []
    for b, (ids, c) in enumerate(zip(texts, targets, strict=True)):
        x = _embed(p, ids)
        gs = [_fg(p, x + noise[b * n_samples + k, : len(ids)], int(c))[1]
              for k in range(n_samples)]  # fmt: skip
        means.append(np.mean(gs, axis=0))
        norms.append(np.mean([np.linalg.norm(g, axis=-1) for g in gs], axis=0))
        losses.append(_fg(p, x, int(c))[0])
    mean = _pad(means, length)
    return {"losses": np.array(losses), "attributions": mean, "scores": _pad(norms, length),
            "signed": mean.sum(-1)}  # fmt: skip


def flip_change(p: dict, ids: np.ndarray, target: int, swaps: list[tuple[int, int]]) -> float:
    """f(x with each (position, replacement id) of ``swaps`` made) − f(x), one text alone."""
    new = np.array(ids)
    for t, w in swaps:
        new[t] = w
    return _fg(p, _embed(p, new), target)[0] - _fg(p, _embed(p, ids), target)[0]


def oracle_hotflip(
    p: dict, texts: list, targets: np.ndarray, length: int, *, k: int, exclude_ids: list,
    **_: Any,
) -> dict:  # fmt: skip
    """``hotflip`` (direction="increase", every token a candidate): per real position t of a
    text, the ``k`` replacements w' ∉ exclude_ids ∪ {w} with the largest (e_w' − e_w) · g_t,
    by brute force over the table; scores: each position's best estimate."""
    table = p["table"].astype(np.float64)
    flips, best = [], np.zeros((len(texts), length))
    for b, (ids, c) in enumerate(zip(texts, targets, strict=True)):
        _, g = _fg(p, _embed(p, ids), int(c))
        mine = {}
        for t, w in enumerate(ids):
            est = (table - table[w]) @ g[t]
            allowed = [v for v in range(table.shape[0]) if v not in exclude_ids and v != w]
            top = sorted(allowed, key=lambda v: -est[v])[:k]
            mine.update({(t, int(v)): float(est[v]) for v in top})
            best[b, t] = est[top[0]]
        flips.append(mine)
    return {"losses": oracle_gradient(p, texts, targets, length)["losses"], "scores": best,
            "flips": flips}  # fmt: skip


def oracle_hotflip_search_step(
    p: dict, ids: np.ndarray, target: int, done: list[tuple[int, int]], swap: tuple[int, int]
) -> float:
    """The first-order estimate of one more ``swap`` after the flips ``done``: (e_w' − e_w) · g_t
    at the text so far."""
    new = np.array(ids)
    for t, w in done:
        new[t] = w
    _, g = _fg(p, _embed(p, new), target)
    table = p["table"].astype(np.float64)
    t, w = swap
    return float((table[w] - table[new[t]]) @ g[t])
