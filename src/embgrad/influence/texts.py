"""Texts for the command line: data files → examples (text, pair, label), labels → class ids,
texts → the model's tokenized batches (in file order, so example j is the file's row j)."""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import ops_for
from ..errors import InputError, missing_extra
from ..models.encode import LAYOUTS, tokenize
from ..models.load import Loaded
from ..tasks.heads import first_array

READERS = ("jsonl", "csv", "parquet")


@dataclass
class Examples:
    """Rows of a data file: texts, optional partners, optional raw labels, file rows."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any] | None
    rows: list[int]


def _records(path: Path) -> Iterator[dict[str, Any] | str]:
    """Each record of the file, or a string saying why a line is not one."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "ndjson"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"line {n + 1} is not JSON: {e.msg}"
                    continue
                yield rec if isinstance(rec, dict) else f"line {n + 1} is not a JSON object"
    elif suffix in ("csv", "tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f, delimiter="\t" if suffix == "tsv" else ",")
    elif suffix == "parquet":
        try:
            pq = importlib.import_module("pyarrow.parquet")
        except ImportError as e:
            raise missing_extra("pyarrow", "data") from e
        yield from pq.read_table(path).to_pylist()
    else:
        raise InputError(f"{path}: unknown data format; use one of .{', .'.join(READERS)}")


def read_examples(
    path: str | Path,
    text: str,
    pair: str | None = None,
    label: str | None = None,
    *,
    errors: list[dict[str, Any]] | None = None,
) -> Examples:
    """Every row of ``path`` (jsonl, csv or parquet) with the given columns, in file order.

    A column missing from the first row is an InputError (it fails for every row). A bad row
    (not a JSON object, a missing or empty text, a missing value) is an InputError too, or,
    with ``errors`` given, appended there as ``{"row", "error"}`` and left out."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file not found: {str(p)!r}")
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[Any] = []
    rows: list[int] = []
    wanted = [c for c in (text, pair, label) if c is not None]

    def bad(n: int, why: str) -> None:
        if errors is None:
            raise InputError(f"{p} row {n}: {why}")
        errors.append({"row": n, "error": why})

    try:
        for n, rec in enumerate(_records(p)):
            if isinstance(rec, str):
                bad(n, rec)
                continue
            missing = [c for c in wanted if c not in rec or rec[c] is None]
            if missing and n == 0 and any(c not in rec for c in missing):
                raise InputError(
                    f"{p}: no column {missing[0]!r} (columns: {', '.join(map(str, rec))})"
                )
            if missing:
                bad(n, f"no value in column {missing[0]!r}")
                continue
            value = rec[text]
            if not isinstance(value, str) or not value.strip():
                bad(n, f"column {text!r} is not a non-empty text")
                continue
            texts.append(value)
            if pair is not None:
                pairs.append(str(rec[pair]))
            if label is not None:
                labels.append(rec[label])
            rows.append(n)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {p}: {e}") from None
    if not texts:
        why = f" (row {errors[0]['row']}: {errors[0]['error']})" if errors else ""
        raise InputError(f"{p} has no usable rows{why}")
    return Examples(texts, pairs if pair else None, labels if label else None, rows)


def label2id(model: Any) -> dict[str, int]:
    """The model config's label names → class ids (empty when it has none)."""
    config = getattr(model, "config", None)
    mapping = getattr(config, "label2id", None) or {}
    return {str(k): int(v) for k, v in mapping.items()}


def label_id(value: Any, model: Any) -> int:
    """One label as a class id: a name from the config's label2id, or an integer in range."""
    names = label2id(model)
    n_cls = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
    if isinstance(value, str) and value in names:
        return names[value]
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise InputError(
            f"label {value!r} is neither a label of the model ({', '.join(names) or 'none'}) "
            "nor a class index"
        ) from None
    if n_cls and not 0 <= i < n_cls:
        raise InputError(f"label {value!r} is out of range: the model has {n_cls} classes")
    return i


def label_ids(values: Sequence[Any], model: Any) -> np.ndarray:
    """Labels as class ids (:func:`label_id` each)."""
    return np.asarray([label_id(v, model) for v in values], dtype=np.int64)


def keep_labelled(ex: Examples, model: Any, errors: list[dict[str, Any]]) -> np.ndarray | None:
    """The class ids of ``ex``'s labels; rows whose label is bad go to ``errors`` and out of
    ``ex`` (in place)."""
    if ex.labels is None:
        return None
    ids, keep = [], []
    for k, v in enumerate(ex.labels):
        try:
            ids.append(label_id(v, model))
            keep.append(k)
        except InputError as e:
            errors.append({"row": ex.rows[k], "error": str(e)})
    ex.texts = [ex.texts[k] for k in keep]
    ex.pairs = None if ex.pairs is None else [ex.pairs[k] for k in keep]
    ex.labels = [ex.labels[k] for k in keep]
    ex.rows = [ex.rows[k] for k in keep]
    if not ex.texts:
        first = errors[-1]
        raise InputError(f"no row has a usable label (row {first['row']}: {first['error']})")
    return np.asarray(ids, dtype=np.int64)


class TextBatches:
    """The model's native inputs for ``texts`` (and partners), ``batch_size`` at a time,
    tokenized as iterated; ``n_examples`` says how many (for labels checks and the bar)."""

    def __init__(
        self,
        loaded: Loaded,
        texts: list[str],
        pairs: list[str] | None,
        batch_size: int,
        framework: str,
    ) -> None:
        if loaded.tokenizer is None:
            raise InputError("the influence CLI needs a model with an HF tokenizer")
        self.loaded, self.texts, self.pairs = loaded, texts, pairs
        self.batch_size, self.framework = batch_size, framework
        self.n_examples = len(texts)

    def __iter__(self) -> Iterator[Any]:
        tok, size = self.loaded.tokenizer, self.batch_size
        for lo in range(0, len(self.texts), size):
            chunk = self.texts[lo : lo + size]
            if self.pairs is None:
                enc, truncated = tokenize(tok, chunk, self.loaded.max_length)
            else:
                enc = dict(
                    tok(
                        chunk, self.pairs[lo : lo + size], padding=True, truncation=True,
                        max_length=self.loaded.max_length, return_tensors="np",
                    )
                )  # fmt: skip
                truncated = [False] * len(chunk)
            yield LAYOUTS[self.framework](self.loaded.model, enc, truncated).inputs


class Predicted:
    """Cross-entropy against the class each example is first predicted as (the first
    checkpoint's prediction: checkpoints run in order for every batch)."""

    def __init__(self) -> None:
        self.labels: dict[int, int] = {}

    def __call__(self, outputs: Any, rows: np.ndarray) -> Any:
        logits = first_array(outputs, "logits")
        ops = ops_for(logits)
        new = [int(r) for r in rows if int(r) not in self.labels]
        if new:
            arg = ops.to_numpy(logits).argmax(-1)
            for k, r in enumerate(rows):
                self.labels.setdefault(int(r), int(arg[k]))
        pick = np.asarray([self.labels[int(r)] for r in rows], dtype=np.int64)
        return -ops.log_softmax_pick(logits, pick)
