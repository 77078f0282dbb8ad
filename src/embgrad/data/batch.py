"""Explain one batch of rows and turn the results into output records (both engines).

A batch is explained with one ``Explainer.explain`` call. If that call raises an embgrad error
or a ValueError, the rows are retried one at a time so that only the rows that fail alone are
recorded as errors (``explain_failed``); any other exception stops the run (a bug or a
resource problem, and the run can be resumed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import EmbgradError
from ..items import StepAttribution, TokenAttribution
from .badrows import InputRow, RowError
from .config import ExplainerLike, RunConfig

ROW_FAILURES: tuple[type[BaseException], ...] = (EmbgradError, ValueError)


def _hotflip(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "position": int(h["position"]),
            "token": str(h["token"]),
            "replacement": str(h["replacement"]),
            "estimate": float(h["estimate"]),
            "verified": None if h.get("verified") is None else float(h["verified"]),
            "direction": str(h.get("direction", "increase")),
        }
        for h in items
    ]


def _side(att: TokenAttribution | None, prefix: str) -> dict[str, Any]:
    if att is None:
        return dict.fromkeys(
            (f"{prefix}{k}" for k in ("tokens", "scores", "table_grad_norm", "delta", "hotflip")),
            None,
        ) | {f"{prefix}truncated": None}
    return {
        f"{prefix}tokens": [str(t) for t in att.tokens],
        f"{prefix}scores": [float(s) for s in att.scores],
        f"{prefix}table_grad_norm": float(att.table_grad_norm),
        f"{prefix}delta": None if att.delta is None else float(att.delta),
        f"{prefix}hotflip": _hotflip(att.hotflip),
        f"{prefix}truncated": bool(att.truncated),
    }


def to_record(
    row: InputRow, att: TokenAttribution, pair: TokenAttribution | None
) -> dict[str, Any]:
    """One output row (see ``writer.output_schema``)."""
    return {
        "row": row.row,
        "id": row.id,
        "text": row.text,
        "pair": row.pair,
        "target": att.target if att.target is not None else row.label,
        "value": float(att.loss),
        **_side(att, ""),
        **_side(pair, "pair_"),
    }


def to_generation_record(row: InputRow, step: StepAttribution) -> dict[str, Any]:
    """One output row of a ``--continuation-column`` run (see ``writer.generation_fields``)."""
    return {
        "row": row.row,
        "id": row.id,
        "text": row.text,
        "continuation": row.continuation,
        "tokens": [str(t) for t in step.tokens],
        "generated": [str(t) for t in step.generated],
        "scores": [[float(v) for v in r] for r in step.scores],
        "quantity": [float(v) for v in step.quantity],
        "probability": [float(v) for v in step.step_scores.get("probability", [])],
        "entropy": [float(v) for v in step.step_scores.get("entropy", [])],
        "delta": None if step.delta is None else [float(v) for v in step.delta],
        "source_length": int(step.source_length),
    }


def _generate(explainer: Any, rows: Sequence[InputRow], config: RunConfig) -> list[Any]:
    if not hasattr(explainer, "explain_generation"):
        raise EmbgradError("this explainer cannot explain continuations (no explain_generation)")
    texts = [r.text for r in rows]
    conts = [r.continuation or "" for r in rows]
    results = list(explainer.explain_generation(texts, conts, **config.explain_kwargs()))
    if len(results) != len(rows):
        raise EmbgradError(f"the explainer returned {len(results)} results for {len(rows)} rows")
    return results


def _outputs(explainer: Any, rows: Sequence[InputRow], config: RunConfig) -> list[Any]:
    if not hasattr(explainer, "explain_outputs"):
        raise EmbgradError("this explainer cannot explain a model head (no explain_outputs)")
    texts = [r.text for r in rows]
    pairs = [r.pair or "" for r in rows] if config.pair_column is not None else None
    results = list(explainer.explain_outputs(texts, pairs, **config.explain_kwargs()))
    if len(results) != len(rows):
        raise EmbgradError(f"the explainer returned {len(results)} results for {len(rows)} rows")
    return results


def to_outputs_record(row: InputRow, fields: dict[str, Any]) -> dict[str, Any]:
    """One output row of a run on a model head (see ``writer.outputs_fields``)."""
    return {"row": row.row, "id": row.id, "text": row.text, "pair": row.pair, **fields}


def _call(explainer: ExplainerLike, rows: Sequence[InputRow], config: RunConfig) -> list[Any]:
    if config.continuation_column is not None:
        return _generate(explainer, rows, config)
    if config.head is not None:
        return _outputs(explainer, rows, config)
    texts = [r.text for r in rows]
    pairs = [r.pair or "" for r in rows] if config.pair_column is not None else None
    targets: list[str | int] | None = None
    if config.label_column is not None:
        targets = [r.label or "" for r in rows]
    results = list(
        explainer.explain(texts, pairs=pairs, targets=targets, **config.explain_kwargs())
    )
    per_row = 2 if pairs is not None else 1
    if len(results) != per_row * len(rows):
        raise EmbgradError(
            f"the explainer returned {len(results)} results for {len(rows)} rows "
            f"(expected {per_row * len(rows)})"
        )
    return results


def _records(
    rows: Sequence[InputRow],
    results: list[Any],
    paired: bool,
    generation: bool = False,
    head: bool = False,
) -> list[dict[str, Any]]:
    if head:
        return [to_outputs_record(r, f) for r, f in zip(rows, results, strict=True)]
    if generation:
        return [to_generation_record(r, s) for r, s in zip(rows, results, strict=True)]
    if not paired:
        return [to_record(r, a, None) for r, a in zip(rows, results, strict=True)]
    return [to_record(r, results[2 * i], results[2 * i + 1]) for i, r in enumerate(rows)]


def explain_rows(
    explainer: ExplainerLike, rows: Sequence[InputRow], config: RunConfig
) -> tuple[list[dict[str, Any]], list[RowError]]:
    """Records for the rows that could be explained, and errors for those that could not."""
    if not rows:
        return [], []
    paired = config.pair_column is not None
    try:
        generation = config.continuation_column is not None
        head = config.head is not None
        return _records(rows, _call(explainer, rows, config), paired, generation, head), []
    except ROW_FAILURES as exc:
        if len(rows) == 1:
            row = rows[0]
            return [], [RowError(row.row, row.id, "explain_failed", str(exc) or repr(exc))]
    records: list[dict[str, Any]] = []
    errors: list[RowError] = []
    for row in rows:
        r, e = explain_rows(explainer, [row], config)
        records += r
        errors += e
    return records, errors


def explain_by_length(
    explainer: ExplainerLike,
    rows: Sequence[InputRow],
    config: RunConfig,
    done: Callable[[int], None] | None = None,
    *,
    records: list[dict[str, Any]] | None = None,
    errors: list[RowError] | None = None,
) -> tuple[list[dict[str, Any]], list[RowError]]:
    """:func:`explain_rows` over ``rows`` in batches of ``config.batch_size`` formed by length
    (:func:`by_length`); records and errors come back in file order. ``done(n)`` is called
    after each batch of n rows (progress). ``records`` / ``errors``: lists to append to (the
    caller keeps what was done if a batch is interrupted)."""
    records = [] if records is None else records
    errors = [] if errors is None else errors
    ordered = by_length(rows, explainer)
    for start in range(0, len(ordered), config.batch_size):
        batch = ordered[start : start + config.batch_size]
        got, failed = explain_rows(explainer, batch, config)
        records += got
        errors += failed
        if done is not None:
            done(len(batch))
    records.sort(key=lambda r: r["row"])  # file order again (batches were by length)
    errors.sort(key=lambda e: e.row)
    return records, errors


#: texts tokenized per ``encode`` call when measuring lengths (bounds the padded id array)
_LENGTH_CHUNK = 256


def by_length(rows: Sequence[InputRow], explainer: Any = None) -> list[InputRow]:
    """``rows`` ordered for batching: by length (pairs: the longer side, then the shorter), ties
    in file order, so each batch pads to a length close to its rows' own.

    Lengths are token counts when ``explainer`` has ``encode(texts)`` (``Explainer`` does: the
    mask's row sums, truncation included), else characters (a weaker proxy: on real text a
    character sort left 28 % padding in single-text batches of 16, a token sort 3 %).  A batch
    pays for its longest text: in file order more than half of the positions computed were
    padding.  The caller restores file order before writing.
    """
    texts = [r.text for r in rows]
    pairs = [r.pair or "" for r in rows]
    has_pairs = any(r.pair for r in rows)
    a = _lengths(explainer, texts)
    b = _lengths(explainer, pairs) if has_pairs else [0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: (max(a[i], b[i]), min(a[i], b[i]), rows[i].row))
    return [rows[i] for i in order]


def _lengths(explainer: Any, texts: list[str]) -> list[int]:
    encode = getattr(explainer, "encode", None)
    if encode is None:
        return [len(t) for t in texts]
    out: list[int] = []
    try:
        for s in range(0, len(texts), _LENGTH_CHUNK):
            chunk = [t if t else " " for t in texts[s : s + _LENGTH_CHUNK]]
            out += [int(n) for n in np.asarray(encode(chunk).mask).sum(axis=1)]
    except ROW_FAILURES:  # a text the tokenizer refuses: its row fails on its own later
        return [len(t) for t in texts]
    return out


def drop_duplicate_ids(
    records: list[dict[str, Any]], seen: dict[str, int], check: bool = True
) -> tuple[list[dict[str, Any]], list[RowError]]:
    """Records in row order whose id no earlier row has; the others as ``duplicate_id`` errors
    (``seen``: id → first row, updated). Two input rows are never written under one id."""
    if not check:
        return records, []
    keep: list[dict[str, Any]] = []
    dupes: list[RowError] = []
    for r in records:
        key = str(r["id"])
        first = seen.setdefault(key, r["row"])
        if first != r["row"]:
            reason = f"id {key!r} is also row {first}'s; ids must be unique (--id-column)"
            dupes.append(RowError(r["row"], r["id"], "duplicate_id", reason))
        else:
            keep.append(r)
    return keep, dupes


def split_rows(rows: Sequence[InputRow | RowError]) -> tuple[list[InputRow], list[RowError]]:
    """Separate explainable rows from rows that were already bad when read."""
    good = [r for r in rows if isinstance(r, InputRow)]
    bad = [r for r in rows if isinstance(r, RowError)]
    return good, bad
