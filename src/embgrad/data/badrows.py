"""Turn one raw record into an explainable :class:`InputRow` or a :class:`RowError`.

A bad row never stops a run; it is written to ``errors.jsonl`` with its row index, id and a
reason. The kinds (``RowError.kind``):

- ``missing_value``: the row has no value (absent key, null, empty CSV cell) in a column
  that the command uses (text, pair, label or id column);
- ``empty_text``: the text (or pair) is empty or only whitespace;
- ``undecodable``: the bytes are not valid UTF-8 (or the JSON holds lone surrogates);
- ``not_a_string``: the text (or pair) is a number, list, object, ...;
- ``invalid_json`` / ``not_an_object``: a jsonl line that is not a JSON object;
- ``bad_id``: the id column holds true/false, a list or an object (an id is text or a number);
- ``duplicate_id``: an earlier row already has this id (ids are compared as written in the
  output: ``7`` and ``7.0`` are both ``"7"``), so the two rows are never merged;
- ``explain_failed``: the explainer rejected this row alone (its message is the reason).

Text longer than the model's limit is not an error: it is truncated by the explainer and the
row is written with ``truncated = true``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Columns:
    """The input columns a run uses (``text`` required, the others optional)."""

    text: str
    pair: str | None = None
    label: str | None = None
    id: str | None = None
    continuation: str | None = None

    def used(self) -> list[str]:
        """The distinct column names, text first."""
        names = [self.text, self.pair, self.label, self.id, self.continuation]
        return list(dict.fromkeys(n for n in names if n is not None))


#: a value absent from the record (as opposed to present and null)
MISSING: Any = object()


@dataclass(frozen=True)
class InputRow:
    """One explainable row: ``row`` is its 0-based index in the file."""

    row: int
    id: int | str
    text: str
    pair: str | None = None
    label: str | None = None
    continuation: str | None = None


@dataclass(frozen=True)
class RowError:
    """One bad row: written to ``errors.jsonl`` and never to the data shards."""

    row: int
    id: int | str | None
    kind: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "id": self.id, "kind": self.kind, "reason": self.reason}


def _decode(value: Any) -> Any:
    """bytes → str (strict UTF-8; a failure is reported by ``_text``); other values unchanged."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="surrogateescape")
    return value


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar_str(value: Any) -> str:
    """An id or label as text: ints stay ``"3"``, integral floats from CSV-ish sources too."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _Bad(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _text(get: Callable[[str], Any], column: str) -> str:
    value = _decode(get(column))
    if value is MISSING or value is None:
        raise _Bad("missing_value", f"no value in column {column!r}")
    if not isinstance(value, str):
        raise _Bad("not_a_string", f"column {column!r} holds a {type(value).__name__}, not text")
    if not _is_valid_unicode(value):
        raise _Bad("undecodable", f"column {column!r} holds bytes that are not valid UTF-8")
    if not value.strip():
        raise _Bad("empty_text", f"column {column!r} is empty")
    return value


def _scalar(get: Callable[[str], Any], column: str) -> str:
    value = _decode(get(column))
    if value is MISSING or value is None or value == "":
        raise _Bad("missing_value", f"no value in column {column!r}")
    text = _scalar_str(value)
    if not _is_valid_unicode(text):
        raise _Bad("undecodable", f"column {column!r} holds bytes that are not valid UTF-8")
    return text


def _id(get: Callable[[str], Any], column: str) -> str:
    """An id as text: strings as they are, integers (and integral floats, as pandas writes an
    integer column with nulls) in decimal, other numbers as Python writes them; true/false,
    lists and objects are refused (their text would be Python's, and collide)."""
    value = _decode(get(column))
    scalar = isinstance(value, (str, int, float, type(None))) and not isinstance(value, bool)
    if not scalar and value is not MISSING:
        kind = "true/false" if isinstance(value, bool) else f"a {type(value).__name__}"
        raise _Bad("bad_id", f"column {column!r} holds {kind}; an id is text or a number")
    return _scalar(get, column)


def make_row(row: int, get: Callable[[str], Any], columns: Columns) -> InputRow | RowError:
    """Validate one record; ``get(column)`` returns its value or :data:`MISSING`.

    The text is checked first, then the pair, the label and the id: the reason given is the
    first problem found, and the id is reported whenever it could be read.
    """
    row_id: int | str | None = row
    id_problem: _Bad | None = None
    if columns.id is not None:
        try:
            row_id = _id(get, columns.id)
        except _Bad as bad:
            row_id, id_problem = None, bad
    try:
        text = _text(get, columns.text)
        pair = _text(get, columns.pair) if columns.pair is not None else None
        label = _scalar(get, columns.label) if columns.label is not None else None
        cont = _text(get, columns.continuation) if columns.continuation is not None else None
        if id_problem is not None:
            raise id_problem
    except _Bad as bad:
        return RowError(row, row_id, bad.kind, bad.reason)
    return InputRow(row, row if row_id is None else row_id, text, pair, label, cont)


def broken_row(row: int, kind: str, reason: str, columns: Columns) -> RowError:
    """A record that could not be parsed at all (its id is unknown unless it is the index)."""
    return RowError(row, row if columns.id is None else None, kind, reason)
