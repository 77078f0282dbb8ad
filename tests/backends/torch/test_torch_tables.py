"""One tensor registered under several names is one table: its call sites are grouped by tensor
identity, named by its first registration, and ``table_grad`` accepts any of its names — checked
against the per-sample ``weight.grad`` of a batch-of-one loop (literal ``backward()``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import embgrad
from oracle_torch import assert_untouched, close, slice_batch, snapshot


class Two(nn.Module):
    """Two nn.Embedding modules holding one Parameter (``b.weight = a.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Embedding(10, 4)
        self.b = nn.Embedding(10, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.a(x) ** 2).sum((1, 2)) + (self.b(y) ** 2).sum((1, 2))


def weight_grad_loop(
    model: nn.Module,
    inputs: Any,
    batch: int,
    loss_at: Callable[[int], Callable[[Any], torch.Tensor]],
    param: str,
) -> torch.Tensor:
    """(B, V, D): sample i alone through a copy of the model, ``backward()``, ``param``'s .grad."""
    ref = copy.deepcopy(model)
    weight = ref.get_parameter(param)
    grads = []
    for i in range(batch):
        ref.zero_grad(set_to_none=True)
        x = slice_batch(inputs, i, batch)
        out = ref(**x) if isinstance(x, dict) else ref(*x)
        loss = loss_at(i)(out)
        assert loss.shape == (1,)
        loss.sum().backward()
        assert weight.grad is not None
        grads.append(weight.grad.detach().clone())
    return torch.stack(grads)


def _ids(b: int, t: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(2, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def test_one_parameter_in_two_modules_is_one_table_with_both_sites():
    torch.manual_seed(0)
    model = Two()
    x, y = _ids(3, 4, 10, 1), _ids(3, 2, 10, 2)
    before = snapshot(model)
    res = embgrad.gradients(model, (x, y), lambda o: o)
    assert_untouched(before, model)
    assert res.layers == ["a", "b"]
    assert res.tables == {"a.weight": ["a", "b"]}
    assert all(lk.table == "a.weight" and lk.aliases == ("a.weight", "b.weight") for lk in res)
    # registered twice but only looked up: not tied (nothing else used the table)
    assert all(not lk.tied and "b.weight" in lk.note for lk in res)
    ref = weight_grad_loop(model, (x, y), 3, lambda i: lambda o: o, "a.weight")
    close(res.table_grad("a.weight", dense=True), ref)
    close(res.table_grad("b.weight", dense=True), ref)  # any registered name
    # each site alone is its own path's share; together they make the table's gradient
    close(res["a"].table_grad(dense=True) + res["b"].table_grad(dense=True), ref)
    assert not torch.equal(res["a"].table_grad(dense=True), ref)
    with pytest.raises(KeyError, match=r"tables: a\.weight"):
        res.table_grad("c.weight")
    # layers= by any of the table's names selects both sites
    assert embgrad.gradients(model, (x, y), lambda o: o, layers="b.weight").layers == ["a", "b"]


# -- HuggingFace encoder-decoders: shared / encoder.embed_tokens / decoder.embed_tokens -------------


def _tf() -> Any:
    return pytest.importorskip("transformers")


_SEQ2SEQ = {
    "vocab_size": 60,
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "max_position_embeddings": 32,
}


def _bart() -> nn.Module:
    return _tf().BartForConditionalGeneration(_tf().BartConfig(**_SEQ2SEQ))


def _marian() -> nn.Module:
    cfg = _tf().MarianConfig(**_SEQ2SEQ, pad_token_id=0, decoder_start_token_id=0)
    return _tf().MarianMTModel(cfg)


def _m2m100() -> nn.Module:
    cfg = _tf().M2M100Config(**_SEQ2SEQ, pad_token_id=1, decoder_start_token_id=2)
    return _tf().M2M100ForConditionalGeneration(cfg)


def _t5() -> nn.Module:
    cfg = _tf().T5Config(
        vocab_size=60,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        pad_token_id=0,
        decoder_start_token_id=0,
    )
    return _tf().T5ForConditionalGeneration(cfg)


# factory, prefix of the model's body ("model." for BART-likes, "" for T5)
_MODELS = {
    "bart": (_bart, "model."),
    "marian": (_marian, "model."),
    "m2m100": (_m2m100, "model."),
    "t5": (_t5, ""),
}


def _lm_loss(labels: torch.Tensor) -> Callable[[Any], torch.Tensor]:
    def loss(out: Any) -> torch.Tensor:
        ce = nn.functional.cross_entropy(out.logits.transpose(1, 2), labels, reduction="none")
        return ce.mean(1)

    return loss


def _inputs(b: int = 3) -> dict[str, torch.Tensor]:
    mask = torch.ones(b, 5, dtype=torch.long)
    mask[1, 3:] = 0
    return {"input_ids": _ids(b, 5, 60, 3), "attention_mask": mask, "labels": _ids(b, 4, 60, 4)}


@pytest.mark.hf
@pytest.mark.parametrize("untie_head", [False, True], ids=["tied-head", "own-head"])
@pytest.mark.parametrize("arch", sorted(_MODELS))
def test_encoder_decoder_shared_table_is_one_table_over_both_sites(arch, untie_head):
    factory, pre = _MODELS[arch]
    torch.manual_seed(5)
    model = factory().eval()
    shared = f"{pre}shared.weight"
    enc, dec = f"{pre}encoder.embed_tokens", f"{pre}decoder.embed_tokens"
    assert model.get_parameter(shared) is model.get_parameter(f"{enc}.weight")
    assert model.get_parameter(shared) is model.get_parameter(f"{dec}.weight")
    if untie_head:  # the lm_head gets its own weight: then weight.grad is the lookups' only
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    inputs = _inputs()
    before = snapshot(model)
    res = embgrad.gradients(model, inputs, _lm_loss(inputs["labels"]))
    assert_untouched(before, model)
    words = [lk for lk in res if lk.table == shared]
    assert [lk.name for lk in words] == [enc, dec]  # each call site keeps its own name
    assert res.tables[shared] == [enc, dec]
    assert all(lk.role == "word" and lk.batch_axis == 0 for lk in words)
    # tied: decided by what ran (the lm_head's F.linear on the table), not by the registrations
    assert all(lk.tied == (not untie_head) for lk in words)
    assert all(("F.linear" in lk.note) == (not untie_head) for lk in words)
    head = () if untie_head else ("lm_head.weight",)
    assert words[0].aliases == (shared, f"{enc}.weight", f"{dec}.weight", *head)
    assert not any(name in res.tables for name in words[0].aliases[1:])
    summed = res.table_grad(shared, dense=True)
    for alias in words[0].aliases:
        assert torch.equal(res.table_grad(alias, dense=True), summed)
    close(summed, words[0].table_grad(dense=True) + words[1].table_grad(dense=True))
    if untie_head:
        labels = inputs["labels"]
        ref = weight_grad_loop(model, inputs, 3, lambda i: _lm_loss(labels[i : i + 1]), shared)
        close(summed, ref)
