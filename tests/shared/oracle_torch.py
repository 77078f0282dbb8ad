"""Slow, obviously-correct references for the torch backend, and small model builders.

The references never use embgrad's mechanism (TorchFunctionMode capture): they work on a deep copy
of the model, tap each ``nn.Embedding`` / ``nn.EmbeddingBag`` with a forward hook that redoes the
lookup on a fresh copy of its table (so the table gradient is the lookup path's only, as autograd
computes it), and replace bare parameters through ``torch.func.functional_call``.

- :func:`sample_loop`: one sample at a time (batch of 1), one backward each.
- :func:`retained_loop`: one forward of the whole batch, then one backward per sample over the
  retained graph (exact with dropout: same masks; the reference for check="exact" with coupling).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Inputs = Any


@dataclass
class Reference:
    """Per-sample references: output grads per call site, dense table grads per table."""

    out: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    table: dict[str, torch.Tensor] = field(default_factory=dict)
    input_grads: dict[str | int, list[torch.Tensor]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)

    def stacked(self, name: str) -> torch.Tensor:
        """Output grads of one call site, samples concatenated along axis 0."""
        return torch.cat(self.out[name], dim=0)

    def summed(self, name: str) -> torch.Tensor:
        return torch.stack(self.out[name]).sum(0)


def call(model: nn.Module, inputs: Inputs) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def slice_batch(inputs: Inputs, i: int, batch: int) -> Inputs:
    """Sample ``i`` of ``inputs``: tensors whose axis 0 has the batch size are sliced i:i+1."""

    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == batch:
            return x[i : i + 1]
        return x

    if isinstance(inputs, dict):
        return {k: one(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(one(v) for v in inputs)
    return one(inputs)


class _Taps:
    """Forward hooks on a model copy that redo each tapped lookup on a fresh table leaf."""

    def __init__(self, ref: nn.Module, modules: Sequence[str], names: dict[str, str]) -> None:
        self.leaves: dict[str, torch.Tensor] = {}
        self.outputs: list[tuple[str, torch.Tensor]] = []
        self._count: dict[str, int] = {}
        self.handles = []
        for path in modules:
            mod = ref.get_submodule(path)
            self.leaves[path] = mod.weight.detach().clone().requires_grad_()
            site = names.get(path, path)
            self.handles.append(mod.register_forward_hook(self._hook(path, site)))

    def _hook(self, path: str, site: str) -> Callable[..., torch.Tensor]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            w = self.leaves[path]
            if isinstance(mod, nn.EmbeddingBag):
                new = F.embedding_bag(
                    args[0],
                    w,
                    args[1] if len(args) > 1 else None,
                    mode=mod.mode,
                    per_sample_weights=args[2] if len(args) > 2 else None,
                    include_last_offset=mod.include_last_offset,
                    padding_idx=mod.padding_idx,
                )
            else:
                new = F.embedding(args[0], w, padding_idx=mod.padding_idx)
            assert torch.equal(new, out)
            k = self._count.get(site, 0) + 1
            self._count[site] = k
            self.outputs.append((site if k == 1 else f"{site}#{k}", new))
            return new.clone()  # the model may edit its input in place; `new` stays as looked up

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextmanager
def _copy(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    ref = copy.deepcopy(model)
    ref.train(mode == "train")
    yield ref


def _run(
    ref: nn.Module,
    inputs: Inputs,
    loss_fn: Callable[[Any], torch.Tensor],
    modules: Sequence[str],
    params: Sequence[str],
    names: dict[str, str],
) -> tuple[torch.Tensor, _Taps, dict[str, torch.Tensor], dict[str | int, torch.Tensor]]:
    taps = _Taps(ref, modules, names)
    leaves = {p: ref.get_parameter(p).detach().clone().requires_grad_() for p in params}
    floats: dict[str | int, torch.Tensor] = {}
    if isinstance(inputs, dict):
        inputs = dict(inputs)
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                inputs[k] = floats[k] = v.detach().clone().requires_grad_()
    try:
        args, kwargs = ((), inputs) if isinstance(inputs, dict) else (inputs, {})
        if not isinstance(args, tuple):
            args = (args,)
        out = torch.func.functional_call(ref, leaves, args, kwargs, strict=False)
        losses = loss_fn(out)
    finally:
        taps.remove()
    return losses, taps, leaves, floats


def _grads(
    loss: torch.Tensor,
    taps: _Taps,
    leaves: dict[str, torch.Tensor],
    floats: dict[str | int, torch.Tensor],
    retain: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    outs = [o for _, o in taps.outputs]
    tables = list(taps.leaves.values()) + list(leaves.values())
    got = torch.autograd.grad(
        loss,
        outs + tables + list(floats.values()),
        retain_graph=retain,
        allow_unused=True,
        materialize_grads=True,
    )
    n, m = len(outs), len(tables)
    return list(got[:n]), list(got[n : n + m]), list(got[n + m :])


def _table_names(modules: Sequence[str], params: Sequence[str]) -> list[str]:
    return [f"{p}.weight" for p in modules] + list(params)


def sample_loop(
    model: nn.Module,
    inputs: Inputs,
    batch: int,
    loss_fn: Callable[[Any], torch.Tensor],
    *,
    modules: Sequence[str] = (),
    params: Sequence[str] = (),
    names: dict[str, str] | None = None,
    mode: str = "eval",
    sample: Callable[[int], Inputs] | None = None,
    loss_at: Callable[[int], Callable[[Any], torch.Tensor]] | None = None,
) -> Reference:
    """Batch-of-1 reference: sample i alone through a copy of the model, one backward each.

    ``modules``: paths of nn.Embedding / nn.EmbeddingBag to tap (their call sites are named by
    ``names`` or the path); ``params``: bare parameters looked up with F.embedding (table
    gradients only). ``sample(i)`` overrides how sample i's inputs are cut, ``loss_at(i)`` gives
    sample i's loss function (e.g. with its label) instead of ``loss_fn``.
    """
    ref_out = Reference()
    tables = _table_names(modules, params)
    dense: dict[str, list[torch.Tensor]] = {t: [] for t in tables}
    with _copy(model, mode) as ref:
        for i in range(batch):
            x = sample(i) if sample else slice_batch(inputs, i, batch)
            fn = loss_at(i) if loss_at else loss_fn
            losses, taps, leaves, floats = _run(ref, x, fn, modules, params, names or {})
            assert losses.shape == (1,), losses.shape
            outs, tgrads, fgrads = _grads(losses.sum(), taps, leaves, floats, retain=False)
            for (site, _), g in zip(taps.outputs, outs, strict=True):
                ref_out.out.setdefault(site, []).append(g)
            for t, g in zip(tables, tgrads, strict=True):
                dense[t].append(g)
            for k, g in zip(floats, fgrads, strict=True):
                ref_out.input_grads.setdefault(k, []).append(g)
            ref_out.losses.append(float(losses.detach()[0]))
    ref_out.table = {t: torch.stack(gs) for t, gs in dense.items()}
    return ref_out


def retained_loop(
    model: nn.Module,
    inputs: Inputs,
    batch: int,
    loss_fn: Callable[[Any], torch.Tensor],
    *,
    modules: Sequence[str] = (),
    params: Sequence[str] = (),
    names: dict[str, str] | None = None,
    mode: str = "eval",
) -> Reference:
    """One forward of the batch, then sample i's loss alone backwarded over the retained graph.

    Output grads are sample i's slice along axis 0 of dL_i/d out; table grads are dense (B, V, D).
    """
    ref_out = Reference()
    tables = _table_names(modules, params)
    with _copy(model, mode) as ref:
        losses, taps, leaves, floats = _run(ref, inputs, loss_fn, modules, params, names or {})
        dense: dict[str, list[torch.Tensor]] = {t: [] for t in tables}
        for i in range(batch):
            outs, tgrads, _ = _grads(losses[i], taps, leaves, floats, retain=True)
            for (site, o), g in zip(taps.outputs, outs, strict=True):
                ref_out.out.setdefault(site, []).append(g[i : i + 1] if o.shape[0] == batch else g)
            for t, g in zip(tables, tgrads, strict=True):
                dense[t].append(g)
        ref_out.losses = [float(v) for v in losses.detach()]
    ref_out.table = {t: torch.stack(gs) for t, gs in dense.items()}
    return ref_out


# -- state snapshots: what embgrad must leave untouched ---------------------------------------------


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything about the user's model and torch's global state embgrad must not change."""
    from torch.nn.modules import module as mod_mod

    hooks = {
        name: tuple(
            len(getattr(m, h))
            for h in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
                "_state_dict_hooks",
            )
        )
        for name, m in model.named_modules()
    }
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "hooks": hooks,
        "global_hooks": (
            len(mod_mod._global_forward_hooks),
            len(mod_mod._global_forward_pre_hooks),
            len(mod_mod._global_backward_hooks),
        ),
        "modes": torch._C._len_torch_function_stack(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_untouched(before: dict[str, Any], model: nn.Module) -> None:
    after = snapshot(model)
    for key in ("training", "requires_grad", "hooks", "global_hooks", "modes", "grad_enabled"):
        assert after[key] == before[key], key
    for key in ("params", "buffers"):
        for n, v in before[key].items():
            assert torch.equal(after[key][n], v), (key, n)
    for n, g in before["grad"].items():
        a = after["grad"][n]
        assert (a is None) == (g is None), n
        if g is not None:
            assert torch.equal(a, g), n


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Relative agreement in the max norm: |a - e| <= rtol * max|e| (+ a tiny absolute floor)."""
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape, (a.shape, e.shape)
    scale = max(e.abs().max().item(), 1e-30)
    err = (a - e).abs().max().item()
    assert err <= rtol * scale + 1e-12, f"max abs err {err:.3g} vs scale {scale:.3g}"
