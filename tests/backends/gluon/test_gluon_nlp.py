"""Architectures nobody here wrote: gluonnlp 0.10.0 models built offline with random weights
(``dataset_name=None, vocab=..., pretrained=False``, tiny sizes), against the oracle.

What each shows:

- BERT: three lookups (word, token type, and positions looked up by a direct ``F.Embedding``
  inside the encoder, batch-summed); also hybridized, its cached op kept.
- RoBERTa: a decoder tied to the word table. DistilBERT: word + position.
- AWD-LSTM: (T, B) layout (batch axis 1 found automatically), a tied decoder, and in training
  mode a weight-dropped copy of the table (matched to its Parameter without identity) with
  dropout masks reproduced by re-seeding.
- Big RNN LM: a SparseEmbedding input and a sampled-softmax decoder whose lookup on the output
  weights is labelled "output" and left out by ``layers="auto"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
nlp = pytest.importorskip("gluonnlp")

from mxnet import gluon, nd  # noqa: E402

import embgrad  # noqa: E402
import oracle_gluon as oracle  # noqa: E402
from oracle_gluon import assert_matches_oracle, forward_seed  # noqa: E402

pytestmark = pytest.mark.gluon

WORDS = [f"w{i}" for i in range(40)]
TINY = dict(
    num_layers=1, units=16, hidden_size=32, num_heads=2, max_length=16, embed_size=16, dropout=0.0
)
B, T = 3, 6  # T != B: the position ids (T,) have no axis of the batch's size


def ids(shape: tuple[int, ...], seed: int = 0) -> Any:
    return nd.array(np.random.default_rng(seed).integers(0, len(WORDS), size=shape))


def build(name: str, vocab: Any, **kw: Any) -> Any:
    mx.random.seed(0)
    net, _ = nlp.model.get_model(
        name, dataset_name=None, vocab=vocab, pretrained=False, hparam_allow_override=True, **kw
    )
    net.initialize(mx.init.Normal(0.2))
    return net


def check(
    net: Any,
    inputs: tuple[Any, ...],
    loss: Any,
    mode: str = "eval",
    seed: int = 0,
    hybridize: bool = False,
    **kw: Any,
) -> Any:
    """embgrad's one backward equals the per-sample oracle for every lookup; returns the result.

    With ``hybridize``, the oracle runs first and the model is then hybridized (static_alloc)
    and run once, so that embgrad sees a model with a cached graph, which must survive."""
    net(*inputs)
    fw = forward_seed(seed)
    reference = oracle.output_grads(net, inputs, loss, mode=mode, seed=fw)
    if hybridize:
        net.hybridize(static_alloc=True)
        net(*inputs)
        cached = net._cached_op
    res = embgrad.gradients(net, inputs, loss, mode=mode, seed=seed, **kw)
    assert_matches_oracle(res, reference)
    if hybridize:
        assert net._active and net._cached_op is cached
    return res


def summary(res: Any) -> list[tuple[str, str, int | None, bool]]:
    return [(lk.name, lk.role, lk.batch_axis, lk.tied) for lk in res]


@pytest.mark.parametrize("hybridize", [False, True])
def test_bert(hybridize: bool) -> None:
    vocab = nlp.vocab.BERTVocab(nlp.data.count_tokens(WORDS))
    net = build("bert_12_768_12", vocab, use_decoder=False, use_classifier=False, **TINY)
    x, types, valid = ids((B, T)), nd.array(np.eye(B, T) > 0), nd.array([6, 4, 5])
    res = check(net, (x, types, valid), lambda out: (out[1] ** 2).sum(axis=1), hybridize=hybridize)
    assert summary(res) == [
        ("word_embed.0", "word", 0, False),
        ("token_type_embed.0", "token_type", 0, False),
        ("encoder.position_weight", "position", None, False),
    ]
    assert res["encoder.position_weight"].module == "BERTEncoder"
    assert res.input_grads == {}  # ids, token types and lengths are integral: no input grads


def test_roberta_with_tied_decoder() -> None:
    vocab = nlp.Vocab(nlp.data.count_tokens(WORDS))
    net = build("roberta_12_768_12", vocab, use_decoder=True, **TINY)
    masked = nd.array([[1, 2], [0, 3], [4, 5]])
    inputs = (ids((B, T), 1), nd.array([6, 4, 5]), masked)

    def loss(out: Any) -> Any:
        return (out[0] ** 2).sum(axis=(1, 2)) + out[1].sum(axis=(1, 2))

    res = check(net, inputs, loss)
    assert summary(res) == [
        ("word_embed.0", "word", 0, True),
        ("encoder.position_weight", "position", None, False),
    ]
    assert "decoder.3" in res["word_embed.0"].note


@pytest.mark.parametrize("length", [T, B])
def test_distilbert(length: int) -> None:
    """Also with T == B: then the position ids (T,) have an axis of the batch's size."""
    vocab = nlp.Vocab(nlp.data.count_tokens(WORDS))
    net = build("distilbert_6_768_12", vocab, **TINY)
    inputs = (ids((B, length), 2), nd.array([length, length, 2]))
    res = check(net, inputs, lambda out: (out**2).sum(axis=(1, 2)))
    assert summary(res) == [
        ("word_embed.0", "word", 0, False),
        ("encoder.position_weight", "position", None, False),
    ]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_awd_lstm_time_major(mode: str) -> None:
    vocab = nlp.Vocab(nlp.data.count_tokens(WORDS))
    net = build("awd_lstm_lm_600", vocab, embed_size=8, hidden_size=12, num_layers=2, drop_e=0.3)
    x, y = ids((T, B), 3), ids((T, B), 4)
    ce = gluon.loss.SoftmaxCELoss(batch_axis=1)
    res = check(net, (x,), lambda out: ce(out[0], y), mode=mode, seed=11)
    assert summary(res) == [("embedding.0", "input", 1, True)]
    assert res["embedding.0"].table == net.embedding[0].weight.name


def test_big_rnn_sampled_softmax_lookup_is_an_output() -> None:
    vocab_size, sampled = len(WORDS), 4
    mx.random.seed(0)
    net = nlp.model.train.BigRNN(vocab_size, 8, 12, 1, 6, num_sampled=sampled)
    net.initialize(mx.init.Normal(0.2))
    gluon.Trainer(net.collect_params(), "sgd")  # row_sparse weights need a Trainer
    x, y = ids((T, B), 5), ids((T, B), 6)
    classes, count_true, count_sampled = nd.contrib.rand_zipfian(y.reshape((-1, 1)), 4, vocab_size)
    inputs = (
        x,
        y,
        net.begin_state(batch_size=B, func=nd.zeros),
        [classes, count_sampled, count_true.reshape((-1,))],
    )
    ce = gluon.loss.SoftmaxCELoss(batch_axis=1)

    def loss(out: Any) -> Any:
        return ce(out[0], out[2])

    every = check(net, inputs, loss, layers="*")
    assert summary(every) == [
        ("embedding.0", "input", 1, False),
        ("decoder.weight", "output", None, False),
    ]
    assert [lk.module for lk in every] == ["SparseEmbedding", "SparseISDense"]
    assert every["decoder.weight"].output_grad.shape == (sampled + T * B, 6)
    res = embgrad.gradients(net, inputs, loss)  # layers="auto": input lookups only
    assert res.layers == ["embedding.0"]
    np.testing.assert_array_equal(
        res["embedding.0"].output_grad.asnumpy(), every["embedding.0"].output_grad.asnumpy()
    )
