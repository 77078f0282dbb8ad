"""Per-call cost of two embgrad versions on the Gluon LSTM classifier, interleaved in one process.

The second version is a copy of another checkout's ``src/embgrad`` imported under another
package name (embgrad imports itself only relatively), so both run call by call, alternating,
on the same model and machine state: the fair comparison on a loaded machine. Times
``gradients(check=...)`` plus the per-sample table rows, hybridized and not, B=32, T=50,
V=10000, D=128, H=256 (the model of ``bench_gluon_lstm.py``); medians of CPU and wall time.

Usage: ``cp -r /work/main/src/embgrad /tmp/x/embgrad_main &&
PYTHONPATH=src:/tmp/x python benchmarks/bench_gluon_overhead.py --other embgrad_main``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
import warnings
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import gluon, nd  # noqa: E402

import embgrad  # noqa: E402
from bench_gluon_lstm import Classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--other", default="embgrad_main")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    other = importlib.import_module(args.other)
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    x = nd.array(rng.integers(0, 10000, size=(args.batch, 50)))
    y = nd.array(rng.integers(0, 2, size=(args.batch,)))
    ce = gluon.loss.SoftmaxCELoss()
    nets = {}
    for kind in ("hybridized", "imperative"):
        net = Classifier()
        net.initialize(mx.init.Xavier())
        if kind == "hybridized":
            net.hybridize(static_alloc=True)
        net(x)
        nets[kind] = net

    def call(lib: Any, net: Any, check: str) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        res = lib.gradients(net, x, lambda o: ce(o, y), check=check)
        for lk in res:
            lk.table_grad()
            lk.output_grad.asnumpy()
        return time.perf_counter() - w, time.process_time() - c

    libs = {"this": embgrad, args.other: other}
    cases = [(k, c) for k in nets for c in ("off", "auto")]
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for lib in libs.values():  # warm-up (and the cached probe)
        for kind, check in cases:
            call(lib, nets[kind], check)
    for r in range(args.rounds):
        order = list(libs.items()) if r % 2 == 0 else list(libs.items())[::-1]
        for kind, check in cases:
            for name, lib in order:
                times.setdefault((kind, check, name), []).append(call(lib, nets[kind], check))
    print(f"B={args.batch}, {args.rounds} interleaved rounds, medians (ms)")
    print(f"| model | check | clock | {args.other} | this | ratio |")
    print("|---|---|---|---|---|---|")
    for kind, check in cases:
        for i, clock in enumerate(("wall", "cpu")):
            a = statistics.median(t[i] for t in times[(kind, check, args.other)])
            b = statistics.median(t[i] for t in times[(kind, check, "this")])
            print(f"| {kind} | {check} | {clock} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.3f}x |")


if __name__ == "__main__":
    main()
