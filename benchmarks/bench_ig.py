"""Integrated gradients on all-MiniLM-L6-v2: embgrad vs Captum's LayerIntegratedGradients.

Same model, inputs, explained quantity (each sentence's cosine similarity to its partner's
fixed embedding), baseline ([PAD] embedding at every position), rule (Gauss–Legendre) and
steps; all paths run interleaved in one process, each round timing every one; medians are
reported with CPU time / wall time per run (a disturbed run shows a low ratio). Also checked:
the completeness deltas and attributions agree.

Paths: ``captum`` (LayerIntegratedGradients, defaults: all rows in one pass), ``embgrad``
(defaults, the padded batch), ``embgrad_skip_padding`` (``mask=`` the attention mask: each pass
only as long as its samples, as ``embgrad explain`` does for transformers) and ``floor`` (bare
PyTorch: one forward from the interpolated embeddings and one backward to them over all
samples × steps rows of the padded batch, no attribution bookkeeping — the work both libraries
must do without skipping padding).

Usage::

    python benchmarks/bench_ig.py                      # 32 steps, batch 8, 2 threads
    python benchmarks/bench_ig.py --rounds 9 --tokens 64 --json out.json
    python benchmarks/bench_ig.py --ragged             # sentences of 1..8 repeats: ragged batch
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


def sentences(tokens: int | None, ragged: bool = False) -> list[str]:
    """The 8 bundled sentences; with ``tokens``, each repeated until it is about that long;
    ``ragged``: sentence i repeated i + 1 times (about 12 to 90 tokens)."""
    pairs = json.loads(PAIRS.read_text())["pairs"]
    out = [s for p in pairs for s in p]
    if ragged:
        return [" ".join([s] * (i + 1)) for i, s in enumerate(out)]
    if tokens:
        out = [" ".join([s] * max(1, tokens // 12)) for s in out]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=0, help="lengthen sentences to ~N tokens")
    ap.add_argument("--ragged", action="store_true", help="sentence i repeated i + 1 times")
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
    from embgrad.models.minilm import load_minilm
    from embgrad.tasks.heads import mean_pool_normalized

    model, tok, limit = load_minilm()
    texts = sentences(args.tokens, args.ragged)
    enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        emb = mean_pool_normalized(
            model(input_ids=ids, attention_mask=mask).last_hidden_state, mask
        )
    partner = emb[torch.arange(len(texts)) ^ 1]  # each sentence's pair partner, fixed

    def loss_fn(outputs: Any, rows: Any) -> Any:
        r, hidden = torch.as_tensor(rows), outputs.last_hidden_state
        m = mask[r][:, : hidden.shape[1]]  # with mask=, a pass stops at its samples' length
        return (mean_pool_normalized(hidden, m) * partner[r]).sum(-1)

    def forward(ids: Any, mask: Any, partner: Any) -> Any:
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return (mean_pool_normalized(out, mask) * partner).sum(-1)

    ibs = args.internal_batch_size or None
    ig = get_method("integrated_gradients")(model)
    lig = LayerIntegratedGradients(forward, model.embeddings.word_embeddings)
    opts: dict[str, Any] = {"n_steps": args.steps, "baseline": "pad", "pad_id": tok.pad_token_id}
    if args.ours_internal_batch_size or ibs:
        opts["internal_batch_size"] = args.ours_internal_batch_size or ibs

    plans: dict[str, Any] = {}

    def ours(**extra: Any) -> tuple[np.ndarray, np.ndarray]:
        s = ig.attribute({"input_ids": ids, "attention_mask": mask}, loss_fn, **opts, **extra)
        plans["skip_padding" if extra else "padded"] = s.info["passes"]
        return s.attributions, s.delta

    table = model.embeddings.word_embeddings.weight.detach()
    x, b = table[ids], table[tok.pad_token_id]
    alphas, _ = np.polynomial.legendre.leggauss(args.steps)
    rows = torch.arange(len(texts)).repeat_interleave(args.steps)
    alpha = torch.tensor(0.5 * (alphas + 1), dtype=x.dtype).repeat(len(texts))[:, None, None]

    def floor() -> None:
        n = rows.shape[0]
        for s in range(0, n, ibs or n):
            r, a = rows[s : s + (ibs or n)], alpha[s : s + (ibs or n)]
            z = (b + a * (x[r] - b)).requires_grad_()
            hidden = model(inputs_embeds=z, attention_mask=mask[r]).last_hidden_state
            torch.autograd.grad((mean_pool_normalized(hidden, mask[r]) * partner[r]).sum(), z)

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

    runs: dict[str, Any] = {
        "embgrad": ours,
        "embgrad_skip_padding": lambda: ours(mask=mask),
        "captum": theirs,
        "floor": floor,
    }
    results = {name: fn() for name, fn in runs.items()}  # warm-up (and the probe's one-off)
    a_ours, d_ours = results["embgrad"]
    a_skip, d_skip = results["embgrad_skip_padding"]
    a_cap, d_cap = results["captum"]
    rel_attr = float(np.abs(a_ours - a_cap).max() / np.abs(a_cap).max())
    rel_skip = float(np.abs(a_skip - a_cap).max() / np.abs(a_cap).max())
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
        "tokens_per_sentence": mask.sum(1).tolist(),
        "steps": args.steps,
        "internal_batch_size": ibs or "defaults (both: all rows in one pass)",
        "embgrad_internal_batch_size": opts.get("internal_batch_size", "default (all rows)"),
        "rounds": args.rounds,
        "embgrad_passes_rows_length": plans,
        "median_s": med,
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "ratio_embgrad_over_captum": med["embgrad"] / med["captum"],
        "ratio_over_captum": {k: med[k] / med["captum"] for k in runs},
        "cpu_over_wall": {
            k: statistics.median(c / w for c, w in zip(cpu[k], wall[k], strict=True)) for k in runs
        },
        "all_wall_s": wall,
        "delta_embgrad": d_ours.tolist(),
        "delta_captum": d_cap.tolist(),
        "delta_embgrad_skip_padding": d_skip.tolist(),
        "max_abs_delta_difference": float(np.abs(d_ours - d_cap).max()),
        "max_abs_delta_difference_skip_padding": float(np.abs(d_skip - d_cap).max()),
        "attributions_max_rel_difference": rel_attr,
        "attributions_max_rel_difference_skip_padding": rel_skip,
        "command": "python benchmarks/bench_ig.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
