"""The output schema, Parquet metadata, and files written atomically (temp file, then rename).

One output row per explained input row (all columns nullable except ``row``)::

    row               int64          0-based index of the row in the input file
    id                int64|string   the row index, or the --id-column value as a string
    text, pair        string         the input text (and its pair, null without --pair-column)
    target            string         the explained target (--label-column), else null
    value             double         the explained quantity f(x): a pair's cosine
                                     similarity, or log p(target) (what: "quantity" in the
                                     metadata)
    tokens            list<string>   the text's tokens (after truncation)
    scores            list<float>    one score per token
    table_grad_norm   double         L2 norm of the row's per-sample word-table gradient
    delta             double         integrated gradients' completeness delta, else null
    hotflip           list<struct<position: int32, token, replacement: string, estimate,
                      verified: float, direction: string>>  (estimated and measured change
                      of ``loss``; verified null where not run; the ranking direction)
    truncated         bool           the text was longer than the model's limit and was cut
    pair, pair_*      the pair's text and the same six fields for its side (only in runs
                      with --pair-column: single-text runs have no pair columns)

With ``--continuation-column`` the rows hold generation matrices instead (see
:func:`generation_fields`).

The file's key-value metadata ``embgrad`` holds JSON: embgrad's version, the model spec, the
method and its options, what ``value`` is (``quantity``), the zero-shot ``labels`` (or null),
the columns and the input file.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ._deps import require
from .config import RunConfig

METADATA_KEY = b"embgrad"
#: the shards' layout, in the manifest: an output folder is only resumed by a version writing the
#: same (1: the explained quantity in a ``loss`` column; 2: ``value``, with ``quantity`` saying
#: what it is; 3: 2 without the pair columns in single-text runs). Bump it with any change to
#: the columns. Runs with a pair or continuation column still write format 2.
OUTPUT_FORMAT = 3


def output_format(config: RunConfig) -> int:
    """The layout ``config``'s shards have (see :data:`OUTPUT_FORMAT`)."""
    if config.pair_column is not None or config.continuation_column is not None:
        return 2
    return OUTPUT_FORMAT


_SIDE = ("tokens", "scores", "table_grad_norm", "delta", "hotflip", "truncated")


def _side_fields(pa: Any, prefix: str) -> list[Any]:
    hotflip = pa.struct(
        [
            ("position", pa.int32()),
            ("token", pa.string()),
            ("replacement", pa.string()),
            ("estimate", pa.float32()),
            ("verified", pa.float32()),
            ("direction", pa.string()),
        ]
    )
    types = {
        "tokens": pa.list_(pa.string()),
        "scores": pa.list_(pa.float32()),
        "table_grad_norm": pa.float64(),
        "delta": pa.float64(),
        "hotflip": pa.list_(hotflip),
        "truncated": pa.bool_(),
    }
    return [pa.field(prefix + name, types[name]) for name in _SIDE]


def run_metadata(config: RunConfig) -> dict[str, Any]:
    """What goes into every file's ``embgrad`` metadata."""
    return {
        "embgrad_version": __version__,
        "model": config.model or "bundled:all-MiniLM-L6-v2",
        "framework": config.framework,
        "method": config.method,
        "options": dict(config.options),
        "hotflip_k": config.hotflip_k,
        "quantity": config.quantity(),
        "labels": None if config.candidate_labels is None else list(config.candidate_labels),
        "columns": {
            "text": config.text_column,
            "pair": config.pair_column,
            "label": config.label_column,
            "id": config.id_column,
            "continuation": config.continuation_column,
        },
        "data": os.path.abspath(config.data),
    }


def generation_fields(pa: Any, config: RunConfig) -> list[Any]:
    """The columns of a ``--continuation-column`` run: per row its matrix of continuation
    tokens (``generated``, rows) × input tokens (``tokens``, columns) and per-step scores::

        row, id, text, continuation   as above (continuation: the input continuation text)
        tokens         list<string>        the input tokens the columns stand for
        generated      list<string>        the continuation's tokens, one per step
        scores         list<list<float>>   steps × tokens
        quantity, probability, entropy   list<double>   per step (log p, p, entropy in nats)
        delta          list<double>        per-step IG completeness delta, else null
        source_length  int32               encoder–decoders: the source columns, else 0
    """
    return [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string() if config.id_column is not None else pa.int64()),
        pa.field("text", pa.string()),
        pa.field("continuation", pa.string()),
        pa.field("tokens", pa.list_(pa.string())),
        pa.field("generated", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.list_(pa.float32()))),
        pa.field("quantity", pa.list_(pa.float64())),
        pa.field("probability", pa.list_(pa.float64())),
        pa.field("entropy", pa.list_(pa.float64())),
        pa.field("delta", pa.list_(pa.float64())),
        pa.field("source_length", pa.int32()),
    ]


def outputs_fields(pa: Any, config: RunConfig) -> list[Any]:
    """The columns of a run on a token-classification or question-answering head: per row the
    matrix of its explained outputs (``rows``) × its tokens (``tokens``)::

        row, id, text, pair   as above (pair: the context, question answering)
        tokens         list<string>        the tokens the columns stand for
        rows           list<string>        per explained output "token → label" / span parts
        scores         list<list<float>>   outputs × tokens
        quantity, probability   list<double>   per output (log p, p)
        labels         list<string>        token classification: the explained labels
        positions      list<int32>         token classification: the explained positions
        span           list<int32>         question answering: (start, end) token positions
        delta          list<double>        per-output IG completeness delta, else null
        source_length  int32               question answering: the question's columns
    """
    return [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string() if config.id_column is not None else pa.int64()),
        pa.field("text", pa.string()),
        pa.field("pair", pa.string()),
        pa.field("tokens", pa.list_(pa.string())),
        pa.field("rows", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.list_(pa.float32()))),
        pa.field("quantity", pa.list_(pa.float64())),
        pa.field("probability", pa.list_(pa.float64())),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("positions", pa.list_(pa.int32())),
        pa.field("span", pa.list_(pa.int32())),
        pa.field("delta", pa.list_(pa.float64())),
        pa.field("source_length", pa.int32()),
    ]


def output_schema(config: RunConfig) -> Any:
    """The pyarrow schema of the data shards, with the run's metadata attached."""
    pa = require("pyarrow", "data")
    meta = {METADATA_KEY: json.dumps(run_metadata(config), sort_keys=True).encode()}
    if config.continuation_column is not None:
        return pa.schema(generation_fields(pa, config), metadata=meta)
    if config.head is not None:
        return pa.schema(outputs_fields(pa, config), metadata=meta)
    paired = config.pair_column is not None
    fields = [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string() if config.id_column is not None else pa.int64()),
        pa.field("text", pa.string()),
        *([pa.field("pair", pa.string())] if paired else []),
        pa.field("target", pa.string()),
        pa.field("value", pa.float64()),
        *_side_fields(pa, ""),
        *(_side_fields(pa, "pair_") if paired else []),
    ]
    return pa.schema(fields, metadata=meta)


def to_table(records: Sequence[Mapping[str, Any]], schema: Any) -> Any:
    """A pyarrow Table of ``records`` in ``schema`` (metadata kept; keys the schema does not
    have, such as a single-text run's pair fields, are left out)."""
    pa = require("pyarrow", "data")
    return pa.Table.from_pylist(list(records), schema=schema)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported (e.g. Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path(dest: Path, tmp_dir: Path) -> Path:
    # the folders are made once at the start: a folder deleted during a run is not recreated
    return tmp_dir / f"{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def commit_file(tmp: Path, dest: Path) -> None:
    """Rename a finished temp file into place (atomic on one filesystem) and sync the folder."""
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def write_parquet_atomic(table: Any, dest: Path, tmp_dir: Path) -> None:
    """Write ``table`` to ``dest``: a reader sees no file or the whole file, never a part."""
    pq = require("pyarrow.parquet", "data", "pyarrow")
    tmp = _temp_path(dest, tmp_dir)
    try:
        with tmp.open("wb") as stream:
            pq.write_table(table, stream)
            stream.flush()
            os.fsync(stream.fileno())
        commit_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, dest: Path, tmp_dir: Path) -> None:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    tmp = _temp_path(dest, tmp_dir)
    try:
        with tmp.open("w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        commit_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def jsonl(records: Iterable[Mapping[str, Any]]) -> str:
    """Records as JSON lines (non-ASCII kept as is)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
