"""Progress bars on stderr for long work (explain batches, the passes of integrated gradients
and SmoothGrad): tqdm when it is installed and stderr is a terminal, silent otherwise, and
silent inside :func:`quiet` (``embgrad run`` shows one bar of its own)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import Any

_QUIET = [0]
#: a bar appears only for work still running after this many seconds
DELAY_S = 1.0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No bars from :func:`bar` inside this block (nests; restores on every exit)."""
    _QUIET[0] += 1
    try:
        yield
    finally:
        _QUIET[0] -= 1


def _tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Bar:
    """``with bar(total, desc) as b: b.update(1)``; does nothing when disabled.

    By default a bar is shown only for work that may take a while (≥ 2 steps, still running
    after :data:`DELAY_S`) on a terminal, outside :func:`quiet`, with tqdm installed; ``show``
    True shows it at once (tqdm must be importable then), False never. Inside the ``with``
    block, with the bar shown, ``hush`` keeps every other bar quiet (``embgrad run``'s own)."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        leave: bool,
        *,
        show: bool | None = None,
        initial: int = 0,
        smoothing: float = 0.3,
        hush: bool = False,
    ) -> None:
        self._bar: Any = None
        self._hush = quiet() if hush else None
        if show is False or (show is None and (total < 2 or _QUIET[0] or not _tty())):
            return
        try:
            from tqdm import tqdm
        except ImportError:  # the bar is a convenience: no tqdm, no bar
            if show:
                raise
            return
        self._bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                         dynamic_ncols=True, delay=0.0 if show else DELAY_S, initial=initial,
                         smoothing=smoothing)  # fmt: skip

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        if self._bar is not None and self._hush is not None:
            self._hush.__enter__()
        else:
            self._hush = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        finally:  # the other bars speak again even if closing this one failed
            if self._hush is not None:
                self._hush.__exit__(exc_type, exc, tb)
                self._hush = None


def bar(total: int, desc: str, unit: str = "it", *, leave: bool = True) -> Bar:
    """A progress bar of ``total`` steps (shown only for ≥ 2 steps, on a terminal, with tqdm
    installed, outside :func:`quiet`, and after :data:`DELAY_S` seconds)."""
    return Bar(total, desc, unit, leave)
