"""Generation before/after a code move: ``bench_generation.py`` of an old checkout and of this
one, alternated (old, new, old, new, ...), each run one process timing the paths ``embgrad``,
``inseq`` (Inseq 0.7.1 ``saliency``, the same workload as ``bench_generation.py``'s inseq path)
and ``shared`` (bare PyTorch: one forward, batched vector-Jacobian products), interleaved, so
each run's ratios embgrad / Inseq and embgrad / shared are paired against the machine's load at
that moment. Reported per code version: embgrad's median seconds and the medians of the per-run
ratios.

Inseq comes with the bench requirements (``make bench`` installs ``requirements/bench.txt``);
without it, ``--no-inseq`` measures against ``shared`` only.

Usage::

    python benchmarks/bench_generation_move.py --before /work/wt/before --runs 5 --batch 8
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROW = re.compile(r"^\| (embgrad|inseq|shared) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$")


def one(tree: Path, batch: int, threads: int, rounds: int, paths: list[str]) -> dict[str, float]:
    """One process of ``tree``'s bench_generation.py: median seconds per path."""
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_generation.py"), "--batches",
           str(batch), "--rounds", str(rounds), "--paths", ",".join(paths),
           "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{tree}: bench_generation.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    got = {m.group(1): float(m.group(2)) for ln in proc.stdout.splitlines() if (m := ROW.match(ln))}
    missing = [p for p in paths if p not in got]
    if missing:
        sys.exit(f"{tree}: no row for {missing} in bench_generation.py's output:\n{proc.stdout}")
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the old checkout's root")
    ap.add_argument("--runs", type=int, default=5, help="alternated pairs (before, after)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds per process (median)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-inseq", action="store_true", help="time embgrad and shared only")
    args = ap.parse_args(argv)
    paths = ["embgrad", "shared"] if args.no_inseq else ["embgrad", "inseq", "shared"]
    if not args.no_inseq and importlib.util.find_spec("inseq") is None:
        sys.exit(
            "Inseq is not installed in this Python: `make bench` installs it (or "
            "`pip install --no-deps -c requirements/constraints.txt -r requirements/bench.txt`); "
            "--no-inseq measures against the bare-PyTorch `shared` path only."
        )
    trees = {"before": args.before.resolve(), "after": HERE.parent}
    res: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for i in range(args.runs):
        for name, tree in trees.items():
            got = one(tree, args.batch, args.threads, args.rounds, paths)
            res[name].append(got)
            row = ", ".join(f"{p} {got[p]:.3f} s" for p in paths)
            print(f"# run {i + 1} {name}: {row}", flush=True)
    print(f"# {args.runs} alternated runs, B = {args.batch}, prompt 32, 32 forced tokens, "
          f"gradient, {args.rounds} timed round(s) per run, {args.threads} thread(s), "
          f"{os.cpu_count()} cores; ratios: median over runs of each run's ratio")  # fmt: skip
    others = [p for p in paths if p != "embgrad"]
    head = " | ".join(f"embgrad / {'Inseq' if p == 'inseq' else p}" for p in others)
    print(f"| code | embgrad median s | {head} |")
    print("|---" * (2 + len(others)) + "|")
    for name, runs in res.items():
        t = statistics.median(r["embgrad"] for r in runs)
        qs = [statistics.median(r["embgrad"] / r[p] for r in runs) for p in others]
        print(f"| {name} | {t:.3f} | " + " | ".join(f"{q:.2f}×" for q in qs) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
