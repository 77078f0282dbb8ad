"""InfluenceIndex on a Gluon Embedding+LSTM classifier against the forum loop's per-sample
``weight.grad`` (one backward per example), with a state-dict checkpoint, a model checkpoint,
weights, hybridized, batches of different sizes; the model's parameters and grad buffers untouched."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import gluon, nd  # noqa: E402

from embgrad import InfluenceIndex  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from gluon_models import Classifier, copy_params  # noqa: E402
from oracle_gluon import forum_loop  # noqa: E402
from oracle_influence import close, scores  # noqa: E402

pytestmark = pytest.mark.gluon

V, D, C, T = 30, 6, 3, 5  # the Dense head flattens (B, T, H): T is fixed


def _net(seed: int):
    mx.random.seed(seed)
    net = Classifier(vocab=V, dim=D, hidden=8, classes=C)
    net.initialize(mx.init.Uniform(0.5))
    net(nd.zeros((1, T)))
    return net


def _data(seed: int, sizes: list[int]):
    rng = np.random.default_rng(seed)
    batches = [nd.array(rng.integers(0, 10, size=(b, T)), dtype="float32") for b in sizes]
    labels = rng.integers(0, C, size=sum(sizes))
    return batches, labels


def _oracle(net, batches, labels) -> np.ndarray:
    """(n, V, D): the forum loop's per-example weight.grad, batch by batch."""
    ce = gluon.loss.SoftmaxCELoss()
    out, n = [], 0
    for b in batches:
        y = nd.array(labels[n : n + b.shape[0]])
        out.append(forum_loop(net, (b,), lambda o, y=y: ce(o, y), net.embed.weight))
        n += b.shape[0]
    return np.concatenate(out).astype(np.float64)


@pytest.mark.parametrize("hybrid", [False, True])
def test_scores_equal_the_forum_loops_weight_grad_over_weighted_checkpoints(hybrid):
    model, second, third = _net(0), _net(1), _net(2)
    oracle_nets = [_net(0), _net(1), third]
    for src, dst in zip([model, second], oracle_nets[:2], strict=True):
        copy_params(src, dst)
    state = {name: p.data().copy() for name, p in second._collect_params_with_prefix().items()}
    if hybrid:
        model.hybridize()
        model(nd.zeros((2, T)))
    weights = [0.7, 1.5, 0.25]
    train, y = _data(0, [3, 4])
    test, y_test = _data(1, [2])
    grad_before = model.embed.weight.grad().asnumpy().copy()
    values_before = {n: p.data().asnumpy().copy() for n, p in model.collect_params().items()}

    idx = InfluenceIndex.build(
        model,
        train,
        labels=y,
        checkpoints=[model, state, third],
        weights=weights,
        batch_size=2,
        layer="embed",  # its one lookup is named "embed" (role "input"), not "word"
    )
    inf = idx.query(test, labels=y_test)

    expected = scores(
        [_oracle(n, train, y) for n in oracle_nets],
        [_oracle(n, test, y_test) for n in oracle_nets],
        weights,
    )
    assert inf.scores.shape == (2, 7)
    close(inf.scores, expected)
    for i in range(2):
        for j in range(7):
            assert sum(inf.by_token(i, j).values()) == pytest.approx(inf.scores[i, j], abs=1e-12)
    np.testing.assert_array_equal(model.embed.weight.grad().asnumpy(), grad_before)
    for n, p in model.collect_params().items():
        np.testing.assert_array_equal(p.data().asnumpy(), values_before[n])


def test_a_state_dict_of_another_architecture_is_refused_before_any_batch():
    model = _net(0)
    mx.random.seed(3)
    bigger = Classifier(vocab=V + 2, dim=D, hidden=8, classes=C)
    bigger.initialize()
    bigger(nd.zeros((1, 4)))
    state = {n: p.data() for n, p in bigger._collect_params_with_prefix().items()}
    train, y = _data(0, [3])
    with pytest.raises(InputError, match=r"architecture.*embed\.weight"):
        InfluenceIndex.build(model, train, labels=y, checkpoints=[state])


@pytest.mark.hf
def test_gluonnlp_bert_scores_equal_the_forum_loop(tmp_path):
    """The original question's setting: gluonnlp's BERTModel (the bundled MiniLM weights),
    (ids, token types, valid length) inputs, a loss on the [CLS] state; against the forum loop
    on ``word_embed.0.weight``, with a perturbed state dict as a second checkpoint."""
    pytest.importorskip("gluonnlp")
    from embgrad.models.minilm import model_path
    from embgrad.models.minilm_gluon import load_gluon_bert

    net, _ = load_gluon_bert(model_path())
    params = net._collect_params_with_prefix()
    rng = np.random.default_rng(0)
    state = {n: p.data() + 0.01 * nd.array(rng.normal(size=p.shape)) for n, p in params.items()}
    before = {n: p.data().asnumpy().copy() for n, p in params.items()}
    direction = nd.array(rng.normal(size=384))

    def batch(ids: list[list[int]]):
        a = np.asarray(ids)
        valid = (a > 0).sum(1)
        return (nd.array(a), nd.zeros(a.shape), nd.array(valid))

    def loss(outputs):
        return (outputs[0][:, 0, :] * direction).sum(axis=1)

    train = [
        batch([[101, 2023, 3185, 2001, 102], [101, 1037, 2204, 2143, 102], [101, 2023, 102, 0, 0]]),
        batch([[101, 2204, 3185, 102], [101, 1037, 2001, 102]]),
    ]
    test = [batch([[101, 2204, 2143, 2001, 3185, 102]])]
    weights = [1.0, 0.5]
    idx = InfluenceIndex.build(net, train, loss, checkpoints=[net, state], weights=weights)
    inf = idx.query(test, loss)
    for n, p in params.items():
        np.testing.assert_array_equal(p.data().asnumpy(), before[n])

    weight = params["word_embed.0.weight"]
    reqs = {n: p.grad_req for n, p in params.items()}

    def grads(batches):
        return np.concatenate([forum_loop(net, b, loss, weight) for b in batches]).astype(
            np.float64
        )

    try:
        for p in params.values():
            p.grad_req = "write"
        g_train, g_test = [grads(train)], [grads(test)]
        for n, p in params.items():
            p.set_data(state[n])
        g_train.append(grads(train))
        g_test.append(grads(test))
    finally:
        for n, p in params.items():
            p.set_data(nd.array(before[n]))
            p.grad_req = reqs[n]
    close(inf.scores, scores(g_train, g_test, weights))
