"""Explain one batch of rows and turn the results into output records (both engines).

A batch is explained with one ``Explainer.explain`` call. If that call raises an embgrad error
or a ValueError, the rows are retried one at a time so that only the rows that fail alone are
recorded as errors (``explain_failed``); any other exception stops the run (a bug or a
resource problem, and the run can be resumed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import EmbgradError
from ..items import TokenAttribution
from .badrows import InputRow, RowError
from .config import ExplainerLike, RunConfig

ROW_FAILURES: tuple[type[BaseException], ...] = (EmbgradError, ValueError)


def _hotflip(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "position": int(h["position"]),
            "token": str(h["token"]),
            "replacement": str(h["replacement"]),
            "score": float(h["score"]),
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


def _call(explainer: ExplainerLike, rows: Sequence[InputRow], config: RunConfig) -> list[Any]:
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


def _records(rows: Sequence[InputRow], results: list[Any], paired: bool) -> list[dict[str, Any]]:
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
        return _records(rows, _call(explainer, rows, config), paired), []
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


def split_rows(rows: Sequence[InputRow | RowError]) -> tuple[list[InputRow], list[RowError]]:
    """Separate explainable rows from rows that were already bad when read."""
    good = [r for r in rows if isinstance(r, InputRow)]
    bad = [r for r in rows if isinstance(r, RowError)]
    return good, bad
