"""Fine-tune the bundled all-MiniLM-L6-v2 with a classification head on the mislabelled
docstrings (``mislabel_data.py``), on the CPU, saving one checkpoint per epoch (issue 19).

    python benchmarks/mislabel_train.py [--epochs 3] [--out benchmarks/out/mislabel]

The model is transformers' ``BertForSequenceClassification`` on the bundled folder (encoder and
pooler from all-MiniLM-L6-v2, a new 5-way linear head, seeded), trained on the *flipped*
labels with AdamW (weight decay 0.01), batches of 16 texts truncated to ``MAX_LENGTH`` tokens,
learning rate ``LR`` decaying linearly to 0, dropout on, 1 torch thread. After each epoch the
state dict is saved with the learning rate in force during that epoch (its mean), the weight
TracIn gives that checkpoint. ``meta.json`` records the accuracies and the data set's hash.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mislabel_data

MAX_LENGTH = 64
LR = 1e-4
BATCH = 16
EPOCHS = 3
OUT = Path(__file__).resolve().parent / "out" / "mislabel"


def classifier(num_labels: int, seed: int = 0) -> tuple[Any, Any]:
    """(BertForSequenceClassification on the bundled MiniLM in eval mode, its tokenizer)."""
    import torch

    from embgrad.models.minilm import model_path, quiet_transformers

    tf = quiet_transformers()
    torch.manual_seed(seed)
    folder = str(model_path())
    model = tf.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels)
    model.eval()
    return model, tf.AutoTokenizer.from_pretrained(folder)


def encode(tokenizer: Any, texts: list[str], max_length: int = MAX_LENGTH) -> Any:
    return tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )


def accuracy(model: Any, tokenizer: Any, texts: list[str], labels: list[int]) -> float:
    import torch

    right = 0
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            enc = encode(tokenizer, texts[i : i + 64])
            pred = model(**enc).logits.argmax(-1)
            right += int((pred == torch.tensor(labels[i : i + 64])).sum())
    return right / len(texts)


def load_checkpoints(out: Path = OUT) -> tuple[list[dict[str, Any]], list[float], dict[str, Any]]:
    """(state dicts, learning rates, meta) of a finished training run."""
    import torch

    meta = json.loads((out / "meta.json").read_text())
    states, lrs = [], []
    for ck in meta["checkpoints"]:
        states.append(torch.load(out / ck["file"], map_location="cpu", weights_only=True))
        lrs.append(ck["lr"])
    return states, lrs, meta


def train(
    split: mislabel_data.Split | None = None,
    epochs: int = EPOCHS,
    out: Path = OUT,
    seed: int = 0,
    log: bool = True,
) -> dict[str, Any]:
    """Train, save ``epochs`` checkpoints and ``meta.json`` under ``out``; returns the meta."""
    import torch

    torch.set_num_threads(1)
    split = split or mislabel_data.load()
    model, tok = classifier(len(split.classes), seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    n = len(split.train_texts)
    steps_per_epoch = (n + BATCH - 1) // BATCH
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / total)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "data": split.fingerprint(),
        "classes": list(split.classes),
        "max_length": MAX_LENGTH,
        "batch": BATCH,
        "lr": LR,
        "epochs": epochs,
        "checkpoints": [],
    }
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = list(range(n))
        rng.shuffle(order)
        lrs, losses = [], []
        for s in range(0, n, BATCH):
            rows = order[s : s + BATCH]
            enc = encode(tok, [split.train_texts[i] for i in rows])
            y = torch.tensor([split.train_labels[i] for i in rows])
            loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
            opt.zero_grad()
            loss.backward()
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        file = f"epoch{epoch}.pt"
        torch.save(model.state_dict(), out / file)
        ck = {
            "file": file,
            "epoch": epoch,
            "lr": sum(lrs) / len(lrs),
            "train_loss": sum(losses) / len(losses),
            "acc_train_given": accuracy(model, tok, split.train_texts, split.train_labels),
            "acc_train_clean": accuracy(model, tok, split.train_texts, split.clean_labels),
            "acc_test": accuracy(model, tok, split.test_texts, split.test_labels),
            "seconds": time.perf_counter() - t0,
        }
        meta["checkpoints"].append(ck)
        if log:
            print(json.dumps(ck), flush=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    train(epochs=a.epochs, out=a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
