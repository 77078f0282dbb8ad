"""Terminal heatmap with rich: ``token +0.12`` on coloured backgrounds, at most 100 columns wide;
plain ``token(+0.12)`` text when the output is not a colour terminal (pipes, files, CI logs).
Both show the numbers; headings are shortened (``scale.heading``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import missing_extra
from ..items import TokenAttribution
from .scale import LEGEND, change, heading, ink, normalized, rgb, summary

WIDTH = 100


def _console(console: Any) -> Any:
    try:
        from rich.console import Console
    except ImportError:
        raise missing_extra("rich", "viz") from None
    if console is not None:
        return console
    c = Console(highlight=False)
    return Console(width=WIDTH, highlight=False) if c.width > WIDTH else c


def render_terminal(
    items: Sequence[TokenAttribution],
    *,
    console: Any = None,
    titles: Sequence[str] | None = None,
    quantity: str | None = None,
) -> None:
    """Print every item: a title, a summary line, the token heatmap and its HotFlip swaps."""
    con = _console(console)
    from rich.text import Text

    colour = bool(con.is_terminal and con.color_system)
    for i, item in enumerate(items):
        title = titles[i] if titles is not None else f"[{i + 1}]"
        con.print(Text(heading(title, item), style="bold" if colour else ""), overflow="fold")
        con.print(Text("    " + summary(item, quantity), style="dim" if colour else ""))
        line = Text("    ")
        for tok, s, v in zip(item.tokens, item.scores, normalized(item.scores), strict=True):
            if colour:
                r, g, b = rgb(v)
                line.append(f" {tok} {s:+.3g} ", style=f"{ink(v)} on rgb({r},{g},{b})")
            else:
                line.append(f"{tok}({s:+.3g})")
            line.append(" ")
        con.print(line, overflow="fold")
        for h in item.hotflip:
            con.print(
                Text(
                    f"    hotflip: #{h['position']} {h['token']!r} -> {h['replacement']!r} "
                    f"(verified {change(h.get('verified'))}, est. {change(h.get('estimate'))}, "
                    f"{h.get('direction', '')})"
                ),
                overflow="fold",
            )
        con.print()
    if colour:
        con.print(Text(LEGEND, style="dim"))
