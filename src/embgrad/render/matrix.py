"""The views of generation attributions (:class:`~embgrad.items.StepAttribution`): one matrix
per generation — generated tokens (rows) × input tokens (columns) — as self-contained HTML
(escaped, no scripts), a PNG heatmap (matplotlib), a terminal list (for each generated token
its top input tokens) and JSON. Colours are per row: score / max |score| of that step."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import InputError, missing_extra
from ..items import StepAttribution
from .scale import ink, normalized, rgb

LEGEND = (
    "colour = score / max |score| of each generated token: blue negative, white 0, red positive"
)
FILES = {"html": "report.html", "json": "attributions.json", "png": "heatmap.png"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.4em 0 .2em}
.meta{color:#555;font-size:.9em} table{border-collapse:collapse;font-size:.8em}
td,th{padding:.1em .3em;border:1px solid #eee;font-family:ui-monospace,monospace}
th.c{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal}
td.s{color:#555;text-align:right} .src{border-right:2px solid #888}
"""


def _summary(item: StepAttribution) -> str:
    parts = [f"method {item.method}", f"{len(item.generated)} generated tokens"]
    if item.delta:
        parts.append(f"max IG delta {max(item.delta):.2e}")
    return " · ".join(parts)


def _table(item: StepAttribution) -> str:
    names = list(item.step_scores)
    src = item.source_length
    head = "".join(
        f'<th class="c{" src" if j == src - 1 else ""}">{escape(t)}</th>'
        for j, t in enumerate(item.tokens)
    )
    rows = [f"<tr><th></th>{head}" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"]
    for k, gen in enumerate(item.generated):
        cells = []
        for j, (s, v) in enumerate(zip(item.scores[k], normalized(item.scores[k]), strict=True)):
            r, g, b = rgb(v)
            side = " src" if j == src - 1 else ""
            cells.append(
                f'<td class="{side.strip()}" style="background:rgb({r},{g},{b});color:{ink(v)}" '
                f'title="{escape(gen)} ← {escape(item.tokens[j])}: {s:+.6g}">&nbsp;</td>'
            )
        extra = "".join(f'<td class="s">{item.step_scores[n][k]:.3g}</td>' for n in names)
        rows.append(f"<tr><th>{escape(gen)}</th>{''.join(cells)}{extra}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def to_html(items: Sequence[StepAttribution], *, title: str = "embgrad generation") -> str:
    """One HTML page: per generation a heading (the prompt), a summary and the matrix."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(LEGEND)}; rows: generated tokens, columns: input tokens</p>',
    ]
    for i, item in enumerate(items):
        parts.append(f"<section><h2>[{i + 1}] {escape(item.text)}</h2>")
        parts.append(f'<p class="meta">{escape(_summary(item))}</p>{_table(item)}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def to_json(items: Sequence[StepAttribution], meta: dict[str, Any] | None = None) -> str:
    """``{"embgrad_version", ...meta, "items": [StepAttribution as dict, ...]}``."""
    doc = {"embgrad_version": __version__, **(meta or {}), "items": [i.to_dict() for i in items]}
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)


def figure(items: Sequence[StepAttribution]) -> Any:
    """A matplotlib Figure: one heatmap per generation, rows normalized like the HTML."""
    from .png import _quiet

    with _quiet():
        return _figure(items)


def _figure(items: Sequence[StepAttribution]) -> Any:
    try:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_extra("matplotlib", "viz") from None
    if not items:
        raise InputError("nothing to plot: no generations")
    heights = [max(1.5, 0.25 * len(it.generated) + 1.2) for it in items]
    width = max(6.0, 0.25 * max(len(it.tokens) for it in items) + 2.5)
    fig = Figure(figsize=(width, sum(heights) + 0.3 * len(items)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(items), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, item in zip(axes, items, strict=True):
        m = np.array([normalized(row) for row in item.scores], dtype=float).reshape(
            len(item.generated), len(item.tokens)
        )
        ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(item.tokens)), item.tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(item.generated)), item.generated, fontsize=7)
        if item.source_length:
            ax.axvline(item.source_length - 0.5, color="black", linewidth=1)
        ax.set_title(item.text[:120], fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def save(items: Sequence[StepAttribution], fmt: str, path: str | Path, **meta: Any) -> Path:
    """Write the ``"html"``, ``"json"`` or ``"png"`` view to ``path``."""
    p = Path(path)
    if fmt == "png":
        from .png import _quiet

        fig = figure(items)
        with _quiet():
            fig.savefig(p, dpi=110)
    elif fmt == "html":
        p.write_text(to_html(items), encoding="utf-8")
    elif fmt == "json":
        p.write_text(to_json(items, meta), encoding="utf-8")
    else:
        raise InputError(f"format {fmt!r} is not one of: {', '.join(FILES)}")
    return p


def save_all(
    items: Sequence[StepAttribution], formats: Sequence[str], folder: str | Path, **meta: Any
) -> list[Path]:
    """Every file format among ``formats`` into ``folder`` (names from :data:`FILES`)."""
    files = [f for f in formats if f in FILES]
    out = Path(folder)
    if files:
        out.mkdir(parents=True, exist_ok=True)
    return [save(items, f, out / FILES[f], **meta) for f in files]


def show(items: Sequence[StepAttribution], *, console: Any = None, top: int = 3) -> None:
    """Print, for each generated token, its ``top`` input tokens by |score| and step scores."""
    try:
        from rich.console import Console
        from rich.text import Text
    except ImportError:
        raise missing_extra("rich", "viz") from None
    con = console if console is not None else Console(highlight=False, width=100)
    colour = bool(con.is_terminal and con.color_system)
    for i, item in enumerate(items):
        con.print(Text(f"[{i + 1}] {item.text}", style="bold" if colour else ""), overflow="fold")
        con.print(Text("    " + _summary(item), style="dim" if colour else ""))
        for k, gen in enumerate(item.generated):
            row = item.scores[k]
            order = sorted(range(len(row)), key=lambda j: -abs(row[j]))[:top]
            steps = ", ".join(f"{n} {v[k]:.3g}" for n, v in item.step_scores.items())
            line = Text(f"    {gen!r} ({steps}): ")
            for j in order:
                if row[j] == 0:
                    continue
                v = row[j] / max(abs(row[order[0]]), 1e-300)
                r, g, b = rgb(v)
                style = f"{ink(v)} on rgb({r},{g},{b})" if colour else ""
                line.append(f"{item.tokens[j]}", style=style)
                line.append(f"({row[j]:+.3g}) ")
            con.print(line, overflow="fold")
        con.print()
