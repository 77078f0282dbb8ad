"""The user's model and MXNet's globals are exactly as before, after success and after errors.

Checked: parameter ``.grad`` buffers (including a ``grad_req='add'`` buffer holding values),
``grad_req``, every block's ``_active`` flag, the hybridized model's cached op object, cached
graph and ``static_alloc``/``static_shape`` flags (no re-trace on the next call), BatchNorm
running statistics after training-mode forwards, and ``mx.nd.Embedding`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import nd  # noqa: E402

import embgrad  # noqa: E402
import gluon_models as gm  # noqa: E402

pytestmark = pytest.mark.gluon

REAL_EMBEDDING = nd.Embedding
REAL_OP_EMBEDDING = nd.op.Embedding


def snapshot(net: Any) -> dict[str, Any]:
    """Everything of the model embgrad must not change, as comparable values."""
    blocks: list[Any] = []
    net.apply(blocks.append)
    params = net.collect_params()
    return {
        "active": [getattr(b, "_active", None) for b in blocks],
        "flags": [list(getattr(b, "_flags", [])) for b in blocks],
        "cached_op": [id(getattr(b, "_cached_op", None)) for b in blocks],
        "cached_graph": [id(getattr(b, "_cached_graph", None)) for b in blocks],
        "attributes": [sorted(vars(b)) for b in blocks],  # no attribute left behind
        "grad_req": {k: p.grad_req for k, p in params.items()},
        "grads": {
            k: p.grad().tostype("default").asnumpy().copy()
            for k, p in params.items()
            if p.grad_req != "null"
        },
        "values": {k: p._data[0].tostype("default").asnumpy().copy() for k, p in params.items()},
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("active", "flags", "cached_op", "cached_graph", "attributes", "grad_req"):
        assert before[key] == after[key], key
    for key in ("grads", "values"):
        assert before[key].keys() == after[key].keys()
        for name, value in before[key].items():
            np.testing.assert_array_equal(after[key][name], value, err_msg=f"{key}: {name}")
    assert nd.Embedding is REAL_EMBEDDING and nd.op.Embedding is REAL_OP_EMBEDDING


def dirty_grads(net: Any) -> None:
    """Make the grad buffers hold non-zero values, the embedding's with grad_req='add'."""
    rng = np.random.default_rng(5)
    net.embed.weight.grad_req = "add"
    for p in net.collect_params().values():
        if p.grad_req != "null":
            g = p.grad()
            g[:] = nd.array(rng.normal(size=g.shape))


def hybridized_classifier(tmp_path: Path, **kw: Any) -> gm.Case:
    case = gm.classifier_case(**kw)
    gm.variant(case, "hybrid", tmp_path)
    dirty_grads(case.model)
    return case


def raising(exc: Exception) -> Callable[[Any], Any]:
    def loss_fn(outputs: Any) -> Any:
        raise exc

    return loss_fn


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_hybridized_model_is_unchanged_after_success(tmp_path: Path, mode: str) -> None:
    case = hybridized_classifier(tmp_path, dropout=0.3, batchnorm=mode == "eval")
    net = case.model
    before = snapshot(net)
    assert net._active and net._flags[:2] == [("static_alloc", True), ("static_shape", True)]
    res = embgrad.gradients(net, case.inputs, case.loss, mode=mode)
    assert res.layers == ["embed"]
    assert_same(before, snapshot(net))
    cached = net._cached_op
    net(*case.inputs)  # still hybridized: runs the same cached op, nothing re-traced
    assert net._cached_op is cached


@pytest.mark.parametrize(
    "bad",
    ["loss_fn raises", "ids out of range", "coupling"],
)
def test_model_is_restored_after_errors(tmp_path: Path, bad: str) -> None:
    case = hybridized_classifier(tmp_path, batchnorm=True)
    net = case.model
    before = snapshot(net)
    inputs, loss, mode = case.inputs, case.loss, "eval"
    expected: type[Exception] = ZeroDivisionError
    if bad == "loss_fn raises":
        loss = raising(ZeroDivisionError("user bug"))
    elif bad == "ids out of range":
        inputs, expected = (inputs[0] + 1000,), embgrad.InputError
    else:
        mode, expected = "train", embgrad.CouplingError  # BatchNorm statistics in train mode
    with pytest.raises(expected):
        embgrad.gradients(net, inputs, loss, mode=mode)
    assert_same(before, snapshot(net))


def test_batchnorm_running_statistics_restored_after_train_mode(tmp_path: Path) -> None:
    case = gm.classifier_case(batchnorm=True)
    net = case.model
    before = snapshot(net)
    res = embgrad.gradients(net, case.inputs, case.loss, mode="train", check="exact")
    assert res.check == "exact"
    assert_same(before, snapshot(net))
    # ... whereas an ordinary training step moves them (MXNet 1.9.1 updates them in the
    # backward): the restore is not vacuous.
    with mx.autograd.record(train_mode=True):
        loss = case.loss(net(*case.inputs))
    loss.backward()
    moved = snapshot(net)["values"]
    assert any(not np.array_equal(moved[k], v) for k, v in before["values"].items())


def test_exported_model_is_unchanged(tmp_path: Path) -> None:
    case = gm.classifier_case(dropout=0.3)
    sym = gm.variant(case, "exported", tmp_path)
    sym(*case.inputs)
    for p in sym.collect_params().values():
        p.grad_req = "add"
        p.grad()[:] = 3.0
    before = snapshot(sym)
    graph = sym._cached_graph[1].tojson()
    embgrad.gradients(sym, case.inputs, case.loss, mode="train")
    with pytest.raises(ZeroDivisionError):
        embgrad.gradients(sym, case.inputs, raising(ZeroDivisionError()))
    assert_same(before, snapshot(sym))
    assert sym._cached_graph[1].tojson() == graph


def test_plain_block_with_shared_embedding_is_unchanged() -> None:
    case = gm.shared_case()
    net = case.model
    dirty_grads(net)
    before = snapshot(net)
    embgrad.gradients(net, case.inputs, case.loss, check="exact")
    assert_same(before, snapshot(net))


def test_exported_batchnorm_statistics_restored_after_train_mode(tmp_path: Path) -> None:
    case = gm.classifier_case(batchnorm=True)
    sym = gm.variant(case, "exported", tmp_path)
    before = snapshot(sym)
    with pytest.raises(embgrad.CouplingError):
        embgrad.gradients(sym, case.inputs, case.loss, mode="train")
    embgrad.gradients(sym, case.inputs, case.loss, mode="train", check="exact")
    assert_same(before, snapshot(sym))


def test_hybridized_model_runs_its_own_graph_without_python_forwards(tmp_path: Path) -> None:
    """The hybridized model's graph (rewritten) runs: no child's Python forward is called, and
    the lookups get the same names as in imperative mode."""
    case = gm.word_position_case()
    plain = embgrad.gradients(case.model, case.inputs, case.loss)
    net = gm.variant(case, "hybrid", tmp_path)

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a Python forward ran: the hybridized graph was not used")

    net.word_embed.hybrid_forward = must_not_run
    try:
        res = embgrad.gradients(net, case.inputs, case.loss)
    finally:
        del net.word_embed.hybrid_forward
    assert sorted(res.layers) == sorted(plain.layers) == ["position_weight", "word_embed"]
    for name in plain.layers:
        np.testing.assert_allclose(
            res[name].output_grad.asnumpy(), plain[name].output_grad.asnumpy(), rtol=1e-6
        )


def test_block_hybridized_but_never_run_is_not_traced() -> None:
    case = gm.classifier_case()
    fresh = case.twin()
    fresh.hybridize(static_alloc=True)
    res = embgrad.gradients(fresh, case.inputs, case.loss)
    assert res.layers == ["embed"]
    assert fresh._active and fresh._cached_op is None and not fresh._cached_graph


@pytest.mark.parametrize("check", ["exact", "off"])
def test_batchnorm_statistics_of_a_model_never_run_are_restored_after_train_mode(
    check: str,
) -> None:
    """A model whose shapes are still deferred gets its parameters in embgrad's first, unrecorded
    predict-mode forward (as it would in the user's own first forward); the training-mode
    backwards after it must not leave their BatchNorm updates behind."""
    case = gm.classifier_case(batchnorm=True)
    fresh = case.make()  # initialized, never run: deferred shapes
    assert fresh.norm.running_mean._data is None
    embgrad.gradients(fresh, case.inputs, case.loss, mode="train", check=check)
    mean = fresh.norm.running_mean.data().asnumpy()
    var = fresh.norm.running_var.data().asnumpy()
    np.testing.assert_array_equal(mean, np.zeros_like(mean))  # BatchNorm's initial statistics
    np.testing.assert_array_equal(var, np.ones_like(var))


@pytest.mark.parametrize("kind", ["plain", "hybrid", "exported"])
def test_refilling_the_ids_after_the_call_does_not_change_its_table_rows(
    kind: str, tmp_path: Path
) -> None:
    """A loop may write the next batch into the same ids array before it reads this batch's
    table rows: the rows are those of the ids the call looked up."""
    case = gm.classifier_case()
    model = gm.variant(case, kind, tmp_path)
    ids = case.inputs[0].copy()
    res = embgrad.gradients(model, (ids,), case.loss, check="off")
    ids[:] = (ids + 7) % 30  # the next batch, in place
    reference = embgrad.gradients(model, case.inputs, case.loss, check="off")
    for name in res.layers:
        got = res[name].table_grad().to_dense()
        want = reference[name].table_grad().to_dense()
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
