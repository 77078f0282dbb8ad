"""``embgrad run`` throughput: the local engine vs the Python API in a loop, and Ray vs local.

Usage::

    python benchmarks/bench_run.py                 # 96 MiniLM sentence pairs, 3 rounds
    python benchmarks/bench_run.py --rows 48 --rounds 2 --no-ray
    python benchmarks/bench_run.py --threads 1      # torch intra-op threads of this process

One process, the bundled all-MiniLM-L6-v2 loaded once and shared by the API loop and the local
engine (so both time the same model on the same rows, batch for batch). Rounds interleave API
and engine (alternating which goes first); medians are printed, with CPU-time/wall to spot
runs disturbed by other load.

- API loop: ``Explainer.explain(texts, pairs=...)`` over batches of ``--batch-size`` rows.
- local engine: ``embgrad.data.run`` on a jsonl file of the same rows (read, explain, Parquet
  shards, errors file); rows/s over its work phase (the checks, the model load and the
  one-row preflight excluded; they are printed too). Overhead = 1 − engine rows/s ÷ API rows/s.
- Ray: ``--engine ray --workers 2`` on a local Ray with 2 CPUs (each actor loads its own
  model, 0.5 CPU each, so Ray gives each one torch thread); timed whole (Ray start, actor
  model loads, pipeline, commit), once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SUBJECTS = [
    "A man",
    "The woman",
    "A child",
    "Two dogs",
    "An old farmer",
    "The orchestra",
    "A young student",
    "The team",
]
VERBS = ["is playing", "watches", "repairs", "paints", "carries", "describes", "cleans", "sells"]
OBJECTS = [
    "a guitar",
    "the old bridge",
    "a red bicycle",
    "the evening news",
    "a small boat",
    "fresh bread",
    "the kitchen floor",
    "a wooden chair",
]


def make_rows(n: int) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        s, v, o = SUBJECTS[i % 8], VERBS[(i // 8) % 8], OBJECTS[(i * 3) % 8]
        rows.append({"text": f"{s} {v} {o}.", "pair": f"{SUBJECTS[(i + 1) % 8]} {v} {o}."})
    return rows


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Replay:
    """An explainer that returns results recorded from the real one: what is left when the
    engine runs with it is the engine's own cost (reading, records, Parquet, errors file)."""

    max_length = 256

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], list[Any]] = {}

    def record(self, texts: list[str], pairs: list[str], results: list[Any]) -> None:
        for i, key in enumerate(zip(texts, pairs, strict=True)):
            self.seen[key] = results[2 * i : 2 * i + 2]

    def explain(self, texts: list[str], pairs: list[str], targets: Any = None, **kw: Any) -> Any:
        return [a for key in zip(texts, pairs, strict=True) for a in self.seen[key]]


def api_loop(
    explainer: Any, rows: list[dict[str, str]], batch: int, replay: Replay | None = None
) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        texts, pairs = [r["text"] for r in chunk], [r["pair"] for r in chunk]
        results = explainer.explain(texts, pairs=pairs)
        if replay is not None:
            replay.record(texts, pairs, results)
    return time.perf_counter() - wall, _cpu() - cpu


class Timed:
    """Passes ``explain`` through to the real explainer and adds up the time spent inside it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.max_length, self.calls = inner, inner.max_length, []

    def explain(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner.explain(*args, **kwargs)
        finally:
            self.calls.append(time.perf_counter() - start)


def run_config(data: Path, out: Path, batch: int, **engine: Any) -> Any:
    """The run both engines time: the text/pair columns, ``batch`` rows per call, 4 per shard."""
    from embgrad.data import RunConfig

    return RunConfig(
        data=data,
        text_column="text",
        pair_column="pair",
        out=out,
        batch_size=batch,
        rows_per_shard=batch * 4,
        **engine,
    )


def engine(explainer: Any, data: Path, out: Path, batch: int) -> dict[str, float]:
    """One local-engine run: work-phase wall time, the part of it spent inside ``explain``
    (the first call, the one-row preflight, is before the work phase), CPU time, whole call."""
    from embgrad.data import run

    shutil.rmtree(out, ignore_errors=True)
    config = run_config(data, out, batch)
    timed = Timed(explainer)
    cpu = _cpu()
    summary = run(config, explainer_factory=lambda spec, framework: timed, progress=False)
    return {
        "work": summary.work_seconds,
        "inside": sum(timed.calls[1:]),
        "cpu": _cpu() - cpu,
        "total": summary.seconds,
    }


def ray_run(data: Path, out: Path, batch: int) -> dict[str, float]:
    from embgrad.data import run
    from embgrad.data.ray_engine import import_ray

    ray = import_ray()
    temp = tempfile.mkdtemp(prefix="embgrad-bench-ray-")
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    init = time.perf_counter() - t0
    try:
        shutil.rmtree(out, ignore_errors=True)
        config = run_config(data, out, batch, engine="ray", workers=2)
        summary = run(config, progress=False)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return {"init": init, "work": summary.work_seconds, "total": summary.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in this process (0: torch's default)"
    )
    args = parser.parse_args()

    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)

    import embgrad
    from embgrad.explain import Explainer

    rows = make_rows(args.rows)
    work = Path(tempfile.mkdtemp(prefix="embgrad-bench-run-"))
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    t0 = time.perf_counter()
    explainer = Explainer.from_spec(None)
    load = time.perf_counter() - t0
    api_loop(explainer, rows[: args.batch_size], args.batch_size)  # warm-up

    replay = Replay()
    api: list[float] = []
    api_cpu: list[float] = []
    runs: list[dict[str, float]] = []
    for k in range(args.rounds):  # interleaved; the order alternates between rounds
        for which in ("api", "engine") if k % 2 == 0 else ("engine", "api"):
            if which == "api":
                wall, cpu = api_loop(explainer, rows, args.batch_size, replay)
                api.append(wall)
                api_cpu.append(cpu)
                print(f"round {k}: API loop {wall:.2f} s (cpu/wall {cpu / wall:.2f})", flush=True)
                continue
            r = engine(explainer, data, work / "out", args.batch_size)
            runs.append(r)
            print(
                f"round {k}: local engine {r['work']:.2f} s work, of which "
                f"{r['work'] - r['inside']:.3f} s outside explain; {r['total']:.2f} s whole call "
                f"(cpu/wall {r['cpu'] / r['total']:.2f})",
                flush=True,
            )
    n = args.rows
    med = statistics.median
    api_rate = n / med(api)
    eng_rate = n / med([r["work"] for r in runs])
    outside = med([(r["work"] - r["inside"]) / r["work"] for r in runs])
    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"embgrad {embgrad.__version__}"
    )
    print(
        f"workload: {n} MiniLM sentence pairs, method gradient, hotflip_k 3, "
        f"batch {args.batch_size}; model load {load:.1f} s (not timed below)"
    )
    print(f"API loop (Explainer.explain)  {api_rate:7.1f} rows/s  (median of {args.rounds})")
    print(
        f"local engine (embgrad run)    {eng_rate:7.1f} rows/s  "
        f"({100 * (1 - eng_rate / api_rate):+.1f}% vs the API loop, wall, work phase)"
    )
    print(
        f"  engine overhead: {100 * outside:.1f}% of its work phase is spent outside "
        "Explainer.explain (median); whole call incl. checks + 1-row preflight: "
        f"{n / med([r['total'] for r in runs]):.1f} rows/s"
    )
    alone = [engine(replay, data, work / "replay", args.batch_size)["work"] for _ in range(3)]
    print(
        f"engine alone (replayed results) {1e3 * med(alone) / n:.2f} ms/row = "
        f"{100 * med(alone) / med(api):.1f}% of the API loop's time "
        "(read, validate, records, Parquet, errors file)"
    )
    if not args.no_ray:
        import ray

        r = ray_run(data, work / "ray", args.batch_size)
        print(
            f"Ray 2 CPUs, 2 actors          {n / r['work']:7.1f} rows/s  "
            f"({r['work']:.1f} s incl. actor model loads and commit; ray.init {r['init']:.1f} s"
            f"; ray {ray.__version__}): {(n / r['work']) / eng_rate:.2f}x the local engine's "
            "rows/s"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
