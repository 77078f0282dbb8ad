"""Every Gluon fast path against the slow per-sample oracle (``oracle_gluon.py``).

Each case runs plain, hybridized and exported (``SymbolBlock.imports``). The oracle takes one
backward of L_i alone per sample on a re-seeded full-batch forward (of a non-hybridized twin
where the model is hybridized); tables are also checked against autograd w.r.t. the weight
itself. Tolerances: see ``oracle_gluon.close``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

import embgrad  # noqa: E402
import gluon_models as gm  # noqa: E402
import oracle_gluon as oracle  # noqa: E402
from oracle_gluon import assert_matches_oracle, close, forward_seed  # noqa: E402

pytestmark = pytest.mark.gluon

CASES = {
    "lstm_classifier": gm.classifier_case,
    "word_and_position": gm.word_position_case,
    "shared_block_twice": gm.shared_case,
    "sparse_grad": gm.sparse_grad_case,
    "tied_decoder": gm.tied_case,
}


def weight_grads(model: Any, case: gm.Case, **kw: Any) -> dict[str, np.ndarray]:
    """Oracle per-sample gradients of every 2-D parameter (tables among them), by name."""
    params = [p for p in model.collect_params().values() if len(p._data[0].shape) == 2]
    return oracle.table_grads(model, case.inputs, case.loss, params, **kw)


def assert_tables_match_weight_grads(res: Any, expected: dict[str, np.ndarray]) -> None:
    """Untied tables: per-sample table gradients equal autograd w.r.t. the weight itself."""
    untied = [t for t, names in res.tables.items() if not res[names[0]].tied]
    assert untied
    for t in untied:
        want = expected[t]
        if not res[res.tables[t][0]].per_sample:
            want = want.sum(axis=0, keepdims=True)
        close(res.table_grad(t, dense=True), want)


@pytest.mark.parametrize("variant", gm.VARIANTS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_one_backward_matches_per_sample_oracle(name: str, variant: str, tmp_path: Path) -> None:
    case = CASES[name]()
    reference = oracle.output_grads(case.model, case.inputs, case.loss)
    weights = weight_grads(case.model, case)
    model = gm.variant(case, variant, tmp_path)
    res = embgrad.gradients(model, case.inputs, case.loss)
    assert res.check == "probe" and res.probe_residual == 0.0
    assert_matches_oracle(res, reference)
    if name == "tied_decoder":  # weight.grad() includes the decoder: flagged, not compared
        assert [lk.tied for lk in res] == [True]
        assert "lookup path only" in next(iter(res)).note
    else:
        assert not any(lk.tied for lk in res)
        assert_tables_match_weight_grads(res, weights)


def test_sparse_embedding_block_matches_oracle() -> None:
    case = gm.sparse_embedding_case()
    reference = oracle.output_grads(case.model, case.inputs, case.loss)
    res = embgrad.gradients(case.model, case.inputs, case.loss)
    (lk,) = res
    assert lk.module == "SparseEmbedding" and lk.table == case.model.embed.weight.name
    assert_matches_oracle(res, reference)


@pytest.mark.parametrize("variant", ["plain", "hybrid"])
def test_dropout_in_train_mode_matches_reseeded_oracle(variant: str, tmp_path: Path) -> None:
    case = gm.classifier_case(dropout=0.4)
    seed = forward_seed(7)
    reference = oracle.output_grads(case.model, case.inputs, case.loss, mode="train", seed=seed)
    model = gm.variant(case, variant, tmp_path)
    res = embgrad.gradients(model, case.inputs, case.loss, mode="train", seed=7)
    # Same dropout masks as the oracle's forward: the losses agree exactly.
    losses = oracle.forward(case.twin(), case.inputs, case.loss, mode="train", seed=seed)
    np.testing.assert_array_equal(res.losses.asnumpy(), losses.asnumpy())
    eval_losses = oracle.forward(case.twin(), case.inputs, case.loss, mode="eval", seed=seed)
    assert not np.allclose(res.losses.asnumpy(), eval_losses.asnumpy()), "dropout was off"
    assert_matches_oracle(res, reference)
    exact = embgrad.gradients(model, case.inputs, case.loss, mode="train", seed=7, check="exact")
    assert_matches_oracle(exact, reference)


def test_dropout_in_train_mode_exported_matches_weight_grads(tmp_path: Path) -> None:
    case = gm.classifier_case(dropout=0.4)
    model = gm.variant(case, "exported", tmp_path)
    res = embgrad.gradients(model, case.inputs, case.loss, mode="train", seed=3)
    exact = embgrad.gradients(model, case.inputs, case.loss, mode="train", seed=3, check="exact")
    close(res[res.layers[0]].output_grad, exact[exact.layers[0]].output_grad.asnumpy())
    weights = weight_grads(model, case, mode="train", seed=forward_seed(3))
    assert_tables_match_weight_grads(res, weights)


def test_batchnorm_in_train_mode_is_refused_as_coupling() -> None:
    case = gm.classifier_case(batchnorm=True)
    with pytest.raises(embgrad.CouplingError, match="BatchNorm"):
        embgrad.gradients(case.model, case.inputs, case.loss, mode="train")


def test_exact_loop_equals_oracle_under_batchnorm_coupling() -> None:
    case = gm.classifier_case(batchnorm=True)
    twin = case.twin()
    reference = oracle.output_grads(twin, case.inputs, case.loss, mode="train")
    assert oracle.off_diagonal_max(reference[0].grads, 0) > 1e-4  # samples really interact
    res = embgrad.gradients(case.model, case.inputs, case.loss, mode="train", check="exact")
    assert res.check == "exact"
    assert_matches_oracle(res, reference, independent=False)


def test_batchnorm_in_eval_mode_is_independent() -> None:
    case = gm.classifier_case(batchnorm=True)
    reference = oracle.output_grads(case.model, case.inputs, case.loss)
    res = embgrad.gradients(case.model, case.inputs, case.loss, mode="eval")
    assert_matches_oracle(res, reference)


def test_reused_block_gives_one_entry_per_call_and_sums_the_table() -> None:
    case = gm.shared_case()
    res = embgrad.gradients(case.model, case.inputs, case.loss)
    assert res.layers == ["embed", "embed#2"]
    table = case.model.embed.weight.name
    assert res.tables == {table: ["embed", "embed#2"]}
    summed = res.table_grad(table, dense=True)
    parts = res["embed"].table_grad(dense=True) + res["embed#2"].table_grad(dense=True)
    close(summed, parts)


def test_tied_decoder_is_flagged_and_differs_from_weight_grad() -> None:
    case = gm.tied_case()
    res = embgrad.gradients(case.model, case.inputs, case.loss)
    (lk,) = res
    assert lk.tied and "lookup path only" in lk.note and "decoder" in lk.note
    weight = oracle.table_grads(case.model, case.inputs, case.loss, [case.model.embed.weight])
    full = weight[case.model.embed.weight.name]
    assert np.abs(lk.table_grad(dense=True) - full).max() > 1e-3 * np.abs(full).max()


def test_position_lookup_has_no_batch_axis_and_is_batch_summed() -> None:
    case = gm.word_position_case()
    res = embgrad.gradients(case.model, case.inputs, case.loss)
    pos, word = res  # call order: the model looks up positions first
    assert (word.name, word.role, word.batch_axis) == ("word_embed", "word", 0)
    assert (pos.name, pos.role, pos.batch_axis) == ("position_weight", "position", None)
    assert not pos.per_sample and "batch sums" in pos.note
    np.testing.assert_array_equal(pos.ids.asnumpy(), np.arange(5))


def test_layers_select_by_name_role_and_block_class() -> None:
    case = gm.word_position_case()
    net = case.model
    assert embgrad.gradients(net, case.inputs, case.loss, layers="word").layers == ["word_embed"]
    by_type = embgrad.gradients(net, case.inputs, case.loss, layers=mx.gluon.nn.Embedding)
    assert by_type.layers == ["word_embed"]
    by_glob = embgrad.gradients(net, case.inputs, case.loss, layers="position*")
    assert by_glob.layers == ["position_weight"]


class WithFeatures(mx.gluon.HybridBlock):
    """Token ids (B, T) and real-valued features (B, F) → (B, 2)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = mx.gluon.nn.Embedding(30, 4)
            self.out = mx.gluon.nn.Dense(2, activation="tanh")

    def hybrid_forward(self, F: Any, x: Any, feats: Any) -> Any:
        return self.out(F.concat(F.mean(self.embed(x), axis=1), feats, dim=1))


def test_real_valued_inputs_get_per_sample_gradients() -> None:
    rng = np.random.default_rng(8)
    x = mx.nd.array(rng.integers(0, 30, size=(4, 5)))
    feats = mx.nd.array(rng.normal(size=(4, 3)))
    net = WithFeatures()
    net.initialize(mx.init.Uniform(0.5))

    def loss(out: Any) -> Any:
        return (out**2).sum(axis=1)

    res = embgrad.gradients(net, (x, feats), loss)
    assert set(res.input_grads) == {1}  # the float32 ids are integral: not a real input
    expected = []
    for i in range(4):
        f = feats.copy()
        f.attach_grad()
        with mx.autograd.record(train_mode=False):
            value = loss(net(x, f))[i]
        value.backward(train_mode=False)
        expected.append(f.grad.asnumpy()[i])
    close(res.input_grads[1], np.stack(expected))


def test_deferred_initialization_runs_before_seeding() -> None:
    """A model never run yet, with a deferred layer before a dropout: initialization must not
    consume random numbers between the seed and the forward (or the probe's re-seeded forward
    would draw other masks than the first)."""
    net = mx.gluon.nn.HybridSequential()
    net.add(
        mx.gluon.nn.Embedding(30, 6),
        mx.gluon.nn.Dense(8, flatten=False),  # in_units unknown: initialized on first forward
        mx.gluon.nn.Dropout(0.5),
        mx.gluon.nn.Dense(3),
    )
    net.initialize(mx.init.Uniform(0.5))
    assert any(p._data is None for p in net.collect_params().values())
    case = gm.classifier_case()
    res = embgrad.gradients(net, case.inputs, case.loss, mode="train", seed=5)
    assert res.probe_residual == 0.0
    reference = oracle.output_grads(net, case.inputs, case.loss, mode="train", seed=forward_seed(5))
    assert_matches_oracle(res, reference)
