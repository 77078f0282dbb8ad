"""``Attribution``: what ``embgrad.attribute`` returns for a batch (one
:class:`~embgrad.items.TokenAttribution` per text), with its views written by ``render.write``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..items import TokenAttribution, items_to_json
from ..render import write

__all__ = ["Attribution", "TokenAttribution", "items_to_json"]


@dataclass(repr=False)
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

    @property
    def options(self) -> dict[str, Any]:
        """The options every output records, as run (integrated gradients: ``baseline``,
        ``n_steps``, ``rule``); {} for methods without such options."""
        from .base import get_method, list_methods

        if self.method not in list_methods():
            return {}
        info = getattr(self.raw, "info", None) or {}
        return {k: info[k] for k in get_method(self.method).recorded_options if k in info}

    def _view(self, **kw: Any) -> write.View:
        opts = self.options
        line = ", ".join(f"{k}={v}" for k, v in opts.items())
        meta: dict[str, Any] = {"method": self.method, **({"options": opts} if opts else {})}
        return write.View(self.items, subtitle=line, meta=meta, **kw)

    def to_json(self, path: str | Path | None = None, *, overwrite: bool = False) -> str:
        """The items as JSON text (``{"embgrad_version", "method", "options", "items": [...]}``;
        ``options`` as in :attr:`options`, where the method has any); written to ``path`` when
        given (an existing file only with ``overwrite=True``)."""
        return write.text(self._view(), "json", path, overwrite=overwrite)

    def to_html(
        self,
        path: str | Path | None = None,
        *,
        title: str = "embgrad attributions",
        overwrite: bool = False,
    ) -> str:
        """One self-contained HTML report; written to ``path`` when given (an existing file
        only with ``overwrite=True``)."""
        return write.text(self._view(title=title), "html", path, overwrite=overwrite)

    def plot(self, path: str | Path | None = None, *, overwrite: bool = False) -> Any:
        """A labelled heatmap; saved as PNG when ``path`` is given. Returns a
        :class:`~embgrad.render.png.Heatmap`: it displays as a PNG in Jupyter (no
        ``%matplotlib inline`` needed); ``.figure`` is the matplotlib Figure, and the figure's
        methods (``savefig``, ...) work on it directly."""
        from ..render.png import Heatmap

        view = write.View(self.items)
        if path is not None:
            write.save(view, "png", path, overwrite=overwrite)
        return Heatmap(write.figure(view))

    def _repr_html_(self) -> str:
        """The HTML report, shown when a notebook displays the result."""
        return write.notebook_html(self._view())

    def __repr__(self) -> str:
        texts = ", ".join(
            repr(i.text if len(i.text) <= 40 else i.text[:39] + "…") for i in self.items[:3]
        )
        more = f", … ({len(self.items) - 3} more)" if len(self.items) > 3 else ""
        tokens = sum(len(i.tokens) for i in self.items)
        return (
            f"<Attribution method={self.method!r}: {len(self.items)} text(s), {tokens} tokens: "
            f"{texts}{more}>"
        )

    def show(self, console: Any = None) -> None:
        """Print the coloured heatmap to the terminal (plain text when not a TTY)."""
        write.show(write.View(self.items), console=console)
