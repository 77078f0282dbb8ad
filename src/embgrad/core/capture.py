"""``gradients``: capture every lookup, one backward, probe, assemble per-sample results.

Data flow (see docs/design.md):

1. ``backend_for(model)`` picks the framework adapter; ``backend.open`` switches the model into
   the requested mode and into a state where every lookup is intercepted (restored on exit).
2. ``session.forward`` runs the model once; each lookup returns ``out + delta`` (``delta`` a zero
   array the backend can differentiate against) and is recorded as a :class:`Capture`.
3. One backward of Σ_i L_i w.r.t. the deltas only (no parameter gradients) gives
   G = Σ_i dL_i/d out, whose slice i along the batch axis is sample i's gradient when samples
   do not interact — which the probe (``probe.py``) checks with one more backward. A lookup
   the losses do not reach through the graph gets None from the backend, and is left out
   (``layers="auto"``) or refused (``_reached``): its zeros would be a false answer.
4. Results are wrapped lazily: sparse per-sample table rows are only built when asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import numbers
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, Literal, TypeVar, get_args

import numpy as np

from ..errors import (
    BatchAxisError,
    CouplingError,
    EmbgradError,
    InputError,
    LossError,
    NoLookupError,
)
from . import probe as probe_mod
from .contract import Capture, Forward, Mode, Replace, Session
from .registry import backend_for
from .results import Gradients, LookupGrad
from .sparse import SparseRows, build_rows

Check = Literal["auto", "probe", "exact", "off"]
LayerSpec = str | type
BatchAxis = int | str | None | Mapping[str, int | str | None]

CHECKS: tuple[str, ...] = get_args(Check)
MODES: tuple[str, ...] = get_args(Mode)

# model -> {(structure key): resolved batch axes}; remembers probes that passed (check="auto").
_PROBED: weakref.WeakKeyDictionary[Any, dict[Any, tuple[int | None, ...]]] = (
    weakref.WeakKeyDictionary()
)


def gradients(
    model: Any,
    inputs: Any,
    loss_fn: Callable[[Any], Any],
    *,
    layers: LayerSpec | Sequence[LayerSpec] = "auto",
    check: Check = "auto",
    mode: Mode = "eval",
    batch_axis: BatchAxis = None,
    seed: int | None = None,
    replace: Replace | None = None,
    input_grads: bool = True,
) -> Gradients:
    """Exact per-sample gradients w.r.t. every embedding lookup of ``model``, in one backward.

    Args:
        model: an ``mxnet.gluon.Block`` (hybridized or not, or a ``SymbolBlock``) or a
            ``torch.nn.Module``. It is not modified: hooks, patches, hybridization, training
            flags, ``requires_grad``, ``grad_req`` and ``.grad`` are as before on every exit.
        inputs: one array (``model(inputs)``), a tuple of positional arguments
            (``model(*inputs)``) or a dict of keyword arguments (``model(**inputs)``).
            Floating-point arrays among them also get gradients (``res.input_grads``).
        loss_fn: ``loss_fn(outputs)`` → per-sample losses of shape (B,). Do not reduce over
            the batch.
        layers: ``"auto"`` (every input lookup; lookups on output weights such as sampled
            softmax are left out; so are lookups the losses do not reach through the autograd
            graph — ``no_grad``, ``detach``, ``stop_gradient``/``BlockGrad`` — listed in
            ``res.unreached``), or a name / glob / role (``"word"``, ``"position"``,
            ``"token_type"``) / table name / block or module class, or a sequence of them
            (each selected lookup must be reached).
        check: ``"auto"`` probes for cross-sample coupling with one extra backward, once per
            (model, mode, loss function, lookup structure: names and ranks, not sizes; the
            batch axes are re-derived per shape), and raises CouplingError if samples
            interact; ``"probe"`` probes on every call; ``"exact"`` runs the exact per-sample
            loop (B backwards, each forward re-seeded identically) and is correct even when
            samples interact; ``"off"`` trusts independence.
        mode: ``"eval"`` (default: dropout off, BatchNorm uses running statistics) or
            ``"train"`` (dropout on; Gluon's ``autograd.record()`` default). The model's own
            flags are restored afterwards.
        batch_axis: the axis of each lookup's ids that indexes samples: found automatically (the
            axis whose size equals len(losses); the probe resolves ties), or an int for every
            lookup, or {lookup name: axis or None} (names as in ``res.layers``; a name that
            matches no lookup is refused). ``"folded"`` (alone or per lookup): the batch is
            folded into the ids' leading axis, B·k rows with rows b·k … (b+1)·k − 1 belonging to
            sample b (ELMo's characters, (B·T, C)); such a lookup is reported unfolded, ids
            (B, k, ...) and output_grad (B, k, ..., D), batch axis 0. When no lookup (nor float
            input) has an axis of size B, a leading axis of a multiple of B is tried as such a
            fold and confirmed by the probe (check "auto"/"probe"). When no lookup's ids (nor a
            float input) has an axis of len(losses) nor such a leading axis, B > 1, the losses
            do not match the samples: LossError.
        seed: seeds the probe weights and the dropout masks of repeated forwards (Gluon).
        replace: ``replace(name, role, output)`` may return a substitute for a lookup's output
            (same shape and dtype), e.g. an interpolation for integrated gradients; gradients
            are then taken at the substitute. Return None to keep the output.
        input_grads: also differentiate w.r.t. floating-point inputs (``res.input_grads``);
            False skips them (e.g. where the framework has no backward for such an input).

    Returns:
        :class:`Gradients`: ``res.layers``, ``res[name].output_grad`` (B, T, D),
        ``res[name].table_grad()`` (sparse per-sample rows), ``res.losses``,
        ``res.input_grads``, ``res.unreached`` / ``res.notes`` (lookups left out).

    Raises:
        InputError, LossError, NoLookupError, BatchAxisError, CouplingError,
        UnsupportedModelError (all :class:`embgrad.EmbgradError`).
    """
    # 1. Check the arguments before touching the model.
    _check_args(check, mode, loss_fn, batch_axis, replace, input_grads)
    args, kwargs = _split_inputs(inputs)
    _check_dense(args, kwargs)
    backend = backend_for(model)
    rng, run_seed = _seeds(seed)
    # 2. Open the model: mode switched, lookups intercepted; everything restored on exit.
    with backend.open(model, mode=mode) as session:
        session.check_inputs(args, kwargs)
        run = _Run(session, args, kwargs, loss_fn, run_seed, replace)
        # 3. One forward: per-sample losses and every lookup it performed.
        fwd = run.forward()
        # Errors found from here on yield to a bad input the forward let through unread (ids
        # on a GPU are checked after the backward is queued): the user hears of that first.
        with _bad_inputs_first(fwd):
            batch = _loss_count(session, fwd.losses)
            select = _select(fwd.captures, layers, fwd.unsplit)
            caps = [fwd.captures[i] for i in select]
            # 4. Candidate batch axes per lookup: the axes of the losses' length (or as given);
            # with none anywhere, a batch folded into a leading axis (B·k rows) is a candidate.
            caps, axes = _candidates(caps, batch, batch_axis, fwd.captures)
            caps, axes, folded = _fold_when_no_batch_axis(
                session, fwd, caps, axes, batch, batch_axis
            )
            _require_batch_axis(session, fwd, caps, axes, batch, batch_axis)
            if any(folded) and check in ("exact", "off"):
                _refuse_unprobed_fold(caps, folded, check)
            if check == "exact" and batch > 1:
                _verify(session, fwd)
                return _exact(run, fwd, select, caps, axes, batch, mode, input_grads, layers)
            # 5. Decide whether to probe: a verdict remembered for this structure skips it.
            key = _probe_key(loss_fn, mode, fwd, batch, select, batch_axis)
            remembered = _remembered(model, key, axes) if check == "auto" else None
            do_probe = batch > 1 and check in ("auto", "probe") and remembered is None
            if remembered is not None:
                axes = [[a] if a is not None else [] for a in remembered]
            _require_unambiguous(caps, axes, batch, do_probe)
            # 6. One backward of the summed losses w.r.t. the lookup outputs only.
            grads, in_grads = session.backward(
                fwd,
                np.ones(batch),
                select,
                inputs=input_grads and bool(fwd.float_inputs),
                retain=do_probe and session.retained_backward_is_exact,
            )
            grads = _shaped(caps, grads)
        # The inputs' deferred checks and the losses' values are read only now: a host read
        # before the backward would make a GPU wait for the forward before queueing it.
        _verify(session, fwd)
        # 7. Lookups the losses do not reach through the graph: left out (auto) or an error.
        kept, unreached = _reached(caps, grads, layers)
        n_selected = len(select)
        select, caps, axes = _take(select, kept), _take(caps, kept), _take(axes, kept)
        grads, folded = _take(grads, kept), _take(folded, kept)
        # 8. The probe: one more backward with signed weights proves independence.
        residual: float | None = None
        if do_probe:
            rng = rng if rng is not None else np.random.default_rng()
            resolved, residual = _probe(run, fwd, select, caps, axes, grads, rng, batch, folded)
            _remember(model, key, _spread(resolved, kept, n_selected))
        else:
            resolved = [a[0] if a else None for a in axes]
        # 9. Results; sparse table rows are built only when asked for.
        lookups = [
            _lookup(c, g, ax, functools.partial(_rows_fast, session, c, g, ax, batch))
            for c, g, ax in zip(caps, grads, resolved, strict=True)
        ]
        how = "single" if batch == 1 else ("probe-cached" if remembered is not None else check)
        if how == "auto":  # the probe ran: say so (the docstring's values), not the option
            how = "probe"
        return Gradients(
            losses=fwd.losses,
            lookups=lookups,
            input_grads=in_grads,
            check=how,
            probe_residual=residual,
            mode=mode,
            framework=session.framework,
            unreached={**unreached, **fwd.unsplit},
        )


def _seeds(seed: int | None) -> tuple[np.random.Generator | None, int]:
    """(the probe's generator, the forwards' seed). With ``seed`` both come from one generator
    (reproducible); without, the forward seed is drawn from the OS and the generator is made only
    if the call probes (a generator costs ~50 µs, a visible share of a small call)."""
    if seed is None:
        return None, int.from_bytes(os.urandom(4), "little") % (2**31 - 1)
    rng = np.random.default_rng(seed)
    return rng, int(rng.integers(2**31 - 1))


def _check_args(
    check: str, mode: str, loss_fn: Any, batch_axis: Any, replace: Any, input_grads: Any
) -> None:
    _check_batch_axis(batch_axis)
    if replace is not None and not callable(replace):
        raise InputError(
            f"replace= must be None or a callable replace(name, role, output) -> substitute or "
            f"None, got {replace!r}"
        )
    if not isinstance(input_grads, (bool, np.bool_)):
        raise InputError(f"input_grads= must be True or False, got {input_grads!r}")
    if check not in CHECKS:
        raise InputError(f"check={check!r} is not one of {', '.join(map(repr, CHECKS))}")
    if mode not in MODES:
        raise InputError(f"mode={mode!r} is not one of {', '.join(map(repr, MODES))}")
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable (outputs -> (B,) losses), got {loss_fn!r}")


def _require_unambiguous(
    caps: list[Capture], axes: list[list[int]], batch: int, do_probe: bool
) -> None:
    """Several size-B axes can only be told apart by the probe. With B = 1 any size-1 axis is
    right (its one slice is the whole array), so there is nothing to tell apart."""
    ambiguous = [c.name for c, a in zip(caps, axes, strict=True) if len(a) > 1]
    if ambiguous and not do_probe and batch > 1:
        raise BatchAxisError(
            f"the batch axis of lookup(s) {', '.join(ambiguous)} is ambiguous (several axes "
            f"of size {batch}); pass batch_axis=... or use check='auto'/'probe' to resolve it"
        )


class _Run:
    """Re-runnable forward with a fixed seed (for exact probes and the per-sample loop)."""

    def __init__(
        self,
        session: Session,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loss_fn: Callable[[Any], Any],
        seed: int,
        replace: Replace | None,
    ) -> None:
        self.session = session
        self.args = args
        self.kwargs = kwargs
        self.loss_fn = loss_fn
        self.seed = seed
        self.replace = replace

    def forward(self) -> Forward:
        return self.session.forward(
            self.args, self.kwargs, self.loss_fn, seed=self.seed, replace=self.replace
        )

    def again(self, fwd: Forward) -> Forward:
        """The forward to use for one more backward: the same graph where that is exact."""
        return fwd if self.session.retained_backward_is_exact else self.forward()


def _is_sparse(x: Any) -> bool:
    """A sparse array, framework-free: torch's sparse layouts, MXNet's csr/row_sparse, scipy."""
    if getattr(x, "is_sparse", False) is True or getattr(x, "is_sparse_csr", False) is True:
        return True
    layout = getattr(x, "layout", None)
    if layout is not None and str(layout).startswith("torch.sparse"):
        return True
    stype = getattr(x, "stype", None)
    return (isinstance(stype, str) and stype != "default") or hasattr(x, "tocsr")


def _check_dense(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """InputError for sparse inputs (ids or floats): lookups and their gradients need dense
    arrays. Checked before the model is touched."""
    for key, x in [*enumerate(args), *kwargs.items()]:
        if _is_sparse(x):
            label = f"input {key!r}" if isinstance(key, str) else f"input {key}"
            raise InputError(
                f"{label} is a sparse array ({type(x).__name__}); embgrad needs dense ids and "
                "inputs: pass x.to_dense() (torch) or x.tostype('default') (MXNet)"
            )


def _split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, Mapping):
        bad = [k for k in inputs if not isinstance(k, str)]
        if bad:
            raise InputError(f"keyword inputs must have str keys, got {bad!r}")
        return (), dict(inputs)
    if isinstance(inputs, tuple):
        return inputs, {}
    return (inputs,), {}


def _loss_count(session: Session, losses: Any) -> int:
    """B, from the losses' shape (no read of their values): LossError unless it is (B,)."""
    if _is_sparse(losses):
        raise LossError(
            f"loss_fn returned a sparse array ({type(losses).__name__}); return dense per-sample "
            "losses of shape (B,) (x.to_dense() in torch, x.tostype('default') in MXNet)"
        )
    if "complex" in str(getattr(losses, "dtype", "")):
        raise LossError(
            f"loss_fn returned complex losses ({losses.dtype}); gradients are defined for real "
            "losses: return a real (B,) array, e.g. the absolute value or the real part"
        )
    shape = getattr(losses, "shape", None)
    if shape is None:
        shape = session.ops.to_numpy(session.ops.work(losses)).shape
    shape = tuple(int(n) for n in shape)
    if len(shape) == 0:
        raise LossError(
            "loss_fn returned a scalar; it must return per-sample losses of shape (B,). Do not "
            "reduce over the batch (torch: reduction='none'; Gluon losses already return (B,))."
        )
    if len(shape) != 1:
        raise LossError(
            f"loss_fn returned shape {shape}; it must return per-sample losses of "
            "shape (B,) — one number per sample (squeeze or sum the other axes inside loss_fn)."
        )
    if shape[0] == 0:
        raise InputError("the batch is empty: loss_fn returned 0 losses; pass at least 1 sample")
    return shape[0]


@contextlib.contextmanager
def _bad_inputs_first(fwd: Forward) -> Iterator[None]:
    """Run the forward's deferred input checks before letting an embgrad error through, so a bad
    id is reported as such, not as what it caused (on the CPU it was refused in the forward)."""
    try:
        yield
    except EmbgradError:
        if fwd.verify is not None:
            try:
                fwd.verify()
            except EmbgradError as bad:
                raise bad from None  # the cause, without the error it caused
        raise


def _verify(session: Session, fwd: Forward) -> None:
    """The checks that read values: the backend's deferred input checks (ids on a GPU), then
    the losses' finiteness."""
    if fwd.verify is not None:
        fwd.verify()
    _check_finite(session, fwd.losses)


def _check_finite(session: Session, losses: Any) -> None:
    """LossError naming the samples whose loss is NaN or infinite."""
    arr = session.ops.to_numpy(session.ops.work(losses))
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise LossError(
            f"loss_fn returned non-finite losses (NaN or inf) for sample(s) "
            f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''}; gradients would be "
            "meaningless. Check the inputs of those samples or the loss."
        )


def _matches(c: Capture, spec: LayerSpec) -> bool:
    if isinstance(spec, type):
        return isinstance(c.owner, spec)
    if isinstance(spec, str):
        return spec in (c.role, c.table, *c.aliases) or fnmatchcase(c.name, spec)
    raise InputError(
        f"layers= takes names, globs, roles or classes, got {type(spec).__name__}: {spec!r}"
    )


def _select(
    captures: list[Capture],
    layers: LayerSpec | Sequence[LayerSpec],
    unsplit: Mapping[str, str] | None = None,
) -> list[int]:
    if not captures and unsplit:
        raise NoLookupError(
            "the forward performed no embedding lookup embgrad could capture; it saw "
            f"{', '.join(unsplit)}, which it could not split per sample: {next(iter(unsplit.values()))}."
        )
    if not captures:
        raise NoLookupError(
            "the forward performed no embedding lookup, so there is nothing to differentiate "
            "against. embgrad needs a model whose inputs pass through an embedding lookup "
            "(Gluon nn.Embedding / F.Embedding, torch nn.Embedding / F.embedding / EmbeddingBag)."
        )
    if isinstance(layers, str) and layers == "auto":
        sel = [i for i, c in enumerate(captures) if c.role != "output"]
    else:
        specs: list[Any] = (
            [layers]  # a bare non-spec (an int) is refused by _matches with InputError
            if isinstance(layers, (str, type)) or not isinstance(layers, Iterable)
            else list(layers)
        )
        sel = [i for i, c in enumerate(captures) if any(_matches(c, s) for s in specs)]
    if not sel:
        found = ", ".join(f"{c.name} ({c.role}, {c.module})" for c in captures)
        raise NoLookupError(f"layers={layers!r} selects none of the captured lookups: {found}")
    return sel


#: ``batch_axis`` value (alone or per lookup) for ids whose leading axis holds the batch folded
#: with another axis: B·k rows, rows b·k … (b+1)·k − 1 belonging to sample b (ELMo's character
#: CNN looks up ids reshaped from (B, T, C) to (B·T, C)).
FOLDED = "folded"


def _axis_value(value: Any, where: str) -> int | str | None:
    """A ``batch_axis`` value as the core uses it: an int (numpy integers too), None or
    ``"folded"``; InputError for anything else (True is not an axis)."""
    if value is None or value == FOLDED:
        return value  # type: ignore[no-any-return]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InputError(
            f"batch_axis{where}={value!r} is not an axis: pass an int (the axis of the ids that "
            f"indexes samples), None (the ids have no batch axis) or {FOLDED!r} (a batch folded "
            "into the leading axis, B·k rows, k consecutive rows per sample)"
        )
    return int(value)


def _check_batch_axis(batch_axis: Any) -> None:
    """The type of ``batch_axis``, checked before the model is touched."""
    if isinstance(batch_axis, Mapping):
        for key, value in batch_axis.items():
            if not isinstance(key, str):
                raise InputError(
                    f"batch_axis keys are lookup names (str), got {key!r}: e.g. "
                    "batch_axis={'embed': 1}"
                )
            _axis_value(value, f"[{key!r}]")
    else:
        _axis_value(batch_axis, "")


def _candidates(
    caps: list[Capture], batch: int, batch_axis: BatchAxis, found: list[Capture]
) -> tuple[list[Capture], list[list[int]]]:
    """The selected captures (folded ones as their unfolded views) and each one's candidate
    batch axes: those of size ``batch``, or the one given. ``found``: every captured lookup
    (a ``batch_axis`` key must name one of them)."""
    if isinstance(batch_axis, Mapping):
        names = {c.name for c in found}
        unknown = [k for k in batch_axis if k not in names]
        if unknown:
            raise InputError(
                f"batch_axis names {', '.join(map(repr, unknown))}, which match no lookup of "
                f"this forward; the lookups are: {', '.join(repr(c.name) for c in found)} "
                "(keys are lookup names as in res.layers, not table names or globs)"
            )
    out_caps: list[Capture] = []
    out = []
    for c in caps:
        shape = c.out_shape[:-1]
        given: Any = batch_axis
        where = ""
        if isinstance(batch_axis, Mapping):
            given = batch_axis.get(c.name, "auto")
            where = f"[{c.name!r}]"
        elif batch_axis is None:
            given = "auto"
        if given != "auto":
            given = _axis_value(given, where)
        if given == "auto":
            out_caps.append(c)
            out.append(probe_mod.candidate_axes(shape, batch))
            continue
        if given is None:
            out_caps.append(c)
            out.append([])
            continue
        if given == FOLDED:
            out_caps.append(_unfold(c, batch, declared=True))
            out.append([0])
            continue
        if not -len(shape) <= given < len(shape):
            raise InputError(
                f"batch_axis{where}={given!r} for lookup {c.name!r} whose ids have shape "
                f"{shape}: there is no axis {given}"
            )
        axis = given % len(shape)
        said = f"batch_axis{where}={given}" + (f" (axis {axis})" if axis != given else "")
        if shape[axis] != batch:
            raise InputError(
                f"{said} for lookup {c.name!r}: its ids have shape {shape}, whose axis {axis} "
                f"has size {shape[axis]}, not the batch size {batch}"
            )
        out_caps.append(c)
        out.append([axis])
    return out_caps, out


def _foldable(c: Capture, batch: int) -> bool:
    """Whether ``c``'s ids can hold a batch of ``batch`` folded into their leading axis."""
    shape = c.out_shape[:-1]
    return c.rows is None and len(shape) >= 1 and shape[0] > batch and shape[0] % batch == 0


def _unfold(c: Capture, batch: int, *, declared: bool) -> Capture:
    """``c`` seen with its leading axis (B·k) split into (B, k): ids, output and the shape of
    its gradient. InputError when a declared fold does not fit the ids."""
    shape = c.out_shape[:-1]
    if not _foldable(c, batch):
        raise InputError(
            f"batch_axis={{{c.name!r}: {FOLDED!r}}}: lookup {c.name!r} has ids of shape {shape}; "
            f"a folded batch needs a leading axis that is a multiple of the batch size {batch} "
            f"(B·k rows, k > 1)"
            + (" and a plain lookup (not an embedding bag)" if c.rows is not None else "")
        )
    k = shape[0] // batch
    out_shape = (batch, k, *c.out_shape[1:])
    how = "declared" if declared else "found by the probe"
    note = (
        f"ids {shape} hold the batch folded into their leading axis ({how}): rows b·{k} … "
        f"(b+1)·{k}−1 are sample b's; ids, output and output_grad are reported as {out_shape[:-1]}"
        f" / {out_shape}"
    )
    site = dataclasses.replace(c.site, note="; ".join(filter(None, [c.site.note, note])))
    view = dataclasses.replace(
        c,
        site=site,
        ids=c.ids.reshape(out_shape[:-1]),
        out_shape=out_shape,
        output=c.output.reshape(out_shape) if c.output is not None else None,
    )
    _FOLDED.add(view)
    return view


#: The unfolded views made by :func:`_unfold` (by identity; they live for one call).
_FOLDED: weakref.WeakSet[Capture] = weakref.WeakSet()


def _fold_when_no_batch_axis(
    session: Session,
    fwd: Forward,
    caps: list[Capture],
    axes: list[list[int]],
    batch: int,
    batch_axis: BatchAxis,
) -> tuple[list[Capture], list[list[int]], list[bool]]:
    """Where no lookup (selected or not) and no float input has an axis of the batch size, the
    batch may be folded into a leading axis (ELMo's characters: (B·T, C)): such lookups (not
    declared, not position lookups) become their unfolded views with candidate axis 0, to be
    confirmed by the probe. Returns the captures, the axes and which were folded so."""
    folded = [False] * len(caps)
    if batch <= 1 or any(axes):
        return caps, axes, folded
    shapes = [c.out_shape[:-1] for c in fwd.captures] + [
        tuple(session.ops.work(x).shape) for x in fwd.float_inputs.values()
    ]
    if any(probe_mod.candidate_axes(shape, batch) for shape in shapes):
        return caps, axes, folded
    given = batch_axis if isinstance(batch_axis, Mapping) else {}
    caps, axes = list(caps), list(axes)
    for i, c in enumerate(caps):
        if c.name not in given and c.role != "position" and _foldable(c, batch):
            caps[i], axes[i], folded[i] = _unfold(c, batch, declared=False), [0], True
    return caps, axes, folded


def _shaped(caps: list[Capture], grads: list[Any]) -> list[Any]:
    """The backend's gradients in the shape of the captures (folded lookups unfolded)."""
    return [
        g if g is None or tuple(g.shape) == c.out_shape else g.reshape(c.out_shape)
        for c, g in zip(caps, grads, strict=True)
    ]


def _refuse_unprobed_fold(caps: list[Capture], folded: list[bool], check: str) -> None:
    """A batch folded into a leading axis is only a guess until the probe confirms it."""
    names = [c.name for c, f in zip(caps, folded, strict=True) if f]
    raise BatchAxisError(
        f"no lookup's ids has an axis of the batch size; the ids of {', '.join(map(repr, names))} "
        "have a leading axis that is a multiple of it, as when the batch is folded in (B·k rows, "
        f"k consecutive rows per sample), but check={check!r} runs no probe to confirm that. "
        f"Declare it with batch_axis={{{names[0]!r}: {FOLDED!r}}}, or use check='auto'/'probe'."
    )


def _require_batch_axis(
    session: Session,
    fwd: Forward,
    caps: list[Capture],
    axes: list[list[int]],
    batch: int,
    batch_axis: BatchAxis,
) -> None:
    """LossError when no lookup of the forward has an axis of the losses' length: the losses do
    not match the samples (a duplicated batch, a wrong concatenation), which is a mistake, not
    broadcast ids. Any lookup counts, selected or not (selecting only the position lookup
    beside batched word ids is fine), and so does a float input (embeddings passed in), unless
    ``batch_axis={name: None}`` declares every selected lookup without batch axis. With B = 1,
    unbatched ids (T,) are a legitimate single sample, so only B > 1 is checked."""
    if batch <= 1 or any(axes):
        return
    given = batch_axis if isinstance(batch_axis, Mapping) else {}
    if all(c.name in given for c in caps):
        return
    found = [c.out_shape[:-1] for c in fwd.captures] + [
        tuple(session.ops.work(x).shape) for x in fwd.float_inputs.values()
    ]
    if any(probe_mod.candidate_axes(shape, batch) for shape in found):
        return
    shapes = ", ".join(f"{c.name!r} {c.out_shape[:-1]}" for c in fwd.captures)
    raise LossError(
        f"loss_fn returned {batch} losses, but no lookup's ids has an axis of size {batch}: "
        f"{shapes}. Nor can a batch of {batch} be folded into a leading axis (B·k rows), which "
        "needs a multiple of it. loss_fn must return one loss per sample, shape (B,) with B the batch size "
        "of the ids (check for a duplicated batch or a wrong concatenation); if the ids really "
        "have no batch axis, say so with batch_axis={name: None}."
    )


#: What keeps the losses from reaching a lookup's output through the autograd graph.
_CUT_CAUSES = (
    "the lookup or its output is computed under torch.no_grad() / mx.autograd.pause(), "
    "detached (.detach()), or passed through stop_gradient / BlockGrad"
)
_UNREACHED = (
    "the losses do not reach its output through the autograd graph (" + _CUT_CAUSES + "), so "
    "its gradient is undefined, not zero"
)

T = TypeVar("T")


def _reached(
    caps: list[Capture], grads: list[Any], layers: LayerSpec | Sequence[LayerSpec]
) -> tuple[list[int], dict[str, str]]:
    """Positions (in ``caps``) of the lookups the losses reach, and {name: why} for the others.

    A backend's backward returns None for a lookup whose output the losses do not reach through
    the autograd graph: its zeros would say "the loss does not depend on it", which is false.
    ``layers="auto"`` leaves such lookups out (a note on the result) unless none is reached;
    lookups named in ``layers=`` must be reached. A reached lookup whose gradient is zero
    (masked positions) is kept as it is.
    """
    missing = [c for c, g in zip(caps, grads, strict=True) if g is None]
    kept = [i for i, g in enumerate(grads) if g is not None]
    if not missing:
        return kept, {}
    names = ", ".join(f"{c.name!r} ({c.role})" for c in missing)
    auto = isinstance(layers, str) and layers == "auto"
    if not auto:
        raise NoLookupError(
            f"layers={layers!r} selects lookup(s) {names} whose output the losses do not reach "
            f"through the autograd graph: {_CUT_CAUSES} inside the model or loss_fn. Their "
            "gradient would be zero, which would wrongly say the loss does not depend on them. "
            "Let the gradient flow through the lookup, or leave it out of layers=."
        )
    if not kept:
        raise NoLookupError(
            f"the losses reach none of the selected lookups through the autograd graph: {names}. "
            f"Likely cause: {_CUT_CAUSES} inside the model or loss_fn (e.g. a frozen embedding "
            "stage). embgrad differentiates the losses w.r.t. the lookup outputs; let the "
            "gradient flow through at least one of them."
        )
    return kept, {c.name: _UNREACHED for c in missing}


def _take(xs: list[T], keep: list[int]) -> list[T]:
    return [xs[i] for i in keep]


def _spread(values: list[Any], keep: list[int], n: int) -> list[Any]:
    """``values`` (one per kept position) back at their positions among ``n``; None elsewhere."""
    out: list[Any] = [None] * n
    for i, v in zip(keep, values, strict=True):
        out[i] = v
    return out


def _probe_key(
    loss_fn: Any,
    mode: str,
    fwd: Forward,
    batch: int,
    select: list[int],
    batch_axis: BatchAxis,
) -> Any:
    """What a remembered probe verdict is keyed on: the loss code, the mode and the lookup
    structure (every lookup's name and rank, in call order), not the sizes, so a loop over
    ragged batches probes once; the batch axes are re-derived at each shape (:func:`_remembered`).
    A lookup set that changes (another branch) is another key and is probed again.  The selection
    and ``batch_axis`` are part of it: remembered axes are per selected lookup, and must not
    override a given batch_axis.  This assumes cross-sample coupling does not depend on the
    sizes alone; ``check="probe"`` probes every call."""
    user_fn = inspect.unwrap(loss_fn)  # through wrappers such as the methods' row binding
    code = getattr(user_fn, "__code__", None) or type(user_fn)
    structure = tuple((c.name, len(c.out_shape)) for c in fwd.captures)
    return (code, mode, batch > 1, structure, tuple(select), repr(batch_axis))


def _remembered(model: Any, key: Any, axes: list[list[int]]) -> tuple[int | None, ...] | None:
    """The remembered batch axes for ``key``, if each is still a candidate at this call's shapes
    (an axis of the batch size; None stays None), else None (the call probes)."""
    try:
        found = _PROBED.get(model, {}).get(key)
    except TypeError:
        return None
    if found is None or any(a is not None and a not in c for a, c in zip(found, axes, strict=True)):
        return None
    return found


def _remember(model: Any, key: Any, axes: list[int | None]) -> None:
    with contextlib.suppress(TypeError):  # a model that is not weak-referenceable
        _PROBED.setdefault(model, {})[key] = tuple(axes)


def _probe(
    run: _Run,
    fwd: Forward,
    select: list[int],
    caps: list[Capture],
    axes: list[list[int]],
    grads: list[Any],
    rng: np.random.Generator,
    batch: int,
    folded: list[bool],
) -> tuple[list[int | None], float]:
    session = run.session
    v = probe_mod.probe_weights(batch, rng)
    gv, _ = session.backward(run.again(fwd), v, select, inputs=False, retain=False)
    gv = _shaped(caps, gv)
    resolved: list[int | None] = []
    failed: list[tuple[Capture, float, float]] = []
    worst = 0.0
    for c, cand, g, g_v in zip(caps, axes, grads, gv, strict=True):
        if not cand:
            resolved.append(None)
            continue
        g_np = session.ops.to_numpy(session.ops.work(g))
        gv_np = session.ops.to_numpy(session.ops.work(g_v))
        # The native dtype's width: bfloat16 reaches numpy as float32 but rounds like a half.
        tol = probe_mod.tolerance(session.ops.itemsize(session.ops.work(g)))
        scores = {a: probe_mod.residual(g_np, gv_np, v, a) for a in cand}
        best = min(scores, key=lambda a: scores[a])
        if scores[best] > tol:
            failed.append((c, scores[best], tol))
            resolved.append(None)
            continue
        worst = max(worst, scores[best])
        resolved.append(best)
    for c, score, tol in failed:
        if folded[caps.index(c)]:
            shape = (c.out_shape[0] * c.out_shape[1], *c.out_shape[2:-1])
            raise BatchAxisError(
                f"loss_fn returned {batch} losses, but no lookup's ids has an axis of size "
                f"{batch}. Lookup {c.name!r} has ids of shape {shape}, whose leading axis "
                f"{shape[0]} = {batch}·{c.out_shape[1]} could hold the batch folded in (rows "
                f"b·{c.out_shape[1]} … (b+1)·{c.out_shape[1]}−1 for sample b, as ELMo's "
                f"character CNN does), but the probe says the gradient is not split so "
                f"(residual {score:.3g}; < {tol:g} when it is). The rows may be interleaved "
                f"(row t·{batch} + b), the samples may interact (check='exact' gives the exact "
                "per-sample loop), or the losses may not match the samples (one loss per "
                f"sample, shape (B,)). batch_axis={{{c.name!r}: None}} gives batch sums."
            )
        if not _broadcast_ids(c, caps, resolved):
            raise CouplingError(
                f"samples interact in lookup {c.name!r}: one backward of the summed losses does "
                f"not give per-sample gradients (probe residual {score:.3g}; independent "
                f"samples give < {tol:g}). Usual causes: BatchNorm or other batch statistics in "
                "training mode (use mode='eval'), or a loss_fn that mixes samples. Use "
                "check='exact' for the exact per-sample loop (B backwards)"
                + (
                    f", or batch_axis={{{c.name!r}: None}} if these ids have no batch axis"
                    if len(c.out_shape) == 2
                    else ""
                )
                + "."
            )
    return resolved, worst


def _broadcast_ids(c: Capture, caps: list[Capture], resolved: list[int | None]) -> bool:
    """Whether a lookup that failed the probe on its only size-B axes has no batch axis at all.

    Position ids of shape (T,) or (1, T) with T == B (or relative positions (T, T)) have an axis
    of the batch size that is not the batch: the probe fails on it although samples are
    independent.  When another lookup passed with a batch axis (so samples do not interact) and
    this one is a position lookup or its ids are broadcast-shaped (fewer dimensions than that
    lookup's, or a leading axis of size 1), its gradients are batch sums (``batch_axis=None``),
    which are exact.
    """
    passed = [_rank(p) for p, a in zip(caps, resolved, strict=False) if a is not None]
    shape = c.out_shape[:-1]
    broadcast = _rank(c) < max(passed, default=0) or (len(shape) > 1 and shape[0] == 1)
    return bool(passed) and (broadcast or c.role == "position")


def _broadcast_to_sums(caps: list[Capture], resolved: list[int | None]) -> list[int | None]:
    """The exact loop's batch axes, less those of broadcast-shaped ids: a lookup whose output has
    fewer dimensions than one with a batch axis (position ids (T,) beside (B, T) word ids) has
    no batch axis even when one of its axes has size B."""
    batched = [_rank(c) for c, a in zip(caps, resolved, strict=True) if a is not None]
    dims = max(batched, default=0)
    return [
        None if a is not None and c not in _FOLDED and _rank(c) < dims else a
        for c, a in zip(caps, resolved, strict=True)
    ]


def _rank(c: Capture) -> int:
    """The rank of the lookup's output as the model made it (a folded view has one more)."""
    return len(c.out_shape) - (1 if c in _FOLDED else 0)


def _rows_fast(session: Session, c: Capture, grad: Any, axis: int | None, batch: int) -> SparseRows:
    ops = session.ops
    if c.rows is not None:
        out_index, ids, vals = c.rows(grad)
        sample = out_index if axis is not None else ops.full_int(int(ids.shape[0]), 0, ids)
    else:
        ids = ops.as_int64(ops.work(c.ids))
        shape = tuple(ids.shape)
        if axis is None:
            sample = ops.full_int(int(np.prod(shape)), 0, ids)
        else:
            sample = ops.reshape(ops.batch_index(shape, axis, ids), (-1,))
        ids = ops.reshape(ids, (-1,))
        vals = ops.reshape(ops.work(grad), (-1, c.dim))
    return build_rows(
        ops,
        [(sample, ids, vals)],
        (batch if axis is not None else 1, c.vocab_size, c.dim),
        padding_idx=c.padding_idx,
        per_sample=axis is not None,
    )


def _note(c: Capture, axis: int | None) -> str:
    notes = [c.site.note] if c.site.note else []
    if axis is None:
        notes.append("ids have no batch axis: output_grad and table gradient are batch sums")
    return "; ".join(notes)


def _lookup(c: Capture, grad: Any, axis: int | None, rows: Callable[[], SparseRows]) -> LookupGrad:
    """The result for capture ``c``: its output gradient and how to build its table rows."""
    return LookupGrad(
        c.site,
        output_grad=grad,
        ids=c.ids,
        batch_axis=axis,
        note=_note(c, axis),
        rows=rows,
        output=c.output,
        weight=c.weight,
    )


def _exact(
    run: _Run,
    fwd: Forward,
    select: list[int],
    caps: list[Capture],
    axes: list[list[int]],
    batch: int,
    mode: str,
    want_inputs: bool,
    layers: LayerSpec | Sequence[LayerSpec],
) -> Gradients:
    """The exact per-sample loop: backward of L_i alone for each i (re-seeded forwards)."""
    session, ops = run.session, run.session.ops
    per_i: list[list[Any]] = []
    inputs_i: list[dict[str | int, Any]] = []
    current = fwd
    unreached: dict[str, str] = {}
    for i in range(batch):
        e = np.zeros(batch)
        e[i] = 1.0
        last = i == batch - 1
        grads, in_grads = session.backward(
            current,
            e,
            select,
            inputs=want_inputs and bool(fwd.float_inputs),
            retain=session.retained_backward_is_exact and not last,
        )
        grads = _shaped(caps, grads)
        if i == 0:  # what the graph reaches is the same for every sample's backward
            kept, unreached = _reached(caps, grads, layers)
            select, caps, axes = _take(select, kept), _take(caps, kept), _take(axes, kept)
            grads = _take(grads, kept)
        per_i.append(grads)
        inputs_i.append(in_grads)
        if not last:
            current = run.again(current)
    resolved = [_diagonal_axis(ops, cand, [g[k] for g in per_i]) for k, cand in enumerate(axes)]
    resolved = _broadcast_to_sums(caps, resolved)
    lookups = []
    for k, (c, axis) in enumerate(zip(caps, resolved, strict=True)):
        gs = [g[k] for g in per_i]
        rows = _exact_rows(session, c, gs, axis, batch)
        lookups.append(_lookup(c, _diagonal(session, gs, axis), axis, rows))
    input_grads = {
        key: _stack_inputs(session, [d[key] for d in inputs_i], batch) for key in inputs_i[0]
    }
    return Gradients(
        losses=fwd.losses,
        lookups=lookups,
        input_grads=input_grads,
        check="exact",
        probe_residual=None,
        mode=mode,
        framework=session.framework,
        unreached={**unreached, **fwd.unsplit},
    )


def _diagonal_axis(ops: Any, cand: list[int], gs: list[Any]) -> int | None:
    """Among candidate axes, the one where sample i's gradient lives in slice i."""
    if len(cand) <= 1:
        return cand[0] if cand else None
    arrays = [ops.to_numpy(ops.work(g)).astype(np.float64) for g in gs]

    def mass(a: int) -> float:
        return sum(float(np.sum(np.take(g, i, axis=a) ** 2)) for i, g in enumerate(arrays))

    return max(cand, key=mass)


def _exact_rows(
    session: Session, c: Capture, gs: list[Any], axis: int | None, batch: int
) -> Callable[[], SparseRows]:
    def build() -> SparseRows:
        ops = session.ops
        chunks = []
        for i, g in enumerate(gs):
            if c.rows is not None:
                _, ids, vals = c.rows(g)
            else:
                ids = ops.reshape(ops.as_int64(ops.work(c.ids)), (-1,))
                vals = ops.reshape(ops.work(g), (-1, c.dim))
            keep = ops.nonzero_rows(vals)
            ids, vals = ops.mask(ids, keep), ops.mask(vals, keep)
            chunks.append(
                (ops.full_int(int(ids.shape[0]), i if axis is not None else 0, ids), ids, vals)
            )
        return build_rows(
            ops,
            chunks,
            (batch if axis is not None else 1, c.vocab_size, c.dim),
            padding_idx=c.padding_idx,
            per_sample=axis is not None,
        )

    return build


def _stack_inputs(session: Session, gs: list[Any], batch: int) -> Any:
    """Per-sample input gradients from the loop: slice i of gradient i along the batch axis."""
    ops = session.ops
    cand = probe_mod.candidate_axes(tuple(ops.work(gs[0]).shape), batch)
    return _diagonal(session, gs, _diagonal_axis(ops, cand, gs))


def _diagonal(session: Session, gs: list[Any], axis: int | None) -> Any:
    """From the loop's gradients g_i (one per sample): slice i of g_i along ``axis``, stacked
    (native); without a batch axis, the batch sum Σ_i g_i."""
    if axis is None:
        total = gs[0]
        for g in gs[1:]:
            total = total + g
        return total
    ops = session.ops
    stacked = ops.stack([ops.take(ops.work(g), i, axis) for i, g in enumerate(gs)], axis)
    return session.to_native(stacked, gs[0])
