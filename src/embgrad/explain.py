"""``Explainer``: texts in, per-token attributions out — used by ``embgrad explain`` and by
whole-data-set runs.

What is explained (``TokenAttribution.loss``):

* with ``pairs``: the cosine similarity of the two sentences' embeddings (mean-pooled last
  hidden state over the attention mask, L2-normalised — the sentence-transformers encoding).
  Both sentences of every pair go into one batch and sentence j's quantity is
  cos(e_j, stopgrad(e_partner(j))): its gradient w.r.t. j's tokens is that of the similarity,
  and samples stay independent, so one backward is exact. Two results per pair: text, then pair.
* without pairs (sequence classifiers): log p(target | text), the target being the given label
  or, by default, the predicted class.

Texts longer than the model's limit (``max_length`` tokens, special tokens included) are
truncated and flagged ``truncated=True``.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .methods import get_method
from .methods._arrays import framework_of, take, to_numpy
from .methods._passes import base_pass, ignores_padding
from .methods.api import build_items
from .methods.hotflip import HotFlip
from .methods.result import TokenAttribution
from .models.heads import ClassLogProb, PairSimilarity, resolve_targets

__all__ = ["Explainer", "TokenAttribution"]

FRAMEWORKS = ("torch", "gluon")
_UNUSED = re.compile(r"^\[unused\d+\]$")
#: rows × tokens per forward/backward of integrated gradients and SmoothGrad in explain()
TOKENS_PER_PASS = 16384
#: HF tokenizers set padding/truncation on the shared tokenizer object before each call (not
#: atomic): concurrent explain() calls would tokenize with each other's settings.
_TOKENIZER_LOCK = threading.Lock()


@dataclass
class _Batch:
    """One tokenized batch: native model inputs, the (B, T) mask, tokens, truncation flags."""

    inputs: Any
    mask: np.ndarray
    mask_native: Any
    truncated: list[bool]
    tokens: list[list[str]] | None = None


class Explainer:
    """Explain texts with one model (see the module docstring for what is explained).

    Build one with :meth:`from_spec`; or directly from a model and an HF tokenizer (or a
    ``tokenize(texts) -> dict of native arrays`` callable, with ``attention_mask`` and optionally
    ``tokens``, a list of token strings per text).

    Attributes:
        max_length: the model's token limit; longer texts are truncated (``truncated=True``).
        kind: ``"encoder"`` (explains pair similarities), ``"classifier"`` (log p(target)) or
            ``"auto"`` (user models: pairs → encoder, else classifier).
        skip_padding: integrated gradients and SmoothGrad run each pass only up to its
            samples' last real token (``mask=`` of those methods), so a long text does not make
            every short one pay for its padding. Right for models that ignore padded positions
            through the attention mask; by default on for HuggingFace transformers and gluonnlp
            models, off for others (an RNN that reads the padding would see less of it).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        tokenize: Callable[[list[str]], dict[str, Any]] | None = None,
        kind: str = "auto",
        max_length: int = 512,
        name: str = "",
        batch_size: int = 16,
        hotflip_direction: str = "abs",
        skip_padding: bool | None = None,
    ) -> None:
        if tokenizer is None and tokenize is None:
            raise InputError("an Explainer needs a tokenizer or a tokenize callable")
        self.model, self.tokenizer, self._tokenize = model, tokenizer, tokenize
        self.kind, self.max_length, self.name = kind, int(max_length), name
        self.batch_size = max(2, int(batch_size))
        self.hotflip_direction = hotflip_direction
        self.framework = "gluon" if _is_gluon(model) else "torch"
        if skip_padding is None:
            skip_padding = ignores_padding(model)
        self.skip_padding = bool(skip_padding)
        self._checked = False  # samples proved independent once: later batches skip the probe
        config = getattr(model, "config", None)
        self.labels: dict[int, str] = {
            int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()
        }
        self.special_ids = self._special_ids()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: str | None = None, *, framework: str = "torch") -> Explainer:
        """``None``: the bundled all-MiniLM-L6-v2; ``"hf:PATH"``: an HF sequence classifier or
        plain encoder folder; ``"module:pkg.mod:factory"``: ``factory()`` returns
        ``(model, tokenizer or tokenize callable)``. ``framework="gluon"`` loads BERT encoder
        weights (the bundled model by default) into gluonnlp's BERTModel."""
        if framework not in FRAMEWORKS:
            raise InputError(
                f"framework={framework!r} is not one of {', '.join(map(repr, FRAMEWORKS))}"
            )
        if spec is not None and spec.startswith("module:"):
            return cls._from_factory(spec.removeprefix("module:"))
        from .models import minilm

        if spec is None:
            path, name = minilm.model_path(), "all-MiniLM-L6-v2"
        elif spec.startswith("hf:"):
            path, name = Path(spec.removeprefix("hf:")), spec.removeprefix("hf:")
        elif Path(spec).is_dir():
            path, name = Path(spec), spec
        else:
            raise InputError(
                f"model {spec!r}: give hf:PATH (a HuggingFace model folder) or "
                "module:pkg.module:factory (a callable returning (model, tokenizer))"
            )
        if not Path(path).exists():
            raise InputError(f"model path does not exist: {str(path)!r}")
        if framework == "gluon":
            from .models.minilm_gluon import load_gluon_bert

            model, _ = load_gluon_bert(path)
            tf = minilm.quiet_transformers()
            tokenizer = tf.AutoTokenizer.from_pretrained(path)
            limit = minilm.max_length_of(Path(path), tokenizer, model_config(path))
            return cls(model, tokenizer, kind="encoder", max_length=limit, name=name)
        model, tokenizer, limit = minilm.load_hf(path)
        kind = (
            "classifier"
            if type(model).__name__.endswith("ForSequenceClassification")
            else "encoder"
        )
        return cls(model, tokenizer, kind=kind, max_length=limit, name=name)

    @classmethod
    def _from_factory(cls, target: str) -> Explainer:
        mod_name, _, attr = target.rpartition(":")
        if not mod_name or not attr:
            raise InputError(f"module spec {target!r} must look like pkg.module:factory")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise InputError(f"cannot import module {mod_name!r}: {e}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise InputError(f"module {mod_name!r} has no callable {attr!r}")
        made = factory()
        if not (isinstance(made, tuple) and len(made) == 2):
            raise InputError(
                f"{target}() must return (model, tokenizer or tokenize callable), got "
                f"{type(made).__name__}"
            )
        model, tok = made
        limit = int(getattr(tok, "model_max_length", 512) or 512)
        if hasattr(tok, "convert_ids_to_tokens"):
            return cls(model, tok, max_length=min(limit, 100_000), name=target)
        if not callable(tok):
            raise InputError(f"{target}() returned a tokenizer that is not callable")
        return cls(model, tokenize=tok, max_length=limit, name=target)

    # -- explaining ----------------------------------------------------------------------
    def explain(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        targets: list[str | int] | None = None,
        *,
        method: str = "gradient",
        hotflip_k: int = 3,
        **options: Any,
    ) -> list[TokenAttribution]:
        """Per-token attributions for ``texts`` (2 results per pair with ``pairs``)."""
        cls = get_method(method)
        cls.validate(options)
        texts = self._check_texts(texts, "text")
        sentences: list[str] = texts
        if pairs is not None:
            pairs = self._check_texts(pairs, "pair")
            if len(pairs) != len(texts):
                raise InputError(f"got {len(texts)} texts but {len(pairs)} pairs; give one each")
            if self.kind == "classifier":
                raise InputError(
                    f"{self.name or 'this model'} is a sequence classifier: pairs explain the "
                    "similarity of sentence embeddings and need an encoder; give a target instead"
                )
            if targets is not None:
                raise InputError(
                    "targets apply to classifiers; with pairs the similarity is explained"
                )
            sentences = [s for tp in zip(texts, pairs, strict=True) for s in tp]
        elif self.kind == "encoder":
            raise InputError(
                f"{self.name or 'this model'} is a plain encoder: give pairs (--pair) to explain "
                "their similarity, or use a sequence classifier with a target"
            )
        if not isinstance(hotflip_k, int) or hotflip_k < 0:
            raise InputError(f"hotflip_k must be an integer ≥ 0, got {hotflip_k!r}")
        labels = self._targets(targets, len(texts)) if targets is not None else None
        step = self.batch_size - self.batch_size % 2 if pairs is not None else self.batch_size
        out: list[TokenAttribution] = []
        for s in range(0, len(sentences), step):
            chunk = sentences[s : s + step]
            tgt = None if labels is None else labels[s : s + step]
            out.extend(self._chunk(chunk, pairs is not None, tgt, cls.name, hotflip_k, options))
        return out

    def _chunk(
        self,
        sentences: list[str],
        paired: bool,
        targets: np.ndarray | None,
        method: str,
        hotflip_k: int,
        options: dict[str, Any],
    ) -> list[TokenAttribution]:
        batch = self._encode(sentences)
        loss: PairSimilarity | ClassLogProb
        if paired:
            partner = np.arange(len(sentences)) ^ 1
            loss = PairSimilarity(partner, lambda rows: take(batch.mask_native, rows, 0))
        else:
            loss = ClassLogProb(targets)
        base = base_pass(self.model, batch.inputs, loss, check="off" if self._checked else "auto")
        self._checked = self._checked or len(sentences) > 1
        opts = self._defaults(method, dict(options), batch.mask)
        scores = get_method(method)(self.model).from_base(base, batch.inputs, loss, **opts)
        flips = scores.hotflip
        if flips is None and hotflip_k > 0:
            flips = (
                HotFlip(self.model)
                .from_base(base, batch.inputs, loss, **self._defaults("hotflip", {}, batch.mask))
                .hotflip
            )
        names: list[str | None] | None = None
        if isinstance(loss, ClassLogProb) and loss.targets is not None:
            names = [self.labels.get(int(t), str(int(t))) for t in loss.targets]
        items = build_items(
            scores,
            batch.mask,
            tokens_of=self._tokens_of,
            texts=sentences,
            targets=names,
            truncated=batch.truncated,
            flips=flips if hotflip_k > 0 else None,
            hotflip_k=hotflip_k,
            direction=opts.get("direction", self.hotflip_direction),
        )
        for item, toks in zip(items, batch.tokens or [], strict=False):
            if len(toks) == len(item.tokens):  # the tokenize callable's own token strings
                item.tokens = [str(t) for t in toks]
                for h in item.hotflip:
                    h["token"] = item.tokens[h["position"]]
        return items

    def _defaults(self, method: str, opts: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
        if method == "hotflip":
            opts.setdefault("direction", self.hotflip_direction)
            opts.setdefault("exclude_ids", self.special_ids)
            opts.setdefault("mask", mask)
        elif method == "integrated_gradients":
            pad = getattr(self.tokenizer, "pad_token_id", None)
            if pad is not None:
                opts.setdefault("baseline", "pad")
                opts.setdefault("pad_id", int(pad))
            mask_id = getattr(self.tokenizer, "mask_token_id", None)
            if mask_id is not None:
                opts.setdefault("mask_id", int(mask_id))
        if method in ("integrated_gradients", "smoothgrad"):
            # bound the memory of one pass: ~2.7 GB of activations for MiniLM-sized models
            opts.setdefault("internal_batch_size", max(1, TOKENS_PER_PASS // mask.shape[1]))
            if self.skip_padding:
                opts.setdefault("mask", mask)
        return opts

    # -- tokenizing ----------------------------------------------------------------------
    @staticmethod
    def _check_texts(texts: Any, what: str) -> list[str]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InputError(f"{what}s must be a list of strings, got {type(texts).__name__}")
        if not texts:
            raise InputError(f"no {what}s given")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"{what} {i} is a {type(t).__name__}, not a string")
            if not t.strip():
                raise InputError(f"{what} {i} is empty; give non-empty texts")
        return list(texts)

    def _targets(self, targets: list[str | int], n: int) -> np.ndarray:
        if self.kind == "encoder":
            raise InputError(
                f"{self.name or 'this model'} is a plain encoder with no classes; a target needs "
                "a sequence classifier (give pairs to explain a similarity)"
            )
        items = list(targets) * n if len(targets) == 1 else list(targets)
        label2id = {v: k for k, v in self.labels.items()} or None
        return resolve_targets(items, n, label2id)

    def _encode(self, texts: list[str]) -> _Batch:
        if self._tokenize is not None:
            enc = dict(self._tokenize(texts))
            tokens = enc.pop("tokens", None)
            ids = next((v for k, v in enc.items() if "ids" in k and framework_of(v)), None)
            mask_native = enc.get("attention_mask")
            if mask_native is None:
                if ids is None:
                    raise InputError("tokenize() must return input ids and/or an attention_mask")
                mask_native = ids * 0 + 1
            mask = to_numpy(mask_native).astype(bool)
            return _Batch(enc, mask, mask_native, [False] * len(texts), tokens)
        tok = self.tokenizer
        with _TOKENIZER_LOCK:  # a fast tokenizer keeps its padding/truncation settings in itself
            longer = tok(texts, truncation=True, max_length=self.max_length + 1)["input_ids"]
            tok.padding_side = "right"
            enc = tok(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
        truncated = [len(x) > self.max_length for x in longer]
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        mask = np.asarray(enc["attention_mask"], dtype=np.int64)
        types = np.asarray(enc.get("token_type_ids", np.zeros_like(ids)), dtype=np.int64)
        if self.framework == "gluon":
            import mxnet as mx

            nd = {k: mx.nd.array(v, dtype="float32") for k, v in (("ids", ids), ("types", types))}
            valid = mx.nd.array(mask.sum(1), dtype="float32")
            mask_nd = mx.nd.array(mask, dtype="float32")
            return _Batch((nd["ids"], nd["types"], valid), mask.astype(bool), mask_nd, truncated)
        import torch

        inputs = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask)}
        if "token_type_ids" in enc:
            inputs["token_type_ids"] = torch.as_tensor(types)
        return _Batch(inputs, mask.astype(bool), inputs["attention_mask"], truncated)

    def _tokens_of(self, ids: list[int]) -> list[str]:
        if self.tokenizer is not None:
            return [str(t) for t in self.tokenizer.convert_ids_to_tokens(ids)]
        return [str(i) for i in ids]

    def _special_ids(self) -> list[int]:
        """Ids HotFlip never proposes nor flips: special tokens and BERT's ``[unusedN]``."""
        tok = self.tokenizer
        if tok is None:
            return []
        ids = {int(i) for i in (getattr(tok, "all_special_ids", None) or [])}
        vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
        ids.update(int(i) for t, i in vocab.items() if _UNUSED.match(t))
        return sorted(ids)


def _is_gluon(model: Any) -> bool:
    mx = sys.modules.get("mxnet")
    return mx is not None and isinstance(model, mx.gluon.Block)


def model_config(path: str | Path) -> Any:
    """The HF config of a folder as an object with attributes (for limits)."""
    import json
    from types import SimpleNamespace

    return SimpleNamespace(**json.loads((Path(path) / "config.json").read_text()))
