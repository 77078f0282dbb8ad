"""embgrad's build + query of the ``--captum-short`` case (64 disjoint 12-word windows, MiniLM
with a head) against its floor: forward + activation-only backward to the word lookups over
the same batches. Interleaved, one thread, then a profile of embgrad's side.

    python benchmarks/influence_floor_short.py
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch

    import bench_influence as bench
    import embgrad
    import mislabel_data

    torch.set_num_threads(1)
    model, tok = bench.minilm_classifier()
    texts = mislabel_data.windows(65, stride=12)
    batches, labels, ys = bench.labelled_batches(tok, texts[:64], max_length=128, batch=16)
    test = tok([texts[64]], return_tensors="pt")
    table = model.get_input_embeddings()

    def ours() -> None:
        idx = embgrad.InfluenceIndex.build(model, batches, labels=labels)
        idx.query(test, labels=[1])

    def floor() -> None:
        for batch, y in zip(batches, ys, strict=True):
            seen: dict[str, Any] = {}

            def keep(_m: Any, _i: Any, out: Any, seen: dict[str, Any] = seen) -> Any:
                seen["e"] = out.detach().requires_grad_()
                return seen["e"]

            hook = table.register_forward_hook(keep)
            try:
                logits = model(**batch).logits
            finally:
                hook.remove()
            loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
            torch.autograd.grad(loss, seen["e"])

    ours(), floor()  # warm-up
    for run in (ours, floor, ours, floor, ours, floor):
        start = time.perf_counter()
        run()
        print(f"{run.__name__:6s} {time.perf_counter() - start:.3f} s")
    profile = cProfile.Profile()
    profile.runcall(ours)
    pstats.Stats(profile).sort_stats("cumulative").print_stats(15)


if __name__ == "__main__":
    main()
