"""``MatrixViews``: the writers every "one row per explained output" result shares —
generation, token classification, question answering.

A result supplies ``items`` (one :class:`~embgrad.items.StepAttribution` per text),
``_view_meta()`` (what its JSON records beside the items) and ``_title`` (the HTML report's
default title); the views come from :mod:`embgrad.render.matrix`. Every writer refuses to
replace an existing file unless ``overwrite=True``, as :class:`~embgrad.methods.result.Attribution`'s
do, and a notebook shows the report in a sandboxed ``<iframe srcdoc>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..items import StepAttribution
from . import matrix, write


class MatrixViews:
    """Mixin: ``to_json``, ``to_html``, ``plot``, ``show`` and the notebook view."""

    _title: ClassVar[str] = "embgrad"

    @property
    def items(self) -> list[StepAttribution]:  # pragma: no cover - every result defines it
        raise NotImplementedError

    def _view_meta(self) -> dict[str, Any]:
        return {}

    def to_json(self, path: str | Path | None = None, *, overwrite: bool = False) -> str:
        """The items as JSON text (``{"embgrad_version", <the result's meta>, "items": [...]}``);
        written to ``path`` when given (an existing file only with ``overwrite=True``)."""
        if path is not None:
            write.check_path(path, overwrite)
        text = matrix.to_json(self.items, self._view_meta())
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_html(
        self, path: str | Path | None = None, *, title: str | None = None, overwrite: bool = False
    ) -> str:
        """One self-contained HTML report (a matrix per text); written to ``path`` when given
        (an existing file only with ``overwrite=True``)."""
        if path is not None:
            write.check_path(path, overwrite)
        text = matrix.to_html(self.items, title=self._title if title is None else title)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def plot(self, path: str | Path | None = None, *, overwrite: bool = False) -> Any:
        """The heatmaps, with the colour bar and each row's scores; saved as PNG when ``path``
        is given (an existing file only with ``overwrite=True``). Returns a
        :class:`~embgrad.render.png.Heatmap` (shown as a PNG in Jupyter; ``.figure`` is the
        matplotlib Figure)."""
        from .png import Heatmap

        if path is not None:
            write.check_path(path, overwrite)
        items = self.items
        if path is not None:
            matrix.save(items, "png", path)
        return Heatmap(matrix.figure(items))

    def show(self, console: Any = None, *, top: int = 3) -> None:
        """Print, for each explained output, its top input tokens (plain text when not a TTY)."""
        matrix.show(self.items, console=console, top=top)

    def _repr_html_(self) -> str:
        """The HTML report in a sandboxed ``<iframe srcdoc>`` (its styles stay out of the
        notebook's), as :class:`~embgrad.methods.result.Attribution` shows itself."""
        return matrix.notebook_html(self.items)
