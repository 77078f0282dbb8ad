"""Every bad input gives embgrad's own error, with a message that says what and where, and the
model restored (hybridization flags, ``mx.nd.Embedding``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import gluon, nd  # noqa: E402

import embgrad  # noqa: E402
import gluon_models as gm  # noqa: E402

pytestmark = pytest.mark.gluon

REAL_EMBEDDING = nd.Embedding


@pytest.fixture(params=["plain", "hybrid"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> gm.Case:
    """The classifier as written (lookups intercepted one by one) or hybridized and run (its
    graph rewritten): both paths validate."""
    case = gm.classifier_case()
    gm.variant(case, request.param, tmp_path)
    return case


def refused(case: gm.Case, inputs: Any, loss: Any, error: type[Exception], match: str) -> None:
    active = case.model._active
    with pytest.raises(error, match=match):
        embgrad.gradients(case.model, inputs, loss)
    assert case.model._active == active and nd.Embedding is REAL_EMBEDDING
    assert "_call_cached_op" not in vars(case.model)


def with_id(case: gm.Case, value: float) -> Any:
    x = case.inputs[0].copy()
    x[1, 2] = value
    return x


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (30, r"lookup 'embed' .*vocab size 30.* out of range: 30 at index \(1, 2\)"),
        (-1, r"lookup 'embed' .*negative id: -1 at index \(1, 2\)"),
        (2.5, r"lookup 'embed' .*non-integral id .*: 2\.5 at index \(1, 2\)"),
        (float("nan"), r"lookup 'embed' .*non-integral id .*: nan at index \(1, 2\)"),
    ],
)
def test_bad_ids_are_refused_before_the_lookup(case: gm.Case, value: float, match: str) -> None:
    refused(case, with_id(case, value), case.loss, embgrad.InputError, match)


def test_empty_batch_is_refused(case: gm.Case) -> None:
    empty = nd.array(np.zeros((0, 5)))
    refused(case, empty, case.loss, embgrad.InputError, r"input 0 is empty")


def test_numpy_input_is_refused(case: gm.Case) -> None:
    x = case.inputs[0].asnumpy()
    refused(case, x, case.loss, embgrad.InputError, r"input 0 is a numpy array")


def test_inputs_on_another_context_than_the_parameters(case: gm.Case) -> None:
    x = case.inputs[0].as_in_context(mx.cpu(1))
    refused(case, x, case.loss, embgrad.InputError, r"input 0 is on cpu\(1\) but .* cpu\(0\)")


def test_inputs_on_different_contexts() -> None:
    case = gm.shared_case()
    a, b = case.inputs
    with pytest.raises(embgrad.InputError, match="different contexts"):
        embgrad.gradients(case.model, (a, b.as_in_context(mx.cpu(1))), case.loss)


def test_loss_summed_over_the_batch_is_refused(case: gm.Case) -> None:
    def summed(out: Any) -> Any:
        return case.loss(out).sum()  # MXNet: shape (1,), not a scalar

    refused(case, case.inputs, summed, embgrad.LossError, r"shape \(1,\).*reduced")


def test_loss_of_the_wrong_shape_is_refused(case: gm.Case) -> None:
    refused(case, case.inputs, lambda out: out, embgrad.LossError, r"shape \(4, 3\)")


def test_nan_loss_is_refused(case: gm.Case) -> None:
    def nan_for_sample_2(out: Any) -> Any:
        mask = nd.array([0, 0, np.nan, 0])
        return case.loss(out) + mask

    refused(case, case.inputs, nan_for_sample_2, embgrad.LossError, r"non-finite .*\[2\]")


def test_loss_that_is_not_an_ndarray_is_refused(case: gm.Case) -> None:
    def as_numpy(out: Any) -> Any:
        return case.loss(out).asnumpy()

    refused(case, case.inputs, as_numpy, embgrad.LossError, r"returned ndarray; .*mxnet NDArray")


def dense_only() -> Any:
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(3))
    net.initialize()
    return net


def test_block_without_lookup_raises_no_lookup_error() -> None:
    net = dense_only()
    x = nd.ones((4, 5))
    with pytest.raises(embgrad.NoLookupError, match="no embedding lookup"):
        embgrad.gradients(net, x, lambda out: out.sum(axis=1))


def test_exported_model_without_lookup_raises_no_lookup_error(tmp_path: Path) -> None:
    net = dense_only()
    x = nd.ones((4, 5))
    net.hybridize()
    net(x)
    net.export(str(tmp_path / "dense"))
    sym = gluon.SymbolBlock.imports(
        str(tmp_path / "dense-symbol.json"), ["data"], str(tmp_path / "dense-0000.params")
    )
    with pytest.raises(embgrad.NoLookupError, match="no embedding lookup"):
        embgrad.gradients(sym, x, lambda out: out.sum(axis=1))


def test_exported_model_with_bad_ids_or_arity(tmp_path: Path) -> None:
    case = gm.classifier_case()
    sym = gm.variant(case, "exported", tmp_path)
    with pytest.raises(embgrad.InputError, match=r"'classifier\d+_embedding0_fwd'.* out of range"):
        embgrad.gradients(sym, with_id(case, 99), case.loss)
    with pytest.raises(embgrad.InputError, match=r"takes 1 input\(s\) named \['data'\]"):
        embgrad.gradients(sym, (case.inputs[0], case.inputs[0]), case.loss)


def test_unknown_model_type_names_the_supported_frameworks() -> None:
    with pytest.raises(embgrad.UnsupportedModelError, match=r"mxnet\.gluon\.Block"):
        embgrad.gradients(object(), nd.ones((1, 1)), lambda o: o)
