"""``exclusive``: the one folder lock of embgrad's writers (data runs, influence indexes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


@contextlib.contextmanager
def exclusive(file: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``file`` (created) for the block; the
    kernel releases it when the process ends, kill -9 included. Another holder: InputError
    ``busy``. Without ``fcntl`` (not POSIX) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with file.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise InputError(busy) from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
