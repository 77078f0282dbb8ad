"""Result types shared by ``embgrad.attribute``, the :class:`~embgrad.explain.Explainer` and the
renderers: :class:`TokenAttribution` (one text) and :class:`Attribution` (one batch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TokenAttribution:
    """The attribution of one input text.

    Attributes:
        text: the input text (or a placeholder for raw ids).
        tokens: model tokens incl. special tokens, as displayed (padding excluded).
        scores: one per token (method-specific: see ``embgrad methods``).
        loss: the explained quantity f(x) (a pair's cosine similarity, or log p(target)).
        table_grad_norm: L2 norm of this text's per-sample word-table gradient.
        delta: the integrated-gradients completeness delta, else None.
        hotflip: top substitutions ``{"position", "token", "replacement", "score"}``.
        truncated: the text was longer than the model's limit and was truncated.
        method: the method's registry name.
        target: the explained class label, or None (pair similarity, custom loss).
    """

    text: str
    tokens: list[str]
    scores: list[float]
    loss: float
    table_grad_norm: float
    delta: float | None
    hotflip: list[dict[str, Any]]
    truncated: bool
    method: str
    target: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def items_to_json(items: list[TokenAttribution], meta: dict[str, Any] | None = None) -> str:
    """``{"embgrad_version", ...meta, "items": [TokenAttribution as dict, ...]}`` as JSON text."""
    from .. import __version__

    doc = {"embgrad_version": __version__, **(meta or {}), "items": [i.to_dict() for i in items]}
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)


@dataclass
class Attribution:
    """What :func:`embgrad.attribute` returns for a batch.

    Attributes:
        items: one :class:`TokenAttribution` per sample (padding positions dropped).
        method: the method's name; ``raw``: its full :class:`~embgrad.methods.Scores`
            (padded (B, T) arrays, per-dimension attributions, HotFlip ids).
        mask: (B, T) bool, the positions kept in ``items``.
    """

    items: list[TokenAttribution]
    method: str
    raw: Any = field(repr=False)
    mask: np.ndarray = field(repr=False)

    @property
    def tokens(self) -> list[list[str]]:
        return [i.tokens for i in self.items]

    @property
    def scores(self) -> list[np.ndarray]:
        """Per sample, the scores of its tokens (padding dropped), float64."""
        return [np.asarray(i.scores) for i in self.items]

    @property
    def delta(self) -> np.ndarray | None:
        """(B,) completeness deltas (integrated gradients), else None."""
        return None if self.raw.delta is None else np.asarray(self.raw.delta)

    @property
    def losses(self) -> np.ndarray:
        return np.asarray(self.raw.losses)

    def to_json(self, path: str | Path | None = None) -> str:
        text = items_to_json(self.items, {"method": self.method})
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_html(
        self, path: str | Path | None = None, *, title: str = "embgrad attributions"
    ) -> str:
        from ..render.html import render_html

        text = render_html(self.items, title=title)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def plot(self, path: str | Path | None = None) -> Any:
        """A labelled heatmap (matplotlib Figure); saved as PNG when ``path`` is given."""
        from ..render.png import heatmap_figure, write_png

        if path is not None:
            write_png(self.items, path)
        return heatmap_figure(self.items)

    def show(self, console: Any = None) -> None:
        """Print the coloured heatmap to the terminal (plain text when not a TTY)."""
        from ..render.terminal import render_terminal

        render_terminal(self.items, console=console)
