"""``embgrad run``'s bar (tqdm: rows/s and ETA), silent when stderr is not a terminal; the
explainer's own bars stay quiet under it. One wrapper for both: :class:`embgrad._progress.Bar`."""

from __future__ import annotations

import sys

from .._progress import Bar
from ._deps import require


def run_bar(total: int, initial: int = 0, enabled: bool | None = None) -> Bar:
    """``with run_bar(total, initial, enabled) as bar: bar.update(n)`` (``enabled`` None: on a
    terminal). tqdm is part of the ``data`` extra, so it is required once the bar is wanted."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if enabled:
        require("tqdm", "data")
    return Bar(total, "embgrad run", "row", True, show=enabled, initial=initial, smoothing=0.05,
               hush=True)  # fmt: skip
