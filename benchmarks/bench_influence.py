"""Speed and memory of ``embgrad.InfluenceIndex`` (TracIn-WE), issue 19 "fast".

    python benchmarks/bench_influence.py                      # all four parts
    python benchmarks/bench_influence.py --only build captum  # some of them
    python benchmarks/bench_influence.py --quick              # tiny sizes (the smoke test)

One torch thread throughout (``--threads``). Parts:

``build``  index-building throughput, writing included (``path=``), against the *floor*: a
    forward with the word lookups' output as a leaf (``inputs_embeds``) and one
    ``torch.autograd.grad`` of the summed cross-entropy to it, over the same batches. Model: the
    bundled all-MiniLM-L6-v2 with a (random, seeded) 5-way head; texts: ``--build-n``
    standard-library docstrings (real text of ragged length, ≤ 128 tokens), batched by length
    (32 per batch); the two run in turn, the order alternating per round; ratios are medians of
    per-round ratios.
``captum``  build + one query of one test text against ``--captum-n`` training texts, against
    Captum ``TracInCP(model, ..., layers=[word embedding], loss_fn=CE(reduction="none"))``'s
    ``influence`` of the same text over the same batches (a ``DataLoader`` yielding them, so
    both pad alike); the scores are compared too. Again with a random-init BERT of MiniLM's
    shape but a 128,000-row word table (``--captum-big-n`` texts; Captum's per-example gradient
    is dense (V, D)).
``query``  one text against an index of ``--index-n`` (100,000) examples: 12-word windows of
    the standard library's docstrings, indexed with a random-init one-layer BERT with MiniLM's
    vocabulary and width (D = 384: the query's cost is the table rows and posting lists, not
    the encoder's depth; building 100,000 texts with the six-layer MiniLM would take hours on
    this machine). Built twice (exact and ``top_rows=10``) in child processes, then queried in
    another child: median seconds per query over ``--queries`` texts, recall@10 of the
    ``top_rows=10`` proponents against the exact ones; peak RSS (VmHWM) of each child, next to
    what the same index would take densely (n × V × D float32). "on disk" counts the Parquet
    shards and their postings sidecars (``IDX/postings/``, built when the build opens the
    index; about as large as the shards). To time the code before the sidecar, run the
    ``--child query WORK N THREADS`` step with another tree first on ``PYTHONPATH`` (an older
    embgrad ignores ``IDX/postings/``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _influence_floor as floor
import mislabel_data
from _harness import fmt_mb, fmt_ratio, fmt_seconds, md_table, peak_rss_mb

PARTS = ("build", "captum", "query")
N_CLASSES = 5


# -- models and data ------------------------------------------------------------------------------
def minilm_classifier() -> tuple[Any, Any]:
    import mislabel_train

    return mislabel_train.classifier(N_CLASSES, seed=0)


def random_bert(vocab: int, layers: int, seed: int = 0) -> Any:
    """A random-init BertForSequenceClassification of MiniLM's width (eval mode)."""
    import torch

    from embgrad.models.minilm import model_path, quiet_transformers

    tf = quiet_transformers()
    config = tf.AutoConfig.from_pretrained(str(model_path()))
    config.vocab_size, config.num_hidden_layers, config.num_labels = vocab, layers, N_CLASSES
    torch.manual_seed(seed)
    model = tf.BertForSequenceClassification(config)
    model.eval()
    return model


def tokenizer() -> Any:
    from embgrad.models.minilm import model_path, quiet_transformers

    return quiet_transformers().AutoTokenizer.from_pretrained(str(model_path()))


def labelled_batches(
    tok: Any, texts: Sequence[str], max_length: int, batch: int = 32, seed: int = 0
) -> tuple[list[Any], list[int], list[Any]]:
    """(batches by length, labels in batch order, label tensors per batch); labels seeded."""
    import torch

    batches, _ = floor.by_length(tok, texts, batch, max_length)
    rng = random.Random(seed)
    labels = [rng.randrange(N_CLASSES) for _ in range(len(texts))]
    ys, k = [], 0
    for b in batches:
        m = int(b["input_ids"].shape[0])
        ys.append(torch.tensor(labels[k : k + m]))
        k += m
    return batches, labels, ys


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """One warm-up each, then ``rounds`` rounds, the order alternating; seconds per run."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {n: [] for n in fns}
    names = list(fns)
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
            print(f"  round {r} {n}: {times[n][-1]:.2f} s", flush=True)
    return times


def paired(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


# -- part (i): building against the floor ---------------------------------------------------------
def part_build(n: int, rounds: int) -> str:
    import embgrad

    model, tok = minilm_classifier()
    texts = mislabel_data.corpus()[:n]
    batches, labels, ys = labelled_batches(tok, texts, max_length=128)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    cells = sum(int(b["attention_mask"].numel()) for b in batches)
    work = Path(tempfile.mkdtemp(prefix="bench-influence-"))
    count = [0]

    def build_disk() -> None:
        count[0] += 1
        out = work / f"idx{count[0]}"
        embgrad.InfluenceIndex.build(model, batches, labels=labels, path=out)
        shutil.rmtree(out)

    def build_memory() -> None:
        embgrad.InfluenceIndex.build(model, batches, labels=labels)

    try:
        times = interleaved(
            {
                "floor": lambda: floor.floor_pass(model, batches, ys),
                "embgrad build, path=": build_disk,
                "embgrad build, in memory": build_memory,
            },
            rounds,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        share = "1.00×" if name == "floor" else fmt_ratio(paired(times["floor"], ts))
        rows.append([name, fmt_seconds(med), f"{n / med:.1f}", share])
    return (
        f"### Index building vs the floor: {n} docstrings, {len(batches)} batches by length, "
        f"{tokens} tokens ({1 - tokens / cells:.1%} padding), MiniLM + 5-way head, "
        f"{rounds} rounds\n\n"
        + md_table(["", "median", "texts/s", "throughput ÷ floor's (paired)"], rows)
    )


# -- part (ii): against Captum TracInCP on the word embedding -------------------------------------
class _Logits:
    """``model(ids, mask) -> logits`` for Captum (a torch Module made on first use)."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class Logits(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return self.inner(input_ids=ids, attention_mask=mask).logits

        return Logits(model)


def captum_influence(
    model: Any, batches: Sequence[Any], ys: Sequence[Any], test: Any, test_y: Any
) -> Any:
    import torch
    from captum.influence import TracInCP

    wrapped = _Logits.wrap(model)
    loader = torch.utils.data.DataLoader(
        [(b["input_ids"], b["attention_mask"], y) for b, y in zip(batches, ys, strict=True)],
        batch_size=None,
    )
    tracin = TracInCP(
        wrapped,
        loader,
        ["current"],
        checkpoints_load_func=lambda m, path: 1.0,
        layers=["inner." + _table_path(model)],
        loss_fn=torch.nn.CrossEntropyLoss(reduction="none"),
        batch_size=None,
    )
    return tracin.influence((test["input_ids"], test["attention_mask"], test_y))


def _table_path(model: Any) -> str:
    table = model.get_input_embeddings()
    return next(name for name, m in model.named_modules() if m is table)


def one_captum(
    model: Any, tok: Any, n: int, rounds: int, label: str, short: bool = False
) -> list[str]:
    import numpy as np
    import torch

    import embgrad

    # short: disjoint 12-word windows of the same docstrings (the "short texts")
    texts = mislabel_data.windows(n + 1, stride=12) if short else mislabel_data.corpus()
    train, test_text = texts[:n], texts[n]
    batches, labels, ys = labelled_batches(tok, train, max_length=128, batch=16)
    test = tok([test_text], return_tensors="pt", truncation=True, max_length=128)
    test_y = torch.tensor([1])
    box: dict[str, Any] = {}

    def ours() -> None:
        idx = embgrad.InfluenceIndex.build(model, batches, labels=labels)
        box["ours"] = np.asarray(idx.query(test, labels=[1]).scores)[0]

    def theirs() -> None:
        box["captum"] = captum_influence(model, batches, ys, test, test_y).detach().numpy()[0]

    times = interleaved({"embgrad build + query": ours, "Captum TracInCP": theirs}, rounds)
    a, b = box["ours"], box["captum"].astype(np.float64)
    rel = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    speed = paired(times["Captum TracInCP"], times["embgrad build + query"])
    return [
        label,
        str(n),
        fmt_seconds(statistics.median(times["embgrad build + query"])),
        fmt_seconds(statistics.median(times["Captum TracInCP"])),
        fmt_ratio(speed),
        f"{rel:.1e}",
    ]


def part_captum(n: int, n_big: int, rounds: int, short: bool = False) -> str:
    what = ", 12-word texts" if short else ""
    model, tok = minilm_classifier()
    rows = [one_captum(model, tok, n, rounds, f"MiniLM + head (V = 30,522){what}", short)]
    del model
    big = random_bert(128_000, 6)
    rows.append(
        one_captum(
            big, tok, n_big, rounds, f"random-init, MiniLM's shape, V = 128,000{what}", short
        )
    )
    return (
        f"### One test text against n training texts: embgrad vs Captum TracInCP on the word "
        f"embedding, {rounds} rounds\n\n"
        + md_table(
            [
                "model",
                "n",
                "embgrad build + query",
                "Captum",
                "embgrad faster by",
                "max |Δ| / max |score|",
            ],
            rows,
        )
    )


# -- part (iii)+(iv): 100,000 examples, in child processes ----------------------------------------
def _child(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_build(work: Path, n: int, top_rows: int | None, threads: int) -> dict[str, Any]:
    import torch

    import embgrad

    torch.set_num_threads(threads)
    model = _small_model(work)
    tok = tokenizer()
    texts = mislabel_data.windows(n)
    batches, labels, _ = labelled_batches(tok, texts, max_length=32, batch=64)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    out = work / ("exact" if top_rows is None else f"top{top_rows}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    embgrad.InfluenceIndex.build(model, batches, labels=labels, top_rows=top_rows, path=out)
    secs = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "seconds": secs,
        "n": n,
        "tokens": tokens,
        "disk_mb": size / 2**20,
        "peak_mb": peak_rss_mb(),
    }


def child_query(work: Path, queries: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    import embgrad

    torch.set_num_threads(threads)
    model = _small_model(work)
    tok = tokenizer()
    # test texts: the mislabel set's test docstrings, cut to 12 words (not windows of the index)
    tests = [" ".join(t.split()[:12]) for t in mislabel_data.load().test_texts[:queries]]
    out: dict[str, Any] = {}
    tops: dict[str, list[Any]] = {}
    for name in ("exact", "top10"):
        t0 = time.perf_counter()
        idx = embgrad.InfluenceIndex.open(work / name, model)
        out[f"{name}_open_s"] = time.perf_counter() - t0
        times, tops[name] = [], []
        for text in tests:
            enc = tok([text], return_tensors="pt")
            with torch.no_grad():
                y = int(model(**enc).logits.argmax(-1))
            t0 = time.perf_counter()
            scores = np.asarray(idx.query(enc, labels=[y]).scores)[0]
            times.append(time.perf_counter() - t0)
            tops[name].append(set(np.argsort(-scores, kind="stable")[:10].tolist()))
        out[f"{name}_query_s"] = statistics.median(times)
        out[f"{name}_query_max_s"] = max(times)
        out["n_index"] = int(scores.shape[0])
        out[f"{name}_peak_mb"] = peak_rss_mb()
        del idx
    out["recall10"] = statistics.mean(
        len(a & b) / 10 for a, b in zip(tops["exact"], tops["top10"], strict=True)
    )
    out["queries"] = len(tests)
    return out


def _small_model(work: Path) -> Any:
    """The one-layer random-init BERT of the query part, saved once so children agree."""
    import torch

    model = random_bert(30_522, 1)
    state = work / "model.pt"
    if state.is_file():
        model.load_state_dict(torch.load(state, weights_only=True))
    else:
        torch.save(model.state_dict(), state)
    return model


def part_query(n: int, queries: int, threads: int, keep: Path | None) -> str:
    work = keep or Path(tempfile.mkdtemp(prefix="bench-influence-query-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        _child(["model", str(work)])
        built = {}
        for top in ("exact", "10"):
            built[top] = _child(["build", str(work), str(n), top, str(threads)])
            print(f"  build {top}: {built[top]}", flush=True)
        q = _child(["query", str(work), str(queries), str(threads)])
        print(f"  query: {q}", flush=True)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    dense_mb = n * 30_522 * 384 * 4 / 2**20
    rows = [
        [
            "exact",
            fmt_seconds(built["exact"]["seconds"]),
            fmt_mb(built["exact"]["disk_mb"]),
            fmt_mb(built["exact"]["peak_mb"]),
            fmt_seconds(q["exact_open_s"]),
            fmt_seconds(q["exact_query_s"]),
            fmt_seconds(q["exact_query_max_s"]),
            fmt_mb(q["exact_peak_mb"]),
            "1 (reference)",
        ],
        [
            "top_rows=10",
            fmt_seconds(built["10"]["seconds"]),
            fmt_mb(built["10"]["disk_mb"]),
            fmt_mb(built["10"]["peak_mb"]),
            fmt_seconds(q["top10_open_s"]),
            fmt_seconds(q["top10_query_s"]),
            fmt_seconds(q["top10_query_max_s"]),
            fmt_mb(q["top10_peak_mb"]),
            f"{q['recall10']:.2f}",
        ],
    ]
    return (
        f"### One text against {q['n_index']:,} indexed examples ({built['exact']['tokens']:,} "
        f"tokens; densely n × V × D float32 would be {fmt_mb(dense_mb)}), {q['queries']} query "
        f"texts, {threads} thread(s)\n\n"
        + md_table(
            [
                "index",
                "build",
                "on disk",
                "build peak RSS",
                "open",
                "query median",
                "query max",
                "query peak RSS",
                "recall@10 vs exact",
            ],
            rows,
        )
        + "\n\n(peak RSS: VmHWM of the child process, model and tokenizer included; the query "
        "child opens the exact index first, so its top_rows=10 peak includes the exact one's)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--build-n", type=int, default=256)
    p.add_argument("--captum-n", type=int, default=64)
    p.add_argument("--captum-big-n", type=int, default=32)
    p.add_argument(
        "--captum-short",
        action="store_true",
        help="captum part on disjoint 12-word windows instead of whole docstrings",
    )
    p.add_argument("--index-n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--keep", type=Path, default=None, help="keep the query part's indexes here")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.build_n, a.captum_n, a.captum_big_n = 1, 12, 6, 4
        a.index_n, a.queries = 200, 3
    import torch

    torch.set_num_threads(a.threads)
    for part in a.only:
        t0 = time.perf_counter()
        if part == "build":
            table = part_build(a.build_n, a.rounds)
        elif part == "captum":
            table = part_captum(a.captum_n, a.captum_big_n, a.rounds, a.captum_short)
        else:
            table = part_query(a.index_n, a.queries, a.threads, a.keep)
        print(f"\n{table}\n\n({part}: {time.perf_counter() - t0:.0f} s in all)\n", flush=True)
    return 0


def _child_main(args: list[str]) -> int:
    kind, work = args[0], Path(args[1])
    if kind == "model":
        _small_model(work)
        res: dict[str, Any] = {"ok": True}
    elif kind == "build":
        top = None if args[3] == "exact" else int(args[3])
        res = child_build(work, int(args[2]), top, int(args[4]))
    else:
        res = child_query(work, int(args[2]), int(args[3]))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
