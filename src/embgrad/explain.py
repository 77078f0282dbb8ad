"""``Explainer``: texts in, per-token attributions out — used by ``embgrad explain`` and by
whole-data-set runs.

The Explainer only wires the layers below it together: ``models`` loads a model and feeds it
texts (``models.load``, ``models.encode``), ``tasks`` says what is explained (a pair's cosine
similarity, or log p(target)), and the registered ``methods`` compute the attributions, each
taking its option defaults from a :class:`~embgrad.methods.base.Context` (``Method.defaults``).

What is explained (``TokenAttribution.loss``):

* with ``pairs``: the cosine similarity of the two sentences' embeddings (mean-pooled last
  hidden state over the attention mask, L2-normalised — the sentence-transformers encoding).
  Both sentences of every pair go into one batch and sentence j's quantity is
  cos(e_j, stopgrad(e_partner(j))): its gradient w.r.t. j's tokens is that of the similarity,
  and samples stay independent, so one backward is exact. Two results per pair: text, then pair.
* single texts on an encoder: log p(label | text), zero-shot among ``candidate_labels`` by the
  similarity of the text's embedding to the labels' (``embgrad.tasks.zeroshot``; default labels
  ``positive`` / ``negative``, said in the outputs), for the target or the predicted label.
* without pairs (sequence classifiers): log p(target | text), the target being the given label
  or, by default, the predicted class.

Texts longer than the model's limit (``max_length`` tokens, special tokens included) are
truncated and flagged ``truncated=True``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ._progress import bar
from .backends import backend_for
from .errors import InputError
from .items import StepAttribution
from .methods import get_method
from .methods.api import build_items
from .methods.base import Context, swap_method
from .methods.plan import PASS_TOKENS
from .methods.result import TokenAttribution
from .models.encode import LAYOUTS, TextBatch, from_callable, token_counts, tokenize
from .models.load import Loaded, load
from .outputs.route import Route, find_task
from .tasks import Task
from .tasks.heads import id2label
from .tasks.zeroshot import embed

__all__ = ["Explainer", "TokenAttribution"]

_UNUSED = re.compile(r"^\[unused\d+\]$")
#: rows × tokens per forward/backward of integrated gradients and SmoothGrad in explain()
#: (the methods' own default bound, ``methods.plan.PASS_TOKENS``)
TOKENS_PER_PASS = PASS_TOKENS


class Explainer:
    """Explain texts with one model (see the module docstring for what is explained).

    Build one with :meth:`from_spec`; or directly from a model and an HF tokenizer (or a
    ``tokenize(texts) -> dict of native arrays`` callable, with ``attention_mask`` and optionally
    ``tokens``, a list of token strings per text).

    Attributes:
        max_length: the model's token limit; longer texts are truncated (``truncated=True``).
        kind: ``"encoder"`` (explains pair similarities), ``"classifier"`` (log p(target)) or
            ``"auto"`` (user models: pairs → encoder, else classifier).
        framework: ``"torch"`` or ``"gluon"`` (the model's backend).
        skip_padding: integrated gradients and SmoothGrad run each pass only up to its
            samples' last real token (``mask=`` of those methods), so a long text does not make
            every short one pay for its padding. Right for models that ignore padded positions
            through the attention mask; by default on for HuggingFace transformers and gluonnlp
            models, off for others (an RNN that reads the padding would see less of it).
        hotflip_direction, hotflip_verify: how HotFlip candidates are ranked, and how many per
            text are verified by running the model on the flipped text (HotFlip's ``direction``
            and ``verify`` options; default None: as many as are shown, ``hotflip_k``, so every
            suggestion shown carries its measured change; 0: first-order estimates only).
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
        hotflip_verify: int | None = None,
    ) -> None:
        if tokenizer is None and tokenize is None:
            raise InputError("an Explainer needs a tokenizer or a tokenize callable")
        self.model, self.tokenizer, self._tokenize = model, tokenizer, tokenize
        self.kind, self.max_length, self.name = kind, int(max_length), name
        self.batch_size = max(2, int(batch_size))
        self.hotflip_direction = hotflip_direction
        self.hotflip_verify = None if hotflip_verify is None else int(hotflip_verify)
        self.framework = backend_for(model).framework
        if skip_padding is None:
            skip_padding = backend_for(model).masks_padding(model)
        self.skip_padding = bool(skip_padding)
        self._checked = False  # samples proved independent once: later batches skip the probe
        self._embedded: dict[tuple[str, ...], np.ndarray] = {}
        self.labels: dict[int, str] = id2label(model)
        self.special_ids = self._special_ids()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: str | None = None, *, framework: str = "torch") -> Explainer:
        """An Explainer for a model spec (see :func:`embgrad.models.load.load`): ``None`` (the
        bundled all-MiniLM-L6-v2), ``"hf:PATH"`` or ``"module:pkg.mod:factory"``;
        ``framework="gluon"`` ports BERT encoder weights into gluonnlp's BERTModel."""
        return cls.from_loaded(load(spec, framework=framework))

    @classmethod
    def from_loaded(cls, loaded: Loaded) -> Explainer:
        return cls(
            loaded.model,
            loaded.tokenizer,
            tokenize=loaded.tokenize,
            kind=loaded.kind,
            max_length=loaded.max_length,
            name=loaded.name,
        )

    # -- explaining ----------------------------------------------------------------------
    def task(
        self, texts: Any, pairs: Any = None, targets: Any = None, candidate_labels: Any = None
    ) -> Task:
        """The task for these texts on this model, from the task registry that
        ``embgrad.attribute`` uses (``outputs.route``; every check before any model work)."""
        route = self._route(pairs, targets=targets, candidate_labels=candidate_labels)
        if route.task is None:
            raise InputError(
                f"model {self.name or type(self.model).__name__} is a {self.kind} "
                f"({route.name}): it explains several outputs per text; use "
                "Explainer.explain_outputs (or embgrad.attribute)"
            )
        return route.task(
            self.kind,
            texts,
            pairs,
            targets,
            labels=self.labels,
            candidate_labels=candidate_labels,
            model_name=self.name,
        )

    def _route(self, pairs: Any, **request: Any) -> Route:
        return find_task(self.model, {"kind": self.kind, "pairs": pairs, **request})

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, D) float64 sentence embeddings (mean-pooled, L2-normalised), cached per texts
        (the zero-shot labels' embeddings are computed once per Explainer)."""
        key = tuple(texts)
        if key not in self._embedded:
            batch = self.encode(list(texts))
            self._embedded[key] = embed(self.model, batch.inputs, batch.mask_native)
        return self._embedded[key]

    def explain(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        targets: list[str | int] | None = None,
        *,
        candidate_labels: list[str] | None = None,
        method: str = "gradient",
        hotflip_k: int = 3,
        **options: Any,
    ) -> list[TokenAttribution]:
        """Per-token attributions for ``texts`` (2 results per pair with ``pairs``).

        ``candidate_labels``: classify single texts zero-shot among these label descriptions
        (encoders; see ``embgrad.tasks.zeroshot``); ``targets`` then name labels."""
        cls = get_method(method)
        cls.validate(options)
        task = self.task(texts, pairs, targets, candidate_labels)
        if not isinstance(hotflip_k, int) or hotflip_k < 0:
            raise InputError(f"hotflip_k must be an integer ≥ 0, got {hotflip_k!r}")
        task.prepare(self.embed)
        rows = task.rows()
        step = task.batch_rows(self.batch_size)
        out: list[TokenAttribution] = []
        starts = range(0, len(rows), step)
        with bar(len(starts), f"embgrad {cls.name}", "batch") as progress:
            for s in starts:
                out.extend(self._chunk(task, s, rows[s : s + step], cls.name, hotflip_k, options))
                progress.update(1)
        return out

    def _chunk(
        self,
        task: Task,
        start: int,
        sentences: list[str],
        method: str,
        hotflip_k: int,
        options: dict[str, Any],
    ) -> list[TokenAttribution]:
        batch = self.encode(sentences)
        loss = task.loss(start, batch)
        cls = get_method(method)
        check = "off" if self._checked else "auto"
        base = cls(self.model, check=check).plain_pass(batch.inputs, loss)
        self._checked = self._checked or len(sentences) > 1
        ctx = self._context(batch, hotflip_k)
        opts = {**cls.defaults(ctx), **options}
        scores = cls(self.model).from_base(base, batch.inputs, loss, **opts)
        flips = scores.hotflip
        swaps = swap_method()
        if flips is None and hotflip_k > 0 and swaps is not None:
            flips = (
                swaps(self.model).from_base(base, batch.inputs, loss, **swaps.defaults(ctx)).hotflip
            )
        items = build_items(
            scores,
            batch.mask,
            tokens_of=self._tokens_of,
            texts=sentences,
            targets=task.labels(loss),
            truncated=batch.truncated,
            flips=flips if hotflip_k > 0 else None,
            hotflip_k=hotflip_k,
            direction=str(
                scores.info.get("direction", opts.get("direction", self.hotflip_direction))
            ),
        )
        cut = [i for i, item in enumerate(items) if item.truncated]
        if cut and self.tokenizer is not None:  # "truncated to 256 of 2,731 tokens"
            counts = token_counts(self.tokenizer, [sentences[i] for i in cut])
            for i, n in zip(cut, counts, strict=True):
                items[i].n_tokens = n
        for item, toks in zip(items, batch.tokens or [], strict=False):
            if len(toks) == len(item.tokens):  # the tokenize callable's own token strings
                item.tokens = [str(t) for t in toks]
                for h in item.hotflip:
                    h["token"] = item.tokens[h["position"]]
        return items

    def _context(self, batch: TextBatch, hotflip_k: int) -> Context:
        shown = self.hotflip_verify if self.hotflip_verify is not None else hotflip_k
        return Context(
            flips_shown=shown,
            mask=batch.mask,
            tokenizer=self.tokenizer,
            special_ids=tuple(self.special_ids),
            direction=self.hotflip_direction,
            skip_padding=self.skip_padding,
            token_baselines=True,
            # bound the memory of one pass (see methods.plan.PASS_TOKENS)
            tokens_per_pass=TOKENS_PER_PASS,
        )

    def explain_generation(
        self,
        texts: list[str],
        continuations: list[str],
        *,
        method: str = "gradient",
        **options: Any,
    ) -> list[StepAttribution]:
        """For each text and its forced continuation (an HF causal or seq2seq LM), which input
        tokens drove each continuation token: one :class:`StepAttribution` per text."""
        from .outputs.api import attribute_generation
        from .outputs.generation import encode_texts

        if self.kind not in ("causal_lm", "seq2seq_lm") or self.tokenizer is None:
            raise InputError(
                f"model {self.name or type(self.model).__name__} is a {self.kind}, not a causal "
                "or seq2seq LM with a tokenizer: continuations need an hf:PATH language model"
            )
        get_method(method).validate(options)
        out: list[StepAttribution] = []
        for s in range(0, len(texts), self.batch_size):
            part = slice(s, s + self.batch_size)
            inputs, targets, tmask = encode_texts(
                self.model, self.tokenizer, texts[part], continuations[part]
            )
            res = attribute_generation(
                self.model, inputs, targets, target_mask=tmask, method=method,
                tokenizer=self.tokenizer, **options,
            )  # fmt: skip
            res.prompts = list(texts[part])  # each item's text: its prompt as given
            out += res.items
        return out

    def explain_outputs(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        *,
        method: str = "gradient",
        **options: Any,
    ) -> list[dict[str, Any]]:
        """A token-classification or question-answering head (``kind``): per text its matrix
        of explained outputs × tokens and their labels / span, as the fields of one data-run row
        (``data.writer.outputs_fields``)."""
        route = self._route(pairs)
        if route.task is not None or self.tokenizer is None:
            raise InputError(
                f"model {self.name or type(self.model).__name__} is a {self.kind}, not a token "
                "classifier or question-answering model with a tokenizer"
            )
        get_method(method).validate(options)
        out: list[dict[str, Any]] = []
        for s in range(0, len(texts), self.batch_size):
            part = slice(s, s + self.batch_size)
            given = {} if pairs is None else {"pairs": pairs[part]}
            res = route.run(self.model, texts[part], loss_fn=None, target=None, method=method,
                            tokenizer=self.tokenizer, **given, **options)  # fmt: skip
            out += res.run_rows()
        return out

    # -- tokenizing ----------------------------------------------------------------------
    def encode(self, texts: list[str]) -> TextBatch:
        """The model's inputs for ``texts`` (truncated to ``max_length`` tokens)."""
        if self._tokenize is not None:
            return from_callable(self._tokenize, texts)
        enc, truncated = tokenize(self.tokenizer, texts, self.max_length)
        return LAYOUTS[self.framework](self.model, enc, truncated)

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
