"""RESULTS.md and the PNG plots, built from the measured results only (nothing hard-coded)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from _harness import (
    OK,
    MethodResult,
    fmt_mb,
    fmt_ratio,
    fmt_seconds,
    md_table,
    paired_ratio,
    ratio,
    short_reason,
)
from plan import MEASURES, METHODS, Workload

PACKAGES = (
    "torch",
    "mxnet",
    "gluonnlp",
    "transformers",
    "captum",
    "opacus",
    "backpack-for-pytorch",
    "numpy",
    "embgrad",
)


#: What the harness's set-up of each peer needed, and caveats found while writing it (facts
#: about the peers' code, not measurements; the measurements are all above).
PEER_NOTES = (
    "- **Opacus** records activations only for modules in training mode: the word embedding "
    "alone is put in train mode for its runs, and only its weight is trainable. Its hooks are "
    "added and removed around each run (left on, its full backward hooks break `torch.func` "
    "transforms run on the same model).",
    "- **Opacus EmbeddingBag grad sampler** (`opacus/grad_sample/embedding.py`, "
    "`gsm[i][index[begin:end]] += backprops[i]`) adds a row once even when an id repeats within "
    "a bag, so its per-sample gradients and norms are wrong for such bags (checked against "
    "torch.func and embgrad while writing the harness); its timings are unaffected.",
    "- **Opacus ghost clipping** has a norm sampler for `nn.Embedding` only; for "
    "`nn.EmbeddingBag` it falls back to materialising the dense grad_sample.",
    "- **torch.func vmap** over a HuggingFace BERT fails inside transformers' attention-mask "
    "builder (`padding_mask.all()` is data-dependent); the harness passes a prepared 4-D mask.",
    "- **BackPACK** refuses embeddings with `padding_idx` (both BERTs) and has no rule for "
    "`nn.EmbeddingBag`.",
    "- **Captum**: Saliency with `abs=False` on the lookup output; LayerIntegratedGradients "
    "with the padding token as baseline, `method='gausslegendre'` and the same "
    "`internal_batch_size` as embgrad's integrated gradients.",
    "- **Forum loop** (Gluon): eval mode, so the retained-graph dropout re-draw of MXNet 1.9.1 "
    "does not make it wrong here; it computes every parameter's gradient B times, as posted.",
)


@dataclass
class Measured:
    """One workload and what each of its methods gave."""

    workload: Workload
    results: dict[str, MethodResult]

    def time_ratio(self, method: str, base: str) -> float:
        """Median of the paired per-round ratios ``method / base`` (NaN if either failed)."""
        r, b = self.results.get(method), self.results.get(base)
        if r is None or b is None or not (r.ok and b.ok):
            return math.nan
        return paired_ratio(r.times, b.times)

    def mem_ratio(self, method: str) -> float:
        r, f = self.results.get(method), self.results.get("floor")
        return ratio(r.peak_mb if r else None, f.peak_mb if f else None)


# -- machine --------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    """CPU model, cores, RAM, load, OS and package versions, read without importing them."""
    info = {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})",
        "RAM": _meminfo_gb(),
        "load average (1, 5, 15 min) at the start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "OS": platform.platform(),
        "python": sys.version.split()[0],
    }
    for pkg in PACKAGES:
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = "not installed"
    info["embgrad commit"] = _git_commit()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in src/' if dirty else ''}"


# -- tables ---------------------------------------------------------------------------------------
def _cell_time(m: Measured, method: str) -> list[str]:
    r = m.results[method]
    if not r.ok:
        reason = short_reason(r.status, r.detail)
        mem = fmt_mb(r.peak_mb) if r.peak_mb else "–"
        return ["**" + reason + "**", "–", "–", mem, "–", "–", "–"]
    return [
        fmt_seconds(r.median_s),
        fmt_ratio(m.time_ratio(method, "floor")),
        fmt_ratio(m.time_ratio(method, "train")),
        fmt_mb(r.peak_mb),
        fmt_ratio(m.mem_ratio(method)),
        f"{r.cpu_per_wall:.2f}" if math.isfinite(r.cpu_per_wall) else "–",
        str(len(r.times)),
    ]


HEADER = [
    "workload",
    "method",
    "median time",
    "× floor",
    "× training step",
    "peak RSS",
    "RSS × floor",
    "CPU/wall",
    "rounds",
]


def measure_table(measured: Sequence[Measured], measure: str) -> str | None:
    """Rows (workload, method) for every method of ``measure``; None if none was planned."""
    rows = []
    for m in measured:
        if not m.workload.timed:
            continue
        for method in m.workload.methods:
            if METHODS[method].measure == measure:
                rows.append([m.workload.key, METHODS[method].label, *_cell_time(m, method)])
    return md_table(HEADER, rows) if rows else None


def baseline_table(measured: Sequence[Measured]) -> str:
    rows = []
    for m in measured:
        if not m.workload.timed:
            continue
        for method in ("floor", "train"):
            if method in m.results:
                rows.append([m.workload.key, METHODS[method].label, *_cell_time(m, method)])
    return md_table(HEADER, rows)


def sweep_table(measured: Sequence[Measured]) -> str | None:
    """Peak RSS against vocabulary size for the EmbeddingBag workloads."""
    bags = sorted(
        (m for m in measured if m.workload.builder == "embedding_bag"),
        key=lambda m: m.workload.params["vocab"],
    )
    if not bags:
        return None
    methods = [k for k in METHODS if all(k in m.results for m in bags)]
    header = ["vocabulary", "B", *[METHODS[k].label for k in methods]]
    rows = []
    for m in bags:
        cells = []
        for k in methods:
            r = m.results.get(k)
            if r is None:
                cells.append("")
            elif r.ok:
                cells.append(fmt_mb(r.peak_mb))
            else:
                cells.append(f"**{r.status}**")
        rows.append([f"{m.workload.params['vocab']:,}", str(m.workload.batch), *cells])
    return md_table(header, rows)


def headline_rows(measured: Sequence[Measured]) -> list[list[str]]:
    """Per timed workload: embgrad against the best peer of each measure, as × floor."""
    rows = []
    for m in measured:
        if not m.workload.timed:
            continue
        cells = []
        for measure, _ in MEASURES:
            ours = [
                k
                for k in m.workload.methods
                if METHODS[k].measure == measure and METHODS[k].peer == "embgrad"
            ][:1]
            peers = [
                k
                for k in m.workload.methods
                if METHODS[k].measure == measure and METHODS[k].peer != "embgrad"
            ]
            cells.append(_headline_cell(m, ours, peers))
        rows.append([m.workload.key, *cells])
    return rows


def _headline_cell(m: Measured, ours: list[str], peers: list[str]) -> str:
    if not ours and not peers:
        return ""
    parts = []
    for k in ours:
        r = m.results[k]
        parts.append(
            f"embgrad {fmt_ratio(m.time_ratio(k, 'floor'))}" if r.ok else f"embgrad {r.status}"
        )
    ok_peers = [k for k in peers if m.results[k].ok and math.isfinite(m.time_ratio(k, "floor"))]
    if ok_peers:
        best = min(ok_peers, key=lambda k: m.time_ratio(k, "floor"))
        parts.append(f"best peer {METHODS[best].peer} {fmt_ratio(m.time_ratio(best, 'floor'))}")
    failed = [f"{METHODS[k].peer} {m.results[k].status}" for k in peers if not m.results[k].ok]
    if failed:
        parts.append("not run: " + ", ".join(failed))
    return "; ".join(parts)


def failures(measured: Sequence[Measured]) -> list[str]:
    out = []
    for m in measured:
        for k, r in m.results.items():
            if r.status != OK:
                detail = " ".join(r.detail.split())
                out.append(f"- {m.workload.key} · {METHODS[k].label}: **{r.status}** — {detail}")
    return out


# -- the document ---------------------------------------------------------------------------------
def write_results(
    path: Path,
    measured: Sequence[Measured],
    *,
    command: str,
    mode: str,
    settings: dict[str, Any],
    wall_s: float,
    plots: Sequence[Path],
    info: dict[str, str] | None = None,
) -> None:
    """Write RESULTS.md (``info``: the machine as recorded after the run; default: now)."""
    info = info or machine()
    lines = [
        "# embgrad benchmarks",
        "",
        f"Generated by `{command}` (**{mode} mode**) in {wall_s / 60:.1f} min. Every number below "
        "was measured by that run; rerun the command to regenerate this file and the plots "
        "(`make bench` runs `python benchmarks/run_all.py`, `make bench-quick` adds `--quick`; "
        "`--quick` uses smaller shapes and approximate memory figures).",
        "",
        "## How to read this",
        "",
        "- Each workload is timed in **one worker process**: a warm-up run of every method, then "
        f"at least {settings['rounds']} rounds (more for fast workloads, up to "
        f"{settings['round_budget_s']:.0f} s per method) in which every method runs once, in an order that rotates "
        "and reverses from round to round. Times are medians over the rounds; ratios are medians "
        "of per-round ratios to the **floor** (one `autograd.grad` to the word-lookup output: "
        "nothing gets per-sample lookup gradients for less) and to the **training step** (one "
        "forward + backward over all parameters), measured next to them in the same round.",
        (
            "- Peak RSS: each method also runs alone in a fresh process (model built, one run); "
            "its peak RSS (`VmHWM`) is reported, model and frameworks included."
            if settings["peak RSS from"].startswith("one fresh")
            else "- Peak RSS (**quick mode: approximate**): the timing worker resets its "
            "`VmHWM` before each method's warm-up run and reads it after, so memory freed by "
            "one method but kept by the allocator can inflate the next one's figure; the full "
            "run measures each method in a fresh process."
        )
        + " `RSS × floor` divides by the floor's peak.",
        f"- A method is stopped above {fmt_mb(settings['mem_cap_mb'])} of RSS (**oom**), when "
        f"one run exceeds {settings['max_run_s']:.0f} s (**timeout**), or when it refuses the "
        "workload (**unsupported**); such cells say so and why, they are not dropped.",
        f"- Workers run with {settings['threads per worker (torch intra-op, OpenMP, MKL)']} "
        "intra-op thread(s) (`--threads`): on a shared machine, multi-threaded OpenMP regions "
        "slow down several-fold whenever another process wants a core. CPU/wall is the "
        "median of process CPU time over wall time; values well below the thread count mean "
        "the machine was busy with other work during the run (the paired ratios partly cancel "
        "that; MXNet's engine threads can push it above).",
        "- All models are in eval mode (dropout off); per-sample losses are cross-entropies.",
        "",
        "## Headlines (time as × floor, median of paired ratios)",
        "",
        md_table(["workload", *[t.split(":")[0] for _, t in MEASURES]], headline_rows(measured)),
        "",
    ]
    for key, title in MEASURES:
        table = measure_table(measured, key)
        if table:
            lines += [f"## {title}", "", table, ""]
    lines += ["## Baselines: floor and training step", "", baseline_table(measured), ""]
    sweep = sweep_table(measured)
    if sweep:
        lines += [
            "## Peak memory against vocabulary size (EmbeddingBag, sparse vs dense table gradients)",
            "",
            sweep,
            "",
        ]
    for p in plots:
        lines += [f"![{p.stem}](plots/{p.name})", ""]
    lines += ["## Notes on the peers", "", *PEER_NOTES, ""]
    fails = failures(measured)
    if fails:
        lines += ["## Methods that did not run, and why", "", *fails, ""]
    lines += ["## Machine and versions", ""]
    lines += [md_table(["", ""], [[k, v] for k, v in info.items()]), ""]
    lines += [
        "## Settings",
        "",
        md_table(["", ""], [[k, str(v)] for k, v in settings.items()]),
        "",
    ]
    path.write_text("\n".join(lines))
