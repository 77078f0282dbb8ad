"""The views of generation attributions (:class:`~embgrad.items.StepAttribution`): one matrix
per generation — generated tokens (rows) × input tokens (columns) — as self-contained HTML
(escaped, no scripts), a PNG heatmap (matplotlib, with the colour bar and each step's scores),
a terminal list (for each generated token its top input tokens) and JSON. Colours are per row:
score / max |score| of that step. Tokens are their text (the tokenizer's decoding); the views
(not the JSON) mark a leading space ``␣`` and a line break ``↵``, so " time" and "time" differ
on screen. Headings are the prompt as given, shortened."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import InputError, missing_extra
from ..items import StepAttribution
from .html import escape
from .scale import BLUE, HEADING_CHARS, RED, WHITE, ink, normalized, rgb

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


def shown(token: str) -> str:
    """A token for display: a leading space as ``␣``, line breaks ``↵``, tabs ``⇥`` (the text
    itself is kept in the JSON)."""
    body = token.lstrip(" ")
    out = "␣" * (len(token) - len(body)) + body
    return out.replace("\r\n", "↵").replace("\n", "↵").replace("\r", "↵").replace("\t", "⇥")


def heading(i: int, item: StepAttribution, limit: int = HEADING_CHARS) -> str:
    """``[i] prompt``, the prompt as given; past ``limit`` characters shortened at a word
    boundary (a 2,000-word prompt must not print all its words as a heading)."""
    full = f"[{i + 1}] {item.text}"
    return full if len(full) <= limit else textwrap.shorten(full, limit, placeholder=" …")


def steps_line(item: StepAttribution) -> str:
    """``3 generated tokens``; ``1 generated token (the end-of-sequence token ended it; 8
    asked)`` when the model stopped early."""
    n = len(item.generated)
    line = f"{n} generated token{'' if n == 1 else 's'}"
    if item.stopped_at_eos and item.requested is not None:
        line += f" (the end-of-sequence token ended it; {item.requested} asked)"
    return line


def _summary(item: StepAttribution) -> str:
    parts = [f"method {item.method}", steps_line(item)]
    if item.delta:
        parts.append(f"max IG delta {max(item.delta):.2e}")
    return " · ".join(parts)


def _table(item: StepAttribution) -> str:
    names = list(item.step_scores)
    src = item.source_length
    head = "".join(
        f'<th class="c{" src" if j == src - 1 else ""}">{escape(shown(t))}</th>'
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
                f'title="{escape(shown(gen))} ← {escape(shown(item.tokens[j]))}: {s:+.6g}">'
                "&nbsp;</td>"
            )
        extra = "".join(f'<td class="s">{item.step_scores[n][k]:.3g}</td>' for n in names)
        rows.append(f"<tr><th>{escape(shown(gen))}</th>{''.join(cells)}{extra}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def to_html(
    items: Sequence[StepAttribution], *, title: str = "embgrad generation", subtitle: str = ""
) -> str:
    """One HTML page: per generation a heading (the prompt), a summary and the matrix;
    ``subtitle`` (model, method options) under the title."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        *([f'<p class="meta">{escape(subtitle)}</p>'] if subtitle else []),
        f'<p class="meta">{escape(LEGEND)}; rows: generated tokens, columns: input tokens</p>',
    ]
    for i, item in enumerate(items):
        parts.append(f"<section><h2>{escape(heading(i, item))}</h2>")
        parts.append(f'<p class="meta">{escape(_summary(item))}</p>{_table(item)}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def subtitle(meta: dict[str, Any]) -> str:
    """``model M · method X: baseline=zeros, n_steps=50, ...`` from the JSON metadata."""
    parts = [f"model {meta['model']}"] if meta.get("model") else []
    if meta.get("method"):
        opts = meta.get("options") or {}
        said = ", ".join(f"{k}={v}" for k, v in opts.items())
        parts.append(f"method {meta['method']}" + (f": {said}" if said else ""))
    return " · ".join(parts)


def notebook_html(items: Sequence[StepAttribution], *, title: str = "embgrad generation") -> str:
    """The HTML report for a notebook output, isolated in a sandboxed ``<iframe srcdoc>`` so
    that its styles do not touch the notebook's (as the token reports are shown)."""
    page = to_html(items, title=title)
    rows = sum(4 + len(i.generated) + max(len(t) for t in [*i.tokens, ""]) // 8 for i in items)
    height = min(900, 120 + 22 * rows)
    return (
        f'<iframe srcdoc="{escape(page, quote=True)}" style="width:100%;height:{height}px;'
        'border:1px solid #ddd" sandbox></iframe>'
    )


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
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import LinearSegmentedColormap, Normalize
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_extra("matplotlib", "viz") from None
    if not items:
        raise InputError("nothing to plot: no generations")
    cmap = LinearSegmentedColormap.from_list(
        "embgrad", [tuple(ch / 255 for ch in c) for c in (BLUE, WHITE, RED)]
    )
    heights = [max(1.5, 0.25 * len(it.generated) + 1.4) for it in items]
    names = sorted({n for it in items for n in it.step_scores})
    right = 0.35 + 0.9 * len(names) if names else 0.0  # inches for the step scores
    width = max(6.0, 0.25 * max(len(it.tokens) for it in items) + 2.5) + right
    fig = Figure(figsize=(width, sum(heights) + 0.3 * len(items) + 1.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(items) + 1, 1, squeeze=False, height_ratios=[*heights, 0.8])[:, 0]
    for i, (ax, item) in enumerate(zip(axes, items, strict=False)):
        m = np.array([normalized(row) for row in item.scores], dtype=float).reshape(
            len(item.generated), len(item.tokens)
        )
        ax.imshow(m, cmap=cmap, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        # parse_math=False on every text drawn: a "$" is a dollar sign, not mathtext
        ax.set_xticks(
            range(len(item.tokens)), [shown(t) for t in item.tokens],
            rotation=90, fontsize=7, parse_math=False,
        )  # fmt: skip
        ax.set_yticks(
            range(len(item.generated)), [shown(g) for g in item.generated], fontsize=7,
            parse_math=False,
        )  # fmt: skip
        if item.source_length:
            ax.axvline(item.source_length - 0.5, color="black", linewidth=1)
        ax.set_title(
            f"{heading(i, item, 120)}  ·  {steps_line(item)}",
            fontsize=8, loc="left", parse_math=False,
        )  # fmt: skip
        if item.step_scores:  # each step's scores, right of its row
            tr = ax.get_yaxis_transform()  # x in axes units, y in rows
            for k in range(len(item.generated)):
                line = "  ".join(
                    f"{_SHORT.get(n, n)} {_num(v[k])}" for n, v in item.step_scores.items()
                )
                ax.text(1.01, k, line, transform=tr, fontsize=7, va="center", ha="left",
                        parse_math=False)  # fmt: skip
            ax.text(1.01, -0.9, _key(item), transform=tr, fontsize=6, color="#555", ha="left",
                    parse_math=False)  # fmt: skip
    axes[-1].axis("off")  # its place holds the colour bar, drawn after the layout is made
    fig.tight_layout(rect=(0, 0, 1 - right / width, 1))
    box = axes[-1].get_position()
    fig.delaxes(axes[-1])
    cax = fig.add_axes((0.3, box.y0 + 0.7 * box.height, 0.4, 0.2 * box.height))
    bar = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap), cax=cax, orientation="horizontal")
    bar.set_label(LEGEND, fontsize=8, parse_math=False)
    bar.ax.tick_params(labelsize=7)
    return fig


#: the step scores' short names in the PNG (the key above them says what they are)
_SHORT = {"probability": "p", "entropy": "H"}


def _key(item: StepAttribution) -> str:
    words = {"probability": "p: probability", "entropy": "H: entropy (nats)"}
    return " · ".join(words.get(n, n) for n in item.step_scores)


def _num(v: float) -> str:
    return "n/a" if v != v else f"{v:.3g}"  # NaN: a padded step


def save(items: Sequence[StepAttribution], fmt: str, path: str | Path, **meta: Any) -> Path:
    """Write the ``"html"``, ``"json"`` or ``"png"`` view to ``path``."""
    p = Path(path)
    if fmt == "png":
        from .png import _quiet

        fig = figure(items)
        with _quiet():
            fig.savefig(p, dpi=110)
    elif fmt == "html":
        p.write_text(to_html(items, subtitle=subtitle(meta)), encoding="utf-8")
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
        con.print(Text(heading(i, item), style="bold" if colour else ""), overflow="fold")
        con.print(Text("    " + _summary(item), style="dim" if colour else ""))
        for k, gen in enumerate(item.generated):
            row = item.scores[k]
            order = sorted(range(len(row)), key=lambda j: -abs(row[j]))[:top]
            steps = ", ".join(f"{n} {v[k]:.3g}" for n, v in item.step_scores.items())
            line = Text(f"    {shown(gen)!r} ({steps}): ")
            for j in order:
                if row[j] == 0:
                    continue
                v = row[j] / max(abs(row[order[0]]), 1e-300)
                r, g, b = rgb(v)
                style = f"{ink(v)} on rgb({r},{g},{b})" if colour else ""
                line.append(shown(item.tokens[j]), style=style)
                line.append(f"({row[j]:+.3g}) ")
            con.print(line, overflow="fold")
        con.print()
