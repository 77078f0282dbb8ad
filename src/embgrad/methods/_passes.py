"""The two kinds of gradient pass every method is built from, both on ``embgrad.gradients``.

* :func:`base_pass` — the plain per-sample gradient at the inputs (one forward, one backward):
  losses f(x) (B,), the word lookup's output x and gradient g, both (B, T, D) in numpy with the
  batch first, its ids (B, T) and the table.
* :func:`expanded_passes` — the inputs with each sample repeated (integrated-gradient steps,
  SmoothGrad draws), in passes of at most ``internal_batch_size`` rows; in each pass the
  lookup's output is replaced by a transform of it (``replace=``), and gradients are taken
  there. Every pass is one batched forward and one backward in the framework. Given the
  attention mask, rows are grouped by length and each pass runs only to its longest sample
  (``methods.plan.plan_passes``), so the padding of long samples is not computed for short ones.

A ``loss_fn`` takes the model's outputs and returns per-sample losses (N,). It may take a second
argument, ``rows`` (numpy int64 (N,)): for each row of the (expanded) batch, the index of its
sample in the caller's batch — how per-sample constants (targets, pair embeddings) follow the
repeated samples.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._progress import bar
from ..backends import backend_for, ops_for
from ..core.capture import gradients
from ..core.results import LookupGrad
from ..errors import InputError, NoLookupError
from ._arrays import map_arrays, repeat_samples, to_numpy
from .plan import default_pass_rows, plan_passes

LossFn = Callable[..., Any]
#: ``transform(output, sel)``: the substitute for rows ``sel`` (int array) of the expanded batch
Transform = Callable[[Any, np.ndarray], Any]


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

    bound.__wrapped__ = loss_fn  # type: ignore[attr-defined]  # the probe key reads the user's
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


def _bound_at_inputs(loss_fn: LossFn, inputs: Any, axis: int = 0) -> Callable[[Any], Any]:
    """``loss_fn`` for a pass at the inputs themselves: row i is sample i, counted along the
    inputs' batch ``axis`` (the first input's)."""
    if not takes_rows(loss_fn):
        return loss_fn  # type: ignore[return-value]
    return bind_rows(loss_fn, np.arange(batch_size_hint(inputs, axis)))


def base_pass(
    model: Any,
    inputs: Any,
    loss_fn: LossFn,
    *,
    layer: str = "word",
    mode: str = "eval",
    check: str = "auto",
    batch_axis: int | None = None,
    rows_axis: int | None = None,
) -> Base:
    """One :func:`embgrad.gradients` call at the inputs, reduced to the lookup ``layer``.

    ``layer`` is a role, name or glob (see ``gradients(layers=)``); with the default ``"word"``
    a model whose only input lookup has another role is accepted too. ``batch_axis``: the
    lookup's batch axis where already known (inputs derived from an earlier pass).
    ``rows_axis``: the axis of the first input that counts samples for ``loss_fn``'s ``rows``
    (default ``batch_axis``, else 0; 1 for time-major (T, B) inputs).
    """
    axis = rows_axis if rows_axis is not None else (batch_axis or 0)
    loss = _bound_at_inputs(loss_fn, inputs, axis)
    try:
        res = gradients(model, inputs, loss, layers=layer, mode=mode, check=check,  # type: ignore[arg-type]
                        batch_axis=batch_axis)  # fmt: skip
        chosen = res[res.layers[0]]
    except NoLookupError as err:
        if layer != "word":
            raise
        res = gradients(model, inputs, loss, layers="auto", mode=mode, check=check)  # type: ignore[arg-type]
        if res.unreached:  # the word lookup may be the one cut off the graph: do not guess
            raise NoLookupError(f"{err} ({'; '.join(res.notes)})") from None
        if len(res.layers) != 1:
            raise NoLookupError(
                "no lookup has the role 'word' and the model has several input lookups "
                f"({', '.join(res.layers)}); pass layer=<one of these names>"
            ) from None
        chosen = res[res.layers[0]]
    return _base_of(res, chosen)


def base_passes(
    model: Any,
    inputs: Any,
    loss_fn: LossFn,
    *,
    layer: str = "word",
    mode: str = "eval",
    check: str = "auto",
) -> dict[str, Base]:
    """Like :func:`base_pass`, one :class:`Base` per lookup matching ``layer`` (e.g. an
    encoder–decoder's two word lookups), all from one :func:`embgrad.gradients` call."""
    loss = _bound_at_inputs(loss_fn, inputs)
    res = gradients(model, inputs, loss, layers=layer, mode=mode, check=check)  # type: ignore[arg-type]
    return {name: _base_of(res, res[name]) for name in res.layers}


def _base_of(res: Any, chosen: LookupGrad) -> Base:
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


def forward_losses(
    model: Any, inputs: Any, loss_fn: Callable[[Any], Any], *, mode: str
) -> np.ndarray:
    """f at ``inputs``: one plain forward in the backend's session (``Session.evaluate``: the
    model's mode and state as for :func:`embgrad.gradients`, nothing captured, no autograd
    graph), float64 (N,)."""
    if isinstance(inputs, Mapping):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = dict(inputs)
    else:
        args, kwargs = (inputs if isinstance(inputs, tuple) else (inputs,)), {}
    with backend_for(model).open(model, mode=mode) as session:  # type: ignore[arg-type]
        session.check_inputs(args, kwargs)
        losses = session.evaluate(args, kwargs, loss_fn)
        return session.ops.to_numpy(session.ops.work(losses)).astype(np.float64)


def batch_size_hint(inputs: Any, axis: int = 0) -> int:
    """The batch size of the inputs (for ``rows`` in the base pass): the first array's size on
    ``axis`` (0 unless the inputs are time-major)."""
    first: Any = inputs
    if isinstance(inputs, Mapping):
        first = next(iter(inputs.values()))
    elif isinstance(inputs, tuple):
        first = inputs[0]
    shape = getattr(first, "shape", None)
    if not shape or len(shape) <= axis:
        raise InputError(
            "could not tell the batch size of the inputs (no array found): give arrays "
            "(tokenize texts first, e.g. inputs = tokenizer(texts, padding=True, "
            "return_tensors='pt'))"
        )
    return int(shape[axis])


#: the ``mask`` option's one-line help, shared by the methods with expanded passes
MASK_HELP = "(B,T) attention mask: run each pass only to its samples' last real token"


def ignores_padding(model: Any) -> bool:
    """Whether ``model`` is expected to ignore the positions after a sample's last real token:
    HuggingFace transformers and gluonnlp models (their attention masks / valid lengths). The
    few that do not (FNet's Fourier mixing, ConvBERT's convolutions) are caught by the check in
    :func:`expanded_passes` and keep the padding."""
    return backend_for(model).masks_padding(model)


def valid_lengths(mask: Any, ids_shape: tuple[int, ...]) -> np.ndarray:
    """Per sample, 1 + the last valid position of ``mask`` (B, T) (0 for an all-pad row).

    Only trailing invalid positions are ever cut, so right- and left-padded masks both work
    (a left-padded sample just keeps its full length).
    """
    m = to_numpy(mask)
    want = tuple(ids_shape)
    if m.shape != want:
        raise InputError(
            f"mask has shape {m.shape}; expected the ids' shape {want} (batch, positions), "
            "1 where a position is a real token"
        )
    valid = m.astype(bool)
    last = valid.shape[1] - np.argmax(valid[:, ::-1], axis=1)
    return np.where(valid.any(axis=1), last, 0).astype(np.int64)


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
    mask: Any = None,
    info: dict[str, Any] | None = None,
    desc: str = "passes",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Gradients for the expanded batch (sample ``rows[i]`` in row i), one pass at a time.

    ``internal_batch_size=None`` bounds each pass to :data:`PASS_TOKENS` rows × positions (at
    least one row), so memory stays bounded whatever the number of steps or draws; an int sets
    the rows per pass. A progress bar (``desc``) shows the passes on a terminal.

    ``mask`` (B, T), 1 at real tokens: rows are grouped by their sample's length and every
    input with a (B, T) prefix is cut to the pass's length, so no pass computes the padding of
    longer samples; ``loss_fn`` then gets outputs of the pass's length. That is only right for
    models that ignore the positions after a sample's last real token (attention-masked
    encoders and decoders do; Fourier mixing, convolutions over the sequence or an RNN reading
    the padding do not), so it is checked first, per sample: the gradient at the dropped
    positions must be ~0 and the loss and gradient at the inputs, cut as the passes will be,
    must equal the uncut ones (:func:`_padding_matters`); else, and in train mode, every pass
    runs at the full length. ``info["padding"]`` says which: ``"skipped"``, ``"computed"`` (no
    mask) or ``"computed: <why>"``; ``info["passes"]`` records ``(rows, length)`` per pass.

    Yields ``(sel, grad, losses)``: positions into ``rows`` of the pass, the gradient w.r.t.
    the substituted lookup output (len(sel), T, D) float32 batch first (zero past the pass's
    length), and the losses (len(sel),) float64. ``transform(output, sel)`` gets the lookup's
    output for those rows (cut to the pass's length).
    """
    ax = base.batch_axis
    full = int(base.ids.shape[1]) if base.ids.ndim > 1 else 0
    chunk = default_pass_rows(full) if internal_batch_size is None else internal_batch_size
    if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
        raise InputError(f"internal_batch_size must be a positive integer, got {chunk!r}")
    plan = plan_passes(rows, int(chunk), None, full)
    padding = "computed"
    if mask is not None:
        lengths = valid_lengths(mask, base.ids.shape)
        cut_plan = plan_passes(rows, int(chunk), lengths, full)
        if ax != 0:
            padding = f"computed: the lookup's batch axis is {ax}, cutting needs batch-first ids"
        elif mode != "eval":
            padding = f"computed: mode={mode!r} (random draws differ between cut and uncut passes)"
        elif all(length == full for _, length in cut_plan):
            padding = "computed: too little to skip"
        else:
            why = _padding_matters(model, inputs, loss_fn, base, rows, cut_plan)
            if why is None:
                plan, padding = cut_plan, "skipped"
            else:
                padding = f"computed: {why}"
    if info is not None:
        info["padding"] = padding
        info["passes"] = [(int(sel.shape[0]), length) for sel, length in plan]
    with bar(len(plan), desc, "pass", leave=False) as progress:
        for sel, length in plan:
            yield _one_pass(model, inputs, loss_fn, base, rows, transform, sel, length, full,
                            mode, check)  # fmt: skip
            progress.update(1)


def _one_pass(
    model: Any,
    inputs: Any,
    loss_fn: LossFn,
    base: Base,
    rows: np.ndarray,
    transform: Transform,
    sel: np.ndarray,
    length: int,
    full: int,
    mode: str,
    check: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass of :func:`expanded_passes`: rows ``sel`` cut to ``length`` positions."""
    ax = base.batch_axis
    index = rows[sel]
    cut = cut_positions(inputs, base.batch, full, length) if length < full else inputs
    sub = repeat_samples(cut, index, base.batch, ax)

    def replace(name: str, role: str, output: Any, _sel: np.ndarray = sel) -> Any:
        return transform(output, _sel) if name == base.name else None

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
    grad = _batch_first(to_numpy(res[base.name].output_grad), ax)
    if grad.shape[1] < full:
        grad = np.pad(grad, [(0, 0), (0, full - grad.shape[1])] + [(0, 0)] * (grad.ndim - 2))
    return sel, grad, to_numpy(res.losses).astype(np.float64)


def _padding_matters(
    model: Any,
    inputs: Any,
    loss_fn: LossFn,
    base: Base,
    rows: np.ndarray,
    plan: list[tuple[np.ndarray, int]],
) -> str | None:
    """Why the planned cuts would change results, or None.

    Per sample and relative to its own scale: the gradient at the positions a pass would drop
    must be ~0 (free: ``base.grad``), and the loss and gradient at the inputs, cut as planned
    (one pass per cut length), must equal the uncut ``base`` ones.
    """
    full = int(base.ids.shape[1])
    g_full = base.grad.astype(np.float64)
    scale = np.sqrt((g_full**2).sum(axis=(1, 2)))  # ‖g_i‖ per sample
    for length in sorted({length for _, length in plan if length < full}):
        samples = np.unique(np.concatenate([rows[sel] for sel, n in plan if n == length]))
        dropped = np.sqrt((g_full[samples, length:] ** 2).sum(axis=(1, 2)))
        if np.any(dropped > 1e-4 * scale[samples]):
            return "the loss has a gradient at positions after the last real token: it reads them"
        cut = cut_positions(inputs, base.batch, full, length)
        try:
            res = gradients(
                model,
                repeat_samples(cut, samples, base.batch, 0),
                bind_rows(loss_fn, samples),
                layers=base.name,
                check="off",
                batch_axis={base.name: 0},
            )
        except Exception as e:  # the model cannot run shorter inputs: keep the padding
            return f"the model failed on inputs cut to {length} of {full} positions ({e})"
        got = to_numpy(res.losses).astype(np.float64)
        want = base.losses[samples]
        g_cut = _batch_first(to_numpy(res[base.name].output_grad), 0).astype(np.float64)
        g_gap = np.sqrt(((g_cut - g_full[samples, :length]) ** 2).sum(axis=(1, 2)))
        f_ok = np.abs(got - want) <= 1e-5 * np.maximum(1.0, np.abs(want))
        if not (np.all(f_ok) and np.all(g_gap <= 1e-4 * scale[samples])):
            return (
                "the model's loss or gradient changes when the positions after the last real "
                f"token are removed (at {length} of {full} positions): it reads the padding"
            )
    return None


def cut_positions(inputs: Any, batch: int, full: int, length: int) -> Any:
    """Every input array with a (batch, full) shape prefix — per sample and per position, like
    the ids, attention mask and token types — cut to (batch, length)."""

    def one(x: Any) -> Any:
        shape = tuple(x.shape)
        return x[:, :length] if len(shape) >= 2 and shape[:2] == (batch, full) else x

    return map_arrays(inputs, one)


def alpha_shape(output: Any, axis: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-row scalar against ``output`` along its batch ``axis``."""
    shape = [1] * len(output.shape)
    shape[axis] = int(output.shape[axis])
    return tuple(shape)


def native_rows(values: np.ndarray, output: Any, axis: int) -> Any:
    """Batch-first numpy rows (n, ...) as a native array laid out like ``output``."""
    arr = np.moveaxis(values, 0, axis) if axis and values.ndim == len(output.shape) else values
    return ops_for(output).from_numpy(arr, output)


def row_weights(rows: np.ndarray, weights: np.ndarray, batch: int) -> np.ndarray:
    """(B, n) matrix M with M[rows[i], i] = weights[i]: M @ grads sums rows per sample."""
    m = np.zeros((batch, rows.shape[0]))
    m[rows, np.arange(rows.shape[0])] = weights
    return m
