"""The two kinds of gradient pass every method is built from, both on ``embgrad.gradients``.

* :func:`base_pass` — the plain per-sample gradient at the inputs (one forward, one backward):
  losses f(x) (B,), the word lookup's output x and gradient g, both (B, T, D) in numpy with the
  batch first, its ids (B, T) and the table.
* :func:`expanded_passes` — the inputs with each sample repeated (integrated-gradient steps,
  SmoothGrad draws), in chunks of ``internal_batch_size`` samples; in each chunk the lookup's
  output is replaced by a transform of it (``replace=``), and gradients are taken there. Every
  chunk is one batched forward and one backward in the framework.

A ``loss_fn`` takes the model's outputs and returns per-sample losses (N,). It may take a second
argument, ``rows`` (numpy int64 (N,)): for each row of the (expanded) batch, the index of its
sample in the caller's batch — how per-sample constants (targets, pair embeddings) follow the
repeated samples.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.capture import gradients
from ..core.results import LookupGrad
from ..errors import InputError, NoLookupError
from ._arrays import from_numpy, repeat_samples, to_numpy

LossFn = Callable[..., Any]
#: ``transform(output, start, stop)``: the substitute for rows ``start:stop`` of the expanded batch
Transform = Callable[[Any, int, int], Any]


def takes_rows(loss_fn: LossFn) -> bool:
    """Whether ``loss_fn`` accepts a second positional argument (``rows``)."""
    try:
        params = list(inspect.signature(loss_fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def bind_rows(loss_fn: LossFn, rows: np.ndarray) -> Callable[[Any], Any]:
    """``loss_fn`` as a one-argument function of the outputs, for the given ``rows``."""
    if not takes_rows(loss_fn):
        return loss_fn

    def bound(outputs: Any) -> Any:
        return loss_fn(outputs, rows)

    return bound


@dataclass
class Base:
    """The plain gradient at the inputs, batch first, in numpy.

    Attributes:
        lookup: the word lookup's :class:`LookupGrad` (native arrays, table gradient).
        losses: f(x), float64 (B,).
        grad: dL_i/d x_i, (B, T, D) float32.
        output: the lookup output x, (B, T, D) float32 (None if the backend kept none; see
            :meth:`x`).
        ids: the looked-up ids, (B, T) int64.
        batch_axis: the axis of the lookup (and of the inputs) that indexes samples.
    """

    lookup: LookupGrad
    losses: np.ndarray
    grad: np.ndarray
    output: np.ndarray | None
    ids: np.ndarray
    batch_axis: int
    _weight: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.lookup.name

    @property
    def batch(self) -> int:
        return int(self.losses.shape[0])

    @property
    def padding_idx(self) -> int | None:
        return self.lookup.padding_idx

    def x(self) -> np.ndarray:
        """The lookup output x (B, T, D); InputError if the backend did not keep it."""
        if self.output is None:
            raise InputError(
                f"the backend kept no output values for lookup {self.name!r}; this method needs "
                "the embeddings themselves (gradient x input, integrated gradients, SmoothGrad)"
            )
        return self.output

    def weight(self) -> np.ndarray:
        """The table (V, D) in numpy (converted once)."""
        if self._weight is None:
            if self.lookup.weight is None:
                raise InputError(
                    f"the backend kept no table values for lookup {self.name!r}; this method "
                    "needs the embedding table (HotFlip, token baselines)"
                )
            self._weight = to_numpy(self.lookup.weight)
        return self._weight


def _batch_first(x: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(x, axis, 0) if axis else x


def base_pass(
    model: Any,
    inputs: Any,
    loss_fn: LossFn,
    *,
    layer: str = "word",
    mode: str = "eval",
    check: str = "auto",
) -> Base:
    """One :func:`embgrad.gradients` call at the inputs, reduced to the lookup ``layer``.

    ``layer`` is a role, name or glob (see ``gradients(layers=)``); with the default ``"word"``
    a model whose only input lookup has another role is accepted too.
    """
    probe = np.arange(batch_size_hint(inputs)) if takes_rows(loss_fn) else None
    loss = bind_rows(loss_fn, probe) if probe is not None else loss_fn
    try:
        res = gradients(model, inputs, loss, layers=layer, mode=mode, check=check)  # type: ignore[arg-type]
        chosen = res[res.layers[0]]
    except NoLookupError:
        if layer != "word":
            raise
        res = gradients(model, inputs, loss, layers="auto", mode=mode, check=check)  # type: ignore[arg-type]
        if len(res.layers) != 1:
            raise NoLookupError(
                "no lookup has the role 'word' and the model has several input lookups "
                f"({', '.join(res.layers)}); pass layer=<one of these names>"
            ) from None
        chosen = res[res.layers[0]]
    if chosen.batch_axis is None:
        raise InputError(
            f"lookup {chosen.name!r} has no batch axis (its ids are shared by all samples), so "
            "it has no per-sample attribution; choose the word lookup with layer="
        )
    ax = chosen.batch_axis
    grad = _batch_first(to_numpy(chosen.output_grad), ax)
    output = None if chosen.output is None else _batch_first(to_numpy(chosen.output), ax)
    ids = _batch_first(to_numpy(chosen.ids), ax).astype(np.int64)
    if grad.ndim != 3:
        raise InputError(
            f"lookup {chosen.name!r} has output shape {tuple(grad.shape)}; token attributions "
            "need one vector per token, (B, T, D)"
        )
    return Base(
        lookup=chosen,
        losses=to_numpy(res.losses).astype(np.float64),
        grad=grad,
        output=output,
        ids=ids,
        batch_axis=ax,
    )


def batch_size_hint(inputs: Any) -> int:
    """The batch size of the inputs (for ``rows`` in the base pass): the first array's axis 0."""
    first: Any = inputs
    if isinstance(inputs, dict):
        first = next(iter(inputs.values()))
    elif isinstance(inputs, tuple):
        first = inputs[0]
    shape = getattr(first, "shape", None)
    if not shape:
        raise InputError("could not tell the batch size of the inputs (no array found)")
    return int(shape[0])


def expanded_passes(
    model: Any,
    inputs: Any,
    loss_fn: LossFn,
    base: Base,
    rows: np.ndarray,
    transform: Transform,
    *,
    internal_batch_size: int | None,
    mode: str = "eval",
    check: str = "auto",
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Gradients for the expanded batch (sample ``rows[i]`` in row i), one chunk at a time.

    ``internal_batch_size=None`` runs every row in one pass (as Captum does): fastest on CPU
    where memory allows; set it to bound memory (activations grow with rows × T).

    Yields ``(start, stop, grad, losses)``: the gradient w.r.t. the substituted lookup output,
    (stop − start, T, D) float32 batch first, and the losses (stop − start,) float64.
    """
    n = int(rows.shape[0])
    chunk = n if internal_batch_size is None else internal_batch_size
    if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
        raise InputError(f"internal_batch_size must be a positive integer, got {chunk!r}")
    chunk = int(chunk)
    ax = base.batch_axis
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        index = rows[start:stop]
        sub = repeat_samples(inputs, index, base.batch, ax)

        def replace(name: str, role: str, output: Any, _s: int = start, _e: int = stop) -> Any:
            return transform(output, _s, _e) if name == base.name else None

        res = gradients(
            model,
            sub,
            bind_rows(loss_fn, index),
            layers=base.name,
            mode=mode,  # type: ignore[arg-type]
            check=check,  # type: ignore[arg-type]
            batch_axis={base.name: ax},
            replace=replace,
        )
        lk = res[base.name]
        grad = _batch_first(to_numpy(lk.output_grad), ax)
        yield start, stop, grad, to_numpy(res.losses).astype(np.float64)


def alpha_shape(output: Any, axis: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-row scalar against ``output`` along its batch ``axis``."""
    shape = [1] * len(output.shape)
    shape[axis] = int(output.shape[axis])
    return tuple(shape)


def native_rows(values: np.ndarray, output: Any, axis: int) -> Any:
    """Batch-first numpy rows (n, ...) as a native array laid out like ``output``."""
    arr = np.moveaxis(values, 0, axis) if axis and values.ndim == len(output.shape) else values
    return from_numpy(arr, output)


def row_weights(rows: np.ndarray, weights: np.ndarray, batch: int) -> np.ndarray:
    """(B, n) matrix M with M[rows[i], i] = weights[i]: M @ grads sums rows per sample."""
    m = np.zeros((batch, rows.shape[0]))
    m[rows, np.arange(rows.shape[0])] = weights
    return m
