"""Token classification on a Gluon tagger (Embedding + BiLSTM + Dense per step) with
``loss_fn(outputs, rows)`` returning (N, T) per-position log-probabilities; every (text,
position) against the one-text, one-position, one-backward oracle."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import autograd, gluon, nd  # noqa: E402

import embgrad  # noqa: E402

pytestmark = pytest.mark.gluon
V, D, C = 30, 6, 4
B, T = 3, 7  # B, T and the explained positions K = 5 pairwise different


class Tagger(gluon.Block):
    def __init__(self) -> None:
        super().__init__()
        self.embed = gluon.nn.Embedding(V, D)
        self.lstm = gluon.rnn.LSTM(5, bidirectional=True, layout="NTC")
        self.dense = gluon.nn.Dense(C, flatten=False)

    def forward(self, x):
        return self.dense(self.lstm(self.embed(x)))


def _gold(labels):
    def loss_fn(out, rows):  # (N, T): log p(gold label) at every position of each row
        lp = nd.log_softmax(out, axis=-1)
        return nd.pick(lp, nd.array(labels[rows]), axis=-1)

    return loss_fn


@pytest.mark.parametrize("method", ["gradient", "grad_x_input", "integrated_gradients"])
def test_gluon_tagger_matches_the_one_position_oracle(method):
    from embgrad.methods.integrated_gradients import quadrature

    mx.random.seed(0)
    net = Tagger()
    net.initialize(mx.init.Normal(0.3))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, V, (B, T)).astype(np.float32)
    labels = rng.integers(0, C, (B, T))
    positions = [[0, 2, 3, 5, 6], [1], [4, 6]]
    opts = {"n_steps": 4} if method == "integrated_gradients" else {}
    res = embgrad.attribute(
        net, nd.array(ids), _gold(labels), positions=positions, method=method,
        return_grads=True, **opts,
    )  # fmt: skip
    assert res.scores.shape == (B, 5, T)
    alphas, weights = quadrature(4, "gausslegendre") if opts else ((1.0,), (1.0,))
    table = net.embed.weight.data()

    def q_at(x, b, t):
        return nd.log_softmax(net.dense(net.lstm(x)), axis=-1)[0, t, int(labels[b, t])]

    for b, pos in enumerate(positions):
        x0 = nd.Embedding(nd.array(ids[b : b + 1]), table, V, D)
        for k, t in enumerate(pos):
            g = np.zeros((T, D))
            for a, w in zip(alphas, weights, strict=True):
                x = x0 * float(a)
                x.attach_grad()
                with autograd.record():
                    q = q_at(x, b, t)
                q.backward()
                g += w * x.grad.asnumpy()[0]
            xs = x0.asnumpy()[0]
            want = g if method == "gradient" else g * xs  # .grads: the per-dimension values
            scale = float(np.abs(want).max())
            np.testing.assert_allclose(res.grads[b, k], want, rtol=1e-5, atol=1e-5 * scale)
            if method != "gradient":
                np.testing.assert_allclose(res.scores[b, k], want.sum(-1), rtol=1e-5,
                                           atol=1e-5 * scale)  # fmt: skip
            f1 = float(q_at(x0, b, t).asscalar())
            np.testing.assert_allclose(res.quantity[b, k], f1, rtol=1e-5)
            if method == "integrated_gradients":
                f0 = float(q_at(x0 * 0, b, t).asscalar())
                np.testing.assert_allclose(res.delta[b, k], abs(want.sum() - (f1 - f0)), atol=1e-5)
        assert np.isnan(res.scores[b, len(pos) :]).all()
    assert (res.labels == -1).all() and np.isnan(res.probabilities).all()  # the loss_fn's own
