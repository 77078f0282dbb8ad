"""Integrated gradients on all-MiniLM-L6-v2: embgrad vs Captum's LayerIntegratedGradients.

Same model, inputs, explained quantity (each sentence's cosine similarity to its partner's
fixed embedding), baseline ([PAD] embedding at every position), rule (Gauss–Legendre) and
steps; the two run interleaved in one process, each round timing both; medians are reported
with CPU time / wall time per run (a disturbed run shows a low ratio). Also checked: the
completeness deltas and attributions agree.

Usage::

    python benchmarks/bench_ig.py                      # 32 steps, batch 8, 2 threads
    python benchmarks/bench_ig.py --rounds 9 --tokens 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "src/embgrad/models/data/pairs.json"


def sentences(tokens: int | None) -> list[str]:
    """The 8 bundled sentences; with ``tokens``, each repeated until it is about that long."""
    pairs = json.loads(PAIRS.read_text())["pairs"]
    out = [s for p in pairs for s in p]
    if tokens:
        out = [" ".join([s] * max(1, tokens // 12)) for s in out]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=0, help="lengthen sentences to ~N tokens")
    ap.add_argument(
        "--internal-batch-size",
        type=int,
        default=0,
        help="rows per forward for both (0: each library's default)",
    )
    ap.add_argument(
        "--ours-internal-batch-size",
        type=int,
        default=0,
        help="rows per forward for embgrad only (0: as --internal-batch-size)",
    )
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import captum
    import transformers
    from captum.attr import LayerIntegratedGradients

    import embgrad
    from embgrad.methods import get_method
    from embgrad.models.heads import mean_pool_normalized
    from embgrad.models.minilm import load_minilm

    model, tok, limit = load_minilm()
    texts = sentences(args.tokens)
    enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        emb = mean_pool_normalized(
            model(input_ids=ids, attention_mask=mask).last_hidden_state, mask
        )
    partner = emb[torch.arange(len(texts)) ^ 1]  # each sentence's pair partner, fixed

    def loss_fn(outputs: Any, rows: Any) -> Any:
        r = torch.as_tensor(rows)
        return (mean_pool_normalized(outputs.last_hidden_state, mask[r]) * partner[r]).sum(-1)

    def forward(ids: Any, mask: Any, partner: Any) -> Any:
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return (mean_pool_normalized(out, mask) * partner).sum(-1)

    ibs = args.internal_batch_size or None
    ig = get_method("integrated_gradients")(model)
    lig = LayerIntegratedGradients(forward, model.embeddings.word_embeddings)
    opts: dict[str, Any] = {"n_steps": args.steps, "baseline": "pad", "pad_id": tok.pad_token_id}
    if args.ours_internal_batch_size or ibs:
        opts["internal_batch_size"] = args.ours_internal_batch_size or ibs

    def ours() -> tuple[np.ndarray, np.ndarray]:
        s = ig.attribute({"input_ids": ids, "attention_mask": mask}, loss_fn, **opts)
        return s.attributions, s.delta

    def theirs() -> tuple[np.ndarray, np.ndarray]:
        attr, delta = lig.attribute(
            ids,
            baselines=torch.full_like(ids, tok.pad_token_id),
            additional_forward_args=(mask, partner),
            n_steps=args.steps,
            method="gausslegendre",
            internal_batch_size=ibs,
            return_convergence_delta=True,
        )
        return attr.detach().numpy(), delta.detach().abs().numpy()

    runs = {"embgrad": ours, "captum": theirs}
    results = {name: fn() for name, fn in runs.items()}  # warm-up (and the probe's one-off)
    a_ours, d_ours = results["embgrad"]
    a_cap, d_cap = results["captum"]
    rel_attr = float(np.abs(a_ours - a_cap).max() / np.abs(a_cap).max())
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            runs[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in wall.items()}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible",
        "threads": args.threads,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "captum": captum.__version__,
            "embgrad": embgrad.__version__,
        },
        "batch": len(texts),
        "tokens_per_sentence_padded": int(ids.shape[1]),
        "steps": args.steps,
        "internal_batch_size": ibs or "defaults (both: all rows in one pass)",
        "embgrad_internal_batch_size": opts.get("internal_batch_size", "default (all rows)"),
        "rounds": args.rounds,
        "median_s": med,
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "ratio_embgrad_over_captum": med["embgrad"] / med["captum"],
        "cpu_over_wall": {
            k: statistics.median(c / w for c, w in zip(cpu[k], wall[k], strict=True)) for k in runs
        },
        "all_wall_s": wall,
        "delta_embgrad": d_ours.tolist(),
        "delta_captum": d_cap.tolist(),
        "max_abs_delta_difference": float(np.abs(d_ours - d_cap).max()),
        "attributions_max_rel_difference": rel_attr,
        "command": "python benchmarks/bench_ig.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
