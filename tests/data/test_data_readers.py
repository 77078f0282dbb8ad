"""Readers: every format gives pandas' row index, bad bytes and values fail per row, and a
column missing from the whole file stops the run with the columns the file does have."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from embgrad.data.badrows import Columns, InputRow, RowError
from embgrad.data.readers import Source
from embgrad.errors import InputError

TEXT = Columns("text")


def _rows(path: Path, columns: Columns = TEXT) -> list[InputRow | RowError]:
    return list(Source(path, columns).rows())


def _kinds(rows: list[InputRow | RowError]) -> dict[int, str]:
    return {r.row: (r.kind if isinstance(r, RowError) else "ok") for r in rows}


def test_jsonl_bad_rows_fail_alone_and_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        b'{"text": "fine one"}',
        b"",
        b"   ",
        b'{"text": "bad \xff bytes"}',
        b'{"text": ""}',
        b'{"text": "  "}',
        b'{"other": 1}',
        b'{"text": null}',
        b'{"text": 12}',
        b"not json",
        b"[1, 2]",
        b'{"text": "lone \\ud800 surrogate"}',
        b'{"text": "fine two \xc3\xa9"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    rows = _rows(path)
    assert _kinds(rows) == {
        0: "ok",
        1: "undecodable",
        2: "empty_text",
        3: "empty_text",
        4: "missing_value",
        5: "missing_value",
        6: "not_a_string",
        7: "invalid_json",
        8: "not_an_object",
        9: "undecodable",
        10: "ok",
    }
    assert rows[10] == InputRow(10, 10, "fine two é")
    assert Source(path, TEXT).count() == 11


def test_jsonl_row_index_is_pandas_index_and_a_bom_is_dropped(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c"}\n', encoding="utf-8-sig")
    frame = pd.read_json(path, lines=True, encoding="utf-8-sig")
    assert [(r.row, r.text) for r in _rows(path)] == list(frame["text"].items())


def test_csv_quoted_newlines_bom_short_rows_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    body = (
        b"\xef\xbb\xbfid,text,label\r\n"
        b'a,"two\nlines",pos\r\n'
        b"\r\n"
        b"b,bad \xff,neg\r\n"
        b"c,,neg\r\n"
        b"d\r\n"
        b'e,"ok, with comma",\r\n'
        b"f,last,pos\r\n"
    )
    path.write_bytes(body)
    cols = Columns("text", label="label", id="id")
    rows = _rows(path, cols)
    assert _kinds(rows) == {
        0: "ok",
        1: "undecodable",
        2: "empty_text",
        3: "missing_value",
        4: "missing_value",
        5: "ok",
    }
    assert rows[0] == InputRow(0, "a", "two\nlines", None, "pos")
    assert isinstance(rows[4], RowError) and rows[4].id == "e" and "label" in rows[4].reason
    assert rows[5] == InputRow(5, "f", "last", None, "pos")
    assert Source(path, cols).count() == 6
    pd = pytest.importorskip("pandas")
    assert len(pd.read_csv(path, encoding_errors="replace")) == 6  # pandas fails outright without


def test_tsv_and_csv_fields_longer_than_the_csv_module_limit(tmp_path: Path) -> None:
    long = "word " * 40_000
    path = tmp_path / "in.tsv"
    path.write_text(f"text\tpair\n{long}\tshort\n", encoding="utf-8")
    limit = csv.field_size_limit()
    rows = _rows(path, Columns("text", pair="pair"))
    assert rows == [InputRow(0, 0, long, "short")]
    assert csv.field_size_limit() == limit


def test_parquet_rows_types_and_invalid_utf8(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    text = pa.array([b"ok", b"bad \xff", None, b"fine"], pa.binary()).view(pa.string())
    table = pa.table({"text": text, "n": [10, 11, 12, 13], "label": [1, 0, 1, None]})
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=2)
    rows = _rows(path, Columns("text", id="n"))
    assert _kinds(rows) == {0: "ok", 1: "undecodable", 2: "missing_value", 3: "ok"}
    assert rows[0] == InputRow(0, "10", "ok") and rows[3] == InputRow(3, "13", "fine")
    labelled = _rows(path, Columns("text", label="label"))
    assert labelled[0] == InputRow(0, 0, "ok", None, "1")
    assert _kinds(labelled)[3] == "missing_value"
    assert Source(path, TEXT).count() == 4


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_missing_column_stops_with_the_columns_the_file_has(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"in{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"sentence": "a", "y": 1}) + "\n", encoding="utf-8")
    elif suffix == ".csv":
        path.write_text("sentence,y\na,1\n", encoding="utf-8")
    else:
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.table({"sentence": ["a"], "y": [1]}), path)
    with pytest.raises(InputError, match=r"column 'text' not found.*'sentence', 'y'"):
        Source(path, TEXT).check_columns()
    Source(path, Columns("sentence", label="y")).check_columns()


def test_unknown_suffix_and_missing_file_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "in.xlsx").write_text("x")
    with pytest.raises(InputError, match=r"\.jsonl.*\.csv.*\.parquet"):
        Source(tmp_path / "in.xlsx", TEXT)
    with pytest.raises(InputError, match="no such file"):
        Source(tmp_path / "nope.jsonl", TEXT)


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n', encoding="utf-8")
    before = Source(path, TEXT).fingerprint()
    path.write_text('{"text": "b"}\n', encoding="utf-8")
    assert Source(path, TEXT).fingerprint() != before
