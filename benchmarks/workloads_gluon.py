"""MXNet Gluon benchmark workloads: the LSTM classifier and gluonnlp BERT (random weights).

Both are hybridized classifiers with a per-sample softmax cross-entropy, run in eval mode
(``autograd.record(train_mode=False)``: dropout off), on random token ids (float32, as Gluon
feeds them). BERT is built offline (``dataset_name=None, vocab=..., pretrained=False``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault(
    "MXNET_HOME", str(Path(__file__).resolve().parent.parent / ".cache" / "mxnet")
)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import mxnet as mx  # noqa: E402
from mxnet import gluon, nd  # noqa: E402
from mxnet.gluon import nn, rnn  # noqa: E402


@dataclass
class GluonWorkload:
    """A hybridized model, one batch, and the handles the peers need.

    Attributes:
        net: the classifier; ``net(*inputs)`` → logits (B, 2).
        inputs: positional inputs, batch-first; ``inputs[0]`` holds the token ids (B, T).
        labels: (B,) float32 class ids.
        embedding: the word ``nn.Embedding`` block.
        from_lookup: ``from_lookup(lookup_output)`` → logits: the model from the word lookup's
            output on (the floor).
    """

    net: gluon.HybridBlock
    inputs: tuple[Any, ...]
    labels: Any
    embedding: nn.Embedding
    from_lookup: Callable[[Any], Any]

    def __post_init__(self) -> None:
        self._loss = gluon.loss.SoftmaxCrossEntropyLoss()

    @property
    def batch(self) -> int:
        return int(self.labels.shape[0])

    def loss_fn(self, logits: Any) -> Any:
        """Per-sample softmax cross-entropy, (B,)."""
        return self._loss(logits, self.labels)


class _LSTMBody(gluon.HybridBlock):
    def __init__(self, hidden: int, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.lstm = rnn.LSTM(hidden, layout="NTC")
            self.out = nn.Dense(2)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.out(F.mean(self.lstm(x), axis=1))


class LSTMClassifier(gluon.HybridBlock):
    """``nn.Embedding(V, D)`` → ``rnn.LSTM(H, layout="NTC")`` → mean over time → ``Dense(2)``."""

    def __init__(self, vocab: int, dim: int, hidden: int, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embedding = nn.Embedding(vocab, dim)
            self.body = _LSTMBody(hidden)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.body(self.embedding(x))


class BertClassifier(gluon.HybridBlock):
    """gluonnlp ``BERTModel`` (pooler on) and a ``Dense(2)`` head on the pooled output."""

    def __init__(self, bert: gluon.HybridBlock, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.bert = bert
            self.head = nn.Dense(2)

    def hybrid_forward(self, F: Any, ids: Any, types: Any, valid_length: Any) -> Any:
        _, pooled = self.bert(ids, types, valid_length)
        return self.head(pooled)

    def from_lookup(self, x: Any, types: Any, valid_length: Any) -> Any:
        """The forward from the word lookup's output (gluonnlp's ``_encode_sequence``)."""
        bert = self.bert
        x = x + bert.token_type_embed(types)
        out, _ = bert.encoder(x.transpose((1, 0, 2)), valid_length=valid_length)
        pooled = bert._apply_pooling(out.transpose((1, 0, 2)))
        return self.head(pooled)


def lstm(p: dict[str, Any], seed: int) -> GluonWorkload:
    """The LSTM classifier: V=10000, D=128, H=256, T=50 by default."""
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    vocab, batch, seq = p.get("vocab", 10000), p["batch"], p.get("seq", 50)
    net = LSTMClassifier(vocab, p.get("dim", 128), p.get("hidden", 256))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    ids = nd.array(rng.integers(0, vocab, size=(batch, seq)), dtype="float32")
    labels = nd.array(rng.integers(0, 2, size=batch), dtype="float32")
    net(ids).wait_to_read()  # deferred initialisation happens here, not in a timed run
    return GluonWorkload(net, (ids,), labels, net.embedding, net.body)


def _bert_vocab(size: int) -> Any:
    import gluonnlp as nlp

    counter = nlp.data.count_tokens(f"tok{i}" for i in range(size - 5))
    return nlp.vocab.BERTVocab(counter)


def bert(p: dict[str, Any], seed: int) -> GluonWorkload:
    """gluonnlp BERT-base shape (768 units, 12 heads, vocab 30522), ``layers`` layers, random."""
    import gluonnlp as nlp

    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    vocab = _bert_vocab(30522)
    model, _ = nlp.model.get_model(
        "bert_12_768_12",
        dataset_name=None,
        vocab=vocab,
        pretrained=False,
        use_pooler=True,
        use_decoder=False,
        use_classifier=False,
        hparam_allow_override=True,
        num_layers=p.get("layers", 12),
    )
    net = BertClassifier(model)
    net.initialize(mx.init.Normal(0.02))
    net.hybridize()
    batch, seq = p["batch"], p.get("seq", 64)
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    lengths[0] = seq
    ids = rng.integers(1000, len(vocab), size=(batch, seq)) * (np.arange(seq) < lengths[:, None])
    inputs = (
        nd.array(ids, dtype="float32"),
        nd.zeros((batch, seq), dtype="float32"),
        nd.array(lengths, dtype="float32"),
    )
    labels = nd.array(rng.integers(0, 2, size=batch), dtype="float32")
    net(*inputs).wait_to_read()
    return GluonWorkload(
        net,
        inputs,
        labels,
        model.word_embed[0],
        lambda x: net.from_lookup(x, inputs[1], inputs[2]),
    )


WORKLOADS: dict[str, Callable[[dict[str, Any], int], GluonWorkload]] = {
    "lstm": lstm,
    "bert": bert,
}
