"""Generation attribution: embgrad vs Inseq 0.7.1, Captum's LLMGradientAttribution and loops.

Reference workload (issue 13): a random-init GPT-2-shaped model (4 layers, width 256, 4 heads,
vocabulary 30522), prompts of 32 tokens, 32 forced tokens, method gradient, CPU, 1 thread. The
tokenizer is a byte-level BPE trained here on synthetic words, each one token, so prompt and
continuation texts have exactly the token counts asked for (Inseq and Captum take texts).

Paths, interleaved in one process (each round times every path once, in turn):

* ``embgrad``  — ``attribute_generation(model, prompts, targets)`` (method gradient).
* ``inseq``    — ``inseq.load_model(path, "saliency").attribute(prompts, prompt + continuation)``.
* ``captum``   — ``LLMGradientAttribution(LayerGradientXActivation(model, wte))``, one call per
  prompt (it takes one input at a time).
* ``loop``     — bare PyTorch: per step, a forward on prompt + y_<k and one backward of
  log p(y_k) to the word-embedding output (full logits, as a user writes it).
* ``shared``   — bare PyTorch: one teacher-forced forward, then the K steps' gradients as one
  batched vector-Jacobian product (``autograd.grad(..., is_grads_batched=True)``).

Checked before timing: embgrad's gradient×input equals Captum's gradient×activation (per step,
over the prompt) to 1e-5, and embgrad's gradient equals the loop's.

Usage::

    python benchmarks/bench_generation.py                  # B = 1, then B = 8
    python benchmarks/bench_generation.py --memory 512     # one 512-token continuation: peak RSS
    python benchmarks/bench_generation.py --device cuda    # the same table on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np

WORDS = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(400)]


def build(folder: Path, positions: int) -> tuple[Any, Any]:
    """A random-init GPT-2 (4 × 256, vocab 30522) and a word-level byte BPE, saved to folder."""
    import torch
    import transformers as tf
    from tokenizers import ByteLevelBPETokenizer

    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 40)) for _ in range(3000)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=2000, min_frequency=1, show_progress=False)
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    tok.pad_token = tok.eos_token = tok.bos_token = "<|endoftext|>"
    if tok.convert_tokens_to_ids("<|endoftext|>") is None:
        tok.add_special_tokens({"pad_token": "<|endoftext|>"})
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        n_layer=4, n_embd=256, n_head=4, vocab_size=30522, n_positions=positions,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = tf.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def texts(tok: Any, batch: int, n_prompt: int, n_target: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(1)
    prompts, conts = [], []
    for _ in range(batch):
        p = " ".join(rng.choice(WORDS, n_prompt))
        c = " " + " ".join(rng.choice(WORDS, n_target))
        assert len(tok(p)["input_ids"]) == n_prompt, "a word is not one token"
        assert len(tok(c)["input_ids"]) == n_target, "a word is not one token"
        prompts.append(p)
        conts.append(c)
    return prompts, conts


def loop_grads(model: Any, ids: Any, targets: Any) -> np.ndarray:
    """(K, P + K − 1, D): per step a forward on prompt + y_<k, one backward (bare PyTorch)."""
    import torch

    emb = model.get_input_embeddings()
    p_len, k_n = ids.shape[0], targets.shape[0]
    out = np.zeros((k_n, p_len + k_n - 1, emb.weight.shape[1]), dtype=np.float32)
    for k in range(k_n):
        seq = torch.cat([ids, targets[:k]])[None]
        e = emb(seq).detach().requires_grad_(True)
        logits = model(inputs_embeds=e).logits[0, -1]
        q = torch.log_softmax(logits, -1)[targets[k]]
        (g,) = torch.autograd.grad(q, e)
        out[k, : p_len + k] = g[0].numpy() if g.device.type == "cpu" else g[0].cpu().numpy()
    return out


def shared_grads(model: Any, ids: Any, targets: Any) -> Any:
    """One teacher-forced forward; the K steps' gradients as one batched VJP (bare PyTorch)."""
    import torch

    emb = model.get_input_embeddings()
    p_len, k_n = ids.shape[0], targets.shape[0]
    seq = torch.cat([ids, targets[:-1]])[None]
    e = emb(seq).detach().requires_grad_(True)
    logits = model(inputs_embeds=e).logits[0, p_len - 1 :]
    q = torch.log_softmax(logits, -1)[torch.arange(k_n), targets]
    (g,) = torch.autograd.grad(
        q, e, grad_outputs=torch.eye(k_n, device=q.device), is_grads_batched=True
    )
    return g[:, 0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--targets", type=int, default=32)
    ap.add_argument("--memory", type=int, default=0, help="only: one N-token continuation, RSS")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--paths", default="embgrad,inseq,captum,loop,shared")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import embgrad

    folder = Path(tempfile.mkdtemp(prefix="embgrad-gen-"))
    positions = max(1024, args.prompt + max(args.targets, args.memory) + 8)
    model, tok = build(folder, positions)
    model.to(args.device)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} thread(s), device {args.device}"
    )
    if args.memory:
        return memory_run(embgrad, model, tok, args)
    paths = args.paths.split(",")
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts, conts = texts(tok, batch, args.prompt, args.targets)
        enc = tok(prompts, return_tensors="pt").to(args.device)
        tgt = tok(conts, return_tensors="pt")["input_ids"].to(args.device)
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        runs = make_paths(model, tok, folder, inputs, tgt, prompts, conts, args.device, paths)
        check(embgrad, model, tok, inputs, tgt, prompts, paths, args.device)
        times: dict[str, list[float]] = {n: [] for n in runs}
        for fn in runs.values():  # warm-up (the independence probe runs once here)
            fn()
        for _ in range(args.rounds):
            for n, fn in runs.items():
                if args.device != "cpu":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if args.device != "cpu":
                    torch.cuda.synchronize()
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) for n, v in times.items()}
        print(f"\n## B = {batch}, prompt {args.prompt}, {args.targets} forced tokens, gradient")
        print(f"{args.rounds} rounds, interleaved; median seconds and ratio of medians\n")
        print("| path | median s | min s | embgrad / path |")
        print("|---|---|---|---|")
        for n in runs:
            print(f"| {n} | {med[n]:.3f} | {min(times[n]):.3f} | {med['embgrad'] / med[n]:.2f} |")
    return 0


def make_paths(
    model: Any, tok: Any, folder: Path, inputs: Any, tgt: Any, prompts: list[str],
    conts: list[str], device: str, paths: list[str],
) -> dict[str, Any]:  # fmt: skip
    import embgrad

    runs: dict[str, Any] = {}
    if "embgrad" in paths:
        runs["embgrad"] = lambda: embgrad.attribute_generation(model, inputs, tgt)
    if "inseq" in paths:
        import inseq

        im = inseq.load_model(str(folder), "saliency", device=device)
        gens = [p + c for p, c in zip(prompts, conts, strict=True)]
        out = im.attribute(prompts[:1], gens[:1], show_progress=False)
        steps = out.sequence_attributions[0].target_attributions.shape[1]
        print(f"# inseq attributes {steps} steps per prompt (asked {tgt.shape[1]})")
        runs["inseq"] = lambda: im.attribute(
            prompts, gens, show_progress=False, batch_size=len(prompts)
        )
    if "captum" in paths:
        from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

        llm = LLMGradientAttribution(
            LayerGradientXActivation(model, model.get_input_embeddings()), tok
        )
        inps = [TextTokenInput(p, tok) for p in prompts]

        def captum_all() -> list[Any]:
            return [llm.attribute(i, target=t) for i, t in zip(inps, tgt, strict=True)]

        runs["captum"] = captum_all
    ids = inputs["input_ids"]
    if "loop" in paths:
        runs["loop"] = lambda: [loop_grads(model, ids[b], tgt[b]) for b in range(ids.shape[0])]
    if "shared" in paths:
        runs["shared"] = lambda: [shared_grads(model, ids[b], tgt[b]) for b in range(ids.shape[0])]
    return runs


def check(
    embgrad: Any, model: Any, tok: Any, inputs: Any, tgt: Any, prompts: list[str],
    paths: list[str], device: str,
) -> None:  # fmt: skip
    """embgrad's gradient equals the loop's; its gradient × input equals Captum's."""
    res = embgrad.attribute_generation(model, inputs, tgt, return_grads=True)
    ids = inputs["input_ids"]
    p_len = ids.shape[1]
    for b in range(min(2, ids.shape[0])):
        want = loop_grads(model, ids[b], tgt[b])
        gap = np.abs(res.grads[b, :, : want.shape[1]] - want).max() / np.abs(want).max()
        print(f"# sample {b}: embgrad gradient vs loop, max rel gap {gap:.1e}")
        assert gap < 1e-5
    if "captum" in paths:
        from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput

        gxi = embgrad.attribute_generation(model, inputs, tgt, method="grad_x_input")
        llm = LLMGradientAttribution(
            LayerGradientXActivation(model, model.get_input_embeddings()), tok
        )
        for b in range(min(2, ids.shape[0])):
            cap = llm.attribute(TextTokenInput(prompts[b], tok), target=tgt[b])
            c = cap.token_attr.detach().cpu().numpy()
            ours = gxi.scores[b, :, :p_len]
            gap = np.abs(ours - c).max() / np.abs(c).max()
            print(f"# sample {b}: embgrad grad_x_input vs Captum, max rel gap {gap:.1e}")
            assert gap < 1e-5


def memory_run(embgrad: Any, model: Any, tok: Any, args: Any) -> int:
    prompts, conts = texts(tok, 1, args.prompt, args.memory)
    enc = tok(prompts, return_tensors="pt").to(args.device)
    tgt = tok(conts, return_tensors="pt")["input_ids"].to(args.device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = embgrad.attribute_generation(model, dict(enc), tgt)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"| {args.prompt} + {args.memory} tokens | {wall:.1f} s | peak RSS {peak:.0f} MB "
        f"(before the call {before:.0f} MB) | {len(res.info['passes'])} passes |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
