"""A labelled PNG heatmap with matplotlib (Agg, no display): one block per text, tokens in
coloured cells (at most ``per_row`` a row), a title line per text and a colour bar."""

from __future__ import annotations

import contextlib
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import missing_extra
from ..items import TokenAttribution
from .scale import BLUE, LEGEND, RED, WHITE, ink, normalized, rgb, summary


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """matplotlib < 3.9 calls pyparsing APIs that pyparsing ≥ 3.3 deprecates: not ours to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated - use", category=DeprecationWarning)
        yield


def heatmap_figure(
    items: Sequence[TokenAttribution],
    *,
    titles: Sequence[str] | None = None,
    quantity: str | None = None,
    per_row: int = 10,
) -> Any:
    """A matplotlib ``Figure`` (not registered with pyplot) drawing every item's tokens."""
    with _quiet():
        return _figure(items, titles=titles, quantity=quantity, per_row=per_row)


def _figure(
    items: Sequence[TokenAttribution],
    *,
    titles: Sequence[str] | None,
    quantity: str | None,
    per_row: int,
) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LinearSegmentedColormap, Normalize
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        raise missing_extra("matplotlib", "viz") from None
    blocks = [(max(1, -(-len(it.tokens) // per_row))) for it in items]
    height_units = sum(b + 2.2 for b in blocks) + 1
    height = max(2.5, 0.42 * height_units) + 1.0  # inches; the last one holds the colour bar
    fig = Figure(figsize=(12, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 1.0 / height, 0.96, 1 - 1.1 / height))
    y = 0.0
    for i, (item, rows) in enumerate(zip(items, blocks, strict=True)):
        head = titles[i] if titles is not None else f"[{i + 1}]"
        text = textwrap.shorten(f"{head} {item.text}", 130)
        # parse_math=False: a "$" in a text is a dollar sign, not the start of mathtext
        ax.text(0, y + 0.5, text, fontsize=9, fontweight="bold", va="center", parse_math=False)
        ax.text(0, y + 1.2, summary(item, quantity), fontsize=8, color="#555", va="center",
                parse_math=False)  # fmt: skip
        y += 1.7
        for j, (tok, v) in enumerate(zip(item.tokens, normalized(item.scores), strict=True)):
            r, c = divmod(j, per_row)
            colour = tuple(ch / 255 for ch in rgb(v))
            ax.add_patch(Rectangle((c, y + r), 0.96, 0.9, facecolor=colour, edgecolor="#ccc"))
            label = tok if len(tok) <= 12 else tok[:11] + "…"
            ax.text(c + 0.48, y + r + 0.45, label, ha="center", va="center", fontsize=8,
                    color=ink(v), parse_math=False)  # fmt: skip
        y += rows + 0.5
    ax.set_xlim(-0.05, per_row)
    ax.set_ylim(y, -0.2)
    ax.axis("off")
    cmap = LinearSegmentedColormap.from_list(
        "embgrad", [tuple(ch / 255 for ch in c) for c in (BLUE, WHITE, RED)]
    )
    from matplotlib.cm import ScalarMappable

    bar_ax = fig.add_axes((0.3, 0.55 / height, 0.4, 0.14 / height))
    bar = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap), cax=bar_ax, orientation="horizontal")
    bar.set_label(LEGEND, fontsize=8, parse_math=False)
    bar.ax.tick_params(labelsize=7)
    return fig


def write_png(items: Sequence[TokenAttribution], path: str | Path, **kwargs: Any) -> Path:
    """Draw ``items`` (see :func:`heatmap_figure`) and save a PNG at ``path``."""
    fig = heatmap_figure(items, **kwargs)
    with _quiet():
        fig.savefig(path, dpi=110)
    return Path(path)


class Heatmap:
    """A drawn heatmap that shows itself as a PNG where it is displayed (Jupyter, IPython:
    ``_repr_png_``), with no ``%matplotlib`` setup. ``figure`` is the matplotlib ``Figure``;
    other attributes (``savefig``, ``axes``, ...) are the figure's."""

    def __init__(self, figure: Any, dpi: int = 110) -> None:
        self.figure, self.dpi = figure, dpi

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        with _quiet():
            self.figure.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    def __getattr__(self, name: str) -> Any:
        if name == "figure":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.figure, name)

    def __repr__(self) -> str:
        w, h = self.figure.get_size_inches()
        return f"<embgrad Heatmap {w * self.dpi:.0f}x{h * self.dpi:.0f} px (.figure: Figure)>"
