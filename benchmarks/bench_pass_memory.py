"""Peak RSS and time of integrated gradients on long texts, by the bound of one pass.

Four texts of the bundled MiniLM's full length (256 tokens), IG with N steps, through
``Explainer.explain`` (what ``embgrad explain`` runs). Each (bound, repeat) runs in its own
process, so ``ru_maxrss`` is that run's peak; bounds are interleaved across repeats. "model"
is the peak RSS after loading the model and explaining one short text (the floor).

    python benchmarks/bench_pass_memory.py [--steps 50] [--repeats 2] [--bounds 4096,16384,all]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from embgrad.explain import Explainer
from embgrad.methods import plan as _plan
bound, steps = sys.argv[1], int(sys.argv[2])
e = Explainer.from_spec()
e.explain(["warm up"], candidate_labels=["a", "b"], hotflip_k=0)
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
texts = [" ".join(f"word{i} of text {k} about films and music" for i in range(60)) for k in range(4)]
opts = {}
if bound == "all":
    opts["internal_batch_size"] = 10**9
else:
    _plan.PASS_TOKENS = int(bound)
import embgrad.explain as ex
ex.TOKENS_PER_PASS = _plan.PASS_TOKENS
t = time.perf_counter()
items = e.explain(texts, candidate_labels=["cinema", "music"], method="integrated_gradients",
                  n_steps=steps, hotflip_k=0, **opts)
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
assert all(len(i.tokens) == 256 for i in items), [len(i.tokens) for i in items]
print(json.dumps({"bound": bound, "wall_s": wall, "peak_mb": peak, "model_mb": floor,
                  "delta": max(i.delta for i in items)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bounds", default="4096,16384,all")
    args = ap.parse_args()
    bounds = args.bounds.split(",")
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in bounds}
    for r in range(args.repeats):
        for b in bounds if r % 2 == 0 else bounds[::-1]:
            out = subprocess.run([sys.executable, "-c", CHILD, b, str(args.steps)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            runs[b].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[b][-1], file=sys.stderr, flush=True)
    ref = statistics.median(x["wall_s"] for x in runs[bounds[0]])
    print(f"IG n_steps={args.steps}, 4 texts x 256 tokens, 1 thread, {args.repeats} repeats")
    print(
        "| pass bound (rows x tokens) | peak RSS MB (median) | over the model MB | time s "
        f"(median) | time / {bounds[0]} |"
    )
    print("|---|---|---|---|---|")
    for b in bounds:
        peak = statistics.median(x["peak_mb"] for x in runs[b])
        floor = statistics.median(x["model_mb"] for x in runs[b])
        wall = statistics.median(x["wall_s"] for x in runs[b])
        print(f"| {b} | {peak:.0f} | {peak - floor:.0f} | {wall:.1f} | {wall / ref:.2f} |")


if __name__ == "__main__":
    main()
