"""Child process of ``test_gluon_rnn_states.py`` (run with a time limit: the pattern it guards
against crashed the process). A fused ``rnn.LSTM`` given real-valued begin states as inputs:
embgrad's first backward asks for the lookup deltas and the states, the probe for the deltas
only; MXNet 1.9.1's fused RNN backward corrupts memory when one retained graph is
differentiated w.r.t. different variable sets. Runs ``gradients`` ``REPEAT`` times with the
probe on, compares with the per-sample oracle, prints ``OK``.

Usage: ``python child_rnn_states.py plain|hybrid|exported|lm TMPDIR``
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402
from mxnet.gluon import nn, rnn  # noqa: E402

import embgrad  # noqa: E402
import oracle_gluon as oracle  # noqa: E402

B, T, H, V = 3, 7, 8, 30  # B, T, H pairwise different
REPEAT = 12


class StateLSTM(gluon.HybridBlock):
    """(T, B) ids and begin states (1, B, H) twice → (T, B, 5)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = nn.Embedding(V, 6)
            self.lstm = rnn.LSTM(H, layout="TNC")
            self.out = nn.Dense(5, flatten=False)

    def hybrid_forward(self, F: Any, x: Any, h: Any, c: Any) -> Any:
        out, _ = self.lstm(self.embed(x), [h, c])
        return self.out(out)


class LanguageModel(gluon.Block):
    """gluonnlp's standard_lstm_lm_200 (random init), its begin states as top-level inputs."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, x: Any, h: Any, c: Any) -> Any:
        out, _ = self.lm(x, [h, c])
        return out


def build(kind: str) -> Any:
    mx.random.seed(0)
    if kind == "lm":
        import gluonnlp as nlp

        words = [f"w{i}" for i in range(V)]
        vocab = nlp.Vocab(nlp.data.count_tokens(words))
        lm, _ = nlp.model.get_model(
            "standard_lstm_lm_200",
            dataset_name=None,
            vocab=vocab,
            pretrained=False,
            hparam_allow_override=True,
            embed_size=H,  # tied weights: the same size
            hidden_size=H,
            num_layers=1,
            dropout=0.0,
        )
        lm.initialize(mx.init.Uniform(0.5))
        return LanguageModel(lm)
    net = StateLSTM()
    net.initialize(mx.init.Uniform(0.5))
    return net


def main(kind: str, tmp: str) -> None:
    rng = np.random.default_rng(0)
    n_vocab = V + 4 if kind == "lm" else V  # gluonnlp adds its special tokens
    x = nd.array(rng.integers(0, n_vocab, size=(T, B)))
    h = nd.array(rng.normal(size=(1, B, H)))
    c = nd.array(rng.normal(size=(1, B, H)))
    inputs = (x, h, c)
    target = nd.array(rng.normal(size=(T, B, 1)))

    def loss(out: Any) -> Any:
        return ((out - target) ** 2).mean(axis=(0, 2))

    net = build(kind)
    net(*inputs)
    reference = oracle.output_grads(net, inputs, loss)
    states = _state_oracle(net, inputs, loss)
    model = net
    if kind in ("hybrid", "exported"):
        net.hybridize(static_alloc=True)
        net(*inputs)
    if kind == "exported":
        net.export(str(Path(tmp) / "m"))
        model = gluon.SymbolBlock.imports(
            str(Path(tmp) / "m-symbol.json"),
            ["data0", "data1", "data2"],
            str(Path(tmp) / "m-0000.params"),
        )
    for _ in range(REPEAT):
        res = embgrad.gradients(model, inputs, loss, check="probe", seed=1)
        assert res.check == "probe" and res.probe_residual is not None, res.check
        assert res.probe_residual < 1e-5, res.probe_residual
        oracle.assert_matches_oracle(res, reference)
        assert sorted(res.input_grads) == [1, 2], list(res.input_grads)
        for key, ref in states.items():
            oracle.close(res.input_grads[key], oracle.diagonal(ref, 1))
    for _ in range(3):  # the exact loop: B backwards of one retained graph
        res = embgrad.gradients(model, inputs, loss, check="exact")
        oracle.assert_matches_oracle(res, reference)
        for key, ref in states.items():
            oracle.close(res.input_grads[key], oracle.diagonal(ref, 1))
    print("OK", len(res))


def _state_oracle(net: Any, inputs: tuple[Any, ...], loss: Any) -> dict[int, np.ndarray]:
    """d L_i / d (h, c) for every sample i, float64 (B, 1, B, H) each, one backward per i."""
    per: dict[int, list[np.ndarray]] = {1: [], 2: []}
    for i in range(B):
        h, c = inputs[1].copy(), inputs[2].copy()
        h.attach_grad()
        c.attach_grad()
        with autograd.record(train_mode=False):
            losses = loss(net(inputs[0], h, c))
        e = nd.zeros((B,))
        e[i] = 1
        gh, gc = autograd.grad(losses, [h, c], head_grads=e, train_mode=False)
        per[1].append(gh.asnumpy().astype(np.float64))
        per[2].append(gc.asnumpy().astype(np.float64))
    return {k: np.stack(v) for k, v in per.items()}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
