"""Generation before/after a code move: ``bench_generation.py`` of an old checkout and of this
one, alternated (old, new, old, new, ...), each run one round of the paths ``embgrad`` and
``shared`` (bare PyTorch: one forward, batched vector-Jacobian products) in one process, so each
run's ratio embgrad / shared is paired against the machine's load at that moment.

Usage::

    python benchmarks/bench_generation_move.py --before /work/main --runs 5 --batch 8
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROW = re.compile(r"^\| (embgrad|shared) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$")


def one(tree: Path, batch: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_generation.py"), "--batches",
           str(batch), "--rounds", "1", "--paths", "embgrad,shared", "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    got = {m.group(1): float(m.group(2)) for line in out.splitlines() if (m := ROW.match(line))}
    return {"embgrad": got["embgrad"], "ratio": got["embgrad"] / got["shared"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the old checkout's root")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    res: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.runs):
        res["before"].append(one(args.before, args.batch, args.threads))
        res["after"].append(one(HERE.parent, args.batch, args.threads))
    print(f"# {args.runs} alternated runs, B = {args.batch}, prompt 32, 32 forced tokens, "
          f"gradient, {args.threads} thread(s), {os.cpu_count()} cores")  # fmt: skip
    print("| code | embgrad median s | embgrad / shared (median of per-run ratios) |")
    print("|---|---|---|")
    for name, runs in res.items():
        t = statistics.median(r["embgrad"] for r in runs)
        q = statistics.median(r["ratio"] for r in runs)
        print(f"| {name} | {t:.3f} | {q:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
