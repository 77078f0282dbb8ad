"""Issue 21 item 8: lookups inside control flow (``F.contrib.foreach`` / ``while_loop`` /
``cond``). Hybridized, the rewrite cannot reach a lookup inside a loop body: the block runs its
Python forward for the call (every step's lookup captured, exactly as imperative); exported,
there is no Python forward: a clear UnsupportedModelError, never a silent miss nor the false
"the forward performed no embedding lookup". State (hybridization, cached op) restored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import gluon, nd  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

import embgrad  # noqa: E402
import oracle_gluon as oracle  # noqa: E402

pytestmark = pytest.mark.gluon

B, T, D, V = 3, 5, 4, 20  # pairwise different


class ForeachLookup(gluon.HybridBlock):
    """(T, B) ids; each step looks its ids up inside ``foreach`` and updates h (B, D)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(V, D)
            self.out = nn.Dense(2)

    def hybrid_forward(self, F: Any, x: Any, h0: Any) -> Any:
        def step(xt: Any, states: Any) -> Any:
            h = F.tanh(self.embed(xt) + states[0])
            return h, [h]

        _, states = F.contrib.foreach(step, x, [h0])
        return self.out(states[0])


class WhileLookup(gluon.HybridBlock):
    """(T, B) ids; a ``while_loop`` over the steps looks row i up."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(V, D)
            self.out = nn.Dense(2)

    def hybrid_forward(self, F: Any, x: Any, h0: Any, i0: Any) -> Any:
        def cond(i: Any, h: Any) -> Any:
            return i < T

        def func(i: Any, h: Any) -> Any:
            row = F.take(x, i, axis=0).reshape((-1,))
            return [], [i + 1, F.tanh(self.embed(row) + h)]

        _, (_, h) = F.contrib.while_loop(cond, func, [i0, h0], max_iterations=T)
        return self.out(h)


class CondLookup(gluon.HybridBlock):
    """(B, T) ids; ``cond`` picks which of two tables looks them up."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(V, D)
            self.other = nn.Embedding(V, D)
            self.out = nn.Dense(2)

    def hybrid_forward(self, F: Any, x: Any, flag: Any) -> Any:
        h = F.contrib.cond(F.sum(flag) > 0, lambda: self.embed(x), lambda: self.other(x))
        return self.out(F.tanh(h).sum(axis=1))


def build(kind: str) -> tuple[Any, tuple[Any, ...]]:
    rng = np.random.default_rng(0)
    mx.random.seed(0)
    if kind == "foreach":
        net: Any = ForeachLookup()
        inputs: tuple[Any, ...] = (nd.array(rng.integers(0, V, (T, B))), nd.zeros((B, D)))
    elif kind == "while_loop":
        net = WhileLookup()
        inputs = (nd.array(rng.integers(0, V, (T, B))), nd.zeros((B, D)), nd.zeros((1,)))
    else:
        net = CondLookup()
        inputs = (nd.array(rng.integers(0, V, (B, T))), nd.ones((1,)))
    net.initialize(mx.init.Uniform(0.5))
    net(*inputs)
    return net, inputs


TARGET = nd.array(np.random.default_rng(1).normal(size=(B, 2)))


def loss(out: Any) -> Any:
    return ((out - TARGET) ** 2).sum(axis=1)


KINDS = ["foreach", "while_loop", "cond"]


@pytest.mark.parametrize("kind", KINDS)
def test_imperative(kind: str) -> None:
    net, inputs = build(kind)
    reference = oracle.output_grads(net, inputs, loss)
    res = embgrad.gradients(net, inputs, loss)
    oracle.assert_matches_oracle(res, reference)
    assert len(res) == (1 if kind == "cond" else T)


@pytest.mark.parametrize("kind", KINDS)
def test_hybridized_lookups_inside_control_flow_are_captured(kind: str) -> None:
    net, inputs = build(kind)
    reference = oracle.output_grads(net, inputs, loss)
    net.hybridize(static_alloc=True)
    net(*inputs)
    cached = net._cached_op
    res = embgrad.gradients(net, inputs, loss)
    oracle.assert_matches_oracle(res, reference)
    assert len(res) == (1 if kind == "cond" else T)
    assert net._active and net._cached_op is cached
    assert all(b._active for b in net._children.values())


@pytest.mark.parametrize("kind", KINDS)
def test_exported_lookups_inside_control_flow_are_refused(kind: str, tmp_path: Path) -> None:
    net, inputs = build(kind)
    net.hybridize()
    net(*inputs)
    net.export(str(tmp_path / "m"))
    names = [f"data{i}" for i in range(len(inputs))]
    model = gluon.SymbolBlock.imports(
        str(tmp_path / "m-symbol.json"), names, str(tmp_path / "m-0000.params")
    )
    with pytest.raises(
        embgrad.UnsupportedModelError, match=r"inside control flow.*_(foreach|while_loop|cond)\d*/"
    ):
        embgrad.gradients(model, inputs, loss)
    assert nd.Embedding is oracle.nd.Embedding
