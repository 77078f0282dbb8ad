"""What the reachability check (issue 15 part 3) costs on a MiniLM-sized call, one thread.

``embgrad.gradients`` on all-MiniLM-L6-v2 (batch 8 × 64 tokens, eval, probe cached), every
path interleaved in one process, the order alternating per round; medians and the median of
per-round ratios are reported.

- torch: ``new`` (``autograd.grad(allow_unused=True)``, None for unused targets) against
  ``old`` (the previous backward: ``materialize_grads=True``, zeros for unused targets).
- gluon (imperative gluonnlp port): ``new`` against ``no_walk`` (``reaching`` stubbed out:
  the walk over the recorded graph removed); the pieces are also timed alone on the recorded
  graph of one forward: the walk, one ``get_symbol`` per lookup delta, and
  ``get_symbol(losses)`` + JSON (already paid for tied-table detection when the model has
  trainable parameters; new only for an all-frozen model).

Usage::

    python benchmarks/bench_reach.py [--rounds 15] [--framework torch|gluon|both]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

B, T = 8, 64


def _ids(vocab: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, vocab, size=(B, T))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def _interleave(paths: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in paths}
    for fn in paths.values():  # warm-up (probe verdict remembered, graphs built)
        fn()
    names = list(paths)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def _report(title: str, times: dict[str, list[float]], base: str) -> None:
    print(f"\n{title}: {len(times[base])} rounds, median seconds")
    ref = statistics.median(times[base])
    for name, ts in times.items():
        paired = statistics.median(a / b for a, b in zip(ts, times[base], strict=True))
        m = statistics.median(ts)
        print(
            f"  {name:10s} {m:.4f} s   ratio of medians ×{base}: {m / ref:.3f}"
            f"   median per-round ratio: {paired:.3f}"
        )


def bench_torch(rounds: int) -> None:
    import torch

    import embgrad
    from embgrad.backends import torch as tb
    from embgrad.models.minilm import load_minilm

    torch.set_num_threads(1)
    model, _, _ = load_minilm()
    ids = torch.as_tensor(_ids(model.config.vocab_size))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def loss(o: Any) -> Any:
        return o.last_hidden_state.pow(2).mean((1, 2))

    new_backward = tb.TorchSession.backward

    def old_backward(self: Any, fwd: Any, cotangent: Any, select: list[int], **kw: Any) -> Any:
        caps = [fwd.captures[k] for k in select]
        losses = fwd.state
        w = torch.as_tensor(cotangent, dtype=losses.dtype)
        grads = torch.autograd.grad(
            losses,
            [c.handle for c in caps],
            grad_outputs=w,
            retain_graph=kw["retain"],
            allow_unused=True,
            materialize_grads=True,
        )
        return list(grads), {}

    def run(backward: Any) -> Callable[[], Any]:
        def call() -> Any:
            tb.TorchSession.backward = backward
            try:
                return embgrad.gradients(model, inputs, loss, input_grads=False)
            finally:
                tb.TorchSession.backward = new_backward

        return call

    times = _interleave({"new": run(new_backward), "old": run(old_backward)}, rounds)
    _report(f"torch MiniLM B={B} T={T}, 1 thread", times, "old")


def bench_gluon(rounds: int) -> None:
    import mxnet as mx

    import embgrad
    from embgrad.backends import gluon_forward
    from embgrad.models.minilm import model_path
    from embgrad.models.minilm_gluon import load_gluon_bert

    model, cfg = load_gluon_bert(model_path())
    nd = mx.nd
    ids = nd.array(_ids(int(cfg["vocab_size"])))
    inputs = (ids, nd.zeros((B, T)), nd.full((B,), T))

    def loss(o: Any) -> Any:
        return (o[0] ** 2).mean(axis=(1, 2))

    real = gluon_forward.reaching

    def no_walk(nodes: Any, heads: Any, cut: Any = ()) -> Any:
        return range(len(nodes))

    def run(reach: Any) -> Callable[[], Any]:
        def call() -> Any:
            gluon_forward.reaching = reach
            try:
                res = embgrad.gradients(model, inputs, loss, input_grads=False)
                nd.waitall()
                return res
            finally:
                gluon_forward.reaching = real

        return call

    times = _interleave({"new": run(real), "no_walk": run(no_walk)}, rounds)
    _report(f"gluon MiniLM (imperative) B={B} T={T}", times, "no_walk")

    # the pieces alone, on one recorded forward's graph
    from embgrad.backends.gluon import GluonBackend

    with GluonBackend().open(model, mode="eval") as session:
        fwd = session.forward(inputs, {}, loss, seed=0, replace=None)
        losses = fwd.state.losses
        pieces: dict[str, list[float]] = {"walk": [], "get_symbol(deltas)": [], "graph json": []}
        for _ in range(rounds):
            t0 = time.perf_counter()
            graph = json.loads(mx.autograd.get_symbol(losses).tojson())
            t1 = time.perf_counter()
            real(graph["nodes"], graph["heads"])
            t2 = time.perf_counter()
            for c in fwd.captures:
                mx.autograd.get_symbol(c.handle).name  # noqa: B018
            t3 = time.perf_counter()
            pieces["graph json"].append(t1 - t0)
            pieces["walk"].append(t2 - t1)
            pieces["get_symbol(deltas)"].append(t3 - t2)
    call = statistics.median(times["new"])
    print(f"  pieces alone ({len(graph['nodes'])} recorded nodes, {len(fwd.captures)} lookups):")
    for name, ts in pieces.items():
        m = statistics.median(ts)
        print(f"    {name:20s} {m * 1e3:.3f} ms  ({m / call:.2%} of the call)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--framework", choices=["torch", "gluon", "both"], default="both")
    a = ap.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus")
    if a.framework in ("torch", "both"):
        bench_torch(a.rounds)
    if a.framework in ("gluon", "both"):
        bench_gluon(a.rounds)


if __name__ == "__main__":
    main()
