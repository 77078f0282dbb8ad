"""replace= (integrated gradients, SmoothGrad) and the kept output/table values in Gluon."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

import embgrad  # noqa: E402
from embgrad import InputError  # noqa: E402
from gluon_models import classifier_case, sparse_embedding_case, variant  # noqa: E402

pytestmark = pytest.mark.gluon


def _scaled_twice(name, role, out):
    return out * 2.0


@pytest.mark.parametrize("kind", ["plain", "hybrid"])
def test_replace_takes_gradients_at_the_substitute(kind, tmp_path):
    """Gradient at 2·emb through replace= equals the gradient of a model whose lookup output is
    doubled by hand (a twin whose table is doubled: the same forward values)."""
    case = classifier_case()
    model = variant(case, kind, tmp_path)
    got = embgrad.gradients(model, case.inputs, case.loss, replace=_scaled_twice, check="off")
    twin = case.twin()
    twin.embed.weight.set_data(twin.embed.weight.data() * 2.0)
    ref = embgrad.gradients(twin, case.inputs, case.loss, check="off")
    (name,) = got.layers
    np.testing.assert_allclose(
        got[name].output_grad.asnumpy(), ref[name].output_grad.asnumpy(), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(got[name].output.asnumpy(), ref[name].output.asnumpy(), rtol=1e-6)
    if kind == "hybrid":
        assert model._active and model._cached_op is not None, "still hybridized afterwards"


@pytest.mark.parametrize("kind", ["plain", "hybrid", "exported"])
def test_output_and_table_values_are_kept_for_every_path(kind, tmp_path):
    case = classifier_case()
    model = variant(case, kind, tmp_path)
    res = embgrad.gradients(model, case.inputs, case.loss, check="off")
    (name,) = res.layers
    table = case.model.embed.weight.data().asnumpy()
    ids = case.inputs[0].asnumpy().astype(np.int64)
    np.testing.assert_array_equal(res[name].weight.asnumpy(), table)
    np.testing.assert_array_equal(res[name].output.asnumpy(), table[ids])


def test_sparse_tables_are_kept_dense():
    case = sparse_embedding_case()
    res = embgrad.gradients(case.model, case.inputs, case.loss, check="off")
    lk = res[res.layers[0]]
    assert lk.weight.stype == "default" and lk.weight.shape == (lk.vocab_size, lk.dim)


def test_replace_with_a_wrong_shape_is_refused(tmp_path):
    case = classifier_case()
    real = mx.nd.Embedding
    with pytest.raises(InputError, match=r"replace\(\) for lookup .* returned"):
        embgrad.gradients(
            case.model, case.inputs, case.loss, replace=lambda n, r, out: out[:1], check="off"
        )
    assert mx.nd.Embedding is real, "the interception is removed after the error"


def test_exported_models_refuse_replace_with_the_way_out(tmp_path):
    case = classifier_case()
    model = variant(case, "exported", tmp_path)
    with pytest.raises(InputError, match="exported SymbolBlock has none"):
        embgrad.gradients(model, case.inputs, case.loss, replace=_scaled_twice, check="off")
