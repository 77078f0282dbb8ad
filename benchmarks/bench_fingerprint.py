"""What a data run's resume fingerprints cost (issue 22): the SHA-256 of the whole input file
(against the rows-count pass every run already makes), and the weights' fingerprints (the
model folder's files; a loaded model's parameters, for module: specs).

    PYTHONPATH=src python benchmarks/bench_fingerprint.py --mb 100 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from embgrad.data.badrows import Columns
from embgrad.data.readers import Source
from embgrad.models import minilm
from embgrad.models.load import files_digest, parameters_digest


def _corpus(path: Path, mb: int) -> None:
    line = 0
    with path.open("w", encoding="utf-8") as f:
        while f.tell() < mb * 2**20:
            f.write(json.dumps({"text": f"row {line} " + "a fairly ordinary sentence " * 8}) + "\n")
            line += 1


def _time(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "big.jsonl"
        _corpus(data, args.mb)
        src = Source(data, Columns("text"))
        size = data.stat().st_size / 2**20
        count = _time(src.count, args.rounds)
        sha = _time(src.fingerprint, args.rounds)
        print(f"input {size:.0f} MiB: count pass {count:.2f} s, full SHA-256 {sha:.2f} s "
              f"({size / sha:.0f} MiB/s), {sha / count:.2f}x the count pass")  # fmt: skip
    folder = Path(minilm.model_path())
    mib = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    files = _time(lambda: files_digest(folder), args.rounds)
    print(f"bundled model folder {mib:.0f} MiB: files SHA-256 {files:.2f} s")
    model, _, _ = minilm.load_minilm()
    params = _time(lambda: parameters_digest(model), args.rounds)
    n = sum(p.numel() for p in model.parameters())
    print(f"MiniLM loaded ({n / 1e6:.1f} M parameters): parameters SHA-256 {params:.2f} s")


if __name__ == "__main__":
    main()
