"""attribute_generation on Gluon LMs with a logprobs_fn: gluonnlp's AWD-LSTM ((T, B) layout)
and its NMT Transformer (source and decoder lookups), against the one-step oracle."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
nlp = pytest.importorskip("gluonnlp")

from mxnet import nd  # noqa: E402

import embgrad  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from oracle_generation_gluon import awd_steps, nmt_steps  # noqa: E402

pytestmark = pytest.mark.gluon

WORDS = [f"w{i}" for i in range(40)]
P, K, B = 4, 3, 2


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def awd():
    vocab = nlp.Vocab(nlp.data.count_tokens(WORDS))
    mx.random.seed(0)
    net, _ = nlp.model.get_model(
        "awd_lstm_lm_600", dataset_name=None, vocab=vocab, pretrained=False,
        hparam_allow_override=True, embed_size=8, hidden_size=12, num_layers=2,
    )  # fmt: skip
    net.initialize(mx.init.Normal(0.2))
    return net


def _awd_batch():
    rng = np.random.default_rng(0)
    prompt = rng.integers(4, len(WORDS), (P, B))
    targets = rng.integers(4, len(WORDS), (B, K))
    seq = np.concatenate([prompt, targets[:, :-1].T], axis=0)  # (P + K - 1, B)
    return seq, targets


def _awd_logprobs(out: Any) -> Any:  # (T, N, V) → (N, K, V) aligned with the targets
    return nd.log_softmax(out[0][P - 1 : P - 1 + K], axis=-1).transpose((1, 0, 2))


@pytest.mark.parametrize("method", ["gradient", "grad_x_input"])
def test_awd_lstm_time_major_matches_the_one_step_oracle(awd, method):
    seq, targets = _awd_batch()
    res = embgrad.attribute_generation(
        awd, nd.array(seq), targets, logprobs_fn=_awd_logprobs, batch_axis=1,
        method=method, return_grads=True,
    )  # fmt: skip
    want = awd_steps(awd, seq, P, targets)
    if method == "gradient":
        _close(res.grads, want)
        _close(res.scores, np.sqrt((want**2).sum(-1)))
    else:
        emb = awd.embedding[0].weight.data().asnumpy().astype(np.float64)
        x = emb[seq.T]  # (B, T, D)
        _close(res.scores, (want * x[:, None]).sum(-1))
    assert res.kind == "custom" and res.scores.shape == (B, K, P + K - 1)
    p = res.step_scores["probability"]
    assert np.all((p > 0) & (p < 1))


def test_awd_lstm_state_restored_and_bad_logprobs_refused(awd):
    seq, targets = _awd_batch()
    with pytest.raises(InputError, match="logprobs_fn returned shape"):
        embgrad.attribute_generation(
            awd, nd.array(seq), targets, batch_axis=1, logprobs_fn=lambda o: o[0]
        )
    with pytest.raises(InputError, match="must return log-probabilities"):
        embgrad.attribute_generation(
            awd, nd.array(seq), targets, batch_axis=1,
            logprobs_fn=lambda o: o[0][P - 1 : P - 1 + K].transpose((1, 0, 2)),
        )  # fmt: skip
    with pytest.raises(InputError, match=r"targets has shape"):
        embgrad.attribute_generation(
            awd, nd.array(seq), targets[:1], batch_axis=1, logprobs_fn=_awd_logprobs
        )
    assert not awd.embedding[0].weight.grad().asnumpy().any()


def test_nmt_transformer_source_and_target_lookups(awd):
    vocab = nlp.Vocab(nlp.data.count_tokens(WORDS))
    mx.random.seed(0)
    enc, dec, one_step = nlp.model.transformer.get_transformer_encoder_decoder(
        num_layers=1, num_heads=2, units=16, hidden_size=32, max_src_length=16,
        max_tgt_length=16,
    )  # fmt: skip
    net = nlp.model.translation.NMTModel(
        vocab, vocab, enc, dec, one_step, embed_size=16, prefix="nmt_"
    )
    net.initialize(mx.init.Normal(0.2))
    rng = np.random.default_rng(1)
    b_n, s_len = 3, 6
    src = rng.integers(4, 40, (b_n, s_len))
    src_len = np.array([6, 4, 5])
    targets = rng.integers(4, 40, (b_n, K))
    tgt_in = np.concatenate([np.full((b_n, 1), 2), targets[:, :-1]], axis=1)
    inputs = (nd.array(src), nd.array(tgt_in), nd.array(src_len), nd.array([K] * b_n))

    def logprobs(out: Any) -> Any:
        return nd.log_softmax(out[0], axis=-1)

    want_src, want_tgt = nmt_steps(net, src, src_len, tgt_in, targets)
    for layer, want in (("src_embed.0", want_src), ("tgt_embed.0", want_tgt)):
        res = embgrad.attribute_generation(
            net, inputs, targets, logprobs_fn=logprobs, layer=layer, return_grads=True
        )
        _close(res.grads, want)


def test_awd_lstm_time_major_with_b_k_t_pairwise_different_and_float_targets(awd):
    """Issue 21 items 12/13: P=4, K=3, B=5 (T=6, B·K=15): the plain pass's rows count samples on
    the (T, B) inputs' axis 1, float32 targets (Gluon's ids) are accepted and batch_axis is
    inferred from targets' B."""
    rng = np.random.default_rng(1)
    b_n = 5
    prompt = rng.integers(4, len(WORDS), (P, b_n))
    targets = rng.integers(4, len(WORDS), (b_n, K))
    seq = np.concatenate([prompt, targets[:, :-1].T], axis=0)  # (6, 5)
    assert len({seq.shape[0], b_n, K, b_n * K}) == 4
    res = embgrad.attribute_generation(
        awd, nd.array(seq), targets.astype(np.float32), logprobs_fn=_awd_logprobs,
        return_grads=True,
    )  # fmt: skip
    want = awd_steps(awd, seq, P, targets)
    _close(res.grads, want)
    assert res.scores.shape == (b_n, K, P + K - 1)
