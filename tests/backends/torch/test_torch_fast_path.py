"""The hooks fast path (issue 12): stock nn.Embedding / nn.EmbeddingBag lookups are recorded by
hooks on those modules, the autograd graph is audited for any other lookup, and a model whose
forward makes one (F.embedding on a parameter, a subclass's forward, a branch taken for some
inputs only) is rerun under the interception mode. Every answer equals the mode path's."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embgrad
from embgrad.backends import torch as torch_backend
from embgrad.backends.torch_capture import stock_modules
from embgrad.backends.torch_tables import TableNames
from models_torch import Bag, TinyText, ce_loss
from oracle_torch import assert_untouched, close, retained_loop, snapshot


class Branchy(nn.Module):
    """A stock word lookup; for inputs whose first id is odd, also ``F.embedding`` on its own
    parameter ``extra`` (a lookup the hooks cannot see)."""

    def __init__(self, frozen_extra: bool = False) -> None:
        super().__init__()
        self.word = nn.Embedding(30, 6)
        self.extra = nn.Parameter(torch.randn(30, 6), requires_grad=not frozen_extra)
        self.out = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.word(ids)
        if int(ids[0, 0]) % 2 == 1:
            h = h * F.embedding(ids, self.extra).tanh()
        return self.out(h.mean(1))


class OwnForward(nn.Embedding):
    """An nn.Embedding subclass whose forward looks up twice."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight) + F.embedding(ids.flip(-1), self.weight)


def _ids(b: int, t: int, first: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(2, 30, (b, t), generator=torch.Generator().manual_seed(seed))
    ids[0, 0] = first
    return ids


def _mode_path(model: nn.Module) -> nn.Module:
    """Forces the mode path for ``model`` (as after a lookup the hooks missed)."""
    torch_backend._NEEDS_MODE.add(model)
    return model


def test_stock_models_take_the_hooks_path_and_match_the_mode_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30, 6), nn.Linear(6, 3))
    ids, labels = _ids(4, 5, 2), torch.arange(4) % 3

    def loss(out):
        return ce_loss(labels)(out.mean(1))

    before = snapshot(model)
    fast = embgrad.gradients(model, ids, loss)
    assert_untouched(before, model)
    assert not torch_backend._needs_mode(model)
    twin = _mode_path(nn.Sequential(nn.Embedding(30, 6), nn.Linear(6, 3)))
    twin.load_state_dict(model.state_dict())
    slow = embgrad.gradients(twin, ids, loss)
    assert fast.layers == slow.layers == ["0"]
    assert torch.equal(fast["0"].output_grad, slow["0"].output_grad)
    assert torch.equal(fast.losses, slow.losses)


def test_a_branch_with_a_hidden_lookup_is_found_when_taken():
    torch.manual_seed(1)
    model = Branchy()
    labels = torch.arange(3) % 3
    even = embgrad.gradients(model, _ids(3, 4, 2), ce_loss(labels))
    assert even.layers == ["word"] and not torch_backend._needs_mode(model)
    before = snapshot(model)
    odd_ids = _ids(3, 4, 3)
    odd = embgrad.gradients(model, odd_ids, ce_loss(labels))
    assert_untouched(before, model)
    assert odd.layers == ["word", "extra"]  # the hidden lookup is not missed
    assert torch_backend._needs_mode(model)
    ref = retained_loop(model, odd_ids, 3, ce_loss(labels), modules=["word"], params=["extra"])
    close(odd["word"].output_grad, ref.stacked("word"))
    close(odd["extra"].table_grad(dense=True), ref.table["extra"])
    again = embgrad.gradients(model, _ids(3, 4, 2), ce_loss(labels))  # mode path from now on
    assert torch.equal(again["word"].output_grad, even["word"].output_grad)


def test_a_frozen_table_outside_stock_modules_uses_the_mode_path():
    torch.manual_seed(2)
    model = Branchy(frozen_extra=True)
    assert stock_modules(TableNames(model)) is None  # a frozen lookup leaves no graph node
    res = embgrad.gradients(model, _ids(2, 4, 3), ce_loss(torch.arange(2)))
    assert res.layers == ["word", "extra"]


def test_a_subclass_with_its_own_forward_is_seen_through_the_audit():
    torch.manual_seed(3)
    model = nn.Sequential(OwnForward(30, 6), nn.Linear(6, 3))
    ids, labels = _ids(3, 4, 2), torch.arange(3) % 3
    res = embgrad.gradients(model, ids, lambda out: ce_loss(labels)(out.mean(1)))
    assert res.layers == ["0", "0#2"]
    assert torch_backend._needs_mode(model)


@pytest.mark.parametrize(
    ("mode", "form"),
    [(m, f) for m in ("sum", "mean", "max") for f in ("offsets", "2d")] + [("sum", "weighted")],
)
def test_bags_through_hooks_match_the_mode_path(mode, form):
    torch.manual_seed(4)
    model = Bag(mode=mode, pad=2)
    twin = _mode_path(copy.deepcopy(model))
    g = torch.Generator().manual_seed(5)
    if form == "2d":
        inputs: tuple = (torch.randint(0, 30, (3, 4), generator=g),)
    else:
        inputs = (torch.randint(0, 30, (10,), generator=g), torch.tensor([0, 3, 7]))
        if form == "weighted":
            inputs += (torch.rand(10, generator=g),)
    loss = ce_loss(torch.arange(3) % 2)
    fast = embgrad.gradients(model, inputs, loss, input_grads=False)
    assert not torch_backend._needs_mode(model)
    slow = embgrad.gradients(twin, inputs, loss, input_grads=False)
    assert fast.layers == slow.layers == ["bag"]
    assert torch.equal(fast["bag"].output_grad, slow["bag"].output_grad)
    assert torch.equal(fast["bag"].table_grad(dense=True), slow["bag"].table_grad(dense=True))


def test_hooks_are_removed_when_the_forward_raises():
    torch.manual_seed(6)

    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(30, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            self.word(ids)
            raise RuntimeError("boom")

    model = Fails()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        embgrad.gradients(model, _ids(2, 3, 2), lambda out: out)
    assert_untouched(before, model)
    assert not model.word._forward_hooks and not model.word._forward_pre_hooks


def test_a_second_thread_running_the_same_model_is_not_intercepted():
    torch.manual_seed(7)
    inside, done = threading.Event(), threading.Event()
    main_thread = threading.get_ident()

    class Waits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(30, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.word(ids)
            if threading.get_ident() == main_thread:
                inside.set()
                assert done.wait(10)  # the other thread runs the model meanwhile
            return self.out(h.mean(1))

    model = Waits()
    seen: dict[str, object] = {}

    def other() -> None:
        assert inside.wait(10)
        with torch.enable_grad():
            h = model.word(_ids(2, 3, 2))
        seen["grad_fn"] = type(h.grad_fn).__name__  # not the clone embgrad hands its thread
        done.set()

    t = threading.Thread(target=other)
    t.start()
    res = embgrad.gradients(model, _ids(2, 3, 2), ce_loss(torch.arange(2)))
    t.join()
    assert seen["grad_fn"] == "EmbeddingBackward0"
    assert res.layers == ["word"]  # one lookup: the other thread's was not recorded


def test_compiled_submodules_take_the_hooks_path():
    torch.manual_seed(8)
    model = TinyText()
    model.token_type = torch.compile(model.token_type, backend="eager")
    ids = torch.randint(1, 40, (3, 5), generator=torch.Generator().manual_seed(0))
    types = torch.zeros_like(ids)
    res = embgrad.gradients(model, (ids, types), ce_loss(torch.arange(3)))
    assert {"word", "token_type", "pos_embed"} <= set(res.layers)
