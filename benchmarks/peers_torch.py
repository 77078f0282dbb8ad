"""PyTorch methods: embgrad and its peers, each as ``setup(workload) -> run()``.

``run()`` computes one complete result (and returns it, so nothing is optimised away). Methods
share one model inside a timing worker, so each run sets the ``requires_grad`` flags and the
module modes it needs and leaves the model as it found it; peers that install hooks (Opacus)
switch them on only for their own runs.

What each method computes (per sample i of the batch, L_i the per-sample loss):

- ``train``: one forward and ``sum(L).backward()`` over every parameter (the training step).
- ``floor``: one forward and ``autograd.grad(sum(L), word lookup output)``: nothing can get the
  per-sample lookup-output gradients for less, so every figure is a ratio to it.
- ``loop``: one forward, then B ``autograd.grad(L_i, ...)`` with ``retain_graph`` (the forum's
  per-sample loop).
- ``embgrad`` / ``embgrad_probe``: ``embgrad.gradients`` output gradients (probe cached /
  probe on every call); ``embgrad_table``: its sparse per-sample table rows;
  ``embgrad_norms``: their per-sample norms.
- ``vmap``: ``torch.func.vmap(grad)`` w.r.t. the lookup output; ``vmap_table``: w.r.t. the
  table (dense (B, V, D)).
- ``saliency``: Captum ``Saliency(abs=False)`` on the lookup output.
- ``opacus``: Opacus ``GradSampleModule`` grad_sample of the table (dense (B, V, D));
  ``opacus_norms``: ``GradSampleModuleFastGradientClipping`` per-sample norms (ghost clipping
  where Opacus has a norm sampler for the layer).
- ``backpack``: BackPACK ``BatchGrad`` (dense); ``backpack_norms``: ``BatchL2Grad``.
- ``ig_embgrad`` / ``ig_captum``: integrated gradients, 32 Gauss-Legendre steps, baseline the
  padding token, the same ``internal_batch_size``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from _harness import Unsupported
from workloads_torch import WORKLOADS, TorchWorkload

Runner = Callable[[], Any]
Check = Literal["auto", "probe", "exact", "off"]
IG_STEPS = 32
IG_INTERNAL_BATCH = 64

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))


def build(workload: str, params: dict[str, Any], seed: int) -> TorchWorkload:
    """Build a workload from ``WORKLOADS`` by name."""
    return WORKLOADS[workload](params, seed)


# -- helpers --------------------------------------------------------------------------------------
def _trainable(model: nn.Module, only: Any = None) -> None:
    """All parameters trainable (a user's model as loaded), or only ``only``."""
    for p in model.parameters():
        p.requires_grad_(only is None or p is only)


@contextlib.contextmanager
def _captured(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect ``module``'s outputs during the block."""
    box: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: box.append(out))
    try:
        yield box
    finally:
        handle.remove()


@contextlib.contextmanager
def _module_train(module: nn.Module) -> Iterator[None]:
    """``module`` alone in training mode (Opacus records activations only then)."""
    module.train()
    try:
        yield
    finally:
        module.eval()


def _lookup(wl: TorchWorkload) -> torch.Tensor:
    """The word lookup's output for the batch, detached."""
    with torch.no_grad():
        if isinstance(wl.emb, nn.EmbeddingBag):
            return wl.emb(wl.inputs["ids"], wl.inputs["offsets"])
        return wl.emb(wl.inputs["input_ids"])


def _extra(wl: TorchWorkload) -> dict[str, torch.Tensor]:
    """Inputs ``from_lookup`` needs besides the lookup output (attention masks)."""
    return wl.lookup_extra or {}


def _needs_padding_free(wl: TorchWorkload, who: str) -> None:
    if getattr(wl.emb, "padding_idx", None) is not None:
        raise Unsupported(
            f"{who} refuses embeddings with padding_idx (this one has {wl.emb.padding_idx})"
        )


# -- baselines ------------------------------------------------------------------------------------
def train(wl: TorchWorkload) -> Runner:
    def run() -> Any:
        _trainable(wl.model)
        wl.model.zero_grad(set_to_none=True)
        wl.loss_fn(wl.model(**wl.inputs)).sum().backward()
        return wl.emb.weight.grad

    return run


def floor(wl: TorchWorkload) -> Runner:
    def run() -> Any:
        _trainable(wl.model)
        with _captured(wl.emb) as outs:
            losses = wl.loss_fn(wl.model(**wl.inputs))
        return torch.autograd.grad(losses.sum(), outs[0])[0]

    return run


def loop(wl: TorchWorkload) -> Runner:
    def run() -> Any:
        _trainable(wl.model)
        with _captured(wl.emb) as outs:
            losses = wl.loss_fn(wl.model(**wl.inputs))
        b = wl.batch
        rows = [
            torch.autograd.grad(losses[i], outs[0], retain_graph=i < b - 1)[0][i] for i in range(b)
        ]
        return torch.stack(rows)

    return run


# -- embgrad --------------------------------------------------------------------------------------
def _embgrad_lookup(wl: TorchWorkload, check: Check) -> Callable[[], Any]:
    import embgrad

    def call() -> Any:
        _trainable(wl.model)
        res = embgrad.gradients(wl.model, wl.inputs, wl.loss_fn, layers=wl.emb_name, check=check)
        return res[res.layers[0]]

    return call


def embgrad_out(wl: TorchWorkload) -> Runner:
    call = _embgrad_lookup(wl, "auto")
    return lambda: call().output_grad


def embgrad_probe(wl: TorchWorkload) -> Runner:
    call = _embgrad_lookup(wl, "probe")
    return lambda: call().output_grad


def embgrad_table(wl: TorchWorkload) -> Runner:
    call = _embgrad_lookup(wl, "auto")
    return lambda: call().table_grad().values


def embgrad_norms(wl: TorchWorkload) -> Runner:
    call = _embgrad_lookup(wl, "auto")
    return lambda: call().table_grad().norms()


# -- torch.func -----------------------------------------------------------------------------------
def vmap_out(wl: TorchWorkload) -> Runner:
    from torch.func import grad, vmap

    def loss_one(x: torch.Tensor, extra: dict[str, torch.Tensor], y: torch.Tensor) -> Any:
        logits = wl.from_lookup(x[None], {k: v[None] for k, v in extra.items()})
        return F.cross_entropy(logits, y[None])

    per_sample = vmap(grad(loss_one))

    def run() -> Any:
        _trainable(wl.model)
        return per_sample(_lookup(wl), _extra(wl), wl.labels)

    return run


def vmap_table(wl: TorchWorkload) -> Runner:
    from torch.func import functional_call, grad, vmap

    wname = f"{wl.emb_name}.weight"
    params = {k: v.detach() for k, v in wl.model.named_parameters()}
    buffers = dict(wl.model.named_buffers())

    def loss_one(w: torch.Tensor, sample: dict[str, torch.Tensor], y: torch.Tensor) -> Any:
        def call(**kw: Any) -> Any:
            return functional_call(wl.model, ({**params, wname: w}, buffers), args=(), kwargs=kw)

        return F.cross_entropy(wl.one_sample(call, sample), y[None])

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    samples = wl.sample_inputs or wl.inputs
    return lambda: per_sample(params[wname], samples, wl.labels)


# -- Captum ---------------------------------------------------------------------------------------
def saliency(wl: TorchWorkload) -> Runner:
    from captum.attr import Saliency

    extra = _extra(wl)
    keys = list(extra)

    def forward(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return wl.loss_fn(wl.from_lookup(x, dict(zip(keys, rest, strict=True))))

    sal = Saliency(forward)

    def run() -> Any:
        _trainable(wl.model)
        x = _lookup(wl)
        return sal.attribute(x, additional_forward_args=tuple(extra.values()), abs=False)

    return run


def _ig_inputs(wl: TorchWorkload) -> None:
    if "input_ids" not in wl.inputs:
        raise Unsupported("integrated gradients is benchmarked on token models only")


def ig_captum(wl: TorchWorkload) -> Runner:
    from captum.attr import LayerIntegratedGradients

    _ig_inputs(wl)

    def forward(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = wl.model(input_ids=ids, attention_mask=mask)
        return F.cross_entropy(logits, labels, reduction="none")

    lig = LayerIntegratedGradients(forward, wl.emb)
    ids, mask = wl.inputs["input_ids"], wl.inputs["attention_mask"]
    pad = torch.full_like(ids, wl.emb.padding_idx or 0)

    def run() -> Any:
        _trainable(wl.model)
        return lig.attribute(
            ids,
            baselines=pad,
            additional_forward_args=(mask, wl.labels),
            n_steps=IG_STEPS,
            method="gausslegendre",
            internal_batch_size=IG_INTERNAL_BATCH,
        )

    return run


def _embgrad_attribute() -> Callable[..., Any]:
    import embgrad

    fn = getattr(embgrad, "attribute", None)
    if fn is None:
        raise Unsupported("embgrad.attribute does not exist in this checkout")
    return fn


def ig_embgrad(wl: TorchWorkload) -> Runner:
    _ig_inputs(wl)
    attribute = _embgrad_attribute()

    def loss_rows(logits: torch.Tensor, rows: Any) -> torch.Tensor:
        return F.cross_entropy(logits, wl.labels[torch.as_tensor(rows)], reduction="none")

    def run() -> Any:
        _trainable(wl.model)
        return attribute(
            wl.model,
            wl.inputs,
            loss_rows,
            method="integrated_gradients",
            n_steps=IG_STEPS,
            baseline="pad",
            internal_batch_size=IG_INTERNAL_BATCH,
        )

    return run


# -- Opacus ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _hooked(gsm: Any) -> Iterator[None]:
    """Opacus's hooks on for one run only: other methods share the model (and vmap fails on
    the full backward hooks Opacus leaves on a module)."""
    gsm.add_hooks(loss_reduction="sum", batch_first=True)
    gsm.enable_hooks()
    try:
        yield
    finally:
        gsm.remove_hooks()


def opacus(wl: TorchWorkload) -> Runner:
    from opacus import GradSampleModule

    weight = wl.emb.weight
    _trainable(wl.model, only=weight)
    gsm = GradSampleModule(wl.model, batch_first=True, loss_reduction="sum", strict=False)
    gsm.remove_hooks()
    _trainable(wl.model)

    def run() -> Any:
        _trainable(wl.model, only=weight)
        with _hooked(gsm):
            with _module_train(wl.emb):
                wl.loss_fn(gsm(**wl.inputs)).sum().backward()
            grad_sample = weight.grad_sample
        weight.grad_sample = weight.grad = None
        _trainable(wl.model)
        return grad_sample

    return run


def opacus_norms(wl: TorchWorkload) -> Runner:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping as FGC

    weight = wl.emb.weight
    _trainable(wl.model, only=weight)
    gsm = FGC(
        wl.model,
        batch_first=True,
        loss_reduction="sum",
        strict=False,
        use_ghost_clipping=True,
        max_grad_norm=1.0,
    )
    gsm.remove_hooks()
    _trainable(wl.model)

    def run() -> Any:
        _trainable(wl.model, only=weight)
        with _hooked(gsm):
            with _module_train(wl.emb):
                wl.loss_fn(gsm(**wl.inputs)).sum().backward()
            norms = gsm.get_norm_sample()
        weight.grad = None
        _trainable(wl.model)
        return norms

    return run


# -- BackPACK -------------------------------------------------------------------------------------
def _backpack(wl: TorchWorkload, extension: str, field: str) -> Runner:
    from backpack import backpack, extend, extensions

    if not isinstance(wl.emb, nn.Embedding):
        raise Unsupported(f"BackPACK has no {extension} rule for {type(wl.emb).__name__}")
    _needs_padding_free(wl, "BackPACK")
    ext = getattr(extensions, extension)
    extend(wl.emb)
    weight = wl.emb.weight

    def run() -> Any:
        _trainable(wl.model, only=weight)
        try:
            with backpack(ext()):
                wl.loss_fn(wl.model(**wl.inputs)).sum().backward()
            return getattr(weight, field)
        finally:
            for name in (field, "grad"):
                setattr(weight, name, None)
            _trainable(wl.model)

    return run


def backpack_dense(wl: TorchWorkload) -> Runner:
    return _backpack(wl, "BatchGrad", "grad_batch")


def backpack_norms(wl: TorchWorkload) -> Runner:
    return _backpack(wl, "BatchL2Grad", "batch_l2")


METHODS: dict[str, Callable[[TorchWorkload], Runner]] = {
    "train": train,
    "floor": floor,
    "loop": loop,
    "embgrad": embgrad_out,
    "embgrad_probe": embgrad_probe,
    "embgrad_table": embgrad_table,
    "embgrad_norms": embgrad_norms,
    "vmap": vmap_out,
    "vmap_table": vmap_table,
    "saliency": saliency,
    "opacus": opacus,
    "opacus_norms": opacus_norms,
    "backpack": backpack_dense,
    "backpack_norms": backpack_norms,
    "ig_embgrad": ig_embgrad,
    "ig_captum": ig_captum,
}
