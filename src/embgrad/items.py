"""``TokenAttribution``: one explained text — the record every output is written from
(terminal, HTML, PNG, JSON, Parquet), shared by the methods, the renderers and data runs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ._version import __version__


@dataclass
class TokenAttribution:
    """The attribution of one input text.

    Attributes:
        text: the input text (or a placeholder for raw ids).
        tokens: model tokens incl. special tokens, as displayed (padding excluded).
        scores: one per token (method-specific: see ``embgrad methods``).
        loss: the explained quantity f(x) (a pair's cosine similarity, or log p(target)).
        table_grad_norm: L2 norm of this text's per-sample word-table gradient.
        delta: the integrated-gradients completeness delta, else None.
        hotflip: top substitutions ``{"position", "token", "replacement", "estimate",
            "verified", "direction"}``: the first-order estimate of the change of ``loss``, the
            change measured by running the model on the flipped text (None if not run), and the
            direction they were ranked by (``"increase"``, ``"decrease"`` or ``"abs"``).
        truncated: the text was longer than the model's limit and was truncated.
        method: the method's registry name.
        target: the explained class label, or None (pair similarity, custom loss).
        n_tokens: the text's token count before truncation (where it was truncated and the
            count is known), else None.
    """

    text: str
    tokens: list[str]
    scores: list[float]
    loss: float
    table_grad_norm: float
    delta: float | None
    hotflip: list[dict[str, Any]]
    truncated: bool
    method: str
    target: str | None
    n_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_item(item: TokenAttribution) -> dict[str, Any]:
    """An item as written to JSON: the explained quantity is ``value``, as in ``embgrad run``'s
    Parquet shards (the attribute is ``loss``)."""
    return {("value" if k == "loss" else k): v for k, v in item.to_dict().items()}


def items_to_json(items: list[TokenAttribution], meta: dict[str, Any] | None = None) -> str:
    """``{"embgrad_version", ...meta, "items": [TokenAttribution as dict, ...]}`` as JSON text
    (the explained quantity under ``value``, as in the Parquet shards)."""
    doc = {"embgrad_version": __version__, **(meta or {}), "items": [_json_item(i) for i in items]}
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)


@dataclass
class StepAttribution:
    """The attribution of one generation (a prompt and its continuation): a matrix of steps
    (generated tokens) × input tokens, the record every generation view is written from.

    Attributes:
        text: the prompt (or source) as text, or its tokens joined.
        tokens: the input tokens the columns stand for (padding excluded; for
            encoder–decoders the source tokens, then the decoder inputs).
        generated: the explained tokens y_k, one per row.
        scores: (rows × columns) list of lists: step k's score for each input token (0 where
            step k cannot read it).
        step_scores: name → one value per row (``probability``, ``entropy`` in nats).
        quantity: the explained value per row, log p(y_k) (− log p(y'_k) with a contrast).
        method: the method's registry name; ``kind``: decoder, seq2seq or custom.
        delta: the integrated-gradients completeness delta per row, else None.
        source_length: how many of the columns are source tokens (encoder–decoder), else 0.
        requested: the steps asked for (``generate=K``, or the longest continuation of the
            batch), else None; ``stopped_at_eos``: the end-of-sequence token ended this
            generation before them (its last row is that token).
    """

    text: str
    tokens: list[str]
    generated: list[str]
    scores: list[list[float]]
    step_scores: dict[str, list[float]]
    quantity: list[float]
    method: str
    kind: str
    delta: list[float] | None = None
    source_length: int = 0
    requested: int | None = None
    stopped_at_eos: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_fields(self, **extra: Any) -> dict[str, Any]:
        """The fields of one data-run row of an explained-outputs matrix (token
        classification, QA: ``data.writer.outputs_fields``); ``extra`` sets the kind's own
        (``labels`` and ``positions``, or ``span``)."""
        fields: dict[str, Any] = {
            "tokens": [str(t) for t in self.tokens],
            "rows": [str(g) for g in self.generated],
            "scores": [[float(v) for v in r] for r in self.scores],
            "quantity": [float(v) for v in self.quantity],
            "probability": [float(v) for v in self.step_scores.get("probability", [])],
            "labels": None,
            "positions": None,
            "span": None,
            "delta": None if self.delta is None else [float(v) for v in self.delta],
            "source_length": int(self.source_length),
        }
        fields.update(extra)
        return fields
