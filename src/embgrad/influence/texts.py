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


def _records(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "ndjson"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path} line {n + 1} is not JSON: {e.msg}") from None
                if not isinstance(rec, dict):
                    raise InputError(f"{path} line {n + 1} is not a JSON object")
                yield rec
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
    path: str | Path, text: str, pair: str | None = None, label: str | None = None
) -> Examples:
    """Every row of ``path`` (jsonl, csv or parquet) with the given columns, in file order."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file not found: {str(p)!r}")
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[Any] = []
    rows: list[int] = []
    try:
        for n, rec in enumerate(_records(p)):
            for col in (text, pair, label):
                if col is not None and col not in rec:
                    raise InputError(
                        f"{p} row {n}: no column {col!r} (columns: {', '.join(map(str, rec))})"
                    )
            value = rec[text]
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{p} row {n}: column {text!r} is not a non-empty text")
            texts.append(value)
            if pair is not None:
                pairs.append(str(rec[pair]))
            if label is not None:
                labels.append(rec[label])
            rows.append(n)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {p}: {e}") from None
    if not texts:
        raise InputError(f"{p} has no rows")
    return Examples(texts, pairs if pair else None, labels if label else None, rows)


def label2id(model: Any) -> dict[str, int]:
    """The model config's label names → class ids (empty when it has none)."""
    config = getattr(model, "config", None)
    mapping = getattr(config, "label2id", None) or {}
    return {str(k): int(v) for k, v in mapping.items()}


def id2label(model: Any) -> dict[int, str]:
    config = getattr(model, "config", None)
    mapping = getattr(config, "id2label", None) or {}
    return {int(k): str(v) for k, v in mapping.items()}


def label_ids(values: Sequence[Any], model: Any) -> np.ndarray:
    """Labels as class ids: label names from the config's label2id, or integers."""
    names = label2id(model)
    n_cls = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
    out = []
    for v in values:
        if isinstance(v, str) and v in names:
            out.append(names[v])
            continue
        try:
            i = int(v)
        except (TypeError, ValueError):
            raise InputError(
                f"label {v!r} is neither a label of the model ({', '.join(names) or 'none'}) "
                "nor a class index"
            ) from None
        if n_cls and not 0 <= i < n_cls:
            raise InputError(f"label {v!r} is out of range: the model has {n_cls} classes")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


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
