"""Padding and throughput of ``embgrad run`` on ragged real text: rows batched in file order
(before issue 12) against rows batched by length within a shard (now) — issue 12.

    python benchmarks/ragged_corpus.py /tmp/ragged.jsonl          # 2,000 rows of real text
    python benchmarks/bench_ragged.py /tmp/ragged.jsonl [--rows 2000] [--ig-rows 96]

One process, the bundled all-MiniLM-L6-v2 loaded once, 1 torch thread; the local engine
(``embgrad.data.run``) with batches of 16 rows and the default 1,000 rows per shard. For each
method (``gradient`` on ``--rows`` rows, ``integrated_gradients`` on ``--ig-rows`` rows) and each
input (pairs; single texts when the bundled model can explain them), the two orders run in
turn, the order alternating per round.  Reported: the share of the token positions the model
computed that were padding (counted at ``Explainer.encode``: B×T per batch against the mask's
sum) and rows/s over the run's work phase (model load excluded), median over rounds.  For
pairs, both sides of a pair go through one forward (the similarity loss needs both), so a pair
(8, 120) pads its short side to 120 whatever the batching: the "within pairs" share is that
floor (every pair padded to its own longer side only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Counting:
    """The explainer, counting the positions its batches compute and how many are padding."""

    def __init__(self, inner: Any, paired: bool) -> None:
        self.inner = inner
        self.max_length = inner.max_length
        self.computed = 0
        self.real = 0
        self.pair_floor = 0  # positions if each pair were padded to its own longer side only
        encode = inner.encode

        def counted(texts: list[str]) -> Any:
            batch = encode(texts)
            lengths = batch.mask.sum(1)
            self.computed += int(batch.mask.size)
            self.real += int(lengths.sum())
            per = lengths.reshape(-1, 2).max(1) * 2 if paired else lengths
            self.pair_floor += int(per.sum())
            return batch

        inner.encode = counted
        self.encode = encode  # uncounted: the length pass of the sort is not a model batch

    def explain(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.explain(*args, **kwargs)


def _subset(src: Path, n: int, dest: Path) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines()[:n]
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def one_run(
    explainer: Any, data: Path, out: Path, method: str, paired: bool, order: str
) -> dict[str, float]:
    import embgrad.data.batch as batching
    from embgrad.data import RunConfig, run

    shutil.rmtree(out, ignore_errors=True)
    counting = Counting(explainer, paired)
    config = RunConfig(
        data=data,
        text_column="text",
        pair_column="pair" if paired else None,
        out=out,
        method=method,
        batch_size=16,
    )
    saved = batching.by_length
    if order == "file":
        batching.by_length = lambda rows, explainer=None: list(rows)  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        summary = run(config, explainer_factory=lambda spec, framework: counting, progress=False)
    finally:
        batching.by_length = saved
        del explainer.encode  # the class's method again
    return {
        "rows_per_s": summary.explained / summary.work_seconds,
        "padding": 1.0 - counting.real / counting.computed,
        "pair_floor": 1.0 - counting.real / counting.pair_floor,
        "seconds": time.perf_counter() - t0,
        "explained": summary.explained,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--ig-rows", type=int, default=96)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--single", action="store_true", help="also single texts")
    p.add_argument("--no-pairs", action="store_true", help="single texts only (with --single)")
    a = p.parse_args(argv)
    import torch

    from embgrad.explain import Explainer

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    explainer = Explainer.from_spec(None)
    print(f"model load {time.perf_counter() - t0:.1f} s", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ragged-"))
    results: dict[str, Any] = {}
    inputs = ([] if a.no_pairs else [True]) + ([False] if a.single else [])
    if not inputs:
        p.error("--no-pairs leaves nothing to measure without --single")
    for method, n in (("gradient", a.rows), ("integrated_gradients", a.ig_rows)):
        data = _subset(a.data, n, tmp / f"{n}.jsonl")
        for paired in inputs:
            runs: dict[str, list[dict[str, float]]] = {"file": [], "length": []}
            for r in range(a.rounds):
                for order in ("file", "length") if r % 2 == 0 else ("length", "file"):
                    res = one_run(explainer, data, tmp / "out", method, paired, order)
                    runs[order].append(res)
                    print(f"{method} {'pairs' if paired else 'single'} {order}: {res}", flush=True)
            key = f"{method}/{'pairs' if paired else 'single'}/{n}"
            results[key] = {
                order: {
                    "padding": statistics.median(x["padding"] for x in xs),
                    "pair_floor": statistics.median(x["pair_floor"] for x in xs),
                    "rows_per_s": statistics.median(x["rows_per_s"] for x in xs),
                }
                for order, xs in runs.items()
            }
            f, s = results[key]["file"], results[key]["length"]
            print(
                f"{key}: padding {f['padding']:.1%} -> {s['padding']:.1%}; rows/s "
                f"{f['rows_per_s']:.2f} -> {s['rows_per_s']:.2f} "
                f"({s['rows_per_s'] / f['rows_per_s']:.2f}x); padding within pairs alone "
                f"(each pair padded to its longer side): {s['pair_floor']:.1%}",
                flush=True,
            )
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"threads": a.threads, "rounds": a.rounds, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
