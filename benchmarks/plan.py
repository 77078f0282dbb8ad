"""What ``run_all.py`` measures: workloads, the methods run on each, and what each method is.

The full plan follows issue 4 (shapes, batch sizes, peers); ``--quick`` keeps every peer but
on smaller shapes, so the whole harness is exercised in a few minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Measures, in report order: (key, title).
MEASURES = (
    ("output", "Per-sample gradients w.r.t. the word-lookup outputs (B, T, D)"),
    ("table", "Per-sample table gradients (B, V, D): embgrad sparse rows vs dense peers"),
    ("norms", "Per-sample table-gradient norms (B,)"),
    ("ig", "Integrated gradients, 32 Gauss-Legendre steps"),
)


@dataclass(frozen=True)
class MethodInfo:
    label: str
    measure: str  # "baseline" or one of MEASURES' keys
    peer: str  # "embgrad", "baseline" or the peer library


METHODS: dict[str, MethodInfo] = {
    "floor": MethodInfo("floor: one autograd.grad to the lookup output", "baseline", "baseline"),
    "train": MethodInfo("training step: one backward, all parameters", "baseline", "baseline"),
    "embgrad": MethodInfo("embgrad.gradients (probe cached)", "output", "embgrad"),
    "embgrad_probe": MethodInfo("embgrad.gradients, check='probe' every call", "output", "embgrad"),
    "vmap": MethodInfo("torch.func vmap(grad)", "output", "torch.func"),
    "saliency": MethodInfo("Captum Saliency", "output", "captum"),
    "loop": MethodInfo("per-sample loop: B × autograd.grad(retain_graph)", "output", "loop"),
    "embgrad_table": MethodInfo("embgrad table_grad() (sparse rows)", "table", "embgrad"),
    "forum_loop": MethodInfo("forum loop: B backwards, copy weight.grad()", "table", "loop"),
    "vmap_table": MethodInfo("torch.func vmap(grad) w.r.t. the table", "table", "torch.func"),
    "opacus": MethodInfo("Opacus GradSampleModule grad_sample", "table", "opacus"),
    "backpack": MethodInfo("BackPACK BatchGrad", "table", "backpack"),
    "embgrad_norms": MethodInfo("embgrad table_grad().norms()", "norms", "embgrad"),
    "opacus_norms": MethodInfo("Opacus ghost clipping (norm samplers)", "norms", "opacus"),
    "backpack_norms": MethodInfo("BackPACK BatchL2Grad", "norms", "backpack"),
    "ig_embgrad": MethodInfo("embgrad.attribute integrated_gradients", "ig", "embgrad"),
    "ig_captum": MethodInfo("Captum LayerIntegratedGradients", "ig", "captum"),
}

TORCH_ALL = (
    "floor",
    "train",
    "embgrad",
    "embgrad_probe",
    "vmap",
    "saliency",
    "loop",
    "embgrad_table",
    "vmap_table",
    "opacus",
    "backpack",
    "embgrad_norms",
    "opacus_norms",
    "backpack_norms",
)
TORCH_IG = ("ig_embgrad", "ig_captum")
GLUON_ALL = (
    "floor",
    "train",
    "embgrad",
    "embgrad_probe",
    "forum_loop",
    "embgrad_table",
    "embgrad_norms",
)
SWEEP = ("floor", "train", "embgrad_table", "vmap_table", "opacus")


@dataclass(frozen=True)
class Workload:
    """One model and batch: a timing worker for all its methods, a memory worker for each.

    ``group`` names the model for plots (time vs batch size); ``timed=False`` workloads get
    memory workers only (the vocabulary sweep); ``heavy`` ones run their memory workers one at
    a time (their peaks are large).
    """

    framework: str
    builder: str
    params: dict[str, Any]
    group: str
    methods: tuple[str, ...]
    timed: bool = True
    heavy: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def batch(self) -> int:
        return int(self.params["batch"])

    @property
    def key(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params.items() if k != "batch")
        return f"{self.group} B={self.batch}" + (f" ({extra})" if extra else "")


def full_plan() -> list[Workload]:
    """Issue 4's workloads."""
    plan: list[Workload] = []
    for b in (8, 32, 128):
        ig: tuple[str, ...] = ("ig_embgrad",) if b == 32 else ()
        plan.append(Workload("gluon", "lstm", {"batch": b}, "Gluon LSTM", GLUON_ALL + ig))
    for layers in (2, 12):
        plan.append(
            Workload(
                "gluon",
                "bert",
                {"batch": 8, "seq": 64, "layers": layers},
                f"gluonnlp BERT-{layers}",
                GLUON_ALL,
                heavy=layers == 12,
            )
        )
    for b in (8, 32):
        # check='probe' on every call is shown at B=8; at B=32 it would add a minute a round
        methods = TORCH_ALL if b == 8 else tuple(m for m in TORCH_ALL if m != "embgrad_probe")
        plan.append(
            Workload(
                "torch", "bert_base", {"batch": b, "seq": 64}, "BERT-base", methods, heavy=True
            )
        )
    for b in (8, 32):
        plan.append(Workload("torch", "minilm", {"batch": b, "seq": 64}, "MiniLM", TORCH_ALL))
    plan.append(
        Workload(
            "torch", "minilm", {"batch": 4, "seq": 64}, "MiniLM (IG)", ("floor", "train", *TORCH_IG)
        )
    )
    plan += _bag_plan(32, (10_000, 30_000, 100_000, 300_000))
    return plan


def quick_plan() -> list[Workload]:
    """Every peer on small shapes: a few minutes on 2 cores."""
    plan = [
        Workload("gluon", "lstm", {"batch": 8}, "Gluon LSTM", GLUON_ALL),
        Workload("gluon", "lstm", {"batch": 32}, "Gluon LSTM", (*GLUON_ALL, "ig_embgrad")),
        Workload(
            "gluon", "bert", {"batch": 8, "seq": 32, "layers": 2}, "gluonnlp BERT-2", GLUON_ALL
        ),
        Workload("torch", "minilm", {"batch": 4, "seq": 32}, "MiniLM", TORCH_ALL + TORCH_IG),
    ]
    return plan + _bag_plan(8, (10_000, 100_000), heavy=False)


def _bag_plan(batch: int, sweep: tuple[int, ...], heavy: bool = True) -> list[Workload]:
    """The 1M-row EmbeddingBag workload (timed) and the memory-vs-vocabulary sweep below it."""
    methods = tuple(m for m in TORCH_ALL if m not in ("embgrad_probe",))
    plan = [
        Workload(
            "torch",
            "embedding_bag",
            {"batch": batch, "vocab": 1_000_000},
            "EmbeddingBag",
            methods,
            heavy=heavy,
        )
    ]
    for v in sweep:
        plan.append(
            Workload(
                "torch",
                "embedding_bag",
                {"batch": batch, "vocab": v},
                "EmbeddingBag",
                SWEEP,
                timed=False,
            )
        )
    return plan
