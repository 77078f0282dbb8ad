"""One benchmark worker process: build a workload, run methods, log events (see ``_harness``).

Usage (by the harness only): ``python benchmarks/_worker.py SPEC.json EVENTS.jsonl``.

Warm-up runs come first (round -1), then ``rounds`` timed rounds; in each round every method
runs once, in an order that rotates and reverses from round to round, so that every method's
time is taken next to every other's. Each run ends with the framework's synchronisation
(``nd.waitall()`` for MXNet); ``gc.collect()`` runs between runs, outside the timed region.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import ERROR, OOM, TIMEOUT, UNSUPPORTED, Unsupported, peak_rss_mb, rss_mb

FRAMEWORKS = {"torch": "peers_torch", "gluon": "peers_gluon", "toy": "_toy"}


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, detail) for an exception raised by a method's set-up or run."""
    text = f"{type(exc).__name__}: {exc}".strip()
    low = text.lower()
    if isinstance(exc, MemoryError) or any(
        s in low for s in ("out of memory", "can't allocate memory", "failed to allocate")
    ):
        return OOM, text
    if isinstance(exc, (Unsupported, NotImplementedError)):
        return UNSUPPORTED, text
    return ERROR, text


def order_for_round(methods: list[str], r: int) -> list[str]:
    """Round ``r``'s order: rotated by ``r``, reversed on odd rounds."""
    if not methods:
        return []
    k = r % len(methods)
    rot = methods[k:] + methods[:k]
    return rot[::-1] if r % 2 else rot


class EventLog:
    """Appends one JSON object per line, flushed at once (survives a kill)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the worker

    def __call__(self, **event: Any) -> None:
        self._f.write(json.dumps(event) + "\n")
        self._f.flush()


def run_methods(spec: dict[str, Any], log: EventLog) -> None:
    """Build the workload, set up each method, run warm-ups and interleaved timed rounds."""
    peers = importlib.import_module(FRAMEWORKS[spec["framework"]])
    wl = peers.build(spec["workload"], spec["params"], spec.get("seed", 0))
    gc.collect()
    log(ev="base", rss_mb=rss_mb(os.getpid()))
    runners: dict[str, Callable[[], Any]] = {}
    for m in spec["methods"]:
        try:
            runners[m] = peers.METHODS[m](wl)
        except Exception as e:
            status, detail = classify(e)
            log(ev="fail", method=m, status=status, detail=detail, where="setup")
    limit = spec.get("max_run_s")
    for _ in range(spec.get("warmup", 1)):
        for m in list(runners):
            wall = _run_one(m, runners, -1, log, hwm=spec.get("hwm", False))
            if limit is not None and wall is not None and wall > limit and m in runners:
                detail = f"one run took {wall:.0f} s, above the {limit:.0f} s limit"
                log(ev="fail", method=m, status=TIMEOUT, detail=detail, where="warm-up")
                del runners[m]
    for r in range(spec.get("rounds", 0)):
        for m in order_for_round(list(runners), r):
            _run_one(m, runners, r, log)


def reset_peak() -> bool:
    """Reset this process's peak-RSS mark (``VmHWM``) to its current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _run_one(
    m: str, runners: dict[str, Callable[[], Any]], r: int, log: EventLog, hwm: bool = False
) -> float | None:
    """Run method ``m`` once and log it; its wall time, or None if it failed (then dropped).

    With ``hwm``, the peak RSS of this run is logged too (``VmHWM`` reset just before it).
    """
    gc.collect()
    peak = hwm and reset_peak()
    log(ev="start", method=m, round=r)
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        out = runners[m]()
    except Exception as e:
        status, detail = classify(e)
        tb = traceback.format_exc(limit=-3)
        log(ev="fail", method=m, status=status, detail=detail, where="run", tb=tb)
        del runners[m]
        return None
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    extra = {"hwm_mb": peak_rss_mb()} if peak else {}
    del out
    log(ev="run", method=m, round=r, wall=wall, cpu=cpu, **extra)
    return wall


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    log = EventLog(argv[2])
    try:
        run_methods(spec, log)
    except Exception as e:  # the workload itself failed to build: every method fails with it
        status, detail = classify(e)
        for m in spec["methods"]:
            log(ev="fail", method=m, status=status, detail=f"workload: {detail}", where="build")
    log(ev="end", maxrss_mb=peak_rss_mb())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
