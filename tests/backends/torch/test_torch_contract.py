"""Issue 21 (PyTorch): the contract around the numbers on models nobody here wrote.

``.grad`` written by a model's own backward (Reformer's reversible layers), the word role from
what the model says (``get_input_embeddings``), ``tied`` from what ran in the forward, functional
lookups named by their caller, lookups written as indexing, TorchScript refused. Random-init HF
models with tiny configs; B, T pairwise different and odd; state checked on every exit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embgrad
from embgrad.errors import LossError, UnsupportedModelError
from oracle_torch import assert_untouched, close, snapshot

B, T, V, D = 3, 5, 23, 7  # pairwise different, odd


def _ids(b: int, t: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(1, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def _weight_grad_loop(
    model: nn.Module, inputs: Any, batch: int, loss_at: Callable[[int], Any], param: str
) -> torch.Tensor:
    """Dense per-sample ``weight.grad`` of ``param``: sample i alone, one backward each."""
    import copy

    ref = copy.deepcopy(model)
    weight = ref.get_parameter(param)
    out = []
    for i in range(batch):
        ref.zero_grad(set_to_none=True)
        if isinstance(inputs, dict):
            x = {k: v[i : i + 1] if v.shape[0] == batch else v for k, v in inputs.items()}
            o = ref(**x)
        else:
            o = ref(*(v[i : i + 1] for v in inputs))
        loss = loss_at(i)(o)
        assert loss.shape == (1,)
        loss.sum().backward()
        out.append(weight.grad.detach().clone())
    return torch.stack(out)


# -- 1. .grad written by a model's own backward ---------------------------------------------------


class _OwnBackward(torch.autograd.Function):
    """y = tanh(x @ W), forward without a graph; the backward recomputes it and calls
    ``.backward()`` itself (as reversible layers do), which writes ``W.grad``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.w = w
        with torch.no_grad():
            return torch.tanh(x @ w)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            y = torch.tanh(x @ ctx.w)
            y.backward(g)  # writes ctx.w.grad, as Reformer's _ReversibleFunction does
        return x.grad, None


class OwnBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.w = nn.Parameter(torch.randn(D, D) / 3)
        self.head = nn.Linear(D, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = _OwnBackward.apply(self.emb(ids), self.w)
        return self.head(h).squeeze(-1).sum(-1)


@pytest.mark.parametrize("held", ["none", "accumulated"])
def test_a_backward_that_writes_grad_leaves_every_grad_as_it_was(held):
    torch.manual_seed(0)
    model = OwnBackward()
    ids = _ids(B, T, V, 1)
    if held == "accumulated":  # the user's gradient accumulation, mid-way
        model(ids).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    before = snapshot(model)
    res = embgrad.gradients(model, ids, lambda o: o)
    assert_untouched(before, model)
    assert all(p.grad is grads[n] for n, p in model.named_parameters())  # identity too
    ref = _weight_grad_loop(model, (ids,), B, lambda i: lambda o: o, "emb.weight")
    close(res["emb"].table_grad(dense=True), ref)
    # an error after the backward ran (a NaN loss is found once the backward is queued)
    with pytest.raises(LossError):
        embgrad.gradients(model, ids, lambda o: o * float("nan"))
    assert_untouched(before, model)
    assert all(p.grad is grads[n] for n, p in model.named_parameters())

    def boom(o: torch.Tensor) -> torch.Tensor:  # the user's loss_fn raises mid-call
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        embgrad.gradients(model, ids, boom)
    assert_untouched(before, model)
    assert all(p.grad is grads[n] for n, p in model.named_parameters())


def _reformer(head: str) -> nn.Module:
    tf = pytest.importorskip("transformers")
    cfg = tf.ReformerConfig(
        vocab_size=V,
        hidden_size=16,
        num_attention_heads=2,
        attention_head_size=8,
        attn_layers=["local", "local"],
        feed_forward_size=16,
        axial_pos_embds=False,
        max_position_embeddings=T,
        local_attn_chunk_length=T,
        is_decoder=head == "lm",
        hidden_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        num_labels=3,
    )
    if head == "lm":
        return tf.ReformerModelWithLMHead(cfg)
    return tf.ReformerForSequenceClassification(cfg)


@pytest.mark.hf
@pytest.mark.parametrize("head", ["lm", "cls"])
def test_reformer_reversible_layers_leave_grad_untouched(head):
    torch.manual_seed(1)
    model = _reformer(head).train()  # its reversible backward runs in train mode only
    ids = _ids(B, T, V, 2)
    w = torch.linspace(-1.0, 1.0, model.config.num_labels if head == "cls" else V)

    def loss(out: Any) -> torch.Tensor:
        return (out.logits * w).sum(-1).reshape(B, -1).sum(-1)

    model(ids).logits.sum().backward()  # accumulated gradients the call must not add into
    grads = {n: p.grad for n, p in model.named_parameters()}
    before = snapshot(model)
    res = embgrad.gradients(model, ids, loss, mode="train")
    assert_untouched(before, model)
    assert all(p.grad is grads[n] for n, p in model.named_parameters())
    word = res.by_role("word")
    assert [lk.name for lk in word] == ["reformer.embeddings.word_embeddings"]
    # the table is only looked up (no tied head in this config): table_grad equals weight.grad
    table = "reformer.embeddings.word_embeddings.weight"
    ref = _weight_grad_loop(model, (ids,), B, lambda i: lambda o: (o.logits * w).sum()[None], table)
    close(word[0].table_grad(dense=True), ref)


# -- 2. the word table from what the model says -------------------------------------------------


def _tf() -> Any:
    return pytest.importorskip("transformers")


def _neox() -> nn.Module:
    cfg = _tf().GPTNeoXConfig(
        vocab_size=V,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return _tf().GPTNeoXModel(cfg)


def _mamba() -> nn.Module:
    cfg = _tf().MambaConfig(
        vocab_size=V, hidden_size=16, state_size=4, num_hidden_layers=1, expand=2, conv_kernel=3
    )
    return _tf().MambaModel(cfg)


def _xlm() -> nn.Module:
    cfg = _tf().XLMConfig(
        vocab_size=V,
        emb_dim=16,
        n_layers=1,
        n_heads=2,
        n_langs=3,
        use_lang_emb=True,
        max_position_embeddings=32,
    )
    return _tf().XLMModel(cfg)


def _canine() -> nn.Module:
    cfg = _tf().CanineConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_hash_buckets=31,
        num_hash_functions=4,
        downsampling_rate=2,
        max_position_embeddings=64,
    )
    return _tf().CanineModel(cfg)


def _hidden(out: Any) -> torch.Tensor:
    h = out.last_hidden_state
    w = torch.linspace(-1.0, 1.0, h.shape[-1])
    return (torch.tanh(h) * w).sum((1, 2))


_ROLE_MODELS = {
    "gpt_neox": (_neox, ["embed_in"]),
    "mamba": (_mamba, ["embeddings"]),
    "xlm": (_xlm, ["embeddings"]),
    "canine": (_canine, [f"char_embeddings.HashBucketCodepointEmbedder_{i}" for i in range(4)]),
}


@pytest.mark.hf
@pytest.mark.parametrize("arch", sorted(_ROLE_MODELS))
def test_the_word_table_is_the_one_the_model_names(arch):
    factory, words = _ROLE_MODELS[arch]
    torch.manual_seed(3)
    model = factory().eval()
    ids = _ids(B, 7, 1000 if arch == "canine" else V, 4)  # CANINE: code points, T=7 > B
    inputs = {"input_ids": ids}
    if arch == "xlm":
        inputs["langs"] = torch.tensor([[0] * 7, [1] * 7, [2] * 7])
    before = snapshot(model)
    res = embgrad.gradients(model, inputs, _hidden)
    assert_untouched(before, model)
    assert [lk.name for lk in res.by_role("word")] == words
    for name in words:
        ref = _weight_grad_loop(
            model,
            inputs,
            B,
            lambda i: _hidden,
            f"{name}.weight",
        )
        close(res[name].table_grad(dense=True), ref)


@pytest.mark.hf
def test_xlm_with_language_embeddings_is_attributed_without_layer():
    torch.manual_seed(4)
    model = _xlm().eval()
    inputs = {"input_ids": _ids(B, 7, V, 5), "langs": torch.tensor([[0] * 7, [1] * 7, [2] * 7])}
    att = embgrad.attribute(model, inputs, _hidden)
    assert [len(s) for s in att.scores] == [7] * B


# -- 3. tied from what ran -----------------------------------------------------------------------


class LinearTied(nn.Module):
    """A table looked up and reused as an output projection through F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.mix = nn.Linear(D, D)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.emb(ids)))
        return F.linear(h, self.emb.weight)  # (B, T, V) logits


def _lm(ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(logits: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits[:, :-1], -1)
        return -lp.gather(-1, ids[:, 1:, None])[..., 0].sum(-1)

    return loss


def test_a_table_reused_through_f_linear_is_tied_and_its_table_grad_is_the_lookup_path():
    from oracle_torch import sample_loop

    torch.manual_seed(5)
    model = LinearTied()
    ids = _ids(B, T, V, 6)
    before = snapshot(model)
    res = embgrad.gradients(model, ids, _lm(ids))
    assert_untouched(before, model)
    lk = res["emb"]
    assert lk.tied and "F.linear" in lk.note and "lookup's path only" in lk.note
    ref = sample_loop(model, ids, B, None, modules=["emb"], loss_at=lambda i: _lm(ids[i : i + 1]))
    close(lk.output_grad, ref.stacked("emb"))
    close(lk.table_grad(dense=True), ref.table["emb.weight"])  # the lookup path only
    full = _weight_grad_loop(model, (ids,), B, lambda i: _lm(ids[i : i + 1]), "emb.weight")
    assert not torch.allclose(lk.table_grad(dense=True), full)  # not weight.grad: stated


@pytest.mark.hf
def test_mt5_with_its_own_lm_head_is_not_tied_and_its_table_grad_is_weight_grad():
    tf = _tf()
    cfg = tf.MT5Config(
        vocab_size=V,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        pad_token_id=0,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(6)
    model = tf.MT5ForConditionalGeneration(cfg).eval()
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())  # its own head
    assert model.lm_head.weight is not model.shared.weight
    inputs = {"input_ids": _ids(B, T, V, 7), "labels": _ids(B, 4, V, 8)}
    labels = inputs["labels"]

    def loss_at(lab: torch.Tensor) -> Callable[[Any], torch.Tensor]:
        def loss(out: Any) -> torch.Tensor:
            lp = torch.log_softmax(out.logits, -1)
            return -lp.gather(-1, lab[..., None])[..., 0].sum(-1)

        return loss

    before = snapshot(model)
    res = embgrad.gradients(model, inputs, loss_at(labels))
    assert_untouched(before, model)
    words = res.by_role("word")
    assert [lk.name for lk in words] == ["encoder.embed_tokens", "decoder.embed_tokens"]
    assert not any(lk.tied for lk in words)
    ref = _weight_grad_loop(model, inputs, B, lambda i: loss_at(labels[i : i + 1]), "shared.weight")
    close(res.table_grad("shared.weight", dense=True), ref)


# -- 4. a functional lookup named where it was called ------------------------------------------


class Stage1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids)


class Stage2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D)

    def forward(self, h: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(h.mean(1, keepdim=True) + F.embedding(ids, table)))


class TwoStages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage1 = Stage1()
        self.stage2 = Stage2()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = self.stage2(self.stage1(a), b, self.stage1.emb.weight)
        return (h * torch.linspace(-1, 1, D)).sum((1, 2))


def test_a_functional_lookup_of_another_modules_table_is_named_where_it_was_called():
    torch.manual_seed(7)
    model = TwoStages()
    a, b = _ids(B, T, V, 9), _ids(B, 4, V, 10)
    before = snapshot(model)
    res = embgrad.gradients(model, (a, b), lambda o: o)
    assert_untouched(before, model)
    fn = "stage2:F.embedding(stage1.emb.weight)"
    assert res.layers == ["stage1.emb", fn]
    assert (res["stage1.emb"].module, res[fn].module) == ("Embedding", "F.embedding")
    assert res[fn].table == "stage1.emb.weight" and res[fn].owner is model.stage2
    assert res.tables == {"stage1.emb.weight": ["stage1.emb", fn]}
    ref = _weight_grad_loop(model, (a, b), B, lambda i: lambda o: o, "stage1.emb.weight")
    close(res.table_grad("stage1.emb.weight", dense=True), ref)
    assert embgrad.gradients(model, (a, b), lambda o: o, layers=fn).layers == [fn]


# -- 5. lookups written as indexing ----------------------------------------------------------


class Indexed(nn.Module):
    """A table read through an index op (``how``), then a head that the oracle calls alone."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.table = nn.Parameter(torch.randn(V, D))
        self.head = nn.Linear(D if how != "take" else 1, 2)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.how == "getitem":
            return self.table[ids]
        if self.how == "getitem-slice":
            return self.table[ids, 1:6]
        if self.how == "index_select":  # one id per sample (B,): a user / class table
            return torch.index_select(self.table, 0, ids[:, 0])[:, None]
        if self.how == "method":
            return self.table.index_select(0, ids[:, 0])[:, None]
        if self.how == "negative":
            return self.table[ids - V]  # Python indexing wraps negative ids
        return torch.take(self.table, ids)[..., None]  # element lookup

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "getitem-slice":
            x = F.pad(x, (1, D - 6))
        return (torch.tanh(self.head(x)) * torch.tensor([1.0, -0.5])).sum((1, 2))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rest(self.lookup(ids))


@pytest.mark.parametrize(
    "how", ["getitem", "getitem-slice", "index_select", "method", "negative", "take"]
)
def test_an_integer_tensor_index_into_a_table_is_a_captured_lookup(how):
    torch.manual_seed(8)
    model = Indexed(how)
    vocab = V * D if how == "take" else V
    ids = _ids(B, T, vocab, 11)
    before = snapshot(model)
    res = embgrad.gradients(model, ids, lambda o: o)
    assert_untouched(before, model)
    assert len(res.layers) == 1
    lk = res[res.layers[0]]
    assert lk.name == "table" and lk.table == "table" and lk.batch_axis == 0
    assert lk.module == {"getitem": "Tensor.__getitem__", "take": "torch.take"}.get(
        how.split("-")[0], "torch.index_select" if how != "negative" else "Tensor.__getitem__"
    )
    # oracle: each sample alone, the lookup's output as a leaf through the rest of the model
    for i in range(B):
        out = model.lookup(ids[i : i + 1]).detach().requires_grad_()
        (g,) = torch.autograd.grad(model.rest(out).sum(), out)
        if how == "getitem-slice":
            g = F.pad(g, (1, D - 6))
        close(lk.output_grad[i], g[0].reshape(lk.output_grad[i].shape))
    ref = _weight_grad_loop(model, (ids,), B, lambda i: lambda o: o, "table")
    got = lk.table_grad(dense=True)
    if how == "take":
        got = got.reshape(B, V, D)
    close(got, ref)


def test_an_unsplittable_integer_index_into_a_table_is_said_not_silent():
    class Cols(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(V, D)
            self.table = nn.Parameter(torch.randn(D, V))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return (self.emb(ids) * self.table[:, ids].permute(1, 2, 0)).sum((1, 2))

    from embgrad.backends.torch_capture import UnsupportedLookupWarning

    model = Cols()
    ids = _ids(B, T, D, 12)
    with pytest.warns(UnsupportedLookupWarning, match=r"table .*not split"):
        res = embgrad.gradients(model, ids, lambda o: o)
    assert res.layers == ["emb"]


def _whisper() -> nn.Module:
    cfg = _tf().WhisperConfig(
        vocab_size=V,
        num_mel_bins=8,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        d_model=16,
        max_source_positions=9,
        max_target_positions=11,
        pad_token_id=0,
        decoder_start_token_id=1,
    )
    return _tf().WhisperForConditionalGeneration(cfg)


@pytest.mark.hf
def test_whisper_decoder_positions_written_as_indexing_are_captured():
    torch.manual_seed(9)
    model = _whisper().eval()
    inputs = {
        "input_features": torch.randn(B, 8, 18),
        "decoder_input_ids": _ids(B, T, V, 13),
    }
    w = torch.linspace(-1.0, 1.0, V)

    def loss(out: Any) -> torch.Tensor:
        return (torch.log_softmax(out.logits, -1) * w).sum((1, 2))

    before = snapshot(model)
    res = embgrad.gradients(model, inputs, loss)
    assert_untouched(before, model)
    pos = res["model.decoder.embed_positions"]
    # the lookup is `self.weight[position_ids]` inside WhisperPositionalEmbedding.forward
    assert (pos.module, pos.role, pos.batch_axis) == ("WhisperPositionalEmbedding", "position", 0)
    assert "model.decoder.embed_tokens" in res.layers
    ref = _weight_grad_loop(
        model, inputs, B, lambda i: loss, "model.decoder.embed_positions.weight"
    )
    close(pos.table_grad(dense=True), ref)


# -- 6. TorchScript ---------------------------------------------------------------------------


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids).sum((1, 2))


class Holder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(ids)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("how", ["script", "trace", "scripted-submodule"])
def test_torchscript_models_are_refused_with_what_to_pass(how):
    torch.manual_seed(10)
    ids = _ids(B, T, V, 14)
    eager = Small().train()
    if how == "trace":
        model: nn.Module = torch.jit.trace(eager, (ids,))
    else:
        model = torch.jit.script(eager)
    if how == "scripted-submodule":
        model = Holder(model).train()
    training = [m.training for m in model.modules()]
    kind = "TopLevelTracedModule" if how == "trace" else "RecursiveScriptModule"
    with pytest.raises(
        UnsupportedModelError, match=rf"TorchScript module \({kind}.*eager torch\.nn"
    ):
        embgrad.gradients(model, ids, lambda o: o)
    assert [m.training for m in model.modules()] == training
    assert embgrad.gradients(eager, ids, lambda o: o).layers == ["emb"]


class Frozen(nn.Module):
    """Indexing a frozen table, and a trainable one reused through ``.t()`` (tied)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Parameter(torch.randn(V, D), requires_grad=False)
        self.out = nn.Parameter(torch.randn(V, D))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.frozen[ids] + self.out[ids])
        return (h @ self.out.t()).logsumexp(-1).sum(-1)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("deferred", [False, True], ids=["cpu-check", "deferred-check"])
def test_indexing_a_frozen_table_and_a_table_used_through_t(dtype, deferred, monkeypatch):
    from embgrad.backends import torch_record

    monkeypatch.setattr(torch_record, "_DEFER_ON_CPU", deferred)
    torch.manual_seed(11)
    model = Frozen()
    ids = _ids(B, T, V, 15).to(dtype)
    before = snapshot(model)
    res = embgrad.gradients(model, ids, lambda o: o)
    assert_untouched(before, model)
    assert res.layers == ["frozen", "out"]
    assert not res["frozen"].tied and res["out"].tied and "Tensor.t" in res["out"].note
    for i in range(B):
        a = model.frozen[ids[i : i + 1]].detach().requires_grad_()
        b = model.out[ids[i : i + 1]].detach().requires_grad_()
        h = torch.tanh(a + b)
        ga, gb = torch.autograd.grad((h @ model.out.t()).logsumexp(-1).sum(), (a, b))
        close(res["frozen"].output_grad[i], ga[0])
        close(res["out"].output_grad[i], gb[0])


@pytest.mark.parametrize("deferred", [False, True], ids=["cpu-check", "deferred-check"])
def test_an_indexing_id_outside_the_table_is_refused_by_name(deferred, monkeypatch):
    from embgrad.backends import torch_record
    from embgrad.errors import InputError

    monkeypatch.setattr(torch_record, "_DEFER_ON_CPU", deferred)
    model = Indexed("getitem")
    ids = _ids(B, T, V, 16)
    ids[1, 2] = -V - 1  # -V..-1 wrap (Python indexing); below that is outside the table
    before = snapshot(model)
    with pytest.raises(InputError, match=rf"lookup 'table' got id {-V - 1} at position \(1, 2\)"):
        embgrad.gradients(model, ids, lambda o: o)
    assert_untouched(before, model)


def test_an_element_pair_index_is_an_element_lookup_and_bad_pairs_get_pytorchs_error():
    class Pairs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(V, D))

        def forward(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.table[i, j]).pow(2).sum(-1)

    torch.manual_seed(12)
    model = Pairs()
    i, j = _ids(B, T, V, 17), _ids(B, T, D, 18)
    i[0, 1], j[2, 3] = -2, -1  # negative indices wrap, as in PyTorch
    res = embgrad.gradients(model, (i, j), lambda o: o)
    assert res.layers == ["table"] and res["table"].vocab_size == V * D
    ref = _weight_grad_loop(model, (i, j), B, lambda k: lambda o: o, "table")
    close(res["table"].table_grad(dense=True).reshape(B, V, D), ref)
    i[1, 0] = -V - 1  # would be a valid flat index after wrapping: still refused
    with pytest.raises(IndexError):
        embgrad.gradients(model, (i, j), lambda o: o)


def test_index_select_refuses_negative_ids_as_pytorch_does():
    from embgrad.errors import InputError

    model = Indexed("index_select")
    ids = _ids(B, T, V, 19)
    ids[1, 0] = -1
    with pytest.raises(InputError, match=r"got id -1 at position \(1,\)"):
        embgrad.gradients(model, ids, lambda o: o)
    with pytest.raises(IndexError):
        model(ids)


def test_a_table_concatenated_into_an_output_projection_is_tied():
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(V, D)
            self.extra = nn.Parameter(torch.randn(2, D))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.emb(ids))
            return (h @ torch.cat([self.emb.weight, self.extra]).T).logsumexp(-1).sum(-1)

    res = embgrad.gradients(Cat(), _ids(B, T, V, 20), lambda o: o)
    assert res["emb"].tied and "torch.cat" in res["emb"].note
