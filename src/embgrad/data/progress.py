"""A progress bar (tqdm: rows/s and ETA) that is silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from .._progress import quiet
from ._deps import require


class Progress:
    """``with Progress(total, initial, enabled) as bar: bar.update(n)``."""

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        self._quiet = quiet()  # the explainer's own bars stay silent under this one
        if enabled:
            tqdm = require("tqdm", "data").tqdm
            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="row",
                desc="embgrad run",
                dynamic_ncols=True,
                smoothing=0.05,
                file=sys.stderr,
            )

    def update(self, rows: int) -> None:
        if self._bar is not None and rows:
            self._bar.update(rows)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._quiet.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._quiet.__exit__(exc_type, exc, tb)
