"""The worked example of docs/influence-example.md: which training docstrings drove one
prediction of the fine-tuned MiniLM classifier, and through which shared tokens (issue 19).

    python benchmarks/mislabel_train.py                 # once, the 3 checkpoints
    python benchmarks/influence_example.py [--test 0] [--skip-special] > example.md

Index: the 500 (10 % mislabelled) training docstrings of ``mislabel_data.py`` over the three
checkpoints of ``mislabel_train.py``, weighted by their learning rates; query: one test
docstring with the label the model predicts for it (what influence on *this prediction* means).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _influence_floor as floor
import mislabel_data
import mislabel_train


def _short(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", type=int, default=0, help="which test docstring")
    p.add_argument("--skip-special", action="store_true")
    p.add_argument("-k", type=int, default=3)
    a = p.parse_args(argv)
    import torch

    import embgrad

    torch.set_num_threads(1)
    split = mislabel_data.load()
    states, lrs, _ = mislabel_train.load_checkpoints()
    model, tok = mislabel_train.classifier(len(split.classes))
    batches, order = floor.by_length(tok, split.train_texts, 32, mislabel_train.MAX_LENGTH)
    idx = embgrad.InfluenceIndex.build(
        model,
        batches,
        labels=[split.train_labels[i] for i in order],
        checkpoints=states,
        weights=lrs,
        tokenizer=tok,
        skip_special=True if a.skip_special else None,
    )
    text = split.test_texts[a.test]
    enc = tok([text], truncation=True, max_length=mislabel_train.MAX_LENGTH, return_tensors="pt")
    model.load_state_dict(states[-1])
    with torch.no_grad():
        pred = int(model(**enc).logits.argmax(-1))
    res = idx.query(enc, labels=[pred])
    top = res.top(a.k)[0]
    cls = split.classes

    def show(j: int, score: float) -> list[str]:
        i = order[j]  # index position → training text
        given, true = cls[split.train_labels[i]], cls[split.clean_labels[i]]
        label = given if given == true else f"{given} (flipped; really {true})"
        contrib = sorted(res.by_token(0, j).items(), key=lambda kv: -abs(kv[1]))
        parts = ", ".join(f"`{t}` {c / score:+.0%}" for t, c in contrib[:6])
        return [
            f"- **{score:+.3g}** [{label}] “{_short(split.train_texts[i])}”",
            f"  shared tokens (share of the score): {parts}",
        ]

    lines = [
        f"Test docstring (true module `{cls[split.test_labels[a.test]]}`, predicted "
        f"`{cls[pred]}`): “{_short(text, 200)}”",
        "",
        "Top proponents (training examples whose gradient steps pushed this prediction up):",
        "",
    ]
    for j, s in zip(top.proponents.tolist(), top.proponent_scores.tolist(), strict=True):
        lines += show(j, s)
    lines += ["", "Top opponents (their steps pushed it down):", ""]
    for j, s in zip(top.opponents.tolist(), top.opponent_scores.tolist(), strict=True):
        lines += show(j, s)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
