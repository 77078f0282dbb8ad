"""embgrad's torch backend on random-init BERT-base (B=32, T=64, CPU), side by side with its floor.

Methods (each computes one complete result; eval mode, per-sample cross-entropy on a fixed
linear head over the [CLS] state):

- ``floor``: forward + ``autograd.grad(sum L, word-embedding output)`` (hook-captured): nothing
  gets per-sample lookup-output gradients for less.
- ``embgrad``: ``embgrad.gradients(check="off")`` per-sample output gradients (headline, vs floor).
- ``embgrad_auto``: the same with ``check="auto"`` (the probe runs on the first call per
  model / loss / shape and is cached; the warm-up call pays it).
- ``embgrad_table``: ``check="off"`` + sparse per-sample table gradients + their norms (vs train).
- ``train``: a full training step, forward + ``sum(L).backward()`` into every ``.grad``.
- ``opacus``: Opacus ``GradSampleModule`` dense (B, V, D) per-sample grads of the word table.
- ``vmap``: ``torch.func.vmap(grad)`` through ``inputs_embeds`` (per-sample output grads).

Timing: one process, ``--threads`` torch threads, every method once per round in turn (after one
warm-up round, the order rotating each round); medians, with each run's CPU/wall ratio to spot
disturbed rounds.  Peak memory: each method alone in a fresh subprocess (VmHWM after building
the model and two runs).

    python benchmarks/bench_torch_bert.py             # BERT-base: ~10 min on 2 idle cores
    python benchmarks/bench_torch_bert.py --no-peers --no-memory   # the headline ratios only
    python benchmarks/bench_torch_bert.py --quick     # a tiny BERT (smoke run)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.nn.functional as F

import embgrad

WORD = "embeddings.word_embeddings"
METHODS = ("floor", "embgrad", "embgrad_auto", "embgrad_table", "train", "opacus", "vmap")
PEERS = ("opacus", "vmap")


class Bench:
    """The model, one batch and the per-sample loss, shared by every method."""

    def __init__(self, quick: bool, seed: int = 0) -> None:
        import transformers

        torch.manual_seed(seed)
        if quick:
            cfg = transformers.BertConfig(
                vocab_size=1000,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
            )
            self.batch, self.seq = 8, 16
        else:
            cfg = transformers.BertConfig(
                vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12
            )
            self.batch, self.seq = 32, 64
        self.model = transformers.BertModel(cfg).eval()
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, cfg.vocab_size, (self.batch, self.seq), generator=g)
        self.labels = torch.arange(self.batch) % 2
        self.head = torch.randn(cfg.hidden_size, 2, generator=g) / cfg.hidden_size**0.5

    def loss(self, out: Any) -> torch.Tensor:
        """Per-sample cross-entropy of a fixed linear head on the [CLS] state: (B,)."""
        logits = out.last_hidden_state[:, 0] @ self.head
        return F.cross_entropy(logits, self.labels, reduction="none")

    # -- methods: setup(name) -> run() ------------------------------------------------------
    def method(self, name: str) -> Callable[[], Any]:
        return getattr(self, f"_{name}")()

    def _floor(self) -> Callable[[], Any]:
        emb = self.model.get_submodule(WORD)

        def run() -> Any:
            saved: dict[str, torch.Tensor] = {}
            h = emb.register_forward_hook(lambda m, a, o: saved.setdefault("o", o))
            try:
                losses = self.loss(self.model(input_ids=self.ids))
            finally:
                h.remove()
            return torch.autograd.grad(losses.sum(), saved["o"])[0]

        return run

    def _embgrad(self, check: str = "off") -> Callable[[], Any]:
        def run() -> Any:
            res = embgrad.gradients(self.model, self.ids, self.loss, check=check)  # type: ignore[arg-type]
            return res[WORD].output_grad

        return run

    def _embgrad_auto(self) -> Callable[[], Any]:
        return self._embgrad("auto")

    def _embgrad_table(self) -> Callable[[], Any]:
        def run() -> Any:
            lk = embgrad.gradients(self.model, self.ids, self.loss, check="off")[WORD]
            return lk.table_grad(), lk.table_grad_norms()

        return run

    def _train(self) -> Callable[[], Any]:
        def run() -> Any:
            self.model.zero_grad(set_to_none=True)
            self.loss(self.model(input_ids=self.ids)).sum().backward()
            grads = [p.grad for p in self.model.parameters()]
            self.model.zero_grad(set_to_none=True)
            return grads

        return run

    def _opacus(self) -> Callable[[], Any]:
        from opacus import GradSampleModule

        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        emb = ref.get_submodule(WORD)
        emb.weight.requires_grad_(True)
        emb.train()  # Opacus records activations only for modules in train mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gsm = GradSampleModule(ref, batch_first=True, loss_reduction="sum")

        def run() -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.loss(gsm(input_ids=self.ids)).sum().backward()
            out = emb.weight.grad_sample
            emb.weight.grad_sample = None
            emb.weight.grad = None
            return out

        return run

    def _vmap(self) -> Callable[[], Any]:
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        emb = self.model.get_submodule(WORD)

        def one(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(self.model, params, (), {"inputs_embeds": e[None]})
            return F.cross_entropy(out.last_hidden_state[:, 0] @ self.head, y[None])

        grad = torch.func.vmap(torch.func.grad(one))

        def run() -> Any:
            with torch.no_grad():
                embeds = emb(self.ids)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # no batching rule for CPU flash attention
                return grad(embeds, self.labels)

        return run


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def timing(bench: Bench, methods: list[str], rounds: int) -> dict[str, dict[str, Any]]:
    """Interleaved runs (one warm-up round; the order rotates each round): per method the wall
    and CPU seconds of every measured round, their medians, and the minimum wall time."""
    runs = {m: bench.method(m) for m in methods}
    walls: dict[str, list[float]] = {m: [] for m in methods}
    cpus: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds + 1):
        for m in methods[r % len(methods) :] + methods[: r % len(methods)]:  # rotate the order
            wall, cpu = _timed(runs[m])
            if r:
                walls[m].append(wall)
                cpus[m].append(cpu)
        if r:
            done = ", ".join(f"{m} {walls[m][-1]:.2f}s" for m in methods)
            print(f"  round {r}/{rounds}: {done}", file=sys.stderr)
    return {
        m: {
            "wall": walls[m],
            "cpu": cpus[m],
            "median_s": statistics.median(walls[m]),
            "min_s": min(walls[m]),
            "cpu_s": statistics.median(cpus[m]),
        }
        for m in methods
    }


def paired(times: dict[str, dict[str, Any]], a: str, b: str, key: str = "wall") -> float:
    """Median over rounds of a's time / b's time in the same round (side-by-side ratio)."""
    if a not in times or b not in times:
        return float("nan")
    pairs = zip(times[a][key], times[b][key], strict=True)
    return statistics.median(x / y for x, y in pairs)


def memory(method: str, quick: bool, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that builds the model and runs ``method`` twice."""
    cmd = [sys.executable, __file__, "--child", method, "--threads", str(threads)]
    cmd += ["--quick"] if quick else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"])


def child(method: str, quick: bool) -> None:
    bench = Bench(quick)
    run = bench.method(method)
    run()
    run()
    print(json.dumps({"maxrss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's RSS high-water mark: VmHWM (``ru_maxrss`` would carry the parent's peak
    across fork+exec on Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(
    bench: Bench, times: dict[str, dict[str, Any]], mem: dict[str, float], threads: int
) -> str:
    def r(a: str, b: str, key: str = "wall") -> str:
        x = paired(times, a, b, key)
        return "-" if x != x else f"{x:.3f}"

    cfg = bench.model.config
    lines = [
        f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
        f"{threads} threads, B={bench.batch}, T={bench.seq}, vocab {cfg.vocab_size}, "
        f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers",
        "",
        "| method | median wall s | min wall s | median CPU s | × floor (wall) | × floor (CPU) "
        "| × train (wall) | × train (CPU) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in times or mem:
        t = times.get(m)
        rss = mem.get(m, float("nan"))
        cells = f"{t['median_s']:.3f} | {t['min_s']:.3f} | {t['cpu_s']:.3f}" if t else "- | - | -"
        lines.append(
            f"| {m} | {cells} | {r(m, 'floor')} | {r(m, 'floor', 'cpu')} | {r(m, 'train')} | "
            f"{r(m, 'train', 'cpu')} | {'-' if rss != rss else f'{rss:.0f}'} |"
        )
    lines += [
        "",
        "Ratios are medians over rounds of the two methods' times in the same round.",
        f"- embgrad (check='off') / floor: {r('embgrad', 'floor')} wall, "
        f"{r('embgrad', 'floor', 'cpu')} CPU (target ≤ 1.05)",
        f"- embgrad (check='auto', probe cached) / floor: {r('embgrad_auto', 'floor')} wall, "
        f"{r('embgrad_auto', 'floor', 'cpu')} CPU",
        f"- embgrad + sparse table grads + norms / training step: {r('embgrad_table', 'train')} "
        f"wall, {r('embgrad_table', 'train', 'cpu')} CPU (target ≤ 0.75)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny BERT (smoke run)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peers", action="store_true", help="skip Opacus and vmap")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--no-timing", action="store_true", help="only the peak-RSS subprocesses")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.quick)
        return 0
    methods = [m for m in METHODS if not (args.no_peers and m in PEERS)]
    mem = {} if args.no_memory else {m: memory(m, args.quick, args.threads) for m in methods}
    bench = Bench(args.quick)
    times = {} if args.no_timing else timing(bench, methods, args.rounds)
    print(report(bench, times, mem, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
