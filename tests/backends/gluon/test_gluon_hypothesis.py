"""Hypothesis-drawn small architectures against the per-sample oracle.

Drawn: vocabulary, width, batch and length (equal sizes included: the probe must then pick the
batch axis), layout (N, T) or (T, N), one or two tables or one table looked up twice, the
encoder (LSTM, GRU, a position-wise Dense, or none), pooling, dropout in training mode and
hybridization (with or without static_alloc). Every drawn model must give the oracle's
per-sample output and table gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mxnet import gluon, nd  # noqa: E402
from mxnet.gluon import nn, rnn  # noqa: E402

import embgrad  # noqa: E402
import oracle_gluon as oracle  # noqa: E402
from oracle_gluon import assert_matches_oracle, forward_seed  # noqa: E402

pytestmark = pytest.mark.gluon


class Drawn(gluon.HybridBlock):
    """Lookups → [Dropout] → encoder → pool over time → Dense: ids → (B, 2)."""

    def __init__(self, spec: dict[str, Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.spec = spec
        vocab, dim, layout = spec["vocab"], spec["dim"], spec["layout"]
        with self.name_scope():
            self.first = nn.Embedding(vocab, dim)
            self.second = nn.Embedding(vocab + 3, dim) if spec["tables"] == "two" else None
            self.drop = nn.Dropout(spec["dropout"]) if spec["dropout"] else None
            self.encoder = {
                "lstm": lambda: rnn.LSTM(5, layout=layout),
                "gru": lambda: rnn.GRU(5, layout=layout),
                "dense": lambda: nn.Dense(5, flatten=False, activation="tanh"),
                "none": lambda: None,
            }[spec["encoder"]]()
            self.out = nn.Dense(2)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        h = self.first(x)
        if self.spec["tables"] == "shared":
            h = h * self.first(F.reverse(x, axis=self._time_axis))
        elif self.second is not None:
            h = h + self.second(x)
        if self.drop is not None:
            h = self.drop(h)
        if self.encoder is not None:
            h = self.encoder(h)
        pool = F.max if self.spec["pool"] == "max" else F.mean
        h = pool(h, axis=self._time_axis)
        return self.out(h)

    @property
    def _time_axis(self) -> int:
        return 1 if self.spec["layout"] == "NTC" else 0


specs = st.fixed_dictionaries(
    {
        "vocab": st.integers(3, 30),
        "dim": st.integers(1, 6),
        "batch": st.integers(2, 4),
        "length": st.integers(2, 4),
        "layout": st.sampled_from(["NTC", "TNC"]),
        "tables": st.sampled_from(["one", "two", "shared"]),
        "encoder": st.sampled_from(["lstm", "gru", "dense", "none"]),
        "pool": st.sampled_from(["mean", "max"]),
        "dropout": st.sampled_from([0.0, 0.5]),
        "hybridize": st.sampled_from(["no", "yes", "static_alloc"]),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs)
def test_drawn_architectures_match_the_oracle(spec: dict[str, Any]) -> None:
    rng = np.random.default_rng(spec["seed"])
    shape = (spec["batch"], spec["length"])
    if spec["layout"] == "TNC":
        shape = shape[::-1]
    x = nd.array(rng.integers(0, spec["vocab"], size=shape))
    labels = nd.array(rng.integers(0, 2, size=spec["batch"]))
    ce = gluon.loss.SoftmaxCELoss()

    def loss(out: Any) -> Any:
        return ce(out, labels)

    mx.random.seed(spec["seed"])
    net = Drawn(spec)
    net.initialize(mx.init.Uniform(0.7))
    net(x)
    mode = "train" if spec["dropout"] else "eval"
    reference = oracle.output_grads(net, (x,), loss, mode=mode, seed=forward_seed(spec["seed"]))
    if spec["hybridize"] != "no":
        net.hybridize(static_alloc=spec["hybridize"] == "static_alloc")
        net(x)
    res = embgrad.gradients(net, (x,), loss, mode=mode, seed=spec["seed"])
    # The batch axis is the layout's, unless the gradients cannot tell: with batch == length,
    # an all-zero gradient (everything dropped out) or one where each sample's gradient also
    # lies in its own slice along the other axis fits both. Values are compared either way.
    expected_axis = 0 if spec["layout"] == "NTC" else 1
    used: set[int] = set()
    for lk in res:
        ref = oracle.matching(lk, reference, used)
        if lk.batch_axis != expected_axis:
            assert spec["batch"] == spec["length"]
            assert oracle.off_diagonal_max(ref.grads, lk.batch_axis) == 0.0
    assert_matches_oracle(res, reference, allow_zero=True)
