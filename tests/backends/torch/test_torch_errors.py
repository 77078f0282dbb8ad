"""Torch backend: bad inputs give embgrad's own clear errors, and the user's state is untouched
after every call, successful or not (training flags, requires_grad, .grad, hooks, modes)."""

from __future__ import annotations

import pytest
import torch

import embgrad
from models_torch import Bag, NoLookup, Raises, TinyText, ce_loss
from oracle_torch import assert_untouched, close, snapshot


@pytest.fixture
def model() -> TinyText:
    torch.manual_seed(0)
    m = TinyText(vocab=40)
    m.train()  # the user's own flags (train) must come back after an eval-mode call
    m.out.weight.grad = torch.full_like(m.out.weight, 3.0)  # previous .grad contents
    m.score.weight.requires_grad_(False)
    return m


def _loss(b: int = 3):
    return ce_loss(torch.arange(b) % 3)


def _fails(model: torch.nn.Module, inputs, loss, error, match: str, **kw) -> None:
    before = snapshot(model)
    with pytest.raises(error, match=match):
        embgrad.gradients(model, inputs, loss, **kw)
    assert_untouched(before, model)


@pytest.fixture(params=["cpu", "deferred"])
def id_check(request, monkeypatch):
    """Both ways ids are checked: PyTorch's own check on the CPU, and the deferred check of other
    devices (bad ids looked up as 0, all flags read once after the backward is queued)."""
    from embgrad.backends import torch_record

    monkeypatch.setattr(torch_record, "_DEFER_ON_CPU", request.param == "deferred")
    return request.param


def test_id_out_of_range_names_the_lookup_the_value_and_the_vocab_size(model, id_check):
    ids = torch.randint(1, 40, (3, 5))
    ids[1, 2] = 40
    _fails(
        model, ids, _loss(), embgrad.InputError, r"'word' got id 40 at position \(1, 2\).*40 rows"
    )


def test_negative_id_is_refused(model, id_check):
    ids = torch.randint(1, 40, (3, 5))
    ids[2, 0] = -1
    _fails(model, ids, _loss(), embgrad.InputError, r"got id -1 at position \(2, 0\)")


def test_float_ids_are_refused_with_the_conversion_to_use(model, id_check):
    ids = torch.randint(1, 40, (3, 5)).float()
    _fails(model, ids, _loss(), embgrad.InputError, r"dtype torch.float32.*ids.long\(\)")


def test_embedding_bag_id_out_of_range_is_refused(id_check):
    model = Bag(vocab=30)
    ids = torch.randint(0, 30, (3, 4))
    ids[0, 0] = 99
    _fails(model, ids, _loss(), embgrad.InputError, r"'bag' got id 99.*30 rows")


class _Direct(torch.nn.Module):
    """Lookups through each intercepted function, ``max_norm`` (an in-place renorm) included."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.first = 0  # the first offset: PyTorch refuses anything but 0
        self.table = torch.nn.Parameter(torch.randn(30, 4) * 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.table
        if self.how == "torch.embedding":
            out = torch.embedding(w, ids)
        elif self.how == "torch.embedding_bag":
            flat = ids.reshape(-1)
            starts = torch.arange(self.first, flat.numel(), ids.shape[1])
            out = torch.embedding_bag(w, flat, starts, False, 0)[0][:, None]
        elif self.how == "max_norm":
            out = torch.nn.functional.embedding(ids, w, max_norm=1.0)
        else:
            out = torch.nn.functional.embedding_bag(ids, w, mode="max")[:, None]
        return out.sum(1)[:, :3]


@pytest.mark.parametrize("how", ["torch.embedding", "torch.embedding_bag", "max_norm", "bag-max"])
@pytest.mark.parametrize("bad", [30, -1])
def test_ids_outside_the_table_are_refused_through_every_lookup_function(how, bad, id_check):
    """On the CPU embgrad lets PyTorch find bad ids (no host read per lookup) and then names
    them; with max_norm, which renormalises the table in place, they are refused before the
    lookup, so the table is not touched."""
    model = _Direct(how)
    ids = torch.randint(0, 30, (3, 4))
    ids[2, 1] = bad
    table = model.table.detach().clone()
    _fails(model, ids, _loss(), embgrad.InputError, rf"'table' got id {bad} at position")
    assert torch.equal(model.table.detach(), table)


@pytest.mark.parametrize("how", ["torch.embedding", "torch.embedding_bag", "max_norm", "bag-max"])
def test_the_deferred_id_check_gives_the_same_gradients(how, monkeypatch):
    """With valid ids, looking up through the deferred check (ids with none replaced) changes
    nothing: the same output and table gradients, bit for bit."""
    from embgrad.backends import torch_record

    ids = torch.randint(0, 30, (3, 4))
    results = []
    for defer in (False, True):
        torch.manual_seed(0)
        model = _Direct(how)  # a fresh one: max_norm renormalises the table in place
        monkeypatch.setattr(torch_record, "_DEFER_ON_CPU", defer)
        res = embgrad.gradients(model, ids, _loss(), check="probe")
        results.append([(lk.output_grad, lk.table_grad().to_dense()) for lk in res])
    for (g0, t0), (g1, t1) in zip(*results, strict=True):
        assert torch.equal(g0, g1) and torch.equal(t0, t1)


def test_a_bad_id_is_reported_before_the_errors_it_would_cause(id_check):
    """Off the CPU ids are only read after the forward; an error found meanwhile (here: a layer
    selection that matches nothing) must not hide the bad id the user has to fix."""
    model = _Direct("torch.embedding")
    ids = torch.randint(0, 30, (3, 4))
    ids[0, 0] = 31
    with pytest.raises(embgrad.InputError, match="got id 31") as info:
        embgrad.gradients(model, ids, _loss(), layers="nope")
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no PyTorch trace


def test_ids_after_the_last_offset_are_refused_as_before(id_check):
    """PyTorch's CPU kernels skip the ids after the last offset (include_last_offset=True), so
    its own check does not see them; embgrad refuses them on every device."""

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(10, 4, mode="sum", include_last_offset=True)

        def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            return self.bag(ids, offsets)[:, :3]

    ids, offsets = torch.tensor([1, 2, 3, 4, 99]), torch.tensor([0, 2, 4])
    with pytest.raises(embgrad.InputError, match="got id 99"):
        embgrad.gradients(Tail(), (ids, offsets), _loss(2))


def test_a_bad_id_the_model_overwrites_after_its_lookup_is_still_refused(id_check):
    """The deferred check reads its flag, not the (since edited) ids: still an InputError."""

    class Clamps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e = torch.nn.Embedding(30, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            out = self.e(ids)
            ids.clamp_(0, 29)  # the model tidies its ids after looking them up
            return out.sum(1)[:, :3]

    ids = torch.randint(0, 30, (3, 4))
    ids[1, 1] = 35
    with pytest.raises(embgrad.InputError, match="outside its table of 30 rows"):
        embgrad.gradients(Clamps(), ids, _loss())


def test_a_table_without_rows_is_refused(id_check):
    model = _Direct("torch.embedding")
    model.table = torch.nn.Parameter(torch.zeros(0, 4))
    with pytest.raises(embgrad.InputError, match="outside its table of 0 rows"):
        embgrad.gradients(model, torch.zeros(3, 4, dtype=torch.long), _loss())


@pytest.mark.parametrize("how", ["F.embedding", "bag-sum"])
def test_refilling_the_inputs_after_the_call_does_not_change_its_table_rows(how, id_check):
    """A loop may reuse its id / offset / weight buffers for the next batch before it reads
    this batch's table rows: the rows are those of the ids the call looked up."""
    torch.manual_seed(0)
    if how == "F.embedding":
        model: torch.nn.Module = TinyText(vocab=40)
        inputs: tuple = (torch.randint(1, 40, (3, 5)),)
    else:

        class Bag(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bag = torch.nn.EmbeddingBag(40, 4, mode="sum")

            def forward(self, ids, offsets, weights):
                return self.bag(ids, offsets, per_sample_weights=weights)[:, :3]

        model = Bag()
        inputs = (torch.randint(0, 40, (7,)), torch.tensor([0, 2, 5]), torch.rand(7))
    same = tuple(x.clone() for x in inputs)
    res = embgrad.gradients(model, inputs, _loss(), check="off")
    for x in inputs:  # the next batch's values, written into the same tensors
        x.copy_(torch.flip(x, [0]) if x.dtype.is_floating_point else (x * 7 + 3) % 2)
    reference = embgrad.gradients(model, same, _loss(), check="off")
    for lk, ref in zip(res, reference, strict=True):
        assert torch.equal(lk.table_grad().to_dense(), ref.table_grad().to_dense())


def test_pytorch_errors_that_are_not_about_ids_pass_through_unchanged():
    model = _Direct("torch.embedding_bag")
    model.first = 1
    with pytest.raises(RuntimeError, match="offsets"):
        embgrad.gradients(model, torch.randint(0, 30, (3, 4)), _loss(), check="off")


def test_empty_batch_is_refused_before_the_forward(model):
    ids = torch.zeros((0, 5), dtype=torch.long)
    _fails(model, ids, _loss(0), embgrad.InputError, "empty")


def test_inputs_on_another_device_than_the_model_are_refused(model):
    ids = torch.zeros((3, 5), dtype=torch.long, device="meta")
    _fails(
        model, ids, _loss(), embgrad.InputError, "is on meta but the model's parameters are on cpu"
    )


def test_scalar_loss_is_refused_with_the_reduction_hint(model):
    ids = torch.randint(1, 40, (3, 5))
    loss = lambda out: out.sum()  # noqa: E731
    _fails(model, ids, loss, embgrad.LossError, "reduction='none'")


def test_nan_loss_names_the_samples(model):
    ids = torch.randint(1, 40, (3, 5))

    def loss(out: torch.Tensor) -> torch.Tensor:
        per = out.sum(1)
        return per * torch.tensor([1.0, float("nan"), 1.0])

    _fails(model, ids, loss, embgrad.LossError, r"sample\(s\) \[1\]")


def test_detached_or_non_tensor_losses_are_refused(model):
    ids = torch.randint(1, 40, (3, 5))
    _fails(model, ids, lambda out: out.sum(1).detach(), embgrad.LossError, "no grad_fn")
    _fails(model, ids, lambda out: out.sum(1).tolist(), embgrad.LossError, "torch.Tensor")


def test_model_without_lookups_raises_no_lookup_error():
    model = NoLookup()
    _fails(model, torch.randn(3, 4), lambda out: out, embgrad.NoLookupError, "no embedding lookup")


def test_module_raising_mid_forward_propagates_and_leaves_no_mode_or_hook():
    model = Raises()
    ids = torch.randint(0, 10, (2, 3))
    _fails(model, ids, lambda out: out, RuntimeError, "boom in the middle")
    assert torch._C._len_torch_function_stack() == 0


def test_loss_fn_raising_propagates_with_state_restored(model):
    def loss(out: torch.Tensor) -> torch.Tensor:
        raise KeyError("label missing")

    _fails(model, torch.randint(1, 40, (3, 5)), loss, KeyError, "label missing")


def test_replace_returning_a_wrong_shape_is_refused(model):
    ids = torch.randint(1, 40, (3, 5))
    _fails(
        model,
        ids,
        _loss(),
        embgrad.InputError,
        r"replace\(\) for lookup 'word' returned \(2,\)",
        replace=lambda name, role, out: torch.zeros(2),
    )


def test_successful_calls_leave_flags_grads_and_hooks_untouched(model):
    before = snapshot(model)
    ids = torch.randint(1, 40, (3, 5))
    for mode in ("eval", "train"):
        for check in ("auto", "probe", "exact", "off"):
            embgrad.gradients(model, ids, _loss(), mode=mode, check=check)
            assert_untouched(before, model)
    assert model.training and model.word.training
    assert not model.score.weight.requires_grad
    assert torch.equal(model.out.weight.grad, torch.full_like(model.out.weight, 3.0))
    assert model.word.weight.grad is None


def test_eval_mode_really_switches_off_dropout_inside_a_model_left_in_train_mode():
    torch.manual_seed(1)
    model = TinyText(dropout=0.9).train()
    ids = torch.randint(1, 40, (3, 5))
    a = embgrad.gradients(model, ids, _loss()).losses
    b = embgrad.gradients(model, ids, _loss()).losses
    assert torch.equal(a, b) and model.training


def test_unsupported_model_type_names_the_supported_frameworks():
    with pytest.raises(embgrad.UnsupportedModelError, match=r"torch\.nn\.Module"):
        embgrad.gradients(object(), torch.zeros(2, dtype=torch.long), lambda out: out)


def test_replace_takes_gradients_at_the_substitute_and_output_weight_are_kept():
    torch.manual_seed(2)
    model = TinyText()
    ids, labels = torch.randint(1, 40, (4, 5)), torch.arange(4) % 3
    half = lambda name, role, out: out * 0.5 if role == "word" else None  # noqa: E731
    res = embgrad.gradients(model, ids, ce_loss(labels), replace=half)
    lk = res["word"]
    looked_up = model.word(ids).detach()
    close(lk.output, looked_up * 0.5)
    assert torch.equal(lk.weight, model.word.weight.detach())
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, params, (), {"embeds": e[None]})
        return torch.nn.functional.cross_entropy(out, y[None])

    close(lk.output_grad, torch.func.vmap(torch.func.grad(one))(looked_up * 0.5, labels))
