"""Self-checking run of the torch backend on a GPU (or ``--device cpu``): exits 1 on a mismatch.

For float32 / float16 / bfloat16 copies of a tiny random BERT (word, token-type and position
lookups, a padded sample) and of EmbeddingBag models (sum with per_sample_weights, mean, max;
1-D ids with offsets), compares ``embgrad.gradients`` on the device against a per-sample loop
(batch of 1, one backward each, float32, same device, forward hooks on a copy of the model):
output gradients, sparse table rows and their norms.  Also checks that results stay on the
device, in the lookup's dtype, with float32 norms, and that the probe passes (no false alarm);
that ids outside the table are refused with InputError and leave the device usable.
Then times embgrad against a bare ``autograd.grad`` to the word-embedding output on a
random-init BERT-base (B=32, T=64), float32 and bfloat16 (skipped with ``--no-timing``; the
issue-12 target is ≤ 1.05× the floor).

    python benchmarks/gpu_check.py                 # cuda
    python benchmarks/gpu_check.py --device cpu    # the same checks on the CPU (slower)
    python benchmarks/gpu_check.py --device cpu --dry-run   # the timing code on a tiny BERT
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.nn.functional as F

import embgrad

#: allowed max |ours - reference| / max |reference| per dtype (the reference is float32)
TOL = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}
#: float32 on CUDA: batched and batch-of-1 kernels differ in accumulation order (TF32 off)
TOL_CUDA32 = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    a, b = ours.detach().double().cpu(), ref.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# -- models ----------------------------------------------------------------------------------------


def tiny_bert(seed: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    return transformers.BertModel(cfg).eval()


class BagNet(torch.nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(500, 32, mode=mode)
        self.out = torch.nn.Linear(32, 4)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, *psw: torch.Tensor) -> Any:
        return self.out(torch.tanh(self.bag(ids, offsets, *psw)))


def bert_case(device: str) -> tuple[torch.nn.Module, dict[str, Any], Callable, list[str], int]:
    b, t = 8, 16
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, -5:] = 0
    ids[1, -5:] = 0
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    w = torch.linspace(-1, 1, 64, device=device)

    def loss(out: Any) -> torch.Tensor:
        h = out.last_hidden_state
        return (torch.tanh(h[:, 0]) * w.to(h.dtype)).sum(-1) + h.float().pow(2).mean((1, 2))

    modules = ["embeddings.word_embeddings", "embeddings.token_type_embeddings"]
    return tiny_bert(0), inputs, loss, modules, b


def bag_case(mode: str, device: str) -> tuple[torch.nn.Module, tuple, Callable, list[str], int]:
    torch.manual_seed(1)
    lengths = [3, 1, 5, 2, 4, 6]
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 500, (sum(lengths),), generator=g)
    ids[:2] = 7  # a duplicate inside the first bag
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0)[:-1].tolist()])
    args: tuple = (ids.to(device), offsets.to(device))
    if mode == "sum":
        args += ((torch.rand(ids.shape[0], generator=g) + 0.5).to(device),)

    def loss(out: torch.Tensor) -> torch.Tensor:  # -log p(class 0): per sample, no labels
        return torch.logsumexp(out.float(), -1) - out.float()[:, 0]

    return BagNet(mode), args, loss, ["bag"], len(lengths)


def sample_inputs(inputs: Any, i: int, batch: int) -> tuple[tuple, dict]:
    """Sample i alone: dict inputs sliced on axis 0; (ids, offsets[, psw]) cut at the offsets."""
    if isinstance(inputs, dict):
        return (), {k: v[i : i + 1] for k, v in inputs.items()}
    ids, offsets, *rest = inputs
    lo = int(offsets[i])
    hi = int(offsets[i + 1]) if i + 1 < batch else ids.shape[0]
    return (
        ids[lo:hi],
        torch.zeros(1, dtype=offsets.dtype, device=offsets.device),
        *[r[lo:hi] for r in rest],
    ), {}


# -- the per-sample loop reference -----------------------------------------------------------------


def loop_reference(
    model: torch.nn.Module, inputs: Any, loss_fn: Callable, modules: list[str], batch: int
) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]]:
    """{module: (output grads (B, ...) stacked, dense table grads per sample)} in float32."""
    ref = copy.deepcopy(model).float().eval()
    out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {m: ([], []) for m in modules}
    for i in range(batch):
        args, kwargs = sample_inputs(inputs, i, batch)
        kwargs = {k: v.float() if v.is_floating_point() else v for k, v in kwargs.items()}
        args = tuple(a.float() if a.is_floating_point() else a for a in args)
        taps, leaves, handles = {}, {}, []
        for m in modules:
            mod = ref.get_submodule(m)
            leaves[m] = mod.weight.detach().clone().requires_grad_()

            def hook(
                mod: Any,
                a: tuple,
                o: torch.Tensor,
                w: torch.Tensor = leaves[m],
                m: str = m,
                taps: dict = taps,
            ) -> torch.Tensor:
                if isinstance(mod, torch.nn.EmbeddingBag):
                    psw = a[2] if len(a) > 2 else None
                    new = F.embedding_bag(a[0], w, a[1], mode=mod.mode, per_sample_weights=psw)
                else:
                    new = F.embedding(a[0], w, padding_idx=mod.padding_idx)
                taps[m] = new
                return new.clone()

            handles.append(mod.register_forward_hook(hook))
        try:
            losses = loss_fn(ref(*args, **kwargs))
        finally:
            for h in handles:
                h.remove()
        grads = torch.autograd.grad(
            losses.sum(), [taps[m] for m in modules] + [leaves[m] for m in modules]
        )
        for k, m in enumerate(modules):
            out[m][0].append(grads[k])
            out[m][1].append(grads[len(modules) + k])
    return {m: (torch.cat(o, 0), t) for m, (o, t) in out.items()}


# -- one check ------------------------------------------------------------------------------------


def check(name: str, make: Callable, dtype: torch.dtype, device: str) -> dict[str, Any]:
    model, inputs, loss_fn, modules, batch = make(device)
    model = model.to(device=device, dtype=dtype)
    if isinstance(inputs, tuple):
        inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    t0 = time.perf_counter()
    try:
        res = embgrad.gradients(model, inputs, loss_fn, check="probe")
    except embgrad.InputError as e:  # e.g. CUDA has no bf16 backward for per_sample_weights
        if "input_grads=False" not in str(e):
            raise
        print(f"note: {name} {dtype}: float-input gradients skipped: {str(e)[:160]}")
        res = embgrad.gradients(model, inputs, loss_fn, check="probe", input_grads=False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ref = loop_reference(model, inputs, loss_fn, modules, batch)
    tol = TOL_CUDA32 if dtype == torch.float32 and device == "cuda" else TOL[dtype]
    errs = {"out": 0.0, "rows": 0.0, "norms": 0.0}
    problems = []
    for m in modules:
        lk = res[m]
        grads, tables = ref[m]
        rows = lk.table_grad()
        dense = torch.stack(tables)
        errs["out"] = max(errs["out"], rel_err(lk.output_grad, grads))
        errs["rows"] = max(errs["rows"], rel_err(rows.values, dense[rows.sample, rows.row]))
        errs["norms"] = max(
            errs["norms"], rel_err(lk.table_grad_norms(), dense.flatten(1).norm(dim=1))
        )
        if lk.output_grad.device.type != device or rows.values.device.type != device:
            problems.append(f"{m}: results left the device")
        if lk.output_grad.dtype != dtype or rows.values.dtype != dtype:
            problems.append(f"{m}: results not in {dtype}")
        if lk.table_grad_norms().dtype != (
            torch.float64 if dtype == torch.float64 else torch.float32
        ):
            problems.append(f"{m}: norms not float32")
        if lk.padding_idx is not None and (rows.row == lk.padding_idx).any():
            problems.append(f"{m}: the padding row got a gradient")
    problems += [f"{k} error {v:.2e} > {tol:g}" for k, v in errs.items() if v > tol]
    return {
        "case": name,
        "dtype": str(dtype).replace("torch.", ""),
        "probe": res.probe_residual,
        **errs,
        "seconds": seconds,
        "ok": not problems,
        "problems": problems,
    }


def timing(device: str, repeats: int = 7, *, quick: bool = False) -> list[str]:
    """embgrad against its floor on random-init BERT-base (B=32, T=64), float32 and bfloat16.

    The floor: a forward hook on the word embedding returning a detached leaf, then one
    ``autograd.grad`` w.r.t. it.  ``embgrad``: ``gradients(..., check="off")`` per-sample output
    gradients (the issue-12 target, ≤ 1.05× the floor); ``+ norms``: with the sparse per-sample
    table rows and their norms.  Interleaved (the order rotating per round), one warm-up
    round; the ratio is the median over rounds of the two times in the same round.  ``quick``:
    a tiny BERT, 2 rounds (the CPU smoke run of ``--dry-run``).
    """
    import transformers

    torch.manual_seed(0)
    cfg = (
        transformers.BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
        )
        if quick
        else transformers.BertConfig()
    )
    repeats = 2 if quick else repeats
    base = transformers.BertModel(cfg).eval()
    ids = torch.randint(1, cfg.vocab_size, (32, 16 if quick else 64), device=device)
    lines = []
    for dtype in (torch.float32, torch.bfloat16):
        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        word = model.embeddings.word_embeddings
        loss = lambda out: out.last_hidden_state.float().pow(2).mean((1, 2))  # noqa: E731

        def floor(model: Any = model, word: Any = word, loss: Any = loss) -> None:
            box: list[torch.Tensor] = []

            def hook(_m: Any, _a: Any, o: torch.Tensor) -> torch.Tensor:
                box.append(o.detach().requires_grad_())
                return box[-1]

            h = word.register_forward_hook(hook)
            try:
                out = loss(model(input_ids=ids))
            finally:
                h.remove()
            torch.autograd.grad(out.sum(), box)

        def ours(model: Any = model, loss: Any = loss) -> None:
            embgrad.gradients(model, ids, loss, layers="*word*", check="off")

        def norms(model: Any = model, loss: Any = loss) -> None:
            embgrad.gradients(model, ids, loss, check="off")[
                "embeddings.word_embeddings"
            ].table_grad_norms()

        fns = {"floor": floor, "embgrad": ours, "+ norms": norms}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(repeats + 1):
            names = list(fns)
            names = names[r % len(names) :] + names[: r % len(names)]
            for k in names:
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fns[k]()
                if device == "cuda":
                    torch.cuda.synchronize()
                if r:
                    times[k].append(time.perf_counter() - t0)
        ratio = {
            k: statistics.median(a / b for a, b in zip(times[k], times["floor"], strict=True))
            for k in ("embgrad", "+ norms")
        }
        med = {k: statistics.median(v) for k, v in times.items()}
        lines.append(
            f"BERT-{'tiny' if quick else 'base'} B=32 {dtype} on {device}: floor "
            f"{med['floor'] * 1e3:.1f} ms, embgrad {med['embgrad'] * 1e3:.1f} ms "
            f"(x{ratio['embgrad']:.3f}), embgrad + sparse norms {med['+ norms'] * 1e3:.1f} ms "
            f"(x{ratio['+ norms']:.3f}); {repeats} rounds"
        )
    return lines


def bad_ids_check(device: str) -> list[str]:
    """Ids outside the table on ``device``: embgrad must raise InputError naming the id (off the
    CPU the lookups run with bad ids replaced and the ids are checked after the backward is
    queued, never by a kernel reading outside the table), and the device must still work."""
    problems = []
    cases: list[tuple[str, Callable]] = [
        ("tiny BERT", bert_case),
        ("bag", lambda d: bag_case("mean", d)),
    ]
    for name, make in cases:
        model, inputs, loss, _, _ = make(device)
        model = model.to(device)
        if isinstance(inputs, dict):
            bad, wrong = dict(inputs, input_ids=inputs["input_ids"].clone()), 5000
            bad["input_ids"][2, 3] = wrong
        else:
            bad, wrong = (inputs[0].clone(), *inputs[1:]), -3
            bad[0][4] = wrong
        try:
            embgrad.gradients(model, bad, loss)
            problems.append(f"{name}: ids outside the table were not refused")
        except embgrad.InputError as e:
            if f"got id {wrong} " not in str(e):
                problems.append(f"{name}: the error does not name the bad id {wrong}: {e}")
        res = embgrad.gradients(model, inputs, loss)  # the device is still usable
        if not all(torch.isfinite(lk.output_grad).all() for lk in res):
            problems.append(f"{name}: non-finite gradients after the refused call")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-timing", action="store_true", help="skip the BERT-base timing")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="the timing code only, on a tiny BERT (a smoke run for machines without a GPU)",
    )
    args = ap.parse_args(argv)
    if args.dry_run:
        for line in timing(args.device, quick=True):
            print(line)
        problems = bad_ids_check(args.device)
        print("bad ids refused" if not problems else "\n".join(problems))
        return 1 if problems else 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    cases: list[tuple[str, Callable]] = [("tiny BERT", bert_case)]
    cases += [(f"EmbeddingBag {m}", lambda d, m=m: bag_case(m, d)) for m in ("sum", "mean", "max")]
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for name, make in cases:
            rows.append(check(name, make, dtype, args.device))
    print(
        f"torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
    )
    print(
        f"{'case':<18} {'dtype':<9} {'out err':>9} {'rows err':>9} {'norm err':>9} "
        f"{'probe':>9} {'s':>7}  ok"
    )
    for r in rows:
        probe = "-" if r["probe"] is None else f"{r['probe']:.1e}"
        print(
            f"{r['case']:<18} {r['dtype']:<9} {r['out']:9.1e} {r['rows']:9.1e} "
            f"{r['norms']:9.1e} {probe:>9} {r['seconds']:7.3f}  {'yes' if r['ok'] else 'NO'}"
        )
        for p in r["problems"]:
            print(f"    {p}")
    if not args.no_timing:
        for line in timing(args.device):
            print(line)
    failed: list[Any] = [r for r in rows if not r["ok"]]
    problems = bad_ids_check(args.device)
    print("bad ids refused on the device" if not problems else "\n".join(problems))
    failed += problems
    print("all checks passed" if not failed else f"{len(failed)} check(s) FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
