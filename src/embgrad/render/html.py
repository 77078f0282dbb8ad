"""One self-contained HTML report (inline CSS, no scripts, no network): every token and text is
escaped with :func:`html.escape`, so a token such as ``<script>`` shows as text."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ..items import TokenAttribution
from .scale import BLUE, LEGEND, RED, WHITE, ink, normalized, rgb, summary

_CSS = (
    """
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.4em 0 .2em}
.meta{color:#555;font-size:.9em;margin:.2em 0 .5em}
.tok{display:inline-block;padding:.1em .3em;margin:.12em;border-radius:.25em;
 font-family:ui-monospace,monospace;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0} td,th{padding:.15em .6em;
 border-bottom:1px solid #eee;text-align:left}
.legend{display:flex;align-items:center;gap:.6em;font-size:.85em;color:#444;margin:1em 0}
.bar{width:16em;height:1em;border:1px solid #ccc;
 background:linear-gradient(to right,BLUE,WHITE,RED)}
""".replace("BLUE", f"rgb{BLUE}")
    .replace("WHITE", f"rgb{WHITE}")
    .replace("RED", f"rgb{RED}")
)


def _tokens(item: TokenAttribution) -> str:
    spans = []
    for tok, s, v in zip(item.tokens, item.scores, normalized(item.scores), strict=True):
        r, g, b = rgb(v)
        spans.append(
            f'<span class="tok" style="background:rgb({r},{g},{b});color:{ink(v)}" '
            f'title="score {s:+.6g}">{escape(tok)}</span>'
        )
    return "".join(spans)


def _hotflip(item: TokenAttribution) -> str:
    if not item.hotflip:
        return ""
    rows = "".join(
        f"<tr><td>{h['position']}</td><td>{escape(str(h['token']))}</td>"
        f"<td>{escape(str(h['replacement']))}</td><td>{h['score']:+.4f}</td></tr>"
        for h in item.hotflip
    )
    return (
        "<table><tr><th>position</th><th>token</th><th>HotFlip replacement</th>"
        f"<th>estimated change</th></tr>{rows}</table>"
    )


def render_html(
    items: Sequence[TokenAttribution],
    *,
    title: str = "embgrad attributions",
    titles: Sequence[str] | None = None,
    quantity: str | None = None,
    subtitle: str = "",
) -> str:
    """The report as one HTML string (write it to a ``.html`` file)."""
    methods = sorted({i.method for i in items})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">method: {escape(", ".join(methods))}'
        + (f" · {escape(subtitle)}" if subtitle else "")
        + "</p>",
        f'<div class="legend"><span>−1</span><span class="bar"></span><span>+1</span>'
        f"<span>{escape(LEGEND)}</span></div>",
    ]
    for i, item in enumerate(items):
        head = titles[i] if titles is not None else f"[{i + 1}]"
        parts.append(f"<section><h2>{escape(head)} {escape(item.text)}</h2>")
        parts.append(f'<p class="meta">{escape(summary(item, quantity))}</p>')
        parts.append(f"<div>{_tokens(item)}</div>{_hotflip(item)}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
