"""The seed scenario: per-sample embedding gradients of a Gluon LSTM classifier, in one backward.

An Embedding → LSTM → Dense classifier (hybridized, as deployed) and a batch of token ids.
embgrad gives, for every sample i, dL_i/d emb_i (B, T, D) and the per-sample table gradient
(sparse rows). The script checks both against slow references and times them:

- output gradients against a per-sample oracle: sample i run alone (a batch of one) through an
  un-hybridized twin, with the gradient taken at its lookup output;
- table gradients against the forum's loop (one retained-graph backward per sample, copying
  ``weight.grad()`` each time), on a twin so that the model itself is never touched;
- time: embgrad vs one hybridized forward+backward, and vs the forum's loop.

Run: ``python examples/seed_lstm.py`` (about 10 s on 2 cores).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

warnings.filterwarnings("ignore", category=DeprecationWarning)

import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402

import embgrad  # noqa: E402

VOCAB, DIM, HIDDEN, LENGTH, BATCH, CLASSES = 5000, 64, 128, 30, 32, 2


class Classifier(gluon.HybridBlock):
    """(B, T) ids → Embedding (B, T, D) → LSTM (B, T, H) → last step → Dense → (B, 2)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = gluon.nn.Embedding(VOCAB, DIM)
            self.lstm = gluon.rnn.LSTM(HIDDEN, layout="NTC")
            self.out = gluon.nn.Dense(CLASSES)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.from_lookup(F, self.embed(x))

    def from_lookup(self, F: Any, e: Any) -> Any:
        h = self.lstm(e)
        return self.out(F.squeeze(F.slice_axis(h, axis=1, begin=-1, end=None), axis=1))


def twin_of(net: Classifier, x: Any) -> Classifier:
    """A fresh, un-hybridized copy with the same parameter values."""
    twin = Classifier()
    twin.initialize()
    twin(x)
    theirs = twin._collect_params_with_prefix()
    for name, p in net._collect_params_with_prefix().items():
        theirs[name].set_data(p.data().copy())
    return twin


def per_sample_output_grads(twin: Classifier, x: Any, y: Any, loss: Any) -> np.ndarray:
    """Sample i alone: dL_i/d emb_i from a batch of one, stacked to (B, T, D)."""
    rows = []
    for i in range(x.shape[0]):
        e = twin.embed(x[i : i + 1])
        e.attach_grad()
        with autograd.record(train_mode=False):
            li = loss(twin.from_lookup(nd, e), y[i : i + 1])
        li.backward(train_mode=False)
        rows.append(e.grad.asnumpy()[0])
    return np.stack(rows)


def forum_loop(twin: Classifier, x: Any, y: Any, loss: Any) -> list[tuple[np.ndarray, Any]]:
    """The forum's answer: one retained-graph backward per sample, copying weight.grad()."""
    with autograd.record(train_mode=False):
        losses = loss(twin(x), y)
    grads = []
    for i in range(x.shape[0]):
        e = nd.one_hot(nd.array([i]), x.shape[0])[0]
        losses.backward(out_grad=e, retain_graph=True, train_mode=False)
        grads.append(twin.embed.weight.grad().copy())
    return [(g.asnumpy(), g) for g in grads]


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        nd.waitall()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    x = nd.array(rng.integers(0, VOCAB, size=(BATCH, LENGTH)))
    y = nd.array(rng.integers(0, CLASSES, size=BATCH))
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    net = Classifier()
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True)
    net(x)

    def loss_fn(out: Any) -> Any:
        return loss(out, y)

    res = embgrad.gradients(net, x, loss_fn)
    lk = res["embed"]
    grads = lk.output_grad.asnumpy()
    rows = lk.table_grad()
    twin = twin_of(net, x)
    oracle = per_sample_output_grads(twin, x, y, loss)
    out_err = np.abs(grads - oracle).max() / np.abs(oracle).max()
    forum = forum_loop(twin, x, y, loss)
    dense = lk.table_grad(dense=True)
    table_err = max(np.abs(dense[i] - g).max() for i, (g, _) in enumerate(forum))
    table_err /= max(np.abs(g).max() for g, _ in forum)

    print(
        f"Embedding({VOCAB}, {DIM}) -> LSTM({HIDDEN}) -> Dense({CLASSES}), batch {BATCH}x{LENGTH}"
    )
    print(
        f"captured lookups: {res.layers}  (check={res.check}, probe residual {res.probe_residual})"
    )
    print(f"output_grad {tuple(lk.output_grad.shape)}, table rows: {rows}")
    print("\n sample   loss    |dL/d emb|  |dL/d table|  table rows")
    norms = lk.table_grad_norms()
    losses = res.losses.asnumpy()
    for i in range(min(BATCH, 6)):
        n_rows = int((rows.numpy()[0] == i).sum())
        print(
            f"{i:7d} {losses[i]:8.4f} {np.linalg.norm(grads[i]):11.3e} {norms[i]:12.3e} {n_rows:9d}"
        )
    print(f"    ... ({BATCH} samples)\n")
    print(f"agreement, output gradients vs per-sample oracle: max rel. diff {out_err:.1e}")
    print(f"agreement, table gradients vs the forum's loop:     max rel. diff {table_err:.1e}")

    def fwd_bwd() -> None:
        with autograd.record(train_mode=False):
            value = loss_fn(twin_hybrid(x))
        value.backward(train_mode=False)

    twin_hybrid = twin_of(net, x)
    twin_hybrid.hybridize(static_alloc=True)
    fwd_bwd()

    def ours() -> None:
        r = embgrad.gradients(net, x, loss_fn, check="off")
        r["embed"].table_grad()

    base = median_time(fwd_bwd, 5)
    mine = median_time(ours, 5)
    loop = median_time(lambda: forum_loop(twin, x, y, loss), 1)
    print(
        f"\ntime: forward+backward (hybridized) {base * 1e3:.0f} ms | embgrad {mine * 1e3:.0f} ms "
        f"({mine / base:.2f}x) | forum loop {loop * 1e3:.0f} ms ({loop / mine:.0f}x slower "
        "than embgrad)"
    )


if __name__ == "__main__":
    main()
