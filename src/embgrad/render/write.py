"""The one writer of every view: terminal, HTML, JSON and PNG, used by ``Attribution`` and by
the CLI alike. A :class:`View` holds what a view shows (the items, their headings, what the
score means, a subtitle, JSON metadata); :func:`text`, :func:`save`, :func:`figure` and
:func:`show` turn it into one format. rich and matplotlib are imported only when used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..items import TokenAttribution, items_to_json

#: the formats, and the file name each gets in an output folder
FILES = {"html": "report.html", "json": "attributions.json", "png": "heatmap.png"}
FORMATS = ("terminal", *FILES)


@dataclass
class View:
    """What one view of a set of attributions shows.

    Attributes:
        items: one per text.
        titles: a heading per item (default ``[1]``, ``[2]``, ...).
        quantity: what the explained value is, in words (``None``: log p(target)).
        title: the HTML page's title; ``subtitle``: a line under it (model, framework).
        meta: extra top-level JSON fields (method, model, options, ...).
    """

    items: Sequence[TokenAttribution]
    titles: Sequence[str] | None = None
    quantity: str | None = None
    title: str = "embgrad attributions"
    subtitle: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def check_path(path: str | Path, overwrite: bool) -> Path:
    """``path`` as a Path if a file may be written there: InputError when it is a folder, or an
    existing file and not ``overwrite`` (checked before any work)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{str(p)!r} is a folder; give a file path to write")
    if p.exists() and not overwrite:
        raise InputError(
            f"{str(p)!r} exists; pass overwrite=True (--overwrite) to replace it, or choose "
            "another path"
        )
    return p


def check_folder(formats: Sequence[str], folder: str | Path, overwrite: bool) -> list[Path]:
    """The files :func:`save_all` would write into ``folder``; InputError when ``folder`` is a
    file, or one of them exists and not ``overwrite`` (run it before the work)."""
    out = Path(folder)
    files = [out / FILES[f] for f in formats if f in FILES]
    if files and out.exists() and not out.is_dir():
        raise InputError(
            f"--out {str(out)!r} is an existing file; --out names a folder for the outputs"
        )
    if files:
        check_creatable(out)
    existing = [str(f) for f in files if f.exists()]
    if existing and not overwrite:
        these = "it" if len(existing) == 1 else "them"
        raise InputError(
            f"{', '.join(map(repr, existing))} {'is' if len(existing) == 1 else 'are'} already "
            f"there; add --overwrite to replace {these}, or choose another --out folder"
        )
    return files


def check_creatable(out: Path) -> None:
    """InputError, before any work, when the folder ``out`` cannot be made or written: a file
    stands where it or one of its parents should be, or the nearest existing parent is on a
    read-only file system or not writable by this user."""
    import os

    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(
            f"--out {str(out)!r} cannot be made: {str(probe)!r} is a file, not a folder"
        )
    try:
        readonly = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        readonly = False
    if readonly:
        raise InputError(
            f"--out {str(out)!r} is on a read-only file system ({str(probe)!r}); choose "
            "another --out folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(
            f"--out {str(out)!r}: {str(probe)!r} is not writable by you; choose another "
            "--out folder or change its permissions"
        )


def text(view: View, fmt: str, path: str | Path | None = None, *, overwrite: bool = False) -> str:
    """The ``"html"`` or ``"json"`` view as text; also written to ``path`` when given (an
    existing file only with ``overwrite=True``)."""
    if path is not None:
        check_path(path, overwrite)
    if fmt == "html":
        from .html import render_html

        out = render_html(
            view.items,
            title=view.title,
            titles=view.titles,
            quantity=view.quantity,
            subtitle=view.subtitle,
        )
    elif fmt == "json":
        out = items_to_json(list(view.items), view.meta)
    else:
        raise InputError(f"format {fmt!r} has no text form; text formats are: html, json")
    if path is not None:
        Path(path).write_text(out, encoding="utf-8")
    return out


def figure(view: View) -> Any:
    """The labelled heatmap as a matplotlib Figure."""
    from .png import heatmap_figure

    return heatmap_figure(view.items, titles=view.titles, quantity=view.quantity)


def save(view: View, fmt: str, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the ``"html"``, ``"json"`` or ``"png"`` view to ``path`` (an existing file only
    with ``overwrite=True``)."""
    check_path(path, overwrite)
    if fmt == "png":
        from .png import write_png

        return write_png(view.items, path, titles=view.titles, quantity=view.quantity)
    text(view, fmt, path, overwrite=overwrite)
    return Path(path)


def save_all(
    view: View, formats: Sequence[str], folder: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Every file format among ``formats`` into ``folder`` (names from :data:`FILES`); nothing
    is written if one of them exists and not ``overwrite`` (see :func:`check_folder`)."""
    files = check_folder(formats, folder, overwrite)
    if not files:
        return []
    Path(folder).mkdir(parents=True, exist_ok=True)
    chosen = [f for f in formats if f in FILES]
    return [save(view, f, p, overwrite=overwrite) for f, p in zip(chosen, files, strict=True)]


def show(view: View, *, console: Any = None) -> None:
    """Print the view to the terminal (coloured on a colour terminal, plain text otherwise)."""
    from .terminal import render_terminal

    render_terminal(view.items, console=console, titles=view.titles, quantity=view.quantity)


def notebook_html(view: View) -> str:
    """The HTML report for a notebook output: the same page (:func:`text`), isolated in an
    ``<iframe srcdoc>`` so that its styles and tooltip script do not touch the notebook's."""
    from html import escape

    page = text(view, "html")
    rows = sum(2 + len(i.tokens) // 12 + len(i.hotflip) for i in view.items)
    height = min(900, 140 + 34 * rows)
    return (
        f'<iframe srcdoc="{escape(page, quote=True)}" style="width:100%;height:{height}px;'
        'border:1px solid #ddd" sandbox="allow-scripts"></iframe>'
    )
