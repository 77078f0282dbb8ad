"""The slow, obviously-right reference for generation attribution (torch, HF LMs): every
(sample, step) on its own — the sample's unpadded prompt and y_<k, one forward, one backward of
log p(y_k) (− log p(y'_k)) w.r.t. the word-embedding output."""

from __future__ import annotations

import numpy as np
import torch


def _quantity(logits: torch.Tensor, y: int, c: int | None) -> torch.Tensor:
    lp = torch.log_softmax(logits.float(), -1)
    return lp[y] - (lp[c] if c is not None else 0.0)


def decoder_step(model, prompt_ids, y, k, contrast=None, *, alpha: float = 1.0):
    """(grad (n + k, D), embedding (n + k, D), quantity) of step k of one unpadded sample.

    ``alpha`` scales the embeddings (integrated gradients with a zero baseline)."""
    seq = torch.as_tensor(np.concatenate([prompt_ids, y[:k]]))[None]
    x = model.get_input_embeddings()(seq).detach()
    e = (alpha * x).requires_grad_(True)
    logits = model(inputs_embeds=e).logits[0, -1]
    q = _quantity(logits, int(y[k]), None if contrast is None else int(contrast[k]))
    (g,) = torch.autograd.grad(q, e)
    return g[0].numpy(), x[0].numpy(), float(q.detach())


def decoder_grads(model, ids, mask, targets, contrast=None):
    """(B, K, P + K, D) per-step gradients laid out as embgrad's decoder-only columns."""
    b_n, p_len = ids.shape
    k_n = targets.shape[1]
    d = model.get_input_embeddings().weight.shape[1]
    out = np.zeros((b_n, k_n, p_len + k_n, d), dtype=np.float32)
    for b in range(b_n):
        real = np.flatnonzero(mask[b])
        for k in range(k_n):
            c = None if contrast is None else contrast[b]
            g, _, _ = decoder_step(model, ids[b, real], targets[b], k, c)
            out[b, k, np.concatenate([real, p_len + np.arange(k)])] = g
    return out


def decoder_ig(model, ids, mask, targets, alphas, weights):
    """(B, K, P + K) integrated gradients (zero baseline) per step, signed sums over D."""
    b_n, p_len = ids.shape
    k_n = targets.shape[1]
    out = np.zeros((b_n, k_n, p_len + k_n))
    for b in range(b_n):
        real = np.flatnonzero(mask[b])
        for k in range(k_n):
            acc = 0.0
            for a, w in zip(alphas, weights, strict=True):
                g, x, _ = decoder_step(model, ids[b, real], targets[b], k, alpha=float(a))
                acc = acc + w * g.astype(np.float64)
            out[b, k, np.concatenate([real, p_len + np.arange(k)])] = (acc * x).sum(-1)
    return out


def seq2seq_grads(model, ids, mask, targets, start, contrast=None):
    """(source (B, K, S, D), decoder (B, K, K, D)) per-step gradients of an encoder–decoder,
    each step on its own: the unpadded source, decoder inputs (start, y_<k)."""
    b_n, s_len = ids.shape
    k_n = targets.shape[1]
    enc = model.get_encoder().get_input_embeddings()
    dec = model.get_decoder().get_input_embeddings()
    d = enc.weight.shape[1]
    src_out = np.zeros((b_n, k_n, s_len, d), dtype=np.float32)
    dec_out = np.zeros((b_n, k_n, k_n, d), dtype=np.float32)
    for b in range(b_n):
        real = np.flatnonzero(mask[b])
        for k in range(k_n):
            es = enc(torch.as_tensor(ids[b, real])[None]).detach().requires_grad_(True)
            seq = np.concatenate([[start], targets[b, :k]]).astype(np.int64)
            ed = dec(torch.as_tensor(seq)[None]).detach().requires_grad_(True)
            logits = model(inputs_embeds=es, decoder_inputs_embeds=ed).logits[0, -1]
            c = None if contrast is None else int(contrast[b, k])
            q = _quantity(logits, int(targets[b, k]), c)
            gs, gd = torch.autograd.grad(q, (es, ed))
            src_out[b, k, real] = gs[0].numpy()
            dec_out[b, k, : k + 1] = gd[0].numpy()
    return src_out, dec_out
