"""Gluon LSTM classifier: embgrad's per-sample embedding gradients vs one forward+backward.

Model: Embedding(V=10000, D=128) → LSTM(H=256, NTC) → last step → Dense(2), hybridized with
``static_alloc=True``; T=50 token ids per sample, eval mode, per-sample softmax cross-entropy.

Timed, interleaved round by round (the machine is noisy; medians are reported):

- ``fwd+bwd``: one hybridized forward + ``loss.backward()`` (a training step without the
  update) — the floor;
- ``embgrad off``: ``embgrad.gradients(..., check="off")`` plus the per-sample sparse table
  rows (``table_grad()``) and the output gradients on the host (``asnumpy``). On a hybridized
  model embgrad runs the model's own traced graph with a zero input added after the lookup;
  it computes no parameter gradients;
- ``embgrad auto``: the same with ``check="auto"``: the probe (one extra backward) runs on the
  first call for a model/loss/shape only and is cached; the first call is reported apart;
- ``embgrad imperative``: ``check="off"`` on a non-hybridized twin (same weights), where every
  block runs in Python and each lookup is intercepted — for models used without hybridizing;
- ``forum loop``: one retained-graph backward per sample copying ``weight.grad()`` (fewer
  repetitions: it is slow).

Usage: ``python benchmarks/bench_gluon_lstm.py [--batch 128 32] [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

warnings.filterwarnings("ignore", category=DeprecationWarning)

import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402

import embgrad  # noqa: E402

VOCAB, DIM, HIDDEN, LENGTH = 10000, 128, 256, 50


class Classifier(gluon.HybridBlock):
    """(B, T) ids → (B, T, D) → LSTM (B, T, H) → last step (B, H) → (B, 2) logits."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.embed = gluon.nn.Embedding(VOCAB, DIM)
            self.lstm = gluon.rnn.LSTM(HIDDEN, layout="NTC")
            self.out = gluon.nn.Dense(2)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        h = self.lstm(self.embed(x))
        return self.out(F.squeeze(F.slice_axis(h, axis=1, begin=-1, end=None), axis=1))


def setup(batch: int) -> tuple[Any, Any, Callable[[Any], Any]]:
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    x = nd.array(rng.integers(0, VOCAB, size=(batch, LENGTH)))
    y = nd.array(rng.integers(0, 2, size=batch))
    ce = gluon.loss.SoftmaxCrossEntropyLoss()
    net = Classifier()
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True)
    net(x)

    def loss_fn(out: Any) -> Any:
        return ce(out, y)

    return net, x, loss_fn


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call, MXNet's asynchronous engine drained before and after.

    CPU time (all threads of this process) is less disturbed by other processes on a shared
    machine than wall time; both are reported.
    """
    nd.waitall()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    nd.waitall()
    return time.perf_counter() - wall, time.process_time() - cpu


def twin_of(net: Any, x: Any) -> Any:
    """A non-hybridized model with the same weights."""
    twin = Classifier()
    twin.initialize()
    twin(x)
    theirs = twin._collect_params_with_prefix()
    for name, p in net._collect_params_with_prefix().items():
        theirs[name].set_data(p.data().copy())
    return twin


def methods(net: Any, x: Any, loss_fn: Callable[[Any], Any]) -> dict[str, Callable[[], Any]]:
    def fwd_bwd() -> None:
        with autograd.record(train_mode=False):
            loss = loss_fn(net(x))
        loss.backward(train_mode=False)

    def ours(check: str, model: Any = net) -> Callable[[], Any]:
        def run() -> None:
            res = embgrad.gradients(model, x, loss_fn, check=check)  # type: ignore[arg-type]
            lk = res["embed"]
            lk.table_grad()
            lk.output_grad.asnumpy()

        return run

    def forum() -> None:
        batch = x.shape[0]
        with autograd.record(train_mode=False):
            losses = loss_fn(net(x))
        copies = []
        for i in range(batch):
            e = nd.one_hot(nd.array([i]), batch)[0]
            losses.backward(out_grad=e, retain_graph=i < batch - 1, train_mode=False)
            copies.append(net.embed.weight.grad().copy())
        nd.waitall()

    return {
        "fwd+bwd": fwd_bwd,
        "embgrad off": ours("off"),
        "embgrad auto": ours("auto"),
        "embgrad imperative": ours("off", twin_of(net, x)),
        "forum loop": forum,
    }


def bench(batch: int, rounds: int, loop_rounds: int) -> dict[str, Any]:
    net, x, loss_fn = setup(batch)
    fns = methods(net, x, loss_fn)
    first_auto = timed(fns["embgrad auto"])  # includes the probe; later calls hit the cache
    for name in ("fwd+bwd", "embgrad off", "embgrad imperative", "forum loop"):
        timed(fns[name])  # warm-up
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for r in range(rounds):
        order = ["fwd+bwd", "embgrad off", "embgrad auto", "embgrad imperative"]
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(fns[name]))
        if r < loop_rounds:
            times["forum loop"].append(timed(fns["forum loop"]))
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    return {"batch": batch, "wall": wall, "cpu": cpu, "first_auto": first_auto[0]}


def report(results: list[dict[str, Any]]) -> str:
    """A markdown table: medians in ms, ratios to the hybridized forward+backward."""
    lines = [
        "| B | clock | fwd+bwd (hybridized) | embgrad check=off | ratio "
        "| embgrad check=auto (probe cached) | ratio | embgrad, model not hybridized | ratio "
        "| forum loop | loop / embgrad off |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = ("fwd+bwd", "embgrad off", "embgrad auto", "embgrad imperative", "forum loop")
    for r in results:
        for clock in ("wall", "cpu"):
            base, off, auto, imp, loop = (r[clock][k] for k in names)
            lines.append(
                f"| {r['batch']} | {clock} | {base * 1e3:.1f} | {off * 1e3:.1f} "
                f"| **{off / base:.3f}x** | {auto * 1e3:.1f} | {auto / base:.3f}x "
                f"| {imp * 1e3:.1f} | {imp / base:.3f}x | {loop * 1e3:.0f} | {loop / off:.0f}x |"
            )
    firsts = ", ".join(f"B={r['batch']}: {r['first_auto'] * 1e3:.0f} ms" for r in results)
    lines.append(f"\ncheck='auto', first call (runs the probe: one more backward): {firsts}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 32])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (medians)")
    ap.add_argument("--loop-rounds", type=int, default=3, help="rounds of the forum loop")
    args = ap.parse_args()
    results = [bench(b, args.rounds, args.loop_rounds) for b in args.batch]
    print(
        f"V={VOCAB} D={DIM} H={HIDDEN} T={LENGTH}; mxnet {mx.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()}); "
        f"{args.rounds} interleaved rounds, medians (forum loop: {args.loop_rounds})"
    )
    print(report(results))


if __name__ == "__main__":
    main()
