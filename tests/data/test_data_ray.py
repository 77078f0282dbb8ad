"""``--engine ray`` against the local engine: the same rows, row for row, and the same errors,
on one session-wide local Ray (2 CPUs). Two Ray pipelines in all (jsonl, then parquet)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import data_fakes  # noqa: E402
from data_fakes import (  # noqa: E402
    BAD_ROWS,
    RecordingExplainer,
    make_fake,
    make_generator,
    write_corpus,
)
from embgrad.data import RunConfig, run  # noqa: E402
from embgrad.data.ray_engine import (  # noqa: E402
    _cpus_per_actor,
    _ExplainWorker,
    _keep_pending,
    _parse_file,
    sort_window,
)

N = 60


def _both(config: RunConfig, tmp_path: Path) -> tuple[Any, Any, Any, Any]:
    local = run(replace(config, out=tmp_path / "local"), explainer_factory=make_fake)
    on_ray = run(
        replace(config, out=tmp_path / "ray", engine="ray", workers=2), explainer_factory=make_fake
    )
    frames = [
        pq.read_table(tmp_path / name / "data")
        .to_pandas()
        .sort_values("row")
        .reset_index(drop=True)
        for name in ("local", "ray")
    ]
    return local, on_ray, frames[0], frames[1]


@pytest.mark.ray
def test_ray_engine_writes_the_local_engines_rows_row_for_row(
    local_ray: Any, tmp_path: Path
) -> None:
    data = write_corpus(tmp_path / "corpus.jsonl", N, blank_every=9)
    config = RunConfig(
        data=data,
        text_column="text",
        pair_column="pair",
        out=tmp_path / "x",
        rows_per_shard=16,
        batch_size=4,
    )
    local, on_ray, a, b = _both(config, tmp_path)
    assert len(a) == N - len(BAD_ROWS)
    assert a.equals(b)
    local_errors = (tmp_path / "local" / "errors.jsonl").read_text()
    assert (tmp_path / "ray" / "errors.jsonl").read_text() == local_errors
    assert {json.loads(x)["row"]: json.loads(x)["kind"] for x in local_errors.splitlines()} == (
        BAD_ROWS
    )
    assert (on_ray.explained, on_ray.errors, on_ray.truncated) == (
        local.explained,
        local.errors,
        local.truncated,
    )
    names = sorted(p.name for p in (tmp_path / "ray" / "data").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "local" / "data").iterdir())
    assert names == [f"part-{s:06d}.parquet" for s in range(4)]  # one naming for both engines
    for name in names:
        assert pq.read_schema(tmp_path / "ray" / "data" / name).metadata == (
            pq.read_schema(tmp_path / "local" / "data" / name).metadata
        )
    again = run(
        replace(config, out=tmp_path / "ray", engine="ray", workers=2), explainer_factory=make_fake
    )
    assert again.skipped == N and again.explained == 0  # committed: nothing is redone


@pytest.mark.ray
def test_ray_engine_finishes_a_partial_local_run_of_a_parquet_file(
    local_ray: Any, tmp_path: Path
) -> None:
    texts = [f"text number {i} " + "x " * (i % 10) for i in range(N)]
    texts[7] = ""
    table = pa.table({"text": texts, "key": [f"id-{i}" for i in range(N)]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=25)
    config = RunConfig(
        data=tmp_path / "in.parquet",
        text_column="text",
        id_column="key",
        out=tmp_path / "local",
        rows_per_shard=20,
        batch_size=8,
    )
    run(config, explainer_factory=make_fake)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    (tmp_path / "ray" / "data" / "part-000000.parquet").unlink()  # as if killed before it
    (tmp_path / "ray" / "data" / "part-000002.parquet").unlink()
    summary = run(
        replace(config, out=tmp_path / "ray", engine="ray", workers=2), explainer_factory=make_fake
    )
    assert summary.skipped == 20 and summary.explained + summary.errors == 40
    a, b = (
        pq.read_table(tmp_path / name / "data")
        .to_pandas()
        .sort_values("row")
        .reset_index(drop=True)
        for name in ("local", "ray")
    )
    assert a.equals(b) and len(a) == N - 1
    assert list(b["id"][:3]) == ["id-0", "id-1", "id-2"]
    errors = (tmp_path / "ray" / "errors.jsonl").read_text()
    assert errors == (tmp_path / "local" / "errors.jsonl").read_text() and '"row": 7' in errors


@pytest.mark.ray
def test_a_ray_worker_killed_mid_run_is_retried_and_every_row_is_written_once(
    local_ray: Any, tmp_path: Path
) -> None:
    data = write_corpus(tmp_path / "corpus.jsonl", N)
    marker = tmp_path / "killed"
    config = RunConfig(data=data, text_column="text", out=tmp_path / "ray", rows_per_shard=16,
                       batch_size=4, engine="ray", workers=2)  # fmt: skip
    summary = run(config, explainer_factory=data_fakes.kill_once_factory(str(marker)))
    assert marker.read_text().isdigit()  # an actor process was SIGKILLed, once
    rows = pq.read_table(tmp_path / "ray" / "data").column("row").to_pylist()
    lines = (tmp_path / "ray" / "errors.jsonl").read_text().splitlines()
    errors = [json.loads(x)["row"] for x in lines]
    assert sorted(rows + errors) == list(range(N)) and len(set(rows)) == len(rows)
    assert summary.explained == N - len(BAD_ROWS) and summary.errors == len(BAD_ROWS)


def test_ray_skips_committed_shards_and_shares_cpus_without_deadlock() -> None:
    batch = pa.table({"__embgrad_row": list(range(10))})
    kept = _keep_pending(batch, done=[0, 2], rows_per_shard=3)
    assert kept.column("__embgrad_row").to_pylist() == [3, 4, 5, 9]

    class Cluster:
        def __init__(self, cpus: float) -> None:
            self.cpus = cpus

        def cluster_resources(self) -> dict[str, float]:
            return {"CPU": self.cpus}

    assert _cpus_per_actor(Cluster(2), 2) == 0.5  # 2 × 1 CPU on 2 CPUs would deadlock
    assert _cpus_per_actor(Cluster(2), 8) == 0.25
    assert _cpus_per_actor(Cluster(16), 4) == 3.75


def test_ray_log_lines_are_dropped_from_stderr_and_the_rest_passes(capfd: Any) -> None:
    import os

    from embgrad.data.ray_engine import drop_ray_log_lines

    with drop_ray_log_lines():
        os.write(2, b"[2026-12-01 11:16:29,990 E 18699 18699] core_worker.cc:2465: Actor wi")
        os.write(2, b"th class name ... max_restarts > 0.\nkeep this line\n")
        os.write(2, b"\rrows 1/2")  # a progress bar's partial line (sys.stderr is fd 2)
        os.write(2, b"[not a ray line] stays\n")
    assert capfd.readouterr().err == "keep this line\n\rrows 1/2[not a ray line] stays\n"


@pytest.mark.ray
def test_ray_engine_writes_a_continuation_run_like_the_local_engine(
    local_ray: Any, tmp_path: Path
) -> None:
    """``--continuation-column`` on Ray: the rows (matrices and step scores), the errors and
    the file metadata are the local engine's."""
    data = tmp_path / "gen.jsonl"
    rows = [
        {"text": f"prompt {i} " + "w " * (i % 5), "next": "" if i == 3 else f" goes {i} on"}
        for i in range(12)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = RunConfig(
        data=data,
        text_column="text",
        continuation_column="next",
        out=tmp_path / "x",
        rows_per_shard=5,
        batch_size=2,
    )
    local = run(replace(config, out=tmp_path / "local"), explainer_factory=make_generator)
    on_ray = run(
        replace(config, out=tmp_path / "ray", engine="ray", workers=2),
        explainer_factory=make_generator,
    )
    frames = [
        pq.read_table(tmp_path / name / "data")
        .to_pandas()
        .sort_values("row")
        .reset_index(drop=True)
        for name in ("local", "ray")
    ]
    assert len(frames[0]) == 11 and "scores" in frames[0].columns
    assert frames[0].to_json() == frames[1].to_json()
    assert (on_ray.explained, on_ray.errors) == (local.explained, local.errors) == (11, 1)
    errors = (tmp_path / "ray" / "errors.jsonl").read_text()
    assert errors == (tmp_path / "local" / "errors.jsonl").read_text() and '"row": 3' in errors
    for name in sorted(p.name for p in (tmp_path / "local" / "data").iterdir()):
        assert pq.read_schema(tmp_path / "ray" / "data" / name).metadata == (
            pq.read_schema(tmp_path / "local" / "data" / name).metadata
        )


def test_a_ray_actor_call_batches_its_rows_by_length_and_returns_them_in_row_order(
    tmp_path: Path,
) -> None:
    """What one actor does with its rows (in this process, no Ray): sorted by length into
    batches of --batch-size, every row explained once, records back in row order."""
    data = write_corpus(tmp_path / "corpus.jsonl", N)
    config = RunConfig(data=data, text_column="text", out=tmp_path / "out", batch_size=4)
    from embgrad.data.prepare import columns_of

    raw = pa.table({"bytes": [data.read_bytes()]})
    batch = _parse_file(raw, config=config, fmt="jsonl", columns=columns_of(config))
    fake = RecordingExplainer()
    table = _ExplainWorker(config, lambda spec, framework: fake)(batch)
    rows = table.column("row").to_pylist()
    assert rows == sorted(rows) and len(set(rows)) == len(rows) == batch.num_rows
    texts = [t for t, _ in fake.batches]
    batches = [b for b in texts if len(b) > 1]  # not the one-row retries of bad rows
    assert len(batches) >= 10 and all(len(b) <= 4 for b in texts)
    lengths = [len(t) for b in batches for t in b]
    assert lengths == sorted(lengths)  # one ordering across the call's batches
    in_file = [len(t) for t in batch.column("text").to_pylist() if t]
    assert in_file != sorted(in_file)  # the file is not sorted already


def test_the_sort_window_is_32_batches_at_most_a_shard_and_a_workers_share() -> None:
    config = RunConfig(data=Path("x.jsonl"), text_column="text", out=Path("o"), batch_size=16)
    assert sort_window(config, 10_000, 2) == 512
    assert sort_window(replace(config, rows_per_shard=100), 10_000, 2) == 100
    assert sort_window(config, 300, 2) == 150  # every worker gets a call
    assert sort_window(replace(config, rows_per_shard=8), 10_000, 2) == 16  # at least a batch
    assert sort_window(config, 5, 4) == 16
