"""The one-step-at-a-time reference for generation attribution on Gluon LMs: each (sample,
step) alone — the step's own forward on the sample's x, y_<k (cut there) and one backward of
log p(y_k), through ``oracle_gluon.output_grads`` (its own interception, not embgrad's)."""

from __future__ import annotations

from typing import Any

import numpy as np
from mxnet import nd

from oracle_gluon import output_grads


def awd_steps(net: Any, seq: np.ndarray, prompt: int, targets: np.ndarray) -> np.ndarray:
    """(B, K, T, D): a (T, B) LM; step k of sample b runs seq[: prompt + k, b] alone."""
    t_len, b_n = seq.shape
    k_n = targets.shape[1]
    out = None
    for b in range(b_n):
        for k in range(k_n):
            x = nd.array(seq[: prompt + k, b : b + 1])

            def loss(o: Any, _k: int = k, _b: int = b) -> Any:
                lp = nd.log_softmax(o[0][prompt + _k - 1], axis=-1)  # (1, V)
                return nd.pick(lp, nd.array([targets[_b, _k]]), axis=-1)

            (lk,) = output_grads(net, (x,), loss)
            g = lk.grads[0, :, 0]  # (prompt + k, D)
            if out is None:
                out = np.zeros((b_n, k_n, t_len, g.shape[-1]))
            out[b, k, : prompt + k] = g
    assert out is not None
    return out


def nmt_steps(
    net: Any, src: np.ndarray, src_len: np.ndarray, tgt_in: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(source (B, K, S, D), target (B, K, T, D)): step k of sample b runs its source and
    decoder inputs tgt_in[b, : k + 1] alone."""
    b_n, s_len = src.shape
    k_n = targets.shape[1]
    src_out = tgt_out = None
    for b in range(b_n):
        for k in range(k_n):
            n = int(src_len[b])
            args = (
                nd.array(src[b : b + 1, :n]),
                nd.array(tgt_in[b : b + 1, : k + 1]),
                nd.array([n]),
                nd.array([k + 1]),
            )

            def loss(o: Any, _k: int = k, _b: int = b) -> Any:
                lp = nd.log_softmax(o[0][:, _k], axis=-1)
                return nd.pick(lp, nd.array([targets[_b, _k]]), axis=-1)

            lks = output_grads(net, args, loss)
            s_grad, t_grad = lks[0].grads[0, 0], lks[2].grads[0, 0]  # src_embed, tgt_embed
            if src_out is None:
                src_out = np.zeros((b_n, k_n, s_len, s_grad.shape[-1]))
                tgt_out = np.zeros((b_n, k_n, tgt_in.shape[1], t_grad.shape[-1]))
            src_out[b, k, :n] = s_grad
            tgt_out[b, k, : k + 1] = t_grad
    assert src_out is not None and tgt_out is not None
    return src_out, tgt_out
