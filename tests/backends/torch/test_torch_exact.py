"""Torch backend exactness against the slow references in oracle_torch (torch only, no peers)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embgrad
from embgrad.core.ops import NumpyOps
from models_torch import Bag, InPlace, SharedTable, TinyText, ce_loss
from oracle_torch import assert_untouched, close, retained_loop, sample_loop, snapshot


def _ids(b: int, t: int, vocab: int = 40, low: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, (b, t), generator=g)


def _labels(b: int, classes: int = 3) -> torch.Tensor:
    return torch.arange(b) % classes


def _label_loss(labels: torch.Tensor):
    return lambda i: ce_loss(labels[i : i + 1])


def test_one_backward_matches_batch_of_one_loop_on_word_position_and_token_type():
    torch.manual_seed(0)
    model = TinyText()
    b, t = 5, 7
    ids, types = _ids(b, t), _ids(b, t, vocab=2, low=0, seed=1)
    labels = _labels(b)
    res = embgrad.gradients(model, (ids, types), ce_loss(labels))
    ref = sample_loop(
        model,
        (ids, types),
        b,
        None,
        modules=["word", "token_type"],
        params=["pos_embed"],
        loss_at=_label_loss(labels),
    )
    assert res.layers == ["word", "pos_embed", "token_type"]
    assert [lk.role for lk in res] == ["word", "position", "token_type"]
    assert res.check == "probe" and res.probe_residual is not None and res.probe_residual < 1e-6
    close(res.losses, torch.tensor(ref.losses))
    for name in ("word", "token_type"):
        assert res[name].batch_axis == 0
        close(res[name].output_grad, ref.stacked(name))
        close(res[name].table_grad(dense=True), ref.table[f"{name}.weight"])
    pos = res["pos_embed"]
    assert pos.batch_axis is None and not pos.per_sample and "batch sums" in pos.note
    close(pos.table_grad(dense=True), ref.table["pos_embed"].sum(0, keepdim=True))


def test_sparse_table_grads_norms_and_native_form_agree_with_dense():
    torch.manual_seed(1)
    model = TinyText()
    ids = _ids(4, 6)
    ids[0, :3] = 7  # a token repeated within one sample: its rows are summed
    res = embgrad.gradients(model, ids, ce_loss(_labels(4)))
    rows = res["word"].table_grad()
    dense = rows.to_dense()
    assert rows.shape == (4, 40, 8) and rows.nnz < ids.numel()
    assert isinstance(rows.values, torch.Tensor) and rows.values.dtype == torch.float32
    coo = rows.to_native()
    assert coo.is_sparse and coo.is_coalesced() and coo.shape == (4, 40, 8)
    close(coo.to_dense(), dense)
    close(res["word"].table_grad_norms(), dense.flatten(1).norm(dim=1))
    per_pos = res["word"].output_grad[0, :3].sum(0)
    close(dense[0, 7], per_pos)


def test_padding_idx_row_gets_no_table_gradient():
    torch.manual_seed(2)
    model = TinyText(pad=0)
    ids = _ids(3, 6)
    ids[:, -2:] = 0
    res = embgrad.gradients(model, ids, ce_loss(_labels(3)))
    rows = res["word"].table_grad()
    assert res["word"].padding_idx == 0 and 0 not in rows.row.tolist()
    assert torch.count_nonzero(res["word"].output_grad[:, -2:]) > 0  # the output still has one
    ref = sample_loop(
        model, ids, 3, None, modules=["word"], params=["pos_embed"], loss_at=_label_loss(_labels(3))
    )
    assert torch.count_nonzero(ref.table["word.weight"][:, 0]) == 0
    close(rows.to_dense(), ref.table["word.weight"])


@pytest.mark.parametrize("pos_shape", ["T", "1T"])
def test_broadcast_position_ids_are_batch_summed_even_when_T_equals_B(pos_shape):
    torch.manual_seed(3)
    model = TinyText(pos_shape=pos_shape)
    b = t = 4  # the position ids have an axis of the batch size that is not the batch
    ids = _ids(b, t)
    res = embgrad.gradients(model, ids, ce_loss(_labels(b)))
    ref = sample_loop(
        model, ids, b, None, modules=["word"], params=["pos_embed"], loss_at=_label_loss(_labels(b))
    )
    assert res["word"].batch_axis == 0
    close(res["word"].output_grad, ref.stacked("word"))
    pos = res["pos_embed"]
    assert pos.batch_axis is None
    expected_shape = (t, 8) if pos_shape == "T" else (1, t, 8)
    assert tuple(pos.output_grad.shape) == expected_shape
    close(pos.table_grad(dense=True), ref.table["pos_embed"].sum(0, keepdim=True))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_2d_ids_match_loop(mode):
    torch.manual_seed(4)
    model = Bag(mode=mode, pad=2)
    ids = _ids(5, 6, vocab=30, low=0)
    ids[0, :3] = 9  # duplicates within a bag
    ids[1, :2] = 2  # padding entries
    res = embgrad.gradients(model, ids, ce_loss(_labels(5)))
    ref = sample_loop(model, ids, 5, None, modules=["bag"], loss_at=_label_loss(_labels(5)))
    lk = res["bag"]
    assert lk.module == "EmbeddingBag" and lk.batch_axis == 0 and lk.output_grad.shape == (5, 6)
    close(lk.output_grad, ref.stacked("bag"))
    close(lk.table_grad(dense=True), ref.table["bag.weight"])
    assert 2 not in lk.table_grad().row.tolist()


@pytest.mark.parametrize("last", [False, True])
def test_embedding_bag_offsets_and_per_sample_weights_match_loop(last):
    torch.manual_seed(5)
    model = Bag(mode="sum", include_last_offset=last)
    lengths = [3, 1, 4, 2]
    ids = torch.randint(0, 30, (sum(lengths),))
    starts = torch.tensor([0, *np.cumsum(lengths)[:-1].tolist()])
    offsets = torch.cat([starts, torch.tensor([sum(lengths)])]) if last else starts
    psw = torch.rand(sum(lengths)) + 0.5
    labels = _labels(4)

    def sample(i: int):
        lo, hi = int(starts[i]), int(starts[i]) + lengths[i]
        off = torch.tensor([0, hi - lo]) if last else torch.tensor([0])
        return (ids[lo:hi], off, psw[lo:hi])

    res = embgrad.gradients(model, (ids, offsets, psw), ce_loss(labels))
    ref = sample_loop(
        model, None, 4, None, modules=["bag"], sample=sample, loss_at=_label_loss(labels)
    )
    close(res["bag"].output_grad, ref.stacked("bag"))
    close(res["bag"].table_grad(dense=True), ref.table["bag.weight"])
    assert set(res.input_grads) == {2}  # the float per_sample_weights get gradients too
    assert res.input_grads[2].shape == psw.shape


def test_custom_f_embedding_on_own_parameter_called_twice_gets_two_call_sites():
    torch.manual_seed(6)
    model = SharedTable()
    query, doc = _ids(4, 3, vocab=25), _ids(4, 5, vocab=25, seed=2)
    loss = lambda out: out  # noqa: E731 - per-sample scores are the losses
    res = embgrad.gradients(model, (query, doc), loss)
    assert res.layers == ["table", "table#2"]
    assert res.tables == {"table": ["table", "table#2"]}
    assert {lk.module for lk in res} == {"F.embedding"}
    ref = sample_loop(model, (query, doc), 4, loss, params=["table"])
    close(res.table_grad("table", dense=True), ref.table["table"])


def test_in_place_edit_of_the_lookup_output_does_not_change_the_gradient():
    torch.manual_seed(7)
    model = InPlace()
    ids = _ids(3, 4, vocab=20)
    res = embgrad.gradients(model, ids, lambda out: out)
    ref = sample_loop(model, ids, 3, lambda out: out, modules=["emb"])
    close(res["emb"].output_grad, ref.stacked("emb"))


def test_frozen_table_gets_gradients_and_stays_frozen():
    torch.manual_seed(8)
    model = TinyText()
    model.word.weight.requires_grad_(False)
    model.pos_embed.requires_grad_(False)
    ids = _ids(3, 5)
    before = snapshot(model)
    res = embgrad.gradients(model, ids, ce_loss(_labels(3)))
    assert_untouched(before, model)
    ref = sample_loop(
        model, ids, 3, None, modules=["word"], params=["pos_embed"], loss_at=_label_loss(_labels(3))
    )
    close(res["word"].output_grad, ref.stacked("word"))
    close(res["word"].table_grad(dense=True), ref.table["word.weight"])


def test_float_inputs_get_per_sample_gradients_equal_to_vmap_grad():
    torch.manual_seed(9)
    model = TinyText()
    ids = _ids(4, 6)
    embeds = model.word(ids).detach()
    labels = _labels(4)
    res = embgrad.gradients(model, {"embeds": embeds}, ce_loss(labels))
    assert res.layers == ["pos_embed"] and set(res.input_grads) == {"embeds"}
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, params, (), {"embeds": e[None]})
        return F.cross_entropy(out, y[None])

    expected = torch.func.vmap(torch.func.grad(loss_one))(embeds, labels)
    close(res.input_grads["embeds"], expected)
    assert not embeds.requires_grad  # the user's tensor is untouched


def test_word_output_grads_equal_vmap_grad_through_the_inputs():
    torch.manual_seed(10)
    model = TinyText()
    ids, labels = _ids(6, 5), _labels(6)
    res = embgrad.gradients(model, ids, ce_loss(labels), check="off")
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, params, (), {"embeds": e[None]})
        return F.cross_entropy(out, y[None])

    expected = torch.func.vmap(torch.func.grad(loss_one))(model.word(ids).detach(), labels)
    close(res["word"].output_grad, expected)
    assert res.check == "off" and res.probe_residual is None


def test_dropout_in_train_mode_is_exact_and_the_probe_does_not_false_alarm():
    torch.manual_seed(11)
    model = TinyText(dropout=0.5)
    model.eval()
    ids, labels = _ids(6, 5), _labels(6)
    before = snapshot(model)
    torch.manual_seed(123)
    res = embgrad.gradients(model, ids, ce_loss(labels), mode="train", check="probe")
    assert_untouched(before, model)
    torch.manual_seed(123)
    ref = retained_loop(
        model, ids, 6, ce_loss(labels), modules=["word"], params=["pos_embed"], mode="train"
    )
    close(res.losses, torch.tensor(ref.losses))  # the same dropout masks
    assert res.probe_residual is not None and res.probe_residual < 1e-6
    close(res["word"].output_grad, ref.stacked("word"))
    close(res["word"].table_grad(dense=True), ref.table["word.weight"])
    eval_loss = embgrad.gradients(model, ids, ce_loss(labels)).losses
    assert not torch.equal(eval_loss, res.losses)  # dropout really was on


def test_batchnorm_in_train_mode_raises_coupling_and_exact_equals_the_retained_loop():
    torch.manual_seed(12)
    model = TinyText(batchnorm=True)
    ids, labels = _ids(5, 4), _labels(5)
    before = snapshot(model)
    with pytest.raises(embgrad.CouplingError, match="BatchNorm"):
        embgrad.gradients(model, ids, ce_loss(labels), mode="train")
    assert_untouched(before, model)  # running statistics restored too
    res = embgrad.gradients(model, ids, ce_loss(labels), mode="train", check="exact")
    assert_untouched(before, model)
    ref = retained_loop(
        model, ids, 5, ce_loss(labels), modules=["word"], params=["pos_embed"], mode="train"
    )
    assert res.check == "exact"
    close(res["word"].output_grad, ref.stacked("word"))
    close(res["word"].table_grad(dense=True), ref.table["word.weight"])
    ok = embgrad.gradients(model, ids, ce_loss(labels), mode="eval")  # running stats: no coupling
    assert ok.probe_residual is not None and ok.probe_residual < 1e-6


def test_loss_that_mixes_samples_raises_coupling_error():
    model = TinyText()
    ids = _ids(4, 5)
    with pytest.raises(embgrad.CouplingError, match="check='exact'"):
        embgrad.gradients(model, ids, lambda out: out[:, 0] + out[:, 0].mean())


def test_torch_compiled_model_gives_the_eager_answer():
    torch.manual_seed(13)
    model = TinyText()
    plain = copy.deepcopy(model)
    model.token_type = torch.compile(model.token_type, backend="eager")  # nested compiled child
    compiled = torch.compile(model, backend="eager")
    ids, types, labels = _ids(4, 6), _ids(4, 6, vocab=2, low=0), _labels(4)
    before = snapshot(model)
    res = embgrad.gradients(compiled, (ids, types), ce_loss(labels))
    assert_untouched(before, model)
    assert res.layers == ["word", "pos_embed", "token_type"]
    ref = sample_loop(
        plain,
        (ids, types),
        4,
        None,
        modules=["word", "token_type"],
        params=["pos_embed"],
        loss_at=_label_loss(labels),
    )
    assert res["token_type"].table == "token_type.weight"
    for name in ("word", "token_type"):
        close(res[name].output_grad, ref.stacked(name))
        close(res[name].table_grad(dense=True), ref.table[f"{name}.weight"])


def test_layers_select_by_class_role_and_glob():
    model = TinyText()
    ids, types = _ids(3, 4), _ids(3, 4, vocab=2, low=0)
    loss = ce_loss(_labels(3))
    assert embgrad.gradients(model, (ids, types), loss, layers=torch.nn.Embedding).layers == [
        "word",
        "token_type",
    ]
    assert embgrad.gradients(model, (ids, types), loss, layers="position").layers == ["pos_embed"]
    assert embgrad.gradients(model, (ids, types), loss, layers="tok*").layers == ["token_type"]


def test_direct_torch_embedding_calls_are_captured():
    class Direct(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(12, 3))
            self.v = torch.nn.Parameter(torch.randn(12, 3))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            a = torch.embedding(self.w, ids)
            offsets = torch.arange(0, ids.numel(), ids.shape[1])
            b = torch.embedding_bag(self.v, ids.reshape(-1), offsets, False, 2)[0]
            return (a.sin().sum(1) * b).sum(1)

    torch.manual_seed(14)
    model, ids = Direct(), _ids(3, 4, vocab=12, low=0)
    res = embgrad.gradients(model, ids, lambda out: out)
    assert res.layers == ["w", "v"] and res["v"].output_grad.shape == (3, 3)
    ref = sample_loop(model, ids, 3, lambda out: out, params=["w", "v"])
    close(res["w"].table_grad(dense=True), ref.table["w"])
    close(res["v"].table_grad(dense=True), ref.table["v"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_results_keep_the_lookup_dtype_with_float32_norms(dtype):
    torch.manual_seed(15)
    model = TinyText()
    ids, labels = _ids(4, 5), _labels(4)
    full = embgrad.gradients(model.double(), ids, ce_loss(labels))
    res = embgrad.gradients(model.to(dtype), ids, ce_loss(labels))
    lk = res["word"]
    assert lk.output_grad.dtype == dtype and lk.table_grad().values.dtype == dtype
    assert lk.table_grad_norms().dtype == torch.float32
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    close(lk.output_grad, full["word"].output_grad, rtol=tol)
    close(lk.table_grad_norms(), full["word"].table_grad_norms(), rtol=tol)


def test_torch_ops_agree_with_numpy_ops():
    from embgrad.backends.torch_ops import TorchOps

    tops, nops = TorchOps(), NumpyOps()
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 9, (30,), generator=g)
    vals = torch.randn(30, 4, generator=g)
    tu, ti = tops.unique_inverse(keys)
    nu, ni = nops.unique_inverse(keys.numpy())
    assert tu.tolist() == nu.tolist() and ti.tolist() == ni.tolist()
    close(
        tops.segment_sum(vals, ti, len(tu)),
        torch.from_numpy(nops.segment_sum(vals.numpy(), ni, len(nu))),
    )
    sq = tops.row_sq_norms(vals)
    close(sq, torch.from_numpy(nops.row_sq_norms(vals.numpy())))
    close(
        tops.bincount_sum(sq, ti, len(tu)),
        torch.from_numpy(nops.bincount_sum(sq.numpy(), ni, len(nu))),
    )
    assert torch.equal(
        tops.batch_index((2, 3), 1, keys),
        torch.from_numpy(nops.batch_index((2, 3), 1, None).copy()),
    )
    half = vals.to(torch.bfloat16)
    assert tops.segment_sum(half, ti, len(tu)).dtype == torch.float32
    assert tops.to_numpy(half).dtype == np.float32


# -- hypothesis: small random architectures --------------------------------------------------------


class _Drawn(torch.nn.Module):
    def __init__(self, kind: str, vocab: int, dim: int, pool: str, pad: int | None) -> None:
        super().__init__()
        self.kind, self.pool = kind, pool
        if kind == "param":
            self.table = torch.nn.Parameter(torch.randn(vocab, dim))
        elif kind.startswith("bag-"):
            self.lookup = torch.nn.EmbeddingBag(vocab, dim, mode=kind[4:], padding_idx=pad)
        else:
            self.lookup = torch.nn.Embedding(vocab, dim, padding_idx=pad)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = F.embedding(ids, self.table) if self.kind == "param" else self.lookup(ids)
        if h.dim() == 2:
            h = h[:, None]
        h = torch.tanh(self.mix(h))
        h = h.mean(1) if self.pool == "mean" else h.max(1).values
        return self.head(h)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["emb", "param", "bag-sum", "bag-mean", "bag-max"]),
    vocab=st.integers(3, 15),
    dim=st.integers(1, 5),
    batch=st.integers(2, 4),
    length=st.integers(1, 5),
    pool=st.sampled_from(["mean", "max"]),
    use_pad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_drawn_architectures_match_the_batch_of_one_loop(
    kind, vocab, dim, batch, length, pool, use_pad, seed
):
    torch.manual_seed(seed)
    pad = 0 if use_pad and kind != "param" else None
    model = _Drawn(kind, vocab, dim, pool, pad)
    ids = torch.randint(0, vocab, (batch, length))
    labels = _labels(batch, 2)
    res = embgrad.gradients(model, ids, ce_loss(labels))
    site = "table" if kind == "param" else "lookup"
    table = "table" if kind == "param" else "lookup.weight"
    ref = sample_loop(
        model,
        ids,
        batch,
        None,
        modules=[] if kind == "param" else ["lookup"],
        params=["table"] if kind == "param" else [],
        loss_at=_label_loss(labels),
    )
    lk = res[site]
    assert lk.batch_axis == 0
    if kind != "param":
        close(lk.output_grad, ref.stacked(site))
    close(lk.table_grad(dense=True), ref.table[table])


class _Branchy(torch.nn.Module):
    """A word lookup always; for inputs longer than 4 tokens also a lookup on a frozen table
    through ``F.embedding`` and one on a table built inside the forward from constants (no
    parameter, no autograd node: only call interception can see it)."""

    def __init__(self) -> None:
        super().__init__()
        self.word = torch.nn.Embedding(20, 4)
        self.frozen = torch.nn.Parameter(torch.randn(20, 4), requires_grad=False)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.word(ids)
        if ids.shape[1] > 4:
            h = h + torch.nn.functional.embedding(ids, self.frozen)
            const = torch.arange(80.0).reshape(20, 4) / 80
            h = h * torch.nn.functional.embedding(ids, const)
        return self.head(torch.tanh(h).mean(1))


def test_lookups_that_appear_on_another_branch_are_all_found_and_probed():
    """The set of lookups changes with the input: each call sees its own, none is missed, and
    the new structure is probed (not trusted on the verdict of the other branch)."""
    torch.manual_seed(3)
    model = _Branchy()
    loss = ce_loss(_labels(3))
    short = embgrad.gradients(model, _ids(3, 4, vocab=20), loss)
    assert short.layers == ["word"] and short.check == "probe"
    again = embgrad.gradients(model, _ids(3, 4, vocab=20), loss)
    assert again.check == "probe-cached"
    ids = _ids(3, 6, vocab=20)
    long = embgrad.gradients(model, ids, loss)
    assert long.layers == ["word", "frozen", "F.embedding"] and long.check == "probe"
    exact = embgrad.gradients(model, ids, loss, check="exact")
    for name in long.layers:
        close(long[name].output_grad, exact[name].output_grad)
        close(long[name].table_grad(dense=True), exact[name].table_grad(dense=True))
