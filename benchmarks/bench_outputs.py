"""Token classification, all positions: embgrad vs the floor and vs a per-position loop.

Reference workload (issue 20): a random-init BERT-sized ``BertForTokenClassification`` (12
layers, width 768, 12 heads, 9 labels), 8 texts × 32 tokens, every position explained (its
predicted label), method gradient, CPU, 1 thread. Paths, interleaved in one process (each
round times every path once, in turn; medians and per-round paired ratios):

* ``embgrad`` — ``embgrad.attribute(model, inputs)`` (one forward, the 32 positions' gradients
  as batched cotangents over the retained graph, plus the coupling-probe cotangent);
* ``floor``   — bare PyTorch: one forward with the word-embedding output kept, then one
  ``autograd.grad(retain_graph=True)`` per position (Σ over texts of log p(label_t));
* ``loop``    — bare PyTorch: per position a full forward + backward of the batch (how
  Captum's ``attribute(target=...)`` and transformers-interpret run it).

Checked before timing: embgrad's per-position gradients equal the floor's to 1e-5.

Usage::

    python benchmarks/bench_outputs.py              # the reference workload
    python benchmarks/bench_outputs.py --quick      # a tiny model, 2 rounds (smoke run)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import median


def build(quick: bool, batch: int, length: int, layers: int) -> tuple[Any, dict[str, Any]]:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if not quick:
        size = dict(
            hidden_size=768,
            num_hidden_layers=layers,
            num_attention_heads=12,
            intermediate_size=3072,
        )
    cfg = tf.BertConfig(vocab_size=30522, num_labels=9, **size)
    model = tf.BertForTokenClassification(cfg).eval()
    ids = torch.randint(1000, 30000, (batch, length))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def run_embgrad(model: Any, inputs: dict[str, Any]) -> np.ndarray:
    import embgrad

    res = embgrad.attribute(model, inputs, method="gradient", return_grads=True)
    assert res.info.get("shared_forward"), res.info
    return res.grads  # (B, K, T, D)


def _forward(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    kept: list[Any] = []

    def hook(_m: Any, _i: Any, out: Any) -> Any:
        out = out.detach().requires_grad_(True)
        kept.append(out)
        return out

    h = model.get_input_embeddings().register_forward_hook(hook)
    try:
        logits = model(**inputs).logits
    finally:
        h.remove()
    lp = torch.log_softmax(logits, -1)
    label = logits.argmax(-1, keepdim=True)
    return lp.gather(-1, label)[..., 0], kept[0]  # (B, T), (B, T, D)


def run_floor(model: Any, inputs: dict[str, Any]) -> np.ndarray:
    import torch

    q, emb = _forward(model, inputs)
    t_n = q.shape[1]
    out = []
    for t in range(t_n):
        (g,) = torch.autograd.grad(q[:, t].sum(), emb, retain_graph=t < t_n - 1)
        out.append(g.numpy())
    return np.stack(out, axis=1)  # (B, T, T, D)


def run_loop(model: Any, inputs: dict[str, Any]) -> None:
    import torch

    t_n = inputs["input_ids"].shape[1]
    for t in range(t_n):
        q, emb = _forward(model, inputs)
        torch.autograd.grad(q[:, t].sum(), emb)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 rounds (smoke run)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--layers", type=int, default=12, help="BERT-base width, this many layers")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else args.rounds
    model, inputs = build(args.quick, args.batch, args.length, args.layers)
    got, want = run_embgrad(model, inputs), run_floor(model, inputs)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    paths = {
        "embgrad": lambda: run_embgrad(model, inputs),
        "floor": lambda: run_floor(model, inputs),
        "loop": lambda: run_loop(model, inputs),
    }
    times: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(rounds + 1):  # round 0 warms up
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
                print(f"round {r} {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    ratio = {
        o: median(a / b for a, b in zip(times["embgrad"], times[o], strict=True))
        for o in ("floor", "loop")
    }
    print(f"# token classification, all positions: {args.batch} texts x {args.length} tokens, "
          f"{'tiny' if args.quick else f'BERT-base-width {args.layers}-layer'} random-init "
          "model, method gradient")  # fmt: skip
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s), {rounds} rounds (medians; ratios per round)")  # fmt: skip
    print("| path | median | embgrad / path |")
    print("|---|---|---|")
    for name in paths:
        r = "1.00×" if name == "embgrad" else f"{ratio[name]:.2f}×"
        print(f"| {name} | {median(times[name]):.3f} s | {r} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
