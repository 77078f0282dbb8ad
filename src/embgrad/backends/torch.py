"""The PyTorch backend: ``torch.nn.Module`` models, HuggingFace included.

``TorchBackend.open`` sets every submodule's ``training`` flag for the requested mode (and, in
train mode, snapshots the buffers, which BatchNorm updates) and restores both exactly on exit.
``TorchSession.forward`` runs the model once with a :class:`~.torch_capture.LookupRecorder`
active, so every ``F.embedding`` / ``F.embedding_bag`` call is captured without hooks or edits;
``torch.compile``d modules run their original module eagerly (``set_stance("force_eager")``).
``backward`` is one ``torch.autograd.grad`` w.r.t. the captured lookup outputs (and detached
copies of floating-point inputs) only: no parameter gradient is computed, no ``.grad`` written
(a model's own backward that writes ``.grad`` finds every parameter's set aside: ``open``
puts each back on exit); TorchScript modules are refused (no Python runs in them to see);
a lookup output autograd reports unused (``no_grad``, ``.detach()`` in the model) comes back
as None, so the core can say so instead of returning zeros.
Dropout masks live in the retained graph, so repeated backwards over it are exact.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..core.contract import Backend, Forward, Mode, Replace, Session
from ..core.ops import Ops
from ..errors import InputError, LossError, UnsupportedModelError


def _torch() -> Any:
    import torch

    return torch


def _unwrap(model: Any) -> Any:
    """The module to run: the original module of a ``torch.compile``d one, else ``model``."""
    return getattr(model, "_orig_mod", model) if _is_compiled(model) else model


def _is_compiled(model: Any) -> bool:
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    return dynamo is not None and isinstance(model, dynamo.OptimizedModule)


class TorchBackend(Backend):
    """Backend for ``torch.nn.Module`` (plain, HuggingFace, ``torch.compile``d)."""

    framework = "torch"
    extra = "torch"
    padding_masked_by = ("transformers",)

    @staticmethod
    def accepts(model: Any) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(model, torch.nn.Module)

    @staticmethod
    def array_ops(array_type: type) -> Ops | None:
        torch = sys.modules.get("torch")
        if torch is None or not issubclass(array_type, torch.Tensor):
            return None
        from .torch_ops import TorchOps

        return TorchOps()

    @contextlib.contextmanager
    def open(self, model: Any, *, mode: Mode) -> Iterator[Session]:
        from .torch_tables import TableNames

        module = _unwrap(model)
        names = TableNames(module)
        if names.scripted:
            raise _scripted_error(module, names.scripted)
        want = mode == "train"
        flipped = [m for m in names.submodules if m.training != want]
        saved = _snapshot_buffers(module) if want else []
        grads = _hide_grads(names.params)
        try:
            for m in flipped:
                m.training = want
            yield TorchSession(module, names)
        finally:
            for m in flipped:
                m.training = not want
            _restore_buffers(saved)
            _restore_grads(names.params, grads)

    def array(self, model: Any, a: Any) -> Any:
        first = next(_unwrap(model).parameters(), None)
        device = None if first is None else first.device
        return _torch().as_tensor(np.ascontiguousarray(a), device=device)


def _scripted_error(module: Any, paths: list[str]) -> UnsupportedModelError:
    what = (
        "the model is a TorchScript module"
        if paths == [""]
        else f"submodule {paths[0]!r} is a TorchScript module"
    )
    kind = type(module.get_submodule(paths[0]) if paths[0] else module).__name__
    return UnsupportedModelError(
        f"{what} ({kind}, from torch.jit.script / torch.jit.trace): it runs as a "
        "compiled TorchScript graph, in which embgrad cannot see or intercept the embedding "
        "lookups. Pass the eager torch.nn.Module instead (the module before torch.jit.script / "
        "trace; torch.compile'd modules are fine)."
    )


def _hide_grads(params: list[Any]) -> list[Any]:
    """Each parameter's ``.grad`` (None included), in ``params`` order; those holding a tensor
    are set to None for the call, so a model whose own backward writes ``.grad`` (reversible
    layers calling ``.backward()`` inside an autograd Function) can neither add into the user's
    accumulated gradients nor leave new ones: :func:`_restore_grads` puts back every one."""
    saved = [p.grad for p in params]
    for p, g in zip(params, saved, strict=True):
        if g is not None:
            p.grad = None
    return saved


def _restore_grads(params: list[Any], saved: list[Any]) -> None:
    """Put back each parameter's ``.grad`` object (values and identity; None where it was)."""
    for p, g in zip(params, saved, strict=True):
        if p.grad is not g:
            p.grad = g


def _snapshot_buffers(module: Any) -> list[tuple[Any, Any]]:
    """(buffer, copy) for every buffer: train-mode forwards update BatchNorm statistics (without
    bumping the version counter, so every buffer is copied back)."""
    torch = _torch()
    with torch.no_grad():
        return [(b, b.clone()) for b in module.buffers()]


def _restore_buffers(saved: list[tuple[Any, Any]]) -> None:
    """Copy back the buffers whose values changed (untouched ones are not written to)."""
    torch = _torch()
    with torch.no_grad():
        for buf, copy in saved:
            if not torch.equal(buf, copy):
                buf.copy_(copy)


def _walk(x: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, tensor) for every tensor in nested tuples / lists / dicts."""
    torch = _torch()
    if isinstance(x, torch.Tensor):
        yield path, x
    elif isinstance(x, (tuple, list)):
        for i, v in enumerate(x):
            yield from _walk(v, (*path, i))
    elif isinstance(x, Mapping):
        for k, v in x.items():
            yield from _walk(v, (*path, k))


def _label(path: tuple[Any, ...]) -> str:
    head = f"positional input {path[0]}" if isinstance(path[0], int) else f"input {path[0]!r}"
    return head + "".join(f"[{p!r}]" for p in path[1:])


class TorchSession:
    """A module opened for capture (see the module docstring)."""

    framework = "torch"
    retained_backward_is_exact = True
    #: backward() takes (K, B) cotangents at once (torch.autograd.grad is_grads_batched)
    batched_backward = True

    def __init__(self, module: Any, names: Any) -> None:
        from .torch_ops import TorchOps

        self.module = module
        self.names = names  # TableNames: the module tree, walked once per call
        self.ops: Ops = TorchOps()

    # -- checks ---------------------------------------------------------------------------------
    def check_inputs(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """InputError for empty tensors and tensors on a device the model's parameters are not."""
        first = next(self.module.parameters(), None)
        home = None if first is None else first.device
        for path, t in list(_walk(args)) + list(_walk(dict(kwargs))):
            if t.numel() == 0:
                raise InputError(
                    f"{_label(path)} is empty (shape {tuple(t.shape)}): the batch is empty; pass "
                    "at least one sample with at least one position"
                )
            if home is None or t.device == home:
                continue
            devices = {p.device for p in self.module.parameters()}  # models split over devices
            if t.device not in devices:
                where = ", ".join(sorted(str(d) for d in devices))
                raise InputError(
                    f"{_label(path)} is on {t.device} but the model's parameters are on {where}; "
                    f"move the inputs there first (e.g. x.to('{sorted(map(str, devices))[0]}'))"
                )

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loss_fn: Callable[[Any], Any],
        *,
        seed: int,
        replace: Replace | None,
    ) -> Forward:
        """Run ``model(*args, **kwargs)`` once with every lookup captured; ``loss_fn`` on it."""
        from .torch_capture import LookupRecorder

        torch = _torch()
        args, kwargs, floats = self._float_leaves(args, kwargs)
        recorder = LookupRecorder(self.names, replace)
        with torch.enable_grad(), _eager(), recorder:
            outputs = self.module(*args, **kwargs)
        recorder.finish()
        with torch.enable_grad():
            losses = loss_fn(outputs)
        if not isinstance(losses, torch.Tensor):
            raise LossError(
                f"loss_fn returned {type(losses).__name__}; with a torch model it must return a "
                "torch.Tensor of per-sample losses, shape (B,), still attached to the graph"
            )
        if recorder.captures and losses.ndim == 1 and not losses.requires_grad:
            raise LossError(
                "loss_fn's losses do not depend on the model's lookups through autograd (no "
                "grad_fn): do not detach them, call .item()/.numpy(), or compute them under "
                "torch.no_grad()"
            )
        return Forward(
            losses=losses.detach(),
            captures=recorder.captures,
            float_inputs=floats,
            state=losses,
            verify=recorder.verify if recorder.deferred else None,
        )

    def evaluate(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], loss_fn: Callable[[Any], Any]
    ) -> Any:
        """One forward and ``loss_fn`` under ``torch.no_grad()``, nothing intercepted."""
        torch = _torch()
        with torch.no_grad(), _eager():
            losses = loss_fn(self.module(*args, **kwargs))
        if not isinstance(losses, torch.Tensor):
            raise LossError(
                f"loss_fn returned {type(losses).__name__}; with a torch model it must return a "
                "torch.Tensor of per-sample losses, shape (B,)"
            )
        return losses

    def _float_leaves(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str | int, Any]]:
        """Replace top-level floating-point tensors by detached copies that require grad."""
        torch = _torch()
        floats: dict[str | int, Any] = {}

        def leaf(key: str | int, x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                floats[key] = x.detach().requires_grad_()
                return floats[key]
            return x

        new_args = tuple(leaf(i, x) for i, x in enumerate(args))
        new_kwargs = {k: leaf(k, x) for k, x in kwargs.items()}
        return new_args, new_kwargs, floats

    # -- backward ---------------------------------------------------------------------------------
    def backward(
        self,
        fwd: Forward,
        cotangent: Any,
        select: list[int],
        *,
        inputs: bool,
        retain: bool,
    ) -> tuple[list[Any], dict[str | int, Any]]:
        """Gradients of Σ_i cotangent_i·L_i w.r.t. the outputs of ``fwd.captures[k]``, k in
        ``select`` (and the float inputs when ``inputs``).

        Returns one tensor per selected capture, shaped like its output — None for a capture
        autograd reports unused (its output does not lead to the losses: ``no_grad``,
        ``.detach()``), which costs nothing extra — and {key: gradient} for the float inputs
        (zeros where unused).
        """
        torch = _torch()
        caps = [fwd.captures[k] for k in select]
        losses = fwd.state
        # (K, *losses.shape): K cotangents through one retained graph, vmapped (torch's
        # batched gradients); each gradient gets a leading K axis
        batched = isinstance(cotangent, np.ndarray) and cotangent.ndim == losses.ndim + 1
        if not batched and isinstance(cotangent, np.ndarray) and bool((cotangent == 1).all()):
            weights = torch.ones_like(losses)  # no host-to-device copy (a GPU sync)
        else:
            weights = torch.as_tensor(cotangent, dtype=losses.dtype, device=losses.device)
        keys = list(fwd.float_inputs) if inputs else []
        targets = [c.handle for c in caps] + [fwd.float_inputs[k] for k in keys]
        try:
            if batched and losses.device.type == "cpu" and not VMAP_ON_CPU:
                # on the CPU a loop of retained backwards beats the vmapped one (5-15 %,
                # benchmarks/RESULTS-outputs.md); results are stacked as vmap would
                grads = _sequential_grads(torch, losses, targets, weights, retain)
            else:
                grads = torch.autograd.grad(
                    losses,
                    targets,
                    grad_outputs=weights,
                    retain_graph=retain,
                    allow_unused=True,
                    is_grads_batched=batched,
                )
        except NotImplementedError as e:
            if not keys:
                raise
            raise InputError(
                f"PyTorch has no backward for an operation on the floating-point input(s) "
                f"{keys} on this device and dtype ({e}). Pass input_grads=False to skip "
                "gradients w.r.t. float inputs; the lookup gradients do not need them."
            ) from e
        n = len(caps)
        floats = [
            torch.zeros_like(t) if g is None else g
            for t, g in zip(targets[n:], grads[n:], strict=True)
        ]
        return list(grads[:n]), dict(zip(keys, floats, strict=True))

    def to_native(self, x: Any, like: Any) -> Any:
        """Working arrays are torch tensors already."""
        return x


#: batched cotangents on the CPU: False runs them as a loop of retained backwards (faster
#: there), True as one vmapped backward (as on other devices; the tests run both)
VMAP_ON_CPU = False


def _sequential_grads(
    torch: Any, losses: Any, targets: list[Any], weights: Any, retain: bool
) -> tuple[Any, ...]:
    """``autograd.grad`` per cotangent row of ``weights`` (K, *losses.shape), stacked (K, ...)."""
    k = int(weights.shape[0])
    rows = [
        torch.autograd.grad(
            losses, targets, grad_outputs=weights[i], retain_graph=retain or i < k - 1,
            allow_unused=True,
        )
        for i in range(k)
    ]  # fmt: skip
    return tuple(
        None if rows[0][j] is None else torch.stack([r[j] for r in rows])
        for j in range(len(targets))
    )


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    """Run ``torch.compile``d code eagerly (if dynamo was ever imported), so lookups are seen.

    A compiled top-level module is unwrapped in ``open``; compiled submodules and functions
    inside the forward need ``torch.compiler.set_stance`` (torch >= 2.6).
    """
    torch = sys.modules.get("torch")
    stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if "torch._dynamo" not in sys.modules or stance is None:
        yield
        return
    with stance("force_eager"):
        yield
