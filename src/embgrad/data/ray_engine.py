"""``--engine ray``: the same rows and files as the local engine, computed by Ray Data.

Pipeline: read in Ray tasks (jsonl and csv through ``read_binary_files``; Parquet one task per
row group), parsed by the local engine's parsers so that row indices and bad-row handling are
identical → normalised rows with their index → only the shards not yet done → ``map_batches``
over an actor pool (``ActorPoolStrategy``), one explainer per actor, each call's rows batched by
length (``sort_window``), per-row errors emitted as data
→ gathered per shard by the driver and committed as the local engine commits its shards
(``OUT/data/part-NNNNNN.parquet``, see ``outdir``), each as soon as all its rows are in.

Actors get fractional CPUs (``(cluster CPUs − 1) / workers``, at least 0.25): 2 actors with one
whole CPU each on a 2-CPU cluster deadlock (the read task waits for a CPU forever).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import EmbgradError, InputError
from ._deps import require
from .badrows import Columns, InputRow, RowError
from .batch import drop_duplicate_ids, explain_by_length, split_rows
from .config import ExplainerFactory, ExplainerLike, RunConfig, RunSummary
from .prepare import (
    Prepared,
    RunInterrupted,
    begin,
    columns_of,
    load_explainer,
    prepare,
    sigterm_interrupts,
    writing,
)
from .readers import parse_bytes, rows_from_table
from .writer import output_schema, to_table

DEFAULT_WORKERS = 2
_ROW = "__embgrad_row"
_ERROR_COLUMNS = ("error_kind", "error_reason")


def import_ray() -> Any:
    """``import ray`` (and ray.data) with usage stats and token auth off unless set."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray = require("ray", "ray")
    require("ray.data", "ray", "ray[data]")
    return ray


#: the watchdog of a local Ray this run started: it records the driver's descendants (gcs,
#: raylet, agents, workers) every half second and, when the driver's pipe closes (the driver
#: ended, kill -9 included), SIGKILLs those still alive (matched by start time, so a reused pid
#: is never hit) and removes Ray's session folder. Ray's own agents otherwise outlive a killed
#: driver by 60-90 s (docs/data-runs.md).
_WATCHDOG = r"""
import os, select, shutil, signal, sys
driver, temp, me = int(sys.argv[1]), sys.argv[2], os.getpid()

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[1]), parts[19]
    except (OSError, IndexError, ValueError):
        return None

def descendants():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            got = stat(int(name))
            if got is not None:
                children.setdefault(got[0], []).append((int(name), got[1]))
    out, todo = {}, [driver]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid != me and pid not in out:
                out[pid] = start
                todo.append(pid)
    return out

seen = {}
while True:
    seen.update(descendants())
    ready, _, _ = select.select([0], [], [], 0.5)
    if ready and not os.read(0, 4096):
        break
for pid, start in seen.items():
    got = stat(pid)
    if got is not None and got[1] == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
shutil.rmtree(temp, ignore_errors=True)
"""


def _start_watchdog(temp: str) -> subprocess.Popen[bytes] | None:
    """The watchdog of a local Ray (Linux, where /proc lists processes); None elsewhere."""
    if not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), temp],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the driver's process group does not reach it
    )


def _stop_watchdog(watchdog: subprocess.Popen[bytes] | None) -> None:
    if watchdog is None:
        return
    with contextlib.suppress(OSError):
        if watchdog.stdin is not None:
            watchdog.stdin.close()
    try:
        watchdog.wait(timeout=30)
    except subprocess.TimeoutExpired:
        watchdog.kill()


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Use the running Ray, join ``address``, or start a private local one (stopped after)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    temp = None
    watchdog = None
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"--ray-address {address}: cannot join the cluster: {exc}") from exc
    else:
        temp = tempfile.mkdtemp(prefix="embgrad-ray-")
        watchdog = _start_watchdog(temp)
        try:
            ray.init(
                num_cpus=max(2, os.cpu_count() or 2),
                include_dashboard=False,
                _temp_dir=temp,
                **quiet,
            )
        except BaseException:
            _stop_watchdog(watchdog)
            raise
    try:
        yield ray
    finally:
        ray.shutdown()
        _stop_watchdog(watchdog)
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


#: a C++ log line of Ray's driver: ``[2026-12-01 11:16:29,990 E 18699 18699] core_worker.cc:…``
_RAY_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\] \S+\.(cc|h):\d+")


@contextlib.contextmanager
def drop_ray_log_lines(fd: int = 2) -> Iterator[None]:
    """Drop Ray's C++ log lines from ``fd`` (stderr) while the block runs; everything else
    (the progress bar, Python's own messages) passes through unchanged and in order.

    Ray's driver prints, on every run with an actor pool, an error-level line from
    core_worker.cc (the pool's constructor arguments are in the object store while
    ``max_restarts > 0``), which alarms and means nothing here; failures reach the user as the
    job's exception. ``RAY_BACKEND_LOG_LEVEL`` cannot silence it without printing a line of
    its own, so the lines are filtered at the file descriptor.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):  # no real stderr (an embedded interpreter): leave it alone
        yield
        return
    read, write = os.pipe()
    os.dup2(write, fd)
    os.close(write)

    def pump() -> None:
        buf = b""
        while True:
            chunk = os.read(read, 65536)
            if not chunk:
                break
            buf += chunk
            while buf:
                end = buf.find(b"\n")
                if end < 0:
                    if buf.startswith(b"["):  # may be a log line: wait for its end
                        break
                    os.write(saved, buf)
                    buf = b""
                    break
                line, buf = buf[: end + 1], buf[end + 1 :]
                if not _RAY_LOG_LINE.match(line):
                    os.write(saved, line)
        if buf:
            os.write(saved, buf)

    thread = threading.Thread(target=pump, name="embgrad-ray-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)
        os.close(read)
        os.close(saved)


@contextlib.contextmanager
def data_context(ray: Any, progress: bool) -> Iterator[Any]:
    """Ray Data settings for one run (order kept, quiet: one progress bar on a terminal, no
    per-operator bars or stats), restored afterwards."""
    ctx = ray.data.DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start", "enable_auto_log_stats",
             "enable_operator_progress_bars")  # fmt: skip
    saved = {n: getattr(ctx, n) for n in names if hasattr(ctx, n)}
    saved_order = ctx.execution_options.preserve_order
    logger = logging.getLogger("ray.data")
    saved_level = logger.level
    ctx.enable_progress_bars = progress
    if "enable_operator_progress_bars" in saved:  # one bar for the job, not one per operator
        ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.execution_options.preserve_order = True
    logger.setLevel(logging.ERROR)
    try:
        yield ctx
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)
        ctx.execution_options.preserve_order = saved_order
        logger.setLevel(saved_level)


# -- normalised rows: what the actors receive -----------------------------------------------


def _normal_schema(config: RunConfig) -> Any:
    pa = require("pyarrow", "data")
    id_type = pa.string() if config.id_column is not None else pa.int64()
    return pa.schema(
        [
            (_ROW, pa.int64()),
            ("id", id_type),
            ("text", pa.string()),
            ("pair", pa.string()),
            ("label", pa.string()),
            ("continuation", pa.string()),
            ("error_kind", pa.string()),
            ("error_reason", pa.string()),
        ]
    )


def _normalise(rows: Iterator[InputRow | RowError], config: RunConfig) -> Any:
    pa = require("pyarrow", "data")
    out = []
    for r in rows:
        if isinstance(r, InputRow):
            out.append(
                {
                    _ROW: r.row,
                    "id": r.id,
                    "text": r.text,
                    "pair": r.pair,
                    "label": r.label,
                    "continuation": r.continuation,
                }
            )
        else:
            out.append({_ROW: r.row, "id": r.id, "error_kind": r.kind, "error_reason": r.reason})
    return pa.Table.from_pylist(out, schema=_normal_schema(config))


def _denormalise(table: Any) -> list[InputRow | RowError]:
    out: list[InputRow | RowError] = []
    for r in table.to_pylist():
        if r["error_kind"] is None:
            out.append(
                InputRow(r[_ROW], r["id"], r["text"], r["pair"], r["label"], r["continuation"])
            )
        else:
            out.append(RowError(r[_ROW], r["id"], r["error_kind"], r["error_reason"]))
    return out


def _parse_file(batch: Any, *, config: RunConfig, fmt: str, columns: Columns) -> Any:
    """jsonl / csv file bytes → normalised rows (the local engine's parser)."""
    import io

    pa = require("pyarrow", "data")
    tables = [
        _normalise(parse_bytes(io.BytesIO(data), fmt, columns), config)
        for data in batch.column("bytes").to_pylist()
    ]
    return pa.concat_tables(tables)


def _parse_row_groups(batch: Any, *, config: RunConfig, path: str, columns: Columns) -> Any:
    """(row group, first row) pairs of a Parquet file → its normalised rows."""
    pa = require("pyarrow", "data")
    pq = require("pyarrow.parquet", "data", "pyarrow")
    file = pq.ParquetFile(path)
    present = [c for c in columns.used() if c in file.schema_arrow.names]
    tables = []
    for group, start in zip(
        batch.column("group").to_pylist(), batch.column("start").to_pylist(), strict=True
    ):
        table = file.read_row_group(group, columns=present)
        index = range(start, start + table.num_rows)
        tables.append(_normalise(rows_from_table(table, columns, index), config))
    return pa.concat_tables(tables)


def _keep_pending(batch: Any, *, done: list[int], rows_per_shard: int) -> Any:
    """Drop the rows of shards a previous run committed."""
    pa = require("pyarrow", "data")
    pc = require("pyarrow.compute", "data", "pyarrow")
    shard = pc.divide(batch.column(_ROW), pa.scalar(rows_per_shard, pa.int64()))
    return batch.filter(pc.invert(pc.is_in(shard, value_set=pa.array(done, pa.int64()))))


class _ExplainWorker:
    """One actor: one explainer; normalised rows in, output rows plus error columns out."""

    def __init__(self, config: RunConfig, factory: ExplainerFactory) -> None:
        self.config = config
        self.explainer: ExplainerLike = load_explainer(config, factory)
        pa = require("pyarrow", "data")
        base = output_schema(config)
        self.schema = pa.schema(
            [*base, *(pa.field(n, pa.string()) for n in _ERROR_COLUMNS)], metadata=base.metadata
        )

    def __call__(self, batch: Any) -> Any:
        pa = require("pyarrow", "data")
        good, bad = split_rows(_denormalise(batch))
        records, failed = explain_by_length(self.explainer, good, self.config)
        for e in bad + failed:
            records.append(
                {"row": e.row, "id": e.id, "error_kind": e.kind, "error_reason": e.reason}
            )
        records.sort(key=lambda r: r["row"])
        return pa.Table.from_pylist(records, schema=self.schema)


# -- the run ------------------------------------------------------------------------------


def _read(ray: Any, prep: Prepared) -> Any:
    config, columns = prep.config, columns_of(prep.config)
    path = str(prep.source.path.resolve())
    if prep.source.fmt == "parquet":
        # One task per row group, which knows its first row's index (Dataset.zip with a
        # range would too, but it is deprecated: Ray does not guarantee its ordering).
        pq = require("pyarrow.parquet", "data", "pyarrow")
        meta = pq.ParquetFile(path).metadata
        starts = [0]
        for g in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(g).num_rows)
        groups = [{"group": g, "start": starts[g]} for g in range(meta.num_row_groups)]
        return ray.data.from_items(groups, override_num_blocks=max(1, len(groups))).map_batches(
            _parse_row_groups,
            fn_kwargs={"config": config, "path": path, "columns": columns},
            batch_format="pyarrow",
            batch_size=1,
        )
    return ray.data.read_binary_files(path).map_batches(
        _parse_file,
        fn_kwargs={"config": config, "fmt": prep.source.fmt, "columns": columns},
        batch_format="pyarrow",
    )


#: batches per actor call: the rows of one call are batched by length among themselves
SORT_WINDOW_BATCHES = 32


def sort_window(config: RunConfig, pending: int, workers: int) -> int:
    """Rows per actor call. Each call sorts its rows by length before batching them, so the
    window bounds padding: on ragged real text, single texts in batches of 16 leave 62 % of
    the computed positions padding in file order, 21 % sorted within 128 rows, 12 % within 256
    and 3 % within 1,000 (``benchmarks/RESULTS-data.md``). A shard is the most a call needs,
    and a small run is still cut into a call per worker."""
    share = math.ceil(pending / max(1, workers))
    window = min(config.rows_per_shard, SORT_WINDOW_BATCHES * config.batch_size, share)
    return max(config.batch_size, window)


def _cpus_per_actor(ray: Any, workers: int) -> float:
    cpus = float(ray.cluster_resources().get("CPU", 2))
    share = (cpus - 1) / workers
    return max(0.25, min(share, math.floor(share * 4) / 4))


def _pipeline(ray: Any, prep: Prepared, factory: ExplainerFactory, done: set[int]) -> Any:
    config = prep.config
    workers = config.workers or DEFAULT_WORKERS
    pending = prep.total - sum(prep.shard_rows(s) for s in done)
    ds = _read(ray, prep)
    if done:
        ds = ds.map_batches(
            _keep_pending,
            fn_kwargs={"done": sorted(done), "rows_per_shard": config.rows_per_shard},
            batch_format="pyarrow",
        )
    window = sort_window(config, pending, workers)
    blocks = min(4096, max(2 * workers, math.ceil(pending / window)))
    ds = ds.repartition(blocks)
    return ds.map_batches(
        _ExplainWorker,
        fn_constructor_args=(config, factory),
        batch_size=window,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=_cpus_per_actor(ray, workers),
    )


def run_ray(
    config: RunConfig,
    factory: ExplainerFactory,
    *,
    progress: bool | None = None,
    command: str | None = None,
) -> RunSummary:
    """Run ``config`` on Ray; see ``embgrad.data.run``. Commits each shard once all its rows
    are in; Ray's C++ log lines are kept off stderr (:func:`drop_ray_log_lines`)."""
    import_ray()
    prep, explainer = prepare(config, factory)
    del explainer  # checked here; every actor loads its own
    show = sys.stderr.isatty() if progress is None else progress
    finished = prep.out.manifest.is_file() and len(prep.out.done()) >= prep.n_shards
    with writing(prep), contextlib.ExitStack() as stack:
        # Ray starts (or joins) before the manifest is written: a bad address leaves no trace.
        ray = None if finished else stack.enter_context(ray_session(config.ray_address))
        # after ray.init, which installs a SIGTERM handler that aborts the driver
        stack.enter_context(sigterm_interrupts())
        stack.enter_context(prep.out.lock())
        done = begin(prep, command, partial=False)
        summary = RunSummary(
            prep.out.path, prep.total, skipped=sum(prep.shard_rows(s) for s in done)
        )
        started = time.perf_counter()
        todo = [s for s in range(prep.n_shards) if s not in done]
        if todo:
            if ray is None:  # a shard found damaged on a finished run: redo it
                ray = stack.enter_context(ray_session(config.ray_address))
                stack.enter_context(sigterm_interrupts())
            # after Ray started: its daemons must not inherit the filter's pipe
            try:
                with data_context(ray, show), drop_ray_log_lines():
                    _execute(ray, prep, factory, done, todo, summary)
            except KeyboardInterrupt:
                saved = summary.skipped + summary.explained + summary.errors
                raise RunInterrupted(saved, prep.total) from None
        summary.errors_total = prep.out.rebuild_errors()
    summary.work_seconds = time.perf_counter() - started
    summary.seconds = time.perf_counter() - prep.started
    return summary


def _execute(
    ray: Any,
    prep: Prepared,
    factory: ExplainerFactory,
    done: set[int],
    todo: list[int],
    summary: RunSummary,
) -> None:
    """Stream the pipeline's output and commit each shard as the local engine does
    (``part-NNNNNN``) as soon as all its rows are in (order is preserved), so the driver holds
    about one shard at a time and a job stopped midway (Ctrl-C, SIGTERM, a failure) keeps the
    shards it committed."""
    schema = output_schema(prep.config)
    size = prep.config.rows_per_shard
    pending: dict[int, list[dict[str, Any]]] = {}
    batches = iter(
        _pipeline(ray, prep, factory, done).iter_batches(batch_format="pyarrow", batch_size=None)
    )
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # RayTaskError wraps the actor's exception
            raise EmbgradError(
                f"the Ray job failed; the {summary.explained + summary.errors} rows of the "
                f"shards committed before are kept (run the same command again to redo the "
                f"rest): {exc}"
            ) from exc
        if batch is None:
            break
        for record in batch.to_pylist():
            shard = int(record["row"]) // size
            rows = pending.setdefault(shard, [])
            rows.append(record)
            if len(rows) == prep.shard_rows(shard):
                _commit(prep, shard, pending.pop(shard), schema, summary)
    if pending:
        got = {s: len(r) for s, r in sorted(pending.items())}
        raise EmbgradError(
            f"the Ray job returned incomplete shards (shard: rows) {got}; they were not "
            "committed: run the same command again to redo them"
        )


def _commit(
    prep: Prepared, shard: int, records: list[dict[str, Any]], schema: Any, summary: RunSummary
) -> None:
    """One shard's output rows and errors, committed (see ``OutDir.commit_shard``)."""
    records.sort(key=lambda r: r["row"])
    good = [
        {k: v for k, v in r.items() if k not in _ERROR_COLUMNS}
        for r in records
        if r["error_kind"] is None
    ]
    errors = [
        RowError(r["row"], r["id"], r["error_kind"], r["error_reason"])
        for r in records
        if r["error_kind"] is not None
    ]
    prep.check_input()
    good, dupes = drop_duplicate_ids(good, prep.seen_ids, prep.config.id_column is not None)
    errors = sorted(errors + dupes, key=lambda e: e.row)
    prep.out.commit_shard(shard, to_table(good, schema), errors)
    summary.explained += len(good)
    summary.errors += len(errors)
    summary.truncated += sum(1 for r in good if r.get("truncated") or r.get("pair_truncated"))
