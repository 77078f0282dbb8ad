"""HotFlip before and after verification, on the bundled pairs and the bundled MiniLM.

* **sign**: for each sentence and each direction (``increase``, ``decrease``), the top-1
  suggestion of ``Explainer.explain`` (by estimate when ``hotflip_verify=0``, as before; by the
  verified change with the default ``hotflip_verify``) is checked by bare PyTorch, with no
  embgrad code: the sentence's ids with the one token replaced, the model run, the cosine
  similarity to the unflipped partner's embedding (mean-pooled, L2-normalised) minus the
  original. Reported: the share whose measured change has the intended sign.
* **time**: ``explain(texts, pairs, hotflip_k=3)`` (method ``gradient``, HotFlip k=3) before
  (``hotflip_verify=0``) and with each budget of :data:`VERIFY`, interleaved in rounds in one process, 1 thread;
  the ratio of medians.

Usage::

    python benchmarks/bench_hotflip.py [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
PAIRS = ROOT / "src/embgrad/models/data/pairs.json"
#: the ``hotflip_verify`` budgets compared (explain's default: hotflip_k, 3 here)
VERIFY = (2, 3, 4, 8)


def measured(ex: Any, text: str, pair: str, pos: int, replacement: str) -> float:
    """f(x') − f(x) by bare PyTorch: cos(e(text with token pos replaced), e(pair)) − cos(...)."""
    import torch

    tok, model = ex.tokenizer, ex.model

    def emb(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        e = h.mean(1)
        return e / e.norm(dim=-1, keepdim=True)

    ids = tok([text], return_tensors="pt")["input_ids"]
    other = emb(tok([pair], return_tensors="pt")["input_ids"])
    flipped = ids.clone()
    flipped[0, pos] = tok.convert_tokens_to_ids(replacement)
    return float((emb(flipped) * other).sum() - (emb(ids) * other).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    from embgrad.explain import Explainer

    torch.set_num_threads(1)
    pairs = json.loads(PAIRS.read_text())["pairs"]
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    texts = [s for p in pairs for s in p]
    partners = [s for p in pairs for s in p[::-1]]
    ex = Explainer.from_spec()
    signs: dict[str, dict[str, float]] = {}
    examples = []
    for direction in ("increase", "decrease"):
        ex.hotflip_direction = direction
        for label, verify in (("before", 0), *((f"verify={v}", v) for v in VERIFY)):
            ex.hotflip_verify = verify
            items = ex.explain(a, b, hotflip_k=3)
            good = 0
            for item, text, pair in zip(items, texts, partners, strict=True):
                top = item.hotflip[0]
                got = measured(ex, text, pair, top["position"], top["replacement"])
                if verify:
                    assert abs(got - top["verified"]) < 1e-5, (got, top)
                good += (got > 0) if direction == "increase" else (got < 0)
                examples.append((direction, label, text, top["token"], top["replacement"],
                                 top["estimate"], got))  # fmt: skip
            signs.setdefault(direction, {})[label] = good / len(items)
    ex.hotflip_direction = "abs"
    order = [("before", 0), *((f"verify={v}", v) for v in VERIFY)]
    times: dict[str, list[float]] = {label: [] for label, _ in order}
    for _, verify in order:  # warm-up
        ex.hotflip_verify = verify
        ex.explain(a, b, hotflip_k=3)
    for r in range(args.rounds):
        for label, verify in order if r % 2 == 0 else order[::-1]:
            ex.hotflip_verify = verify
            t0 = time.perf_counter()
            ex.explain(a, b, hotflip_k=3)
            times[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "sign_share_top1": signs,
        "median_s": med,
        "ratio_to_before": {k: v / med["before"] for k, v in med.items()},
        "rounds": args.rounds,
        "torch": torch.__version__,
        "threads": 1,
    }
    for d, label, text, tok, rep, est, got in examples:
        print(f"{d:8} {label:9} {text:56} {tok} -> {rep}  estimate {est:+.4f} measured {got:+.4f}")
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
