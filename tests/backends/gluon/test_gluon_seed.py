"""The seed thread's two snippets: ``nn.Embedding(1000, 50)``, a batch of 100 samples.

1. The per-sample table gradients summed over the batch equal ``net.weight.grad()`` after one
   ordinary backward of the summed loss.
2. The per-sample table gradients equal the forum's loop (one retained-graph backward per
   sample, copying ``weight.grad()`` each time) — also with ``sparse_grad=True``.
Both are exact up to float32 summation order: atol is 1e-6 of the gradient's scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import autograd, gluon, nd  # noqa: E402

import embgrad  # noqa: E402
import oracle_gluon as oracle  # noqa: E402

pytestmark = pytest.mark.gluon

VOCAB, DIM, BATCH, LENGTH = 1000, 50, 100, 8


def seed_snippet(sparse_grad: bool = False) -> tuple[Any, Any, Any]:
    """The thread's model, a batch of 100 id sequences and a per-sample loss."""
    mx.random.seed(0)
    net = gluon.nn.Embedding(VOCAB, DIM, sparse_grad=sparse_grad)
    net.initialize()
    rng = np.random.default_rng(0)
    x = nd.array(rng.integers(0, VOCAB, size=(BATCH, LENGTH)))
    c = nd.array(rng.normal(size=(BATCH, LENGTH, DIM)))

    def loss(out: Any) -> Any:
        return (nd.tanh(out) * c).sum(axis=(1, 2))

    return net, x, loss


def close(got: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)


def test_summed_table_gradient_equals_weight_grad() -> None:
    net, x, loss = seed_snippet()
    res = embgrad.gradients(net, x, loss)
    per_sample = res["embedding"].table_grad()
    assert per_sample.shape == (BATCH, VOCAB, DIM)
    summed = np.zeros((VOCAB, DIM))
    _, rows, values = per_sample.numpy()
    np.add.at(summed, rows, values)
    with autograd.record():
        loss(net(x)).backward()
    close(summed, net.weight.grad().asnumpy())


@pytest.mark.parametrize("sparse_grad", [False, True])
def test_per_sample_table_gradients_equal_the_forum_loop(sparse_grad: bool) -> None:
    net, x, loss = seed_snippet(sparse_grad)
    res = embgrad.gradients(net, x, loss)
    lookup = res["embedding"]
    got = lookup.table_grad(dense=True)
    forum = oracle.forum_loop(net, (x,), loss, net.weight)
    close(got, forum)
    # The native sparse form: an MXNet row_sparse (B*V, D) holding only each sample's rows.
    native = lookup.table_grad().to_native()
    assert native.stype == "row_sparse" and native.shape == (BATCH * VOCAB, DIM)
    assert native.indices.shape[0] == lookup.table_grad().nnz <= BATCH * LENGTH
    close(native.tostype("default").asnumpy().reshape(BATCH, VOCAB, DIM), forum)
    # Norms without a dense (B, V, D).
    close(lookup.table_grad_norms(), np.linalg.norm(forum.reshape(BATCH, -1), axis=1))
