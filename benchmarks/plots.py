"""PNG plots: time against batch size per method, peak memory against vocabulary size."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from plan import METHODS
from report import Measured


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def time_vs_batch(measured: Sequence[Measured], out: Path) -> Path | None:
    """One panel per model with ≥ 2 batch sizes: median time (log) against B, per method."""
    groups: dict[str, list[Measured]] = defaultdict(list)
    for m in measured:
        if m.workload.timed:
            groups[m.workload.group].append(m)
    groups = {g: ms for g, ms in groups.items() if len({m.workload.batch for m in ms}) > 1}
    if not groups:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.6), squeeze=False)
    for ax, (group, ms) in zip(axes[0], groups.items(), strict=True):
        ms = sorted(ms, key=lambda m: m.workload.batch)
        methods = [k for k in METHODS if any(k in m.results for m in ms)]
        failed = []
        for k in methods:
            pts = [
                (m.workload.batch, m.results[k].median_s)
                for m in ms
                if k in m.results and m.results[k].ok
            ]
            if not pts:
                failed.append(METHODS[k].label)
                continue
            style = (
                "-"
                if METHODS[k].peer == "embgrad"
                else ("--" if METHODS[k].peer == "baseline" else ":")
            )
            color = plt.cm.tab20(list(METHODS).index(k) % 20)
            ax.plot(*zip(*pts, strict=True), style, marker="o", color=color, label=METHODS[k].label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({m.workload.batch for m in ms}))
        ax.set_xticklabels([str(b) for b in sorted({m.workload.batch for m in ms})])
        ax.set_xlabel("batch size B")
        ax.set_ylabel("median time per call (s)")
        title = group
        if failed:
            title += "\nnot run (see RESULTS.md): " + "; ".join(failed)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6, loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = out / "time_vs_batch.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def memory_vs_vocab(measured: Sequence[Measured], out: Path, cap_mb: float) -> Path | None:
    """Peak RSS against vocabulary size (EmbeddingBag): sparse embgrad rows vs dense peers.

    Methods killed at the memory cap are drawn as crosses at the cap.
    """
    bags = sorted(
        (m for m in measured if m.workload.builder == "embedding_bag"),
        key=lambda m: m.workload.params["vocab"],
    )
    if len(bags) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    methods = [k for k in METHODS if all(k in m.results for m in bags)]
    for k in methods:
        ok = [(m.workload.params["vocab"], m.results[k].peak_mb) for m in bags if m.results[k].ok]
        oom = [m.workload.params["vocab"] for m in bags if m.results[k].status == "oom"]
        if ok:
            (line,) = ax.plot(*zip(*ok, strict=True), marker="o", label=METHODS[k].label)
            color = line.get_color()
        else:
            color = None
        if oom:
            ax.plot(
                oom,
                [cap_mb] * len(oom),
                "x",
                color=color,
                markersize=10,
                label=f"{METHODS[k].peer}: over the {cap_mb / 1024:.0f} GB cap",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vocabulary size V (rows of the table)")
    ax.set_ylabel("peak RSS of the process (MB)")
    ax.set_title(f"EmbeddingBag (D=64), B={bags[0].workload.batch}: per-sample table gradients")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = out / "memory_vs_vocab.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
