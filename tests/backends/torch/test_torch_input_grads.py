"""Gradients w.r.t. floating-point inputs: returned, optional, and a clear error where PyTorch
has no backward for them."""

from __future__ import annotations

import pytest
import torch

import embgrad
from embgrad import InputError


class _NoBackward(torch.autograd.Function):
    """x * w whose backward is missing, like CUDA's bf16 embedding_bag per_sample_weights."""

    @staticmethod
    def forward(ctx, x, w):  # type: ignore[override]
        return x * w

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        raise NotImplementedError("no backward for this dtype on this device")


class Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(20, 4)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        e = self.emb(ids)  # (B, T, D)
        return (e * scale[:, :, None]).sum((1, 2))


class Opaque(Scaled):
    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        e = self.emb(ids)
        return _NoBackward.apply(scale, torch.ones_like(scale)).sum(1) + e.sum((1, 2))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 20, (3, 5), generator=g), torch.rand(3, 5, generator=g)


def test_float_inputs_get_per_sample_gradients_and_the_users_tensor_is_untouched():
    torch.manual_seed(0)
    model = Scaled()
    ids, scale = _inputs()
    res = embgrad.gradients(model, (ids, scale), lambda out: out)
    expected = model.emb(ids).detach().sum(-1)  # d/d scale of sum(e * scale)
    torch.testing.assert_close(res.input_grads[1], expected, rtol=1e-6, atol=1e-7)
    assert not scale.requires_grad and scale.grad is None


def test_input_grads_false_skips_them():
    model = Scaled()
    res = embgrad.gradients(model, _inputs(), lambda out: out, input_grads=False)
    assert res.input_grads == {}


def test_a_missing_backward_for_a_float_input_names_the_way_out():
    model = Opaque()
    with pytest.raises(InputError, match=r"input_grads=False"):
        embgrad.gradients(model, _inputs(), lambda out: out)
    res = embgrad.gradients(model, _inputs(), lambda out: out, input_grads=False)
    assert res.input_grads == {} and res.layers == ["emb"]
