"""Issue 22 items 13 and 17 (the ``gradients`` arguments): ``replace=3``, ``input_grads='no'``,
sparse ids or losses and complex losses get embgrad's own errors saying what to pass — not a
raw TypeError / NotImplementedError, nor silent acceptance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import embgrad
from embgrad.errors import InputError, LossError
from fakes.numpy_backend import FakeModel, Tensor

WORD = "embeddings.word_embeddings"
B, T = 3, 5

pytestmark = pytest.mark.usefixtures("fake_backend")  # tests/core/conftest.py


def loss(h: Tensor) -> Tensor:
    return h.tanh().sum(axis=(1, 2))


def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 7, size=(B, T))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"replace": 3}, r"replace= must be None or a callable .* got 3"),
        ({"replace": "linear"}, r"replace= must be None or a callable"),
        ({"input_grads": "no"}, r"input_grads= must be True or False, got 'no'"),
        ({"input_grads": None}, r"input_grads= must be True or False"),
    ],
)
def test_bad_arguments_refused_before_the_model(kw: dict[str, Any], match: str) -> None:
    model = FakeModel()
    with pytest.raises(InputError, match=match):
        embgrad.gradients(model, ids(), loss, **kw)
    assert model.events == []


def test_numpy_bool_input_grads_is_accepted() -> None:
    res = embgrad.gradients(FakeModel(), ids(), loss, input_grads=np.bool_(False))
    assert res.input_grads == {}


def test_complex_losses_are_refused() -> None:
    model = FakeModel()

    def complex_loss(h: Tensor) -> Tensor:
        out = loss(h)
        return Tensor(out.value.astype(np.complex128))

    with pytest.raises(LossError, match=r"complex losses \(complex128\).*real"):
        embgrad.gradients(model, ids(), complex_loss)
    assert model.events[-1] == "close"


class SparseLike:
    """What a scipy / torch / MXNet sparse array looks like to the core (duck-typed)."""

    def __init__(self, stype: str) -> None:
        self.stype = stype
        self.shape = (B, T)


@pytest.mark.parametrize("stype", ["csr", "row_sparse"])
def test_sparse_ids_are_refused(stype: str) -> None:
    model = FakeModel()
    with pytest.raises(InputError, match=r"input 0 is a sparse array .*tostype\('default'\)"):
        embgrad.gradients(model, SparseLike(stype), loss)
    assert model.events == []


def test_torch_sparse_ids_and_losses_are_refused() -> None:
    torch = pytest.importorskip("torch")
    emb = torch.nn.Embedding(7, 4)
    x = torch.as_tensor(ids())
    with pytest.raises(InputError, match=r"input 0 is a sparse array .*to_dense"):
        embgrad.gradients(emb, x.to_sparse(), lambda o: o.sum(dim=(1, 2)))
    with pytest.raises(LossError, match=r"loss_fn returned a sparse array .*to_dense"):
        embgrad.gradients(emb, x, lambda o: o.sum(dim=(1, 2)).to_sparse())
    with pytest.raises(LossError, match=r"complex losses"):
        embgrad.gradients(emb, x, lambda o: o.sum(dim=(1, 2)).to(torch.complex64))
    assert emb.weight.grad is None
