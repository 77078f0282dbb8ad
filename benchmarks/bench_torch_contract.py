"""Issue 21 (PyTorch): what the contract fixes cost on the per-call path, old code vs new.

The fixes add to every torch call: a ``.grad`` guard (each parameter's ``.grad`` read before and
after; those holding a tensor set aside for the call and put back), an argument scan for table
uses in the ``TorchFunctionMode`` (``tied`` from what ran), ``__getitem__`` / ``index_select`` /
``take`` routed through the recorder (lookups written as indexing), the caller's frame looked up
per lookup (naming) and ``get_input_embeddings()`` asked once per call (roles).

Workloads (1 torch thread, eval mode, the bundled all-MiniLM-L6-v2, ``layers="*word*"``, probe
remembered — the setting of ``bench_small.py``):

- ``minilm-B1-T8``: ``embgrad.gradients`` per call; ``minilm-B1-T8-grad``: the same with every
  parameter holding a ``.grad`` (a user's gradient accumulation mid-way), where the guard sets
  aside and restores 101 ``.grad`` tensors; ``minilm-B8-T64``.
- ``guard``: the ``.grad`` guard alone (new code only), µs per call, nothing held / all held.

Old and new run in one process, interleaved: the old tree (``git archive REV src``) is imported
as the package ``embgrad_old``; in every round each variant makes ``--inner`` calls in turn
(order alternating each round) and the round's ratio is new / old of their medians (wall
time, and the thread's CPU time, less disturbed by other processes on a shared machine); the
table gives the median over rounds. ``recorder`` times the model's forward alone under each
version's ``LookupRecorder`` (the mode's share of the per-call path); ``ops-200`` 200 ×
(``F.linear`` on a registered weight + a slice) under it (the per-torch-call cost alone).

    python benchmarks/bench_torch_contract.py --old 3046808 --rounds 15 --inner 10
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any


def _load_old(rev: str, root: str, tmp: str) -> Any:
    archive = subprocess.run(
        ["git", "-C", root, "archive", rev, "src/embgrad"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    os.rename(os.path.join(tmp, "src", "embgrad"), os.path.join(tmp, "src", "embgrad_old"))
    sys.path.insert(0, os.path.join(tmp, "src"))
    return importlib.import_module("embgrad_old")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="3046808", help="git revision of the old code")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=10)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    import embgrad
    from embgrad.backends.torch import _hide_grads, _restore_grads
    from embgrad.models.minilm import model_path, quiet_transformers

    torch.set_num_threads(1)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp()
    old = _load_old(a.old, root, tmp)
    versions = {"old": old, "new": embgrad}
    model = quiet_transformers().AutoModel.from_pretrained(str(model_path())).eval()
    params = list(model.parameters())
    g = torch.Generator().manual_seed(0)

    def call(pkg: Any, b: int, t: int) -> Any:
        ids = torch.randint(1000, model.config.vocab_size, (b, t), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        def loss(out: Any) -> torch.Tensor:
            return out.last_hidden_state.sum(1)[:, 0]

        return lambda: pkg.gradients(model, inputs, loss, layers="*word*")

    def recorder(pkg: Any) -> Any:
        capture = importlib.import_module(pkg.__name__ + ".backends.torch_capture")
        tables = importlib.import_module(pkg.__name__ + ".backends.torch_tables")
        ids = torch.randint(1000, model.config.vocab_size, (1, 8), generator=g)

        def run() -> None:
            with torch.enable_grad(), capture.LookupRecorder(tables.TableNames(model)):
                model(input_ids=ids)

        return run

    def ops(pkg: Any) -> Any:
        """200 × (F.linear on a registered weight + a slice): the mode's per-call path alone."""
        capture = importlib.import_module(pkg.__name__ + ".backends.torch_capture")
        tables = importlib.import_module(pkg.__name__ + ".backends.torch_tables")
        lin = torch.nn.Linear(16, 16)
        x = torch.randn(2, 16)
        names = tables.TableNames(lin)

        def run() -> None:
            with torch.enable_grad(), capture.LookupRecorder(names):
                for _ in range(200):
                    torch.nn.functional.linear(x, lin.weight, lin.bias)
                    x[:, :8]

        return run

    def held(fn: Any) -> Any:
        def run() -> Any:
            for p in params:
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad
            return fn()

        return run

    work = {
        "minilm-B1-T8": {k: call(v, 1, 8) for k, v in versions.items()},
        "minilm-B1-T8-grad": {k: held(call(v, 1, 8)) for k, v in versions.items()},
        "minilm-B8-T64": {k: call(v, 8, 64) for k, v in versions.items()},
        "recorder-B1-T8": {k: recorder(v) for k, v in versions.items()},
        "ops-200": {k: ops(v) for k, v in versions.items()},
    }
    for fns in work.values():
        for fn in fns.values():
            fn()
            fn()
        for p in params:
            p.grad = None
    ratios: dict[str, list[float]] = {k: [] for k in work}
    cpu_ratios: dict[str, list[float]] = {k: [] for k in work}
    ms: dict[str, dict[str, list[float]]] = {k: {"old": [], "new": []} for k in work}
    for r in range(a.rounds):
        for name, fns in work.items():
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            med, cpu = {}, {}
            for v in order:
                ts, cs = [], []
                for _ in range(a.inner):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    fns[v]()
                    ts.append(time.perf_counter() - t0)
                    cs.append(time.thread_time() - c0)
                med[v] = statistics.median(ts) * 1e3
                cpu[v] = statistics.median(cs) * 1e3
                ms[name][v].append(med[v])
            ratios[name].append(med["new"] / med["old"])
            cpu_ratios[name].append(cpu["new"] / cpu["old"])
            if name != "minilm-B1-T8-grad":
                for p in params:
                    p.grad = None
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in ratios.items()), flush=True)

    def guard() -> None:
        for _ in range(100):
            _restore_grads(params, _hide_grads(params))

    guard_us = {}
    for state in ("none", "held"):
        for p in params:
            p.grad = None if state == "none" else torch.zeros_like(p)
        guard()
        ts = []
        for _ in range(20):
            t0 = time.perf_counter()
            guard()
            ts.append((time.perf_counter() - t0) * 1e4)  # µs per guard
        guard_us[state] = statistics.median(ts)
    print(f"\n| workload | old ms | new ms | new/old wall | new/old CPU ({a.rounds} rounds) |")
    print("|---|---|---|---|---|")
    for k in work:
        o, n = statistics.median(ms[k]["old"]), statistics.median(ms[k]["new"])
        w, c = statistics.median(ratios[k]), statistics.median(cpu_ratios[k])
        print(f"| {k} | {o:.2f} | {n:.2f} | {w:.3f} | {c:.3f} |")
    print(
        f"\n.grad guard alone ({len(params)} parameters): {guard_us['none']:.1f} µs with no .grad "
        f"held, {guard_us['held']:.1f} µs with every .grad held"
    )


if __name__ == "__main__":
    main()
