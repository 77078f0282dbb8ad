"""The local engine: read rows in file order, explain them in batches, write one Parquet shard
per ``rows_per_shard`` input rows, skipping the shards a previous run finished.

Within a shard the rows are batched by length (``batch.explain_by_length``), so a batch pads
little; the shard's rows are written in file order, and a shard is still the unit of
resumption. The rows of an unfinished shard are saved aside (``.state/partial``) every
:data:`SAVE_SECONDS` and when the run is stopped by Ctrl-C or SIGTERM, and the next run of the
same command starts the shard from them: an interrupted run loses at most the batch it was in
(a kill -9 at most :data:`SAVE_SECONDS` of work)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from .._progress import Bar
from .badrows import InputRow, RowError
from .batch import drop_duplicate_ids, explain_by_length, split_rows
from .config import ExplainerFactory, ExplainerLike, RunConfig, RunSummary
from .prepare import Prepared, RunInterrupted, begin, prepare, sigterm_interrupts, writing
from .progress import run_bar
from .writer import output_schema, to_table

#: an unfinished shard's rows are saved aside at most this often (and when interrupted)
SAVE_SECONDS = 60.0


def _shards(prep: Prepared, skip: set[int]) -> Iterator[tuple[int, list[InputRow | RowError]]]:
    size = prep.config.rows_per_shard
    for shard, rows in itertools.groupby(prep.source.rows(), key=lambda r: r.row // size):
        if shard not in skip:
            yield shard, list(rows)


def process(
    prep: Prepared,
    explainer: ExplainerLike,
    done: set[int],
    summary: RunSummary,
    bar: Bar,
) -> None:
    """Explain and commit every shard not in ``done``, updating ``summary``."""
    config, out = prep.config, prep.out
    schema = output_schema(config)
    names = list(schema.names)
    saved = summary.skipped
    for shard, rows in _shards(prep, done):
        records, failed = out.load_partial(shard, {r.row for r in rows}, names)
        before = (len(records), len(failed))
        have = {r["row"] for r in records} | {e.row for e in failed}
        summary.skipped += len(have)
        bar.update(len(have))
        good, bad = split_rows([r for r in rows if r.row not in have])
        bar.update(len(bad))
        failed += bad
        last_save = time.monotonic()

        def progress(n: int) -> None:
            nonlocal last_save
            bar.update(n)
            if time.monotonic() - last_save >= SAVE_SECONDS:
                out.save_partial(shard, to_table(records, schema), failed)  # noqa: B023
                last_save = time.monotonic()

        try:
            explain_by_length(explainer, good, config, progress, records=records, errors=failed)
        except KeyboardInterrupt:
            with writing(prep):
                out.save_partial(shard, to_table(records, schema), failed)
            raise RunInterrupted(saved + len(records) + len(failed), prep.total) from None
        prep.check_input()
        records.sort(key=lambda r: r["row"])
        records, dupes = drop_duplicate_ids(records, prep.seen_ids, config.id_column is not None)
        errors = sorted(failed + dupes, key=lambda e: e.row)
        out.commit_shard(shard, to_table(records, schema), errors)
        saved += len(records) + len(errors)
        summary.explained += max(0, len(records) - before[0])
        summary.errors += max(0, len(errors) - before[1])
        summary.truncated += sum(
            1 for r in records if r.get("truncated") or r.get("pair_truncated")
        )


def run_local(
    config: RunConfig,
    factory: ExplainerFactory,
    *,
    progress: bool | None = None,
    command: str | None = None,
) -> RunSummary:
    """Run ``config`` in this process; see ``embgrad.data.run``."""
    prep, explainer = prepare(config, factory)
    with writing(prep), prep.out.lock(), sigterm_interrupts():
        done = begin(prep, command)
        summary = RunSummary(
            prep.out.path, prep.total, skipped=sum(prep.shard_rows(s) for s in done)
        )
        work_started = time.perf_counter()
        try:
            with run_bar(prep.total, summary.skipped, progress) as bar:
                process(prep, explainer, done, summary, bar)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:  # between shards: every committed row is saved
            saved = summary.skipped + summary.explained + summary.errors
            raise RunInterrupted(saved, prep.total) from None
        summary.errors_total = prep.out.rebuild_errors()
    summary.work_seconds = time.perf_counter() - work_started
    summary.seconds = time.perf_counter() - prep.started
    return summary
