"""Torch: a lookup the losses never reach through autograd (``no_grad``, ``.detach()``) is
reported, not given zeros; a reached lookup with zero gradient (masked positions) keeps its
zeros; losses of a length no lookup's ids has an axis of are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import embgrad
from models_torch import TinyText, ce_loss
from oracle_torch import assert_untouched, close, sample_loop, snapshot


class Detach(nn.Module):
    """The issue's model: the lookup output is detached before use."""

    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(50, 8)
        self.l = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(self.e(x).detach()).squeeze(-1).sum(1)


class FrozenStage(nn.Module):
    """Word lookup cut off the graph (``how``: no_grad / detach / frozen+detach); the token-type
    lookup beside it is reached; ``mask`` zeroes the positions ≥ 2 of every sample."""

    def __init__(self, how: str = "no_grad", mask: bool = False) -> None:
        super().__init__()
        self.word = nn.Embedding(30, 6)
        self.kind = nn.Embedding(2, 6)
        self.out = nn.Linear(6, 1)
        self.how = how
        self.mask = mask
        if how == "frozen":
            self.word.weight.requires_grad_(False)

    def forward(self, ids: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        if self.how == "no_grad":
            with torch.no_grad():
                w = self.word(ids)
        elif self.how == "reached":
            w = self.word(ids)
        else:  # detach, frozen (+ detach)
            w = self.word(ids).detach()
        h = torch.tanh(w + self.kind(kinds))
        if self.mask:
            keep = torch.arange(h.shape[1]) < 2
            h = h * keep[None, :, None]
        return self.out(h).squeeze(-1).sum(1)


def _inputs(batch: int = 4, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 30, (batch, length), generator=g), torch.randint(
        0, 2, (batch, length), generator=g
    )


def _loss(o: torch.Tensor) -> torch.Tensor:
    return o


def test_detached_only_lookup_is_an_error_naming_it_and_the_causes():
    torch.manual_seed(0)
    model = Detach()
    before = snapshot(model)
    with pytest.raises(embgrad.NoLookupError) as err:
        embgrad.gradients(model, torch.randint(0, 50, (3, 4)), _loss)
    msg = str(err.value)
    assert "'e' (input)" in msg and "reach none" in msg
    assert "no_grad" in msg and ".detach()" in msg and "BlockGrad" in msg
    assert_untouched(before, model)


@pytest.mark.parametrize("how", ["no_grad", "detach", "frozen"])
@pytest.mark.parametrize("check", ["auto", "probe", "exact", "off"])
def test_unreached_lookup_left_out_with_note(how: str, check: str):
    torch.manual_seed(0)
    model = FrozenStage(how)
    ids, kinds = _inputs()
    before = snapshot(model)
    res = embgrad.gradients(model, (ids, kinds), _loss, check=check)
    assert_untouched(before, model)
    assert res.layers == ["kind"] and list(res.unreached) == ["word"]
    assert "autograd graph" in res.unreached["word"] and res.notes[0].startswith("lookup 'word'")
    ref = sample_loop(model, (ids, kinds), 4, _loss, modules=["kind"])
    close(res["kind"].output_grad, ref.stacked("kind"))
    assert res["kind"].per_sample and res["kind"].note == ""


@pytest.mark.parametrize("layers", ["word", ["word", "kind"], nn.Embedding])
def test_named_unreached_lookup_is_an_error(layers):
    model = FrozenStage("detach")
    before = snapshot(model)
    with pytest.raises(embgrad.NoLookupError, match=r"selects lookup\(s\) 'word' \(word\)"):
        embgrad.gradients(model, _inputs(), _loss, layers=layers)
    assert_untouched(before, model)


@pytest.mark.parametrize("check", ["auto", "exact"])
def test_masked_positions_are_reached_zeros_without_note(check: str):
    """Reached, but the loss ignores positions ≥ 2: zeros there, the oracle's values elsewhere,
    no note; a frozen table (fresh-leaf target) is reached too."""
    torch.manual_seed(0)
    model = FrozenStage("reached", mask=True)
    ids, kinds = _inputs()
    res = embgrad.gradients(model, (ids, kinds), _loss, check=check)
    assert res.layers == ["word", "kind"] and res.unreached == {} and res.notes == []
    g = res["word"].output_grad
    assert not g[:, 2:].any() and g[:, :2].abs().min() > 0
    ref = sample_loop(model, (ids, kinds), 4, _loss, modules=["word", "kind"])
    close(g, ref.stacked("word"))
    model.word.weight.requires_grad_(False)
    frozen = embgrad.gradients(model, (ids, kinds), _loss, check=check)
    assert frozen.layers == ["word", "kind"] and frozen.unreached == {}
    close(frozen["word"].output_grad, ref.stacked("word"))


def test_unreached_float_input_still_gets_zeros():
    """Float inputs keep their zeros where unused (only lookups are reported)."""

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e = nn.Embedding(10, 3)

        def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return self.e(ids).sum((1, 2)) + 0 * x.detach().sum(1)

    res = embgrad.gradients(Both(), (torch.randint(0, 10, (2, 3)), torch.randn(2, 4)), _loss)
    assert res.layers == ["e"] and torch.equal(res.input_grads[1], torch.zeros(2, 4))


# -- part 4 ------------------------------------------------------------------------------------
def test_doubled_losses_are_refused_naming_every_lookup():
    torch.manual_seed(0)
    model = Detach()

    def doubled(o: torch.Tensor) -> torch.Tensor:
        return torch.cat([o, o])

    model.forward = lambda x: model.l(model.e(x)).squeeze(-1).sum(1)  # type: ignore[method-assign]
    with pytest.raises(embgrad.LossError) as err:
        embgrad.gradients(model, torch.randint(0, 50, (4, 5)), doubled)
    assert str(err.value).startswith(
        "loss_fn returned 8 losses, but no lookup's ids has an axis of size 8: 'e' (4, 5)."
    )
    tiny = TinyText()
    with pytest.raises(embgrad.LossError, match=r"'word' \(4, 5\), 'pos_embed' \(5,\)"):
        embgrad.gradients(
            tiny,
            torch.randint(1, 40, (4, 5)),
            lambda o: ce_loss(o.new_zeros(8, dtype=torch.long))(torch.cat([o, o])),
        )


@pytest.mark.parametrize("layers", ["auto", "position"])
def test_position_ids_beside_batched_word_keep_batch_sums(layers: str):
    torch.manual_seed(0)
    model = TinyText()
    ids = torch.randint(1, 40, (3, 5))
    loss = ce_loss(torch.arange(3))
    res = embgrad.gradients(model, ids, loss, layers=layers)
    pos = res.by_role("position")[0]
    assert pos.batch_axis is None and "batch sums" in pos.note and res.unreached == {}
