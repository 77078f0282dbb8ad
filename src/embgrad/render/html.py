"""One self-contained HTML report (inline CSS and one small inline script, no network): every
token and text is escaped with :func:`html.escape`, so a token such as ``<script>`` shows as text,
and Unicode's bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE, ...) are shown as visible
marks such as ``⟨U+202E⟩`` instead of reordering the page's text.

Hovering (or focusing) a token shows its score and its HotFlip candidates with their verified
and estimated changes in a tooltip; the script reads them from the token's ``data-score`` and
``data-flips`` (JSON) attributes and writes them with ``textContent`` only (never as HTML).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape as _html_escape
from typing import Any

from ..items import TokenAttribution
from .scale import BLUE, LEGEND, RED, WHITE, change, heading, ink, normalized, rgb, summary

#: Unicode's bidirectional formatting characters: raw, they reorder the text around them
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def visible(text: str) -> str:
    """``text`` with every bidirectional control replaced by a visible mark (``⟨U+202E⟩``)."""
    if not BIDI_CONTROLS.intersection(text):
        return text
    return "".join(f"⟨U+{ord(c):04X}⟩" if c in BIDI_CONTROLS else c for c in text)


def escape(text: str, quote: bool = True) -> str:
    """HTML-escaped, with bidirectional controls made visible (see :func:`visible`)."""
    return _html_escape(visible(text), quote=quote)


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
#tip{position:absolute;display:none;background:#fff;border:1px solid #999;padding:.3em .5em;
 font-size:.85em;white-space:pre;box-shadow:0 2px 6px rgba(0,0,0,.2);pointer-events:none}
""".replace("BLUE", f"rgb{BLUE}")
    .replace("WHITE", f"rgb{WHITE}")
    .replace("RED", f"rgb{RED}")
)


#: the hover tooltip: score and HotFlip candidates of the token under the pointer (or focused)
_SCRIPT = r"""
(function(){
var tip=document.getElementById('tip');
function fmt(x){return x===null?'n/a':(x>=0?'+':'')+x.toFixed(4);}
function show(e){var t=e.target.closest('.tok');if(!t){return;}
var lines=['score '+t.dataset.score];
JSON.parse(t.dataset.flips).forEach(function(h){lines.push('\u2192 '+h.replacement+
': verified '+fmt(h.verified)+' (estimate '+fmt(h.estimate)+', '+h.direction+')');});
tip.textContent=lines.join('\n');var r=t.getBoundingClientRect();
tip.style.left=(window.scrollX+r.left)+'px';tip.style.top=(window.scrollY+r.bottom+4)+'px';
tip.style.display='block';}
function hide(e){if(e.target.closest('.tok')){tip.style.display='none';}}
document.addEventListener('mouseover',show);document.addEventListener('focusin',show);
document.addEventListener('mouseout',hide);document.addEventListener('focusout',hide);
})();
"""


def _flips_at(item: TokenAttribution) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for h in item.hotflip:
        out.setdefault(int(h["position"]), []).append(
            {
                "replacement": str(h["replacement"]),
                "verified": h.get("verified"),
                "estimate": h.get("estimate"),
                "direction": str(h.get("direction", "")),
            }
        )
    return out


def _tokens(item: TokenAttribution) -> str:
    spans = []
    flips = _flips_at(item)
    for j, (tok, s, v) in enumerate(
        zip(item.tokens, item.scores, normalized(item.scores), strict=True)
    ):
        r, g, b = rgb(v)
        data = escape(json.dumps(flips.get(j, []), ensure_ascii=True), quote=True)
        spans.append(
            f'<span class="tok" tabindex="0" style="background:rgb({r},{g},{b});color:{ink(v)}" '
            f'title="score {s:+.6g}" data-score="{s:+.6g}" data-flips="{data}">'
            f"{escape(tok)}</span>"
        )
    return "".join(spans)


def _hotflip(item: TokenAttribution) -> str:
    if not item.hotflip:
        return ""
    rows = "".join(
        f"<tr><td>{h['position']}</td><td>{escape(str(h['token']))}</td>"
        f"<td>{escape(str(h['replacement']))}</td><td>{change(h.get('verified'))}</td>"
        f"<td>{change(h.get('estimate'))}</td></tr>"
        for h in item.hotflip
    )
    direction = escape(str(item.hotflip[0].get("direction", "")))
    return (
        f'<table><caption class="meta">HotFlip, ranked by verified change ({direction})'
        "</caption><tr><th>position</th><th>token</th><th>replacement</th>"
        f"<th>verified change</th><th>estimated change</th></tr>{rows}</table>"
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
        parts.append(f"<section><h2>{escape(heading(head, item))}</h2>")
        parts.append(f'<p class="meta">{escape(summary(item, quantity))}</p>')
        parts.append(f"<div>{_tokens(item)}</div>{_hotflip(item)}</section>")
    parts.append(f'<div id="tip" role="tooltip"></div><script>{_SCRIPT}</script>')
    parts.append("</body></html>")
    return "\n".join(parts)
