"""A framework-free toy workload: exercises the harness (tests, ``--self-check``) in a second."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from _harness import Unsupported


def build(workload: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The toy workload is just its parameters (``sleep_s``, ``alloc_mb``)."""
    if workload != "toy":
        raise ValueError(f"unknown toy workload {workload!r}")
    return dict(params)


def _sleep(wl: dict[str, Any]) -> Callable[[], Any]:
    return lambda: time.sleep(wl.get("sleep_s", 0.001))


def _alloc(wl: dict[str, Any]) -> Callable[[], Any]:
    def run() -> Any:
        block = bytearray(int(wl.get("alloc_mb", 50) * 2**20))
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
        return len(block)

    return run


def _unsupported(wl: dict[str, Any]) -> Callable[[], Any]:
    raise Unsupported("the toy peer refuses this workload")


def _error(wl: dict[str, Any]) -> Callable[[], Any]:
    def run() -> Any:
        raise RuntimeError("the toy peer crashed")

    return run


def _hang(wl: dict[str, Any]) -> Callable[[], Any]:
    return lambda: time.sleep(3600)


METHODS: dict[str, Callable[[dict[str, Any]], Callable[[], Any]]] = {
    "sleep": _sleep,
    "sleep2": _sleep,
    "alloc": _alloc,
    "unsupported": _unsupported,
    "error": _error,
    "hang": _hang,
    # the plan's names, so run_all's passes and the report can run on the toy end to end
    "floor": _sleep,
    "train": _sleep,
    "embgrad": _sleep,
    "vmap": _sleep,
    "backpack": _unsupported,
    "opacus": _error,
    "loop": _hang,
    "vmap_table": _alloc,
}
