"""Gluon ``tied`` comes from what ran, not from who registers the table's Parameter.

A table is tied when, in this forward, its Parameter reaches the losses other than through
lookups (an output projection). A block that shares the Parameter but is never called
(gluonnlp's ``one_step_ahead_decoder``, an unused decoder) does not tie it; a decoder that uses
it does, also when nobody else registers it. Where a table is not tied, its per-sample table
gradients are the per-sample ``weight.grad()`` (all paths) exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import gluon, nd  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

import embgrad  # noqa: E402
import gluon_models as gm  # noqa: E402
import oracle_gluon as oracle  # noqa: E402
from oracle_gluon import assert_matches_oracle, close  # noqa: E402

pytestmark = pytest.mark.gluon


class UncalledTwin(gluon.HybridBlock):
    """Embedding → Dense, plus a decoder sharing the embedding's weight that is never called."""

    def __init__(self, vocab: int = 30, dim: int = 6, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(vocab, dim)
            self.out = nn.Dense(3, activation="tanh")
            self.unused = nn.Dense(vocab, flatten=False, in_units=dim, params=self.embed.params)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.out(self.embed(x))


class DirectDecoder(gluon.Block):
    """A plain Block projecting on its embedding's weight itself: no decoder block registers it."""

    def __init__(self, vocab: int = 30, dim: int = 6, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(vocab, dim)

    def forward(self, x: Any) -> Any:
        return nd.dot(nd.tanh(self.embed(x)), self.embed.weight.data(), transpose_b=True)


def _case(factory: Any, seed: int) -> gm.Case:
    rng = np.random.default_rng(seed)
    x = gm.ids((4, 5), 30, rng)
    target = nd.array(rng.normal(size=(4, 3)))
    labels = nd.array(rng.integers(0, 30, size=(4, 5)))
    ce = gluon.loss.SoftmaxCELoss()

    def loss(o: Any) -> Any:
        return ce(o, labels) if o.ndim == 3 else ((o - target) ** 2).sum(axis=1)

    mx.random.seed(0)
    return gm._case(factory, (x,), loss)


def _freeze(case: gm.Case) -> None:
    case.model.embed.weight.grad_req = "null"


def _weights_grads(case: gm.Case, model: Any, param: Any) -> np.ndarray:
    return oracle.table_grads(model, case.inputs, case.loss, [param])[param.name]


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("variant", gm.VARIANTS)
def test_a_twin_that_is_never_called_does_not_tie_the_table(variant, frozen, tmp_path: Path):
    case = _case(UncalledTwin, 1)
    if frozen:
        _freeze(case)
    reference = oracle.output_grads(case.model, case.inputs, case.loss)
    weight = None if frozen else _weights_grads(case, case.model, case.model.embed.weight)
    model = gm.variant(case, variant, tmp_path)
    res = embgrad.gradients(model, case.inputs, case.loss)
    (lk,) = res
    assert not lk.tied and lk.note == ""
    assert_matches_oracle(res, reference)
    if weight is not None:  # untied: the lookup path is every path
        close(res.table_grad(lk.table, dense=True), weight)


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("variant", gm.VARIANTS)
def test_a_decoder_that_uses_the_table_ties_it(variant, frozen, tmp_path: Path):
    case = gm.tied_case()
    if frozen:
        _freeze(case)
    reference = oracle.output_grads(case.model, case.inputs, case.loss)
    model = gm.variant(case, variant, tmp_path)
    res = embgrad.gradients(model, case.inputs, case.loss)
    (lk,) = res
    assert lk.tied and "lookup path only" in lk.note
    assert_matches_oracle(res, reference)


def test_a_block_projecting_on_its_own_table_ties_it():
    case = _case(DirectDecoder, 2)
    res = embgrad.gradients(case.model, case.inputs, case.loss)
    (lk,) = res
    assert lk.tied and "non-lookup" in lk.note
    weight = _weights_grads(case, case.model, case.model.embed.weight)
    assert np.abs(lk.table_grad(dense=True) - weight).max() > 1e-3 * np.abs(weight).max()


def test_parameter_fetchers_are_restored():
    case = _case(UncalledTwin, 3)
    before = {k: gluon.Parameter.__dict__[k] for k in ("data", "list_data")}
    embgrad.gradients(case.model, case.inputs, case.loss)
    with pytest.raises(ZeroDivisionError):
        embgrad.gradients(case.model, case.inputs, lambda o: 1 / 0)
    assert {k: gluon.Parameter.__dict__[k] for k in before} == before


# -- gluonnlp ---------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(40)]
B = 3


def _nlp() -> Any:
    return pytest.importorskip("gluonnlp")


def _nmt(tie: bool) -> Any:
    nlp = _nlp()
    vocab = nlp.Vocab(nlp.data.count_tokens(WORDS))
    mx.random.seed(0)
    enc, dec, one_step = nlp.model.transformer.get_transformer_encoder_decoder(
        num_layers=1,
        num_heads=2,
        units=16,
        hidden_size=32,
        max_src_length=16,
        max_tgt_length=16,
    )
    net = nlp.model.translation.NMTModel(
        vocab, vocab, enc, dec, one_step, embed_size=16, tie_weights=tie, prefix="nmt_"
    )
    net.initialize(mx.init.Normal(0.2))
    return net


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tie_weights"])
def test_nmt_transformer_position_constants_are_never_tied(tie: bool, hybridize: bool):
    net = _nmt(tie)
    rng = np.random.default_rng(0)
    src, tgt = nd.array(rng.integers(0, 40, (B, 6))), nd.array(rng.integers(0, 40, (B, 5)))
    labels = nd.array(rng.integers(0, 40, (B, 5)))
    inputs = (src, tgt, nd.array([6, 4, 5]), nd.array([5, 5, 3]))
    ce = gluon.loss.SoftmaxCELoss()

    def loss(out: Any) -> Any:
        return ce(out[0], labels)

    net(*inputs)
    # the one-step decoder shares the decoder's parameters (its position constant too)
    assert net.one_step_ahead_decoder.position_weight is net.decoder.position_weight
    reference = oracle.output_grads(net, inputs, loss)
    tables = [net.src_embed[0].weight, net.tgt_embed[0].weight]
    weights = oracle.table_grads(net, inputs, loss, tables)
    if hybridize:
        net.hybridize(static_alloc=True)
        net(*inputs)
    res = embgrad.gradients(net, inputs, loss)
    assert [(lk.name, lk.role, lk.tied) for lk in res] == [
        ("src_embed.0", "input", False),
        ("encoder.position_weight", "position", False),
        ("tgt_embed.0", "input", tie),
        ("decoder.position_weight", "position", False),
    ]
    assert res["decoder.position_weight"].note.startswith("ids have no batch axis")
    assert_matches_oracle(res, reference)
    close(res.table_grad(tables[0].name, dense=True), weights[tables[0].name])
    tgt_grads = res.table_grad(tables[1].name, dense=True)
    full = weights[tables[1].name]
    if tie:  # weight.grad() also has the output projection's part
        assert "tgt_proj" in res["tgt_embed.0"].note
        assert np.abs(tgt_grads - full).max() > 1e-3 * np.abs(full).max()
    else:
        close(tgt_grads, full)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_roberta_masked_lm_decoder_ties_the_word_table(hybridize: bool):
    nlp = _nlp()
    vocab = nlp.Vocab(nlp.data.count_tokens(WORDS))
    mx.random.seed(0)
    net, _ = nlp.model.get_model(
        "roberta_12_768_12",
        dataset_name=None,
        vocab=vocab,
        pretrained=False,
        hparam_allow_override=True,
        use_decoder=True,
        num_layers=1,
        units=16,
        hidden_size=32,
        num_heads=2,
        max_length=16,
        embed_size=16,
        dropout=0.0,
    )
    net.initialize(mx.init.Normal(0.2))
    rng = np.random.default_rng(1)
    inputs = (nd.array(rng.integers(1, 40, (B, 6))), nd.array([6, 4, 5]), nd.array([[1, 2]] * B))

    def loss(out: Any) -> Any:
        return (out[0] ** 2).sum(axis=(1, 2)) + out[1].sum(axis=(1, 2))

    net(*inputs)
    if hybridize:
        net.hybridize(static_alloc=True)
        net(*inputs)
    res = embgrad.gradients(net, inputs, loss)
    assert [(lk.name, lk.tied) for lk in res] == [
        ("word_embed.0", True),
        ("encoder.position_weight", False),
    ]


# -- issue 21 item 13 -------------------------------------------------------------------------
class SelfProjecting(gluon.HybridBlock):
    """One block looks its own table up and projects on it: (B, T) ids → (B, T, V) logits."""

    def __init__(self, vocab: int = 30, dim: int = 6, frozen: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self._vocab, self._dim = vocab, dim
        with self.name_scope():
            req = "null" if frozen else "write"
            self.weight = self.params.get("weight", shape=(vocab, dim), grad_req=req)

    def hybrid_forward(self, F: Any, x: Any, weight: Any) -> Any:
        h = F.tanh(F.Embedding(x, weight, input_dim=self._vocab, output_dim=self._dim))
        return F.FullyConnected(h, weight, no_bias=True, num_hidden=self._vocab, flatten=False)


@pytest.mark.parametrize("variant", gm.VARIANTS)
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_one_block_looking_up_and_projecting_ties_its_table(variant, frozen, tmp_path: Path):
    case = _case(lambda: SelfProjecting(frozen=frozen), 5)
    reference = oracle.output_grads(case.model, case.inputs, case.loss)
    model = gm.variant(case, variant, tmp_path)
    res = embgrad.gradients(model, case.inputs, case.loss)
    (lk,) = res
    assert lk.tied and "non-lookup" in lk.note
    assert_matches_oracle(res, reference)
    assert case.model.weight.grad_req == ("null" if frozen else "write")


class EncoderDecoder(gluon.HybridBlock):
    """Returns (enc, dec): dec projects on the word table, enc does not use it otherwise."""

    def __init__(self, vocab: int = 30, dim: int = 6, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(vocab, dim)
            self.enc = nn.Dense(3, activation="tanh")
            self.dec = nn.Dense(vocab, flatten=False, in_units=dim, params=self.embed.params)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        h = self.embed(x)
        return self.enc(h), self.dec(h)


@pytest.mark.parametrize("variant", gm.VARIANTS)
@pytest.mark.parametrize("uses", ["enc", "dec"])
def test_tied_is_decided_against_the_losses_not_the_outputs(variant, uses, tmp_path: Path):
    rng = np.random.default_rng(6)
    target = nd.array(rng.normal(size=(4, 3)))
    labels = nd.array(rng.integers(0, 30, size=(4, 5)))
    ce = gluon.loss.SoftmaxCELoss()

    def loss(out: Any) -> Any:
        enc, dec = out
        return ((enc - target) ** 2).sum(axis=1) if uses == "enc" else ce(dec, labels)

    mx.random.seed(0)
    case = gm._case(EncoderDecoder, (gm.ids((4, 5), 30, rng),), loss)
    reference = oracle.output_grads(case.model, case.inputs, case.loss)
    model = gm.variant(case, variant, tmp_path)
    res = embgrad.gradients(model, case.inputs, case.loss)
    (lk,) = res
    assert lk.tied == (uses == "dec")
    assert_matches_oracle(res, reference)


class ProjectingEmbedding(nn.Embedding):
    """An nn.Embedding that also projects on its own table (``project``)."""

    def project(self, h: Any) -> Any:
        return nd.dot(h, self.weight.data(), transpose_b=True)


class UsesProjectingEmbedding(gluon.Block):
    def __init__(self, vocab: int = 30, dim: int = 6, frozen: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = ProjectingEmbedding(vocab, dim)
        if frozen:  # before initialization: the array is never an autograd variable
            self.embed.weight.grad_req = "null"

    def forward(self, x: Any) -> Any:
        return self.embed.project(nd.tanh(self.embed(x)))


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_embedding_block_projecting_on_its_own_table_ties_it(frozen: bool) -> None:
    """Issue 21 item 13: the block that looks the table up also fetches it to project; frozen,
    autograd does not record the table, and fetches alone cannot tell the two uses apart."""
    case = _case(lambda: UsesProjectingEmbedding(frozen=frozen), 7)
    reference = oracle.output_grads(case.model, case.inputs, case.loss)
    res = embgrad.gradients(case.model, case.inputs, case.loss)
    (lk,) = res
    assert lk.tied and "non-lookup" in lk.note
    assert_matches_oracle(res, reference)
    assert case.model.embed.weight.grad_req == ("null" if frozen else "write")
    assert not case.model.embed.weight._data[0]._fresh_grad
