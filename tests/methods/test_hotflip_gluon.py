"""HotFlip's verification on Gluon: float32 ids as Gluon feeds them, plain / hybridized /
exported models, and a time-major (T, B) model whose batch axis is 1; the oracle is the model
run on the flipped ids."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
from mxnet import gluon, nd  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from embgrad.methods import get_method  # noqa: E402
from gluon_models import VARIANTS, classifier_case, variant  # noqa: E402

pytestmark = pytest.mark.gluon


def logp(labels: np.ndarray):
    def loss(out, rows):
        return nd.pick(nd.log_softmax(out, axis=-1), nd.array(labels[rows]), axis=-1)

    return loss


def check(model, ids: np.ndarray, hf, labels: np.ndarray | None, axis: int) -> None:
    def f(x: np.ndarray) -> np.ndarray:
        out = model(nd.array(x, dtype="float32"))
        if labels is None:  # the first logit
            return out[:, 0].asnumpy().astype(np.float64)
        out = nd.log_softmax(out, axis=-1).asnumpy()
        return out[np.arange(len(labels)), labels].astype(np.float64)

    fx = f(ids)
    n = 0
    for b, cands in enumerate(hf.hotflip):
        for c in (c for c in cands if c["verified"] is not None):
            x = ids.copy()
            if axis == 0:
                x[b, c["position"]] = c["replacement_id"]
            else:
                x[c["position"], b] = c["replacement_id"]
            want = f(x)[b] - fx[b]
            assert abs(c["verified"] - want) <= 1e-5 * max(1.0, abs(want))
            n += 1
    assert n == 3 * len(hf.hotflip)


@pytest.mark.parametrize("kind", VARIANTS)
def test_verified_equals_the_gluon_model_on_the_flipped_ids(kind, tmp_path):
    case = classifier_case(batch=3, length=4)
    model = variant(case, kind, tmp_path)
    labels = np.array([0, 2, 1])
    ids = case.inputs[0].asnumpy()
    hf = get_method("hotflip")(model).attribute(
        case.inputs, logp(labels), k=2, verify=3, verify_rows=4
    )
    check(model, ids, hf, labels, axis=0)


class TimeMajor(gluon.HybridBlock):
    """(T, B) ids → (B, C) logits: the lookup's batch axis is 1."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.embed = nn.Embedding(20, 4)
            self.out = nn.Dense(3)

    def hybrid_forward(self, F, x):
        h = F.tanh(self.embed(x))  # (T, B, D)
        return self.out(F.sum(h * F.arange(1, 6).reshape((5, 1, 1)), axis=0))


def test_verification_follows_a_batch_axis_of_one():
    mx.random.seed(0)
    model = TimeMajor()
    model.initialize(mx.init.Uniform(0.5))
    ids = np.random.default_rng(0).integers(0, 20, size=(5, 3)).astype(np.float32)
    model(nd.array(ids))
    # a loss without rows (the first logit): base_pass guesses the batch size from the first
    # input's axis 0, which is T here, so a per-sample constant could not follow the rows
    hf = get_method("hotflip")(model).attribute(
        nd.array(ids), lambda out: out[:, 0], k=2, verify=3, verify_rows=2
    )
    assert hf.base.batch_axis == 1
    check(model, ids, hf, None, axis=1)
