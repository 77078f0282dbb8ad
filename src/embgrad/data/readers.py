"""Read jsonl, csv and parquet files as validated rows, each with a stable row index.

The row index is the record's 0-based position in the file, the same index pandas gives
(``read_json(lines=True)``, ``read_csv``, ``read_parquet``): blank lines are skipped and not
counted. Bytes are decoded per row, so one undecodable row is one bad row, not a failed file.
The parsers take byte streams (a file, or a Ray ``read_binary_files`` buffer) so that the local
and the Ray engines read identically.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import InputError
from ._deps import require
from .badrows import MISSING, Columns, InputRow, RowError, broken_row, make_row

FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_DELIMITERS = {"csv": ",", "tsv": "\t"}
#: jsonl lines scanned for the column check (a column absent from all of them stops the run)
SCAN_ROWS = 1000
Row = InputRow | RowError


def detect_format(path: Path) -> str:
    """The reader for ``path``'s suffix; InputError naming the supported suffixes."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot tell the format of {str(path)!r} from its suffix; "
            f"supported: {', '.join(FORMATS)}"
        )
    return fmt


# -- jsonl ------------------------------------------------------------------------------


def _json_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The non-blank lines (a UTF-8 byte-order mark at the start is dropped)."""
    first = True
    for line in stream:
        if first:
            line, first = line.removeprefix(b"\xef\xbb\xbf"), False
        if line.strip():
            yield line


def parse_jsonl(stream: IO[bytes], columns: Columns) -> Iterator[Row]:
    """Rows of a jsonl byte stream, one per non-blank line."""
    for row, line in enumerate(_json_lines(stream)):
        text = line.decode("utf-8", errors="surrogateescape")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield broken_row(row, "invalid_json", f"invalid JSON: {exc.msg}", columns)
            continue
        if not isinstance(record, dict):
            kind = type(record).__name__
            yield broken_row(row, "not_an_object", f"a JSON {kind}, not an object", columns)
            continue
        yield make_row(row, functools.partial(_dict_get, record), columns)


def _dict_get(record: dict[str, Any], column: str) -> Any:
    return record.get(column, MISSING)


def _jsonl_keys(path: Path) -> tuple[set[str], int]:
    keys: set[str] = set()
    seen = 0
    with path.open("rb") as stream:
        for line in _json_lines(stream):
            if seen >= SCAN_ROWS:
                break
            seen += 1
            with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
                record = json.loads(line)
                if isinstance(record, dict):
                    keys.update(record)
    return keys, seen


# -- csv --------------------------------------------------------------------------------


@contextlib.contextmanager
def _csv_field_limit() -> Iterator[None]:
    """Lift the csv module's 128 KiB field limit while reading (restored after)."""
    old = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_records(stream: IO[bytes], delimiter: str) -> Iterator[list[str]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        with _csv_field_limit():
            for record in csv.reader(text, delimiter=delimiter):
                if record:
                    yield record
    finally:
        text.detach()


def parse_csv(stream: IO[bytes], columns: Columns, fmt: str = "csv") -> Iterator[Row]:
    """Rows of a csv (or tsv) byte stream with a header line; empty cells are missing."""
    records = _csv_records(stream, _DELIMITERS[fmt])
    header = next(records, None)
    if header is None:
        return
    where = {name: i for i, name in enumerate(header)}

    def getter(record: list[str]) -> Any:
        def get(column: str) -> Any:
            i = where.get(column)
            return record[i] if i is not None and i < len(record) else MISSING

        return get

    for row, record in enumerate(records):
        yield make_row(row, getter(record), columns)


def _csv_header(path: Path, fmt: str) -> list[str]:
    with path.open("rb") as stream:
        return next(_csv_records(stream, _DELIMITERS[fmt]), [])


# -- parquet ----------------------------------------------------------------------------


def _as_bytes(column: Any) -> Any:
    """View string columns as binary, so that invalid UTF-8 fails per row, not per batch."""
    pa = require("pyarrow", "data")
    if pa.types.is_string(column.type):
        return column.cast(pa.binary())
    if pa.types.is_large_string(column.type):
        return column.cast(pa.large_binary())
    return column


def rows_from_table(table: Any, columns: Columns, row_index: Sequence[int]) -> Iterator[Row]:
    """Rows of a pyarrow Table (or RecordBatch) holding the used columns; ``row_index[i]`` is
    row i's index in the file."""
    names = set(table.schema.names)
    values = {c: _as_bytes(table.column(c)).to_pylist() for c in columns.used() if c in names}
    for i, row in enumerate(row_index):
        yield make_row(row, functools.partial(_column_get, values, i), columns)


def _column_get(values: dict[str, list[Any]], i: int, column: str) -> Any:
    return values[column][i] if column in values else MISSING


def parse_parquet(source: Any, columns: Columns, batch_rows: int = 4096) -> Iterator[Row]:
    """Rows of a Parquet file (a path or a readable buffer)."""
    pq = require("pyarrow.parquet", "data", "pyarrow")
    file = pq.ParquetFile(source)
    present = [c for c in columns.used() if c in file.schema_arrow.names]
    start = 0
    for batch in file.iter_batches(batch_size=batch_rows, columns=present):
        yield from rows_from_table(batch, columns, range(start, start + batch.num_rows))
        start += batch.num_rows


# -- one input file ---------------------------------------------------------------------


def parse_bytes(stream: IO[bytes], fmt: str, columns: Columns) -> Iterator[Row]:
    """Rows of an open byte stream in format ``fmt``."""
    if fmt == "jsonl":
        return parse_jsonl(stream, columns)
    if fmt in _DELIMITERS:
        return parse_csv(stream, columns, fmt)
    return parse_parquet(stream, columns)


#: bytes read at the start of a text file to recognise an encoding or layout it cannot be
SNIFF_BYTES = 1 << 16


def _sniff(path: Path, fmt: str) -> None:
    """InputError for a text file embgrad would misread: UTF-16/32, a JSON array in a
    ``.json`` file, lines ending in CR only (jsonl)."""
    with path.open("rb") as stream:
        head = stream.read(SNIFF_BYTES)
    shown = repr(str(path))
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (
        len(head) >= 4 and head.count(b"\x00") * 4 >= len(head)
    ):
        raise InputError(
            f"--data {shown} is UTF-16 (or UTF-32) encoded; embgrad reads UTF-8: convert it, "
            f"e.g. iconv -f UTF-16 -t UTF-8 {path} > {path.stem}-utf8{path.suffix}"
        )
    if fmt != "jsonl":
        return
    body = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if body.startswith(b"[") and path.suffix.lower() == ".json":
        raise InputError(
            f"--data {shown} holds a JSON array; embgrad reads JSON Lines (one object per "
            f"line): convert it, e.g. jq -c '.[]' {path} > {path.stem}.jsonl"
        )
    if b"\r" in head and b"\n" not in head:
        raise InputError(
            f"--data {shown} has lines ending in CR only (old Mac line endings); JSON Lines "
            f"need LF: convert it, e.g. tr '\\r' '\\n' < {path} > {path.stem}-lf{path.suffix}"
        )


class Source:
    """An input file: format, column check, row count, rows and a content fingerprint."""

    def __init__(self, path: Path | str, columns: Columns) -> None:
        self.path = Path(path)
        self.columns = columns
        shown = repr(str(self.path))
        if not self.path.exists():
            raise InputError(f"--data {shown}: no such file")
        if self.path.is_dir():
            raise InputError(f"--data {shown} is a folder; give one data file")
        if not self.path.is_file():
            raise InputError(
                f"--data {shown} is not a regular file (a pipe, socket or device): a run reads "
                "its input more than once (to check and count it, then to explain it, and again "
                "on resume), so save it to a file first"
            )
        self.fmt = detect_format(self.path)
        if self.fmt != "parquet":
            _sniff(self.path, self.fmt)

    def available_columns(self) -> tuple[list[str], str]:
        """The column names the file has, and where they were seen (for messages)."""
        if self.fmt == "jsonl":
            keys, seen = _jsonl_keys(self.path)
            return sorted(keys), f"the first {seen} lines"
        if self.fmt in _DELIMITERS:
            return _csv_header(self.path, self.fmt), "the header line"
        pq = require("pyarrow.parquet", "data", "pyarrow")
        return list(pq.read_schema(self.path).names), "the schema"

    def check_columns(self) -> None:
        """InputError when a used column is absent from the whole file."""
        have, where = self.available_columns()
        if not have and self.fmt != "parquet" and where in ("the first 0 lines", "the header line"):
            self.no_rows()
        missing = [c for c in self.columns.used() if c not in have]
        if missing:
            shown = ", ".join(repr(c) for c in have[:20]) or "none"
            raise InputError(
                f"column {', '.join(repr(c) for c in missing)} not found in "
                f"{str(self.path)!r} ({where} have: {shown})"
            )

    def no_rows(self) -> None:
        """InputError: the file has no rows (says so for a file of blank lines)."""
        blank = self.path.stat().st_size > 0
        raise InputError(
            f"--data {str(self.path)!r} has no rows" + (" (blank lines only)" if blank else "")
        )

    def count(self) -> int:
        """Rows in the file, counted as the parsers count them."""
        if self.fmt == "parquet":
            pq = require("pyarrow.parquet", "data", "pyarrow")
            return int(pq.ParquetFile(self.path).metadata.num_rows)
        with self.path.open("rb") as stream:
            if self.fmt == "jsonl":
                return sum(1 for _ in _json_lines(stream))
            return max(0, sum(1 for _ in _csv_records(stream, _DELIMITERS[self.fmt])) - 1)

    def rows(self) -> Iterator[Row]:
        """Every row in file order."""
        with self.path.open("rb") as stream:
            yield from parse_bytes(stream, self.fmt, self.columns)

    def fingerprint(self) -> dict[str, Any]:
        """Size and SHA-256 of the whole file: a run is resumed only on the very same bytes
        (any edit, anywhere, is a different input). About 0.5 s per GB read from the page
        cache on one core (``benchmarks/RESULTS-data.md``)."""
        with self.path.open("rb") as stream:
            st = os.fstat(stream.fileno())
            digest = hashlib.sha256()
            for chunk in iter(lambda: stream.read(1 << 20), b""):  # file_digest is 3.11+
                digest.update(chunk)
        self.stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        return {"format": self.fmt, "size": st.st_size, "sha256": digest.hexdigest()}

    def unchanged(self) -> bool:
        """Whether the file still has the size, modification time and inode it had when
        :meth:`fingerprint` hashed it (checked at every commit, so an edit during a run stops
        it rather than mixing rows of two files)."""
        stamp = getattr(self, "stamp", None)
        if stamp is None:
            return True
        try:
            st = self.path.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns, st.st_ino) == stamp
