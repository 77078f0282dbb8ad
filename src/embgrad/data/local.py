"""The local engine: read rows in file order, explain them in batches, write one Parquet shard
per ``rows_per_shard`` input rows, skipping the shards a previous run finished.

Within a shard the rows are batched by length (``batch.explain_by_length``), so a batch pads
little; the shard's rows are written in file order, and a shard is still the unit of
resumption."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from .._progress import Bar
from .badrows import InputRow, RowError
from .batch import explain_by_length, split_rows
from .config import ExplainerFactory, ExplainerLike, RunConfig, RunSummary
from .prepare import Prepared, begin, prepare
from .progress import run_bar
from .writer import output_schema, to_table


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
    config = prep.config
    schema = output_schema(config)
    for shard, rows in _shards(prep, done):
        good, bad = split_rows(rows)
        bar.update(len(bad))
        records, failed = explain_by_length(explainer, good, config, bar.update)
        errors = sorted(bad + failed, key=lambda e: e.row)
        prep.out.commit_shard(shard, to_table(records, schema), errors)
        summary.explained += len(records)
        summary.errors += len(errors)
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
    with prep.out.lock():
        done = begin(prep, command)
        summary = RunSummary(
            prep.out.path, prep.total, skipped=sum(prep.shard_rows(s) for s in done)
        )
        work_started = time.perf_counter()
        with run_bar(prep.total, summary.skipped, progress) as bar:
            process(prep, explainer, done, summary, bar)
        summary.errors_total = prep.out.rebuild_errors()
    summary.work_seconds = time.perf_counter() - work_started
    summary.seconds = time.perf_counter() - prep.started
    return summary
