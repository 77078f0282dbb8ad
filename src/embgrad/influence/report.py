"""Influence reports: terminal, HTML (shared tokens highlighted by contribution), JSON, Parquet.

Records are plain dicts (built by the CLI); every text and token is escaped with
:func:`html.escape` in the HTML, which is self-contained (inline CSS, no script, no network).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from ..errors import InputError, missing_extra
from ..render.scale import BLUE, RED, WHITE, ink, rgb

FORMATS = ("terminal", "html", "json", "parquet")
FILES = {"html": "{}.html", "json": "{}.json", "parquet": "{}.parquet"}

_CSS = (
    """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.6em 0 .3em}
.meta{color:#555;font-size:.9em} .text{font-size:1em;margin:.2em 0 .6em}
table{border-collapse:collapse;font-size:.9em;margin:.3em 0 1em;width:100%}
td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.num{font-family:ui-monospace,monospace;white-space:nowrap}
.hl{border-radius:.2em;padding:0 .1em}
.legend{font-size:.85em;color:#444;margin:1em 0}
.bar{display:inline-block;width:12em;height:.9em;border:1px solid #ccc;vertical-align:middle;
 background:linear-gradient(to right,BLUE,WHITE,RED)}
""".replace("BLUE", f"rgb{BLUE}")
    .replace("WHITE", f"rgb{WHITE}")
    .replace("RED", f"rgb{RED}")
)

#: (text, {token id: contribution}) → HTML of the text with those tokens highlighted
Highlighter = Callable[[str, dict[int, float]], str]


def check_outputs(formats: Sequence[str], folder: str | Path, stem: str, overwrite: bool) -> None:
    """Refuse (before any work) an --out that is a file or files that exist."""
    out = Path(folder)
    files = [out / FILES[f].format(stem) for f in formats if f in FILES]
    if files and out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is an existing file; --out names a folder")
    existing = [str(f) for f in files if f.exists()]
    if existing and not overwrite:
        raise InputError(
            f"{', '.join(map(repr, existing))} exist(s); pass --overwrite to replace, or choose "
            "another --out folder"
        )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def highlight(tokenizer: Any) -> Highlighter:
    """Marks the tokens of a text found in ``contributions`` (by id), coloured by their share
    of the largest |contribution|, using the tokenizer's character offsets."""

    def mark(text: str, contributions: dict[int, float]) -> str:
        top = max((abs(v) for v in contributions.values()), default=0.0)
        try:
            enc = tokenizer(text, return_offsets_mapping=True, truncation=True)
            spans = list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
        except (TypeError, ValueError, KeyError, NotImplementedError):
            return escape(text)
        out, at = [], 0
        for tid, (a, b) in spans:
            if b <= a or a < at or int(tid) not in contributions or top == 0:
                continue
            v = contributions[int(tid)] / top
            r, g, bl = rgb(v)
            out.append(escape(text[at:a]))
            out.append(
                f'<span class="hl" style="background:rgb({r},{g},{bl});color:{ink(v)}" '
                f'title="{contributions[int(tid)]:+.4g}">{escape(text[a:b])}</span>'
            )
            at = b
        out.append(escape(text[at:]))
        return "".join(out)

    return mark


def _page(title: str, meta: str, body: list[str]) -> bytes:
    legend = (
        '<p class="legend">shared tokens: <span class="bar"></span> contribution / largest '
        "|contribution| of the row: blue negative, red positive</p>"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class='meta'>{escape(meta)}</p>{legend}"
        + "".join(body)
        + "</body></html>"
    ).encode()


def _label(x: Any) -> str:
    return "" if x is None else str(x)


def query_html(records: list[dict[str, Any]], meta: str, mark: Highlighter) -> bytes:
    body = []
    for rec in records:
        body.append(
            f"<h2>test {rec['test'] + 1} · label {escape(_label(rec['label']))}</h2>"
            f"<p class='text'>{escape(rec['text'])}</p>"
        )
        for kind in ("proponents", "opponents"):
            rows = rec[kind]
            body.append(f"<p class='meta'>{kind} ({len(rows)})</p>")
            if not rows:
                continue
            body.append("<table><tr><th>score</th><th>label</th><th>training text</th></tr>")
            for r in rows:
                contrib = {int(t["id"]): float(t["contribution"]) for t in r["tokens"]}
                body.append(
                    f"<tr><td class='num'>{r['score']:+.4g}</td>"
                    f"<td>{escape(_label(r['label']))}</td>"
                    f"<td>{mark(r['text'], contrib)}</td></tr>"
                )
            body.append("</table>")
    return _page("Training examples that drove these predictions", meta, body)


def self_html(records: list[dict[str, Any]], meta: str) -> bytes:
    body = ["<table><tr><th>rank</th><th>self-influence</th><th>label</th><th>text</th></tr>"]
    for r in records:
        body.append(
            f"<tr><td class='num'>{r['rank']}</td><td class='num'>{r['score']:.4g}</td>"
            f"<td>{escape(_label(r['label']))}</td><td>{escape(r['text'])}</td></tr>"
        )
    body.append("</table>")
    return _page("Most self-influential training examples (mislabel candidates)", meta, body)


def _short(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def query_terminal(records: list[dict[str, Any]]) -> str:
    lines = []
    for rec in records:
        lines.append(f"[{rec['test'] + 1}] {_short(rec['text'])}  (label {_label(rec['label'])})")
        for kind, sign in (("proponents", "+"), ("opponents", "-")):
            lines.append(f"  {kind}:" if rec[kind] else f"  {kind}: none")
            for r in rec[kind]:
                shared = ", ".join(
                    f"{t['token']} {t['contribution']:+.3g}" for t in r["tokens"][:4]
                )
                lines.append(
                    f"    {sign} {r['score']:+.4g}  [{_label(r['label'])}] {_short(r['text'], 70)}"
                    + (f"  (shared: {shared})" if shared else "")
                )
    return "\n".join(lines)


def self_terminal(records: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{r['rank']:>4}  {r['score']:.4g}  [{_label(r['label'])}] {_short(r['text'], 80)}"
        for r in records
    )


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as e:
        raise missing_extra("pyarrow", "data") from e
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return bytes(sink.getvalue().to_pybytes())


def save(
    formats: Sequence[str],
    folder: str | Path,
    stem: str,
    *,
    html: Callable[[], bytes],
    records: Any,
    table: Callable[[], list[dict[str, Any]]],
    terminal: Callable[[], str],
) -> list[Path]:
    """Print the terminal view and write the other formats into ``folder``."""
    written = []
    if "terminal" in formats:
        print(terminal())
    for fmt in formats:
        if fmt not in FILES:
            continue
        path = Path(folder) / FILES[fmt].format(stem)
        if fmt == "html":
            data = html()
        elif fmt == "json":
            data = json.dumps(records, indent=1, ensure_ascii=False).encode()
        else:
            data = _parquet(table())
        try:
            _write(path, data)
        except OSError as e:
            raise InputError(f"cannot write {path}: {e.strerror or e}") from None
        written.append(path)
    return written
