"""HotFlip's verification on tiny torch models: every input form, the oracle is the model itself
run on the flipped ids, and a model whose lookup ids are not among its inputs is told so."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from embgrad.errors import InputError  # noqa: E402
from embgrad.methods import get_method  # noqa: E402


class Tiny(nn.Module):
    """f_i = Σ_t w · tanh(E[ids] W)_t (+ a float side input): independent samples, nonlinear."""

    def __init__(self, vocab: int = 12, dim: int = 3, shift: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lin, self.shift = nn.Embedding(vocab, dim), nn.Linear(dim, dim), shift
        self.w = nn.Parameter(torch.randn(dim))

    def forward(self, ids: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.tanh(self.lin(self.emb(ids + self.shift))) @ self.w
        out = (h * torch.arange(1, ids.shape[1] + 1)).sum(1)
        return out if scale is None else out * scale


def run(model: Tiny, ids: torch.Tensor, scale: torch.Tensor | None = None) -> np.ndarray:
    with torch.no_grad():
        return model(ids, scale).numpy().astype(np.float64)


@pytest.mark.parametrize("form", ["array", "tuple", "dict"])
def test_verified_equals_running_the_model_on_each_flipped_row(form):
    model = Tiny()
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 1]])
    scale = torch.tensor([1.0, -2.0, 0.5])
    inputs = {"array": ids, "tuple": (ids, scale), "dict": {"ids": ids, "scale": scale}}[form]
    side = None if form == "array" else scale
    hf = get_method("hotflip")(model).attribute(
        inputs, lambda out: out, k=3, direction="increase", verify=7, verify_rows=4
    )
    fx = run(model, ids, side)
    for b, cands in enumerate(hf.hotflip):
        done = [c for c in cands if c["verified"] is not None]
        assert len(done) == 7 and all(c["verified"] is None for c in cands[7:])
        assert [c["verified"] for c in done] == sorted((c["verified"] for c in done), reverse=True)
        assert sorted(c["rank"] for c in done) == [0, 0, 0, 0, 1, 1, 1]  # spread over positions
        for c in done:
            x = ids.clone()
            x[b, c["position"]] = c["replacement_id"]
            want = run(model, x, side)[b] - fx[b]
            assert abs(c["verified"] - want) <= 1e-5 * max(1.0, abs(want))


def test_verify_zero_keeps_estimates_only_and_missing_ids_are_named():
    model = Tiny(shift=1)  # the lookup sees ids + 1: no input equals its ids
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    hf = get_method("hotflip")(model).attribute(ids, lambda out: out, k=2, verify=0)
    assert all(c["verified"] is None for cands in hf.hotflip for c in cands)
    with pytest.raises(InputError, match="verify=0"):
        get_method("hotflip")(model).attribute(ids, lambda out: out, k=2)
    with pytest.raises(InputError, match="verify_rows"):
        get_method("hotflip")(Tiny()).attribute(ids, lambda out: out, verify_rows=0)


def test_model_state_is_restored_after_verification():
    model = Tiny().train()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    get_method("hotflip")(model).attribute(ids, lambda out: out, k=2, verify=3)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
