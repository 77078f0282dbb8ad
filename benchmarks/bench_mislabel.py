"""Mislabel detection with TracIn-WE self-influence against its peers (issue 19, "useful").

    python benchmarks/mislabel_train.py           # once: ~2 min of one CPU thread, 3 checkpoints
    python benchmarks/bench_mislabel.py           # the table (reads benchmarks/out/mislabel)
    python benchmarks/bench_mislabel.py --quick   # tiny: 50 texts, trains its own 2 checkpoints

Data: ``mislabel_data.py`` (stdlib docstrings labelled by module, 500 training texts, 10 %
of their labels flipped, seeded). Model: ``mislabel_train.py`` (the bundled MiniLM with a 5-way
head fine-tuned on the flipped labels, one checkpoint per epoch, weights = the epochs' mean
learning rates). Each method ranks the 500 training examples, most suspicious first; reported is
the share of the flipped examples found in the top 5 / 10 / 20 % of that ranking:

- embgrad ``InfluenceIndex.self_influence()``: Σ_c w_c ||G_c(z)||², G the example's gradient
  of the word table; exact and ``top_rows=10``; with all rows and with ``skip_special=True``
  (the tokenizer's special tokens — [CLS], [SEP] … — left out);
- the same quantity computed by hand (``_influence_floor.self_influence_by_hand``) as a check;
- loss: the cross-entropy of the given (possibly flipped) label at the last checkpoint;
- Captum ``TracInCPFast`` self-influence (the final linear layer ``classifier``, same
  checkpoints and weights);
- random: the expected value (the top q % holds q % of the flipped examples on average).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _influence_floor as mislabel_floor
import mislabel_data
import mislabel_train
from _harness import md_table

TOPS = (0.05, 0.10, 0.20)
BATCH = 32


def found_in_top(scores: Sequence[float], flipped: Sequence[bool], q: float) -> float:
    """Share of the flipped examples among the ``ceil(q·n)`` highest scores (ties: lower index
    first, so a constant score does not look good by accident)."""
    n = len(scores)
    k = math.ceil(q * n)
    top = sorted(range(n), key=lambda i: (-scores[i], i))[:k]
    return sum(flipped[i] for i in top) / max(1, sum(flipped))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny data, trains its own checkpoints")
    p.add_argument("--out", type=Path, default=mislabel_train.OUT)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-captum", action="store_true")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.quick:
        split = mislabel_data.load(per_class=12, n_test=10)
        with tempfile.TemporaryDirectory(prefix="mislabel-quick-") as tmp:
            mislabel_train.train(split, epochs=2, out=Path(tmp), log=False)
            states, lrs, meta = mislabel_train.load_checkpoints(Path(tmp))
    else:
        split = mislabel_data.load()
        if not (a.out / "meta.json").is_file():
            p.error(f"no checkpoints under {a.out}: run benchmarks/mislabel_train.py first")
        states, lrs, meta = mislabel_train.load_checkpoints(a.out)
        if meta["data"] != split.fingerprint():
            p.error(f"the checkpoints under {a.out} were trained on other data: retrain")
    model, tok = mislabel_train.classifier(len(split.classes))
    n = len(split.train_texts)
    print(
        f"data {split.fingerprint()}: {n} training texts, {sum(split.flipped)} flipped; "
        f"{len(states)} checkpoints, lr weights {[f'{w:.3g}' for w in lrs]}; "
        f"test accuracy {[round(c['acc_test'], 3) for c in meta['checkpoints']]}",
        flush=True,
    )
    batches, order = mislabel_train_batches(tok, split)
    labels = [split.train_labels[i] for i in order]
    ys = _labels_per_batch(batches, labels)
    flipped = split.flipped
    special = list(tok.all_special_ids)

    def unsort(in_batch_order: Sequence[float]) -> list[float]:
        scores = [0.0] * n
        for k, i in enumerate(order):
            scores[i] = float(in_batch_order[k])
        return scores

    methods: dict[str, Callable[[], list[float]]] = {}

    def embgrad_self(top_rows: int | None, skip: bool) -> Callable[[], list[float]]:
        def run() -> list[float]:
            import embgrad

            idx = embgrad.InfluenceIndex.build(
                model,
                batches,
                labels=labels,
                checkpoints=states,
                weights=lrs,
                top_rows=top_rows,
                tokenizer=tok,
                skip_special=True if skip else None,
            )
            return unsort(idx.self_influence())

        return run

    def by_hand(top_rows: int | None, skip: bool) -> Callable[[], list[float]]:
        def run() -> list[float]:
            s = mislabel_floor.self_influence_by_hand(
                model, states, lrs, batches, ys, skip=special if skip else (), top_rows=top_rows
            )
            return unsort(s)

        return run

    for skip in (False, True):
        for top in (None, 10):
            name = f"{'exact' if top is None else 'top_rows=10'}, {'skip_special' if skip else 'all rows'}"
            methods[f"embgrad self-influence, {name}"] = embgrad_self(top, skip)
            methods[f"by hand (check), {name}"] = by_hand(top, skip)

    def loss_rank() -> list[float]:
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(states[-1])
        scores = []
        with torch.no_grad():
            for batch, y in zip(batches, ys, strict=True):
                logits = model(**batch).logits
                scores += torch.nn.functional.cross_entropy(logits, y, reduction="none").tolist()
        model.load_state_dict(saved)
        return unsort(scores)

    methods["loss (last checkpoint)"] = loss_rank
    if not a.skip_captum:
        methods["Captum TracInCPFast (final layer)"] = lambda: captum_fast(
            model, tok, split, states, lrs
        )

    results: dict[str, tuple[list[float], float]] = {}
    failed: dict[str, str] = {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        try:
            scores = fn()
        except Exception as e:
            failed[name] = f"{type(e).__name__}: {e}"
            print(f"{name}: FAILED {failed[name]}", flush=True)
            continue
        results[name] = (scores, time.perf_counter() - t0)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)

    header = ["ranking", *(f"top {round(q * 100)} %" for q in TOPS), "seconds"]
    rows = []
    for name, (scores, secs) in results.items():
        rows.append(
            [name, *(f"{found_in_top(scores, flipped, q):.2f}" for q in TOPS), f"{secs:.1f}"]
        )
    for name, why in failed.items():
        rows.append([name, "–", "–", "–", why[:80]])
    n_flip = sum(flipped)
    rows.append(
        ["random (expected)", *(f"{min(1.0, math.ceil(q * n) / n):.2f}" for q in TOPS), "–"]
    )
    print()
    print(md_table(header, rows))
    print(f"\n(share of the {n_flip} flipped among {n} training examples found in the top q %)")
    checks = []
    for name in list(results):
        if name.startswith("embgrad"):
            ref = name.replace("embgrad self-influence", "by hand (check)")
            if ref in results:
                e, h = results[name][0], results[ref][0]
                rel = max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(e, h, strict=True))
                checks.append(f"{name} vs by hand: max relative difference {rel:.2e}")
    print("\n".join(checks))
    full = results.get("embgrad self-influence, exact, all rows")
    bare = results.get("embgrad self-influence, exact, skip_special")
    if full and bare:
        print(special_share(full[0], bare[0]))
    return 0


def special_share(full: Sequence[float], bare: Sequence[float]) -> str:
    """How much of the exact self-influence the special rows carry, and whether leaving them
    out changes the ranking (Spearman's rank correlation)."""
    import numpy as np

    f, b = np.asarray(full), np.asarray(bare)
    share = 1.0 - b / f
    rf, rb = np.argsort(np.argsort(f)), np.argsort(np.argsort(b))
    rho = float(np.corrcoef(rf, rb)[0, 1])
    return (
        f"special rows' share of the exact self-influence: median {np.median(share):.1%} "
        f"(min {share.min():.1%}, max {share.max():.1%}); rank correlation with and without "
        f"them {rho:.4f}"
    )


def mislabel_train_batches(tok: Any, split: mislabel_data.Split) -> tuple[list[Any], list[int]]:
    return mislabel_floor.by_length(tok, split.train_texts, BATCH, mislabel_train.MAX_LENGTH)


def _labels_per_batch(batches: Sequence[Any], labels: Sequence[int]) -> list[Any]:
    import torch

    ys, k = [], 0
    for b in batches:
        m = int(b["input_ids"].shape[0])
        ys.append(torch.tensor(labels[k : k + m]))
        k += m
    return ys


def captum_fast(
    model: Any,
    tok: Any,
    split: mislabel_data.Split,
    states: Sequence[dict[str, Any]],
    lrs: Sequence[float],
) -> list[float]:
    """Captum ``TracInCPFast`` self-influence on the final linear layer, same checkpoints."""
    import torch
    from captum.influence import TracInCPFast

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=ids, attention_mask=mask).logits

    enc = tok(
        split.train_texts,
        padding="max_length",
        truncation=True,
        max_length=mislabel_train.MAX_LENGTH,
        return_tensors="pt",
    )
    data = torch.utils.data.TensorDataset(
        enc["input_ids"], enc["attention_mask"], torch.tensor(split.train_labels)
    )
    wrapped = Logits(model)
    names = [f"ck{i}" for i in range(len(states))]

    def load(m: Any, path: str) -> float:
        i = names.index(path)
        m.inner.load_state_dict(states[i])
        return float(lrs[i])

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        tracin = TracInCPFast(
            wrapped,
            wrapped.inner.classifier,
            data,
            names,
            checkpoints_load_func=load,
            loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
            batch_size=BATCH,
        )
        return [float(x) for x in tracin.self_influence(outer_loop_by_checkpoints=True)]
    finally:
        model.load_state_dict(saved)


if __name__ == "__main__":
    raise SystemExit(main())
