"""The framework-free half of the benchmark harness: statistics, the subprocess runner, tables.

Nothing here imports torch or mxnet: the parent process (``run_all.py``) only plans, launches
workers (``_worker.py``) and reads what they write, so each worker's peak RSS is its own.

A worker writes one JSON object per line ("events") to a log file as it goes:

- ``{"ev": "base", "rss_mb": ...}`` after building the workload;
- ``{"ev": "fail", "method": m, "status": s, "detail": ...}`` when a method cannot run;
- ``{"ev": "start", "method": m}`` before each run, ``{"ev": "run", "method": m, "wall": s,
  "cpu": s, "round": r}`` after it (round -1 = warm-up; with ``hwm`` also ``"hwm_mb"``, the
  run's peak RSS within the shared process);
- ``{"ev": "end", "maxrss_mb": ...}`` at the end (the worker's peak RSS, ``peak_rss_mb``).

A worker killed by the parent (memory cap, time limit) leaves a ``start`` without its ``run``:
the method it was running gets the status ``oom`` or ``timeout``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK, UNSUPPORTED, OOM, TIMEOUT, ERROR = "ok", "unsupported", "oom", "timeout", "error"
STATUSES = (OK, UNSUPPORTED, OOM, TIMEOUT, ERROR)
WORKER = Path(__file__).with_name("_worker.py")


class Unsupported(Exception):
    """Raised by a peer that cannot run a workload by design (shown as ``unsupported``)."""


# -- statistics -----------------------------------------------------------------------------------
def median(xs: Iterable[float]) -> float:
    """Median of the finite values in ``xs``; NaN when there are none."""
    vals = [float(x) for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(vals) if vals else math.nan


def ratio(a: float | None, b: float | None) -> float:
    """``a / b``, NaN when either is missing, not finite or ``b`` is not positive."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return math.nan
    return a / b


def paired_ratio(num: dict[str, float], den: dict[str, float]) -> float:
    """Median over rounds of ``num[r] / den[r]`` for rounds both were timed in.

    Both were run in the same round of the same process, next to each other, so slow spells of
    a shared machine cancel out of each ratio instead of biasing one side.
    """
    return median(ratio(num[r], den[r]) for r in sorted(set(num) & set(den)))


# -- formatting -----------------------------------------------------------------------------------
def fmt_seconds(s: float | None) -> str:
    """Seconds with three significant digits (``0.0123 s``, ``1.23 s``, ``123 s``)."""
    if s is None or not math.isfinite(s):
        return "–"
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.3g} s"
    return f"{s * 1000:.3g} ms"


def fmt_ratio(r: float | None) -> str:
    """A ratio as ``1.23×`` (two decimals below 10, integers above 100)."""
    if r is None or not math.isfinite(r):
        return "–"
    if r >= 100:
        return f"{r:.0f}×"
    if r >= 10:
        return f"{r:.1f}×"
    return f"{r:.2f}×"


def fmt_mb(mb: float | None) -> str:
    """Megabytes, or gigabytes above 10 GB."""
    if mb is None or not math.isfinite(mb):
        return "–"
    return f"{mb / 1024:.1f} GB" if mb >= 10240 else f"{mb:.0f} MB"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; ``|`` inside cells is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


# -- results --------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    """What the harness learnt about one method on one workload."""

    method: str
    status: str = OK
    detail: str = ""
    peak_mb: float | None = None  # peak RSS of the memory worker (model + one run)
    base_mb: float | None = None  # RSS of the memory worker after building the workload
    first_s: float | None = None  # the memory worker's single run (includes warm-up effects)
    times: dict[str, float] = field(default_factory=dict)  # "worker:round" -> wall seconds
    cpu: dict[str, float] = field(default_factory=dict)  # "worker:round" -> process CPU s

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def median_s(self) -> float:
        return median(self.times.values())

    @property
    def cpu_per_wall(self) -> float:
        """Median CPU-time/wall of the timed runs: well below the core count = a disturbed run."""
        return median(ratio(self.cpu[r], self.times[r]) for r in self.times if r in self.cpu)

    def fail(self, status: str, detail: str) -> None:
        """Mark the method as not measured (keeps the first reason given)."""
        if self.status == OK:
            self.status, self.detail = status, detail


def short_reason(status: str, detail: str) -> str:
    """The cell text for a method that could not run: status and the gist of the reason."""
    first = detail.strip().splitlines()[0] if detail.strip() else ""
    if len(first) > 90:
        first = first[:87] + "..."
    return f"{status}: {first}" if first else status


# -- the subprocess runner ------------------------------------------------------------------------
@dataclass
class WorkerSpec:
    """One worker process: a workload, the methods to run in it, warm-ups and timed rounds."""

    framework: str
    workload: str
    params: dict[str, Any]
    methods: list[str]
    warmup: int = 1
    rounds: int = 0
    seed: int = 0
    max_run_s: float | None = None  # methods whose warm-up run takes longer are dropped
    hwm: bool = False  # log each warm-up run's peak RSS (in-process, approximate)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class WorkerRun:
    """The outcome of one worker process as the parent saw it."""

    events: list[dict[str, Any]]
    killed: str | None  # None, OOM or TIMEOUT
    returncode: int | None
    stderr_tail: str
    sampled_peak_mb: float
    wall_s: float

    def last_started(self) -> str | None:
        """The method a killed worker was running (a ``start`` without its ``run``)."""
        pending: str | None = None
        for ev in self.events:
            if ev.get("ev") == "start":
                pending = ev["method"]
            elif ev.get("ev") in ("run", "fail"):
                pending = None
        return pending


def rss_mb(pid: int) -> float:
    """Current resident set size of ``pid`` and its children's main memory, in MB (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: Linux carries the pre-``exec`` image's high-water mark into it
    (``exec_mmap``), so a worker started from a larger parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_mb() -> float:
    """MemAvailable from /proc/meminfo in MB (inf where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return math.inf


def run_worker(
    spec: WorkerSpec,
    *,
    timeout_s: float,
    mem_cap_mb: float,
    run_limit_s: float | None = None,
    env: dict[str, str] | None = None,
    poll_s: float = 0.02,
) -> WorkerRun:
    """Run one worker, killing it above ``mem_cap_mb`` of RSS, after ``timeout_s`` in all, or
    when a single run has gone on for ``run_limit_s`` (counted from its ``start`` event).

    The worker's event log survives a kill, so the caller still learns what finished.
    """
    with tempfile.TemporaryDirectory(prefix="embgrad-bench-") as tmp:
        spec_path, log_path = Path(tmp, "spec.json"), Path(tmp, "events.jsonl")
        spec_path.write_text(spec.to_json())
        err_path = Path(tmp, "stderr.txt")
        start = time.perf_counter()
        with open(err_path, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(spec_path), str(log_path)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, **(env or {})},
            )
            watch = _Watch(proc, log_path, timeout_s, mem_cap_mb, run_limit_s)
            killed, peak = watch.until_done(poll_s)
        wall = time.perf_counter() - start
        events = _read_events(log_path)
        tail = err_path.read_text(errors="replace")[-4000:]
    return WorkerRun(events, killed, proc.returncode, tail, peak, wall)


class _Watch:
    """Polls a worker: its RSS (against the cap), its age, the age of its current run."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        timeout_s: float,
        mem_cap_mb: float,
        run_limit_s: float | None,
    ) -> None:
        self.proc, self.log_path = proc, log_path
        self.deadline = time.monotonic() + timeout_s
        self.mem_cap_mb, self.run_limit_s = mem_cap_mb, run_limit_s
        self.peak = 0.0
        self._log_size = -1
        self._run_started: float | None = None

    def _running_since(self) -> float | None:
        """When the current run's ``start`` event was first seen (None between runs)."""
        try:
            size = self.log_path.stat().st_size
        except FileNotFoundError:
            return None
        if size != self._log_size:
            self._log_size = size
            events = _read_events(self.log_path)
            last = events[-1]["ev"] if events else None
            self._run_started = time.monotonic() if last == "start" else None
        return self._run_started

    def verdict(self) -> str | None:
        self.peak = max(self.peak, rss_mb(self.proc.pid))
        if self.peak > self.mem_cap_mb:
            return OOM
        now = time.monotonic()
        if now > self.deadline:
            return TIMEOUT
        started = self._running_since() if self.run_limit_s is not None else None
        if (
            started is not None
            and self.run_limit_s is not None
            and now - started > self.run_limit_s
        ):
            return TIMEOUT
        return None

    def until_done(self, poll_s: float) -> tuple[str | None, float]:
        while self.proc.poll() is None:
            reason = self.verdict()
            if reason is not None:
                self.proc.kill()
                self.proc.wait()
                return reason, self.peak
            time.sleep(poll_s)
        return None, self.peak


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return events


def crash_reason(run: WorkerRun) -> str:
    """Why a worker died without saying so: the last line of its stderr, or the signal."""
    lines = [ln for ln in run.stderr_tail.strip().splitlines() if ln.strip()]
    if lines:
        return lines[-1]
    return f"worker exited with code {run.returncode}"


def apply_memory_run(
    res: MethodResult, run: WorkerRun, mem_cap_mb: float, timeout_s: float
) -> None:
    """Fold a memory worker (one method, one run) into ``res``."""
    for ev in run.events:
        if ev["ev"] == "base":
            res.base_mb = ev["rss_mb"]
        elif ev["ev"] == "fail":
            res.fail(ev["status"], ev.get("detail", ""))
        elif ev["ev"] == "run":
            res.first_s = ev["wall"]
        elif ev["ev"] == "end":
            res.peak_mb = ev["maxrss_mb"]
    if run.killed == OOM:
        res.fail(OOM, f"RSS above the {fmt_mb(mem_cap_mb)} cap")
        res.peak_mb = run.sampled_peak_mb
    elif run.killed == TIMEOUT:
        res.fail(TIMEOUT, f"killed: one run went on past {timeout_s:.0f} s")
    elif res.peak_mb is None and res.ok:
        res.fail(ERROR, crash_reason(run))


def apply_timing_run(
    results: dict[str, MethodResult],
    run: WorkerRun,
    mem_cap_mb: float,
    timeout_s: float,
    run_id: int = 0,
) -> str | None:
    """Fold a timing worker (several methods, interleaved rounds) into ``results``.

    Rounds are keyed ``"run_id:round"``, so ratios pair only runs of the same worker. Returns
    the method that was running when the worker was killed or crashed, if any (the caller
    marks it and may rerun the others without it).
    """
    for ev in run.events:
        m = ev.get("method")
        if ev["ev"] == "fail" and m in results:
            results[m].fail(ev["status"], ev.get("detail", ""))
        elif ev["ev"] == "run" and m in results and "hwm_mb" in ev:
            results[m].peak_mb = max(results[m].peak_mb or 0.0, ev["hwm_mb"])
        if ev["ev"] == "run" and m in results and ev["round"] >= 0:
            key = f"{run_id}:{ev['round']}"
            results[m].times[key] = ev["wall"]
            results[m].cpu[key] = ev["cpu"]
    finished = any(ev["ev"] == "end" for ev in run.events)
    culprit = run.last_started()
    if finished or culprit is None:
        return None
    if run.killed == OOM:
        results[culprit].fail(OOM, f"RSS above the {fmt_mb(mem_cap_mb)} cap while timing")
    elif run.killed == TIMEOUT:
        results[culprit].fail(TIMEOUT, f"killed while timing: past the {timeout_s:.0f} s limit")
    else:
        results[culprit].fail(ERROR, crash_reason(run))
    return culprit
