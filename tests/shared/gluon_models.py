"""Small Gluon models for the Gluon backend tests, their twins and exported versions.

Every builder returns a :class:`Case`: the model (initialized and run once, so deferred shapes
are known), its inputs, a per-sample loss and how to build a twin with the same parameter
values (for comparisons that need a fresh, non-hybridized copy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn, rnn

VARIANTS = ("plain", "hybrid", "exported")


class Classifier(gluon.HybridBlock):
    """Embedding → [Dropout] → LSTM → [BatchNorm] → Dense: (B, T) ids → (B, C) logits."""

    def __init__(
        self,
        vocab: int = 30,
        dim: int = 6,
        hidden: int = 8,
        classes: int = 3,
        *,
        dropout: float = 0.0,
        sparse_grad: bool = False,
        batchnorm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.embed = nn.Embedding(vocab, dim, sparse_grad=sparse_grad)
            self.drop = nn.Dropout(dropout) if dropout else None
            self.lstm = rnn.LSTM(hidden, layout="NTC")
            self.norm = nn.BatchNorm(axis=2) if batchnorm else None
            self.out = nn.Dense(classes)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        h = self.embed(x)
        if self.drop is not None:
            h = self.drop(h)
        h = self.lstm(h)
        if self.norm is not None:
            h = self.norm(h)
        return self.out(h)


class WordPosition(gluon.HybridBlock):
    """Word lookup plus a position table looked up directly with ``F.Embedding`` (gluonnlp's
    way): ids (B, T) and positions (T,) → (B, C)."""

    def __init__(self, vocab: int = 30, length: int = 5, dim: int = 6, classes: int = 3, **kw: Any):
        super().__init__(**kw)
        self._length, self._dim = length, dim
        with self.name_scope():
            self.word_embed = nn.Embedding(vocab, dim)
            self.position_weight = self.params.get("position_weight", shape=(length, dim))
            self.out = nn.Dense(classes, activation="tanh")

    def hybrid_forward(self, F: Any, x: Any, position_weight: Any) -> Any:
        steps = F.arange(self._length)
        pos = F.Embedding(steps, position_weight, input_dim=self._length, output_dim=self._dim)
        return self.out(F.broadcast_add(self.word_embed(x), F.expand_dims(pos, axis=0)))


class SharedTwice(gluon.HybridBlock):
    """One embedding block called on two inputs: (B, T1), (B, T2) → (B, C)."""

    def __init__(self, vocab: int = 30, dim: int = 6, classes: int = 3, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(vocab, dim)
            self.out = nn.Dense(classes, activation="tanh")

    def hybrid_forward(self, F: Any, a: Any, b: Any) -> Any:
        return self.out(F.concat(self.embed(a), self.embed(b), dim=1))


class TiedLM(gluon.HybridBlock):
    """Embedding → Dense → decoder Dense sharing the embedding's weight: (B, T) → (B, T, V)."""

    def __init__(self, vocab: int = 30, dim: int = 6, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(vocab, dim)
            self.proj = nn.Dense(dim, flatten=False, activation="tanh")
            self.decoder = nn.Dense(vocab, flatten=False, in_units=dim, params=self.embed.params)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.decoder(self.proj(self.embed(x)))


class SparseModel(gluon.Block):
    """``contrib.nn.SparseEmbedding`` (row_sparse weight; not hybridizable) → Dense."""

    def __init__(self, vocab: int = 30, dim: int = 6, classes: int = 3, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = gluon.contrib.nn.SparseEmbedding(vocab, dim)
            self.out = nn.Dense(classes, activation="tanh")

    def forward(self, x: Any) -> Any:
        return self.out(self.embed(x))


@dataclass
class Case:
    """A model with inputs and a per-sample loss; ``make`` builds a fresh, equal twin."""

    model: Any
    inputs: tuple[Any, ...]
    loss: Callable[[Any], Any]
    make: Callable[[], Any]

    def twin(self) -> Any:
        """A fresh, non-hybridized model with the same parameter values."""
        other = self.make()
        other(*self.inputs)
        copy_params(self.model, other)
        return other


def copy_params(src: Any, dst: Any) -> None:
    """Copy parameter values by structured name (global name counters differ)."""
    theirs = dst._collect_params_with_prefix()
    for name, p in src._collect_params_with_prefix().items():
        theirs[name].set_data(p._data[0].copy())


def ids(shape: tuple[int, ...], vocab: int, rng: np.random.Generator) -> Any:
    """Token ids as Gluon feeds them: float32 NDArray."""
    return nd.array(rng.integers(0, vocab, size=shape), dtype="float32")


def classifier_case(*, batch: int = 4, length: int = 5, **kw: Any) -> Case:
    rng = np.random.default_rng(0)
    labels = nd.array(rng.integers(0, 3, size=batch))
    ce = gluon.loss.SoftmaxCELoss()
    return _case(
        lambda: Classifier(**kw), (ids((batch, length), 30, rng),), lambda o: ce(o, labels)
    )


def word_position_case(*, batch: int = 4, length: int = 5) -> Case:
    rng = np.random.default_rng(1)
    target = nd.array(rng.normal(size=(batch, 3)))
    return _case(
        lambda: WordPosition(length=length),
        (ids((batch, length), 30, rng),),
        lambda o: ((o - target) ** 2).sum(axis=1),
    )


def shared_case(*, batch: int = 4) -> Case:
    rng = np.random.default_rng(2)
    target = nd.array(rng.normal(size=(batch, 3)))
    return _case(
        SharedTwice,
        (ids((batch, 5), 30, rng), ids((batch, 3), 30, rng)),
        lambda o: ((o - target) ** 2).sum(axis=1),
    )


def sparse_grad_case(*, batch: int = 4) -> Case:
    return classifier_case(batch=batch, sparse_grad=True)


def tied_case(*, batch: int = 4, length: int = 5) -> Case:
    rng = np.random.default_rng(3)
    labels = nd.array(rng.integers(0, 30, size=(batch, length)))
    ce = gluon.loss.SoftmaxCELoss()
    return _case(TiedLM, (ids((batch, length), 30, rng),), lambda o: ce(o, labels))


def sparse_embedding_case(*, batch: int = 4) -> Case:
    rng = np.random.default_rng(4)
    target = nd.array(rng.normal(size=(batch, 3)))

    def make() -> Any:
        net = SparseModel()
        net.initialize()
        gluon.Trainer(net.collect_params(), "sgd")  # row_sparse weights need a Trainer
        return net

    x = ids((batch, 5), 30, rng)
    net = make()
    net(x)
    return Case(net, (x,), lambda o: ((o - target) ** 2).sum(axis=1), make)


def _case(factory: Callable[[], Any], inputs: tuple[Any, ...], loss: Callable[[Any], Any]) -> Case:
    def make() -> Any:
        net = factory()
        net.initialize(mx.init.Uniform(0.5))
        return net

    mx.random.seed(0)
    net = make()
    net(*inputs)
    return Case(net, inputs, loss, make)


def variant(case: Case, kind: str, tmp: Path) -> Any:
    """The case's model as given ("plain"), hybridized and run, or exported and re-imported."""
    if kind == "plain":
        return case.model
    net = case.model
    net.hybridize(static_alloc=True, static_shape=True)
    net(*case.inputs)
    if kind == "hybrid":
        return net
    net.export(str(tmp / "model"))
    names = ["data"] if len(case.inputs) == 1 else [f"data{i}" for i in range(len(case.inputs))]
    return gluon.SymbolBlock.imports(
        str(tmp / "model-symbol.json"), names, str(tmp / "model-0000.params")
    )
