"""Real file-system faults for tests: a read-only folder and a tiny disk.

Root writes into folders whatever their mode bits say, so as root a read-only folder is a
read-only bind mount of itself and a small disk a tmpfs; a test that cannot mount is skipped
with the reason. As another user, mode bits make a folder read-only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def mount(*args: str) -> bool:
    """Run ``mount ARGS``; True when it succeeded."""
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` (created) made read-only for the block, as it was after it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    if not (
        mount("--bind", str(folder), str(folder)) and mount("-o", "remount,ro,bind", str(folder))
    ):
        subprocess.run(["umount", str(folder)], capture_output=True)
        pytest.skip("a read-only bind mount needs permission to mount")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (created) for the block."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("mounting a tmpfs needs root (and permission to mount)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
