"""MXNet Gluon backend: every embedding lookup of a Block, captured in one recorded forward.

How, and why (measured facts: ``../shared/notes/gluon.md``):

- **Hybridized and exported models run their own graph** (``gluon_symbol.py``): a block with
  a traced graph (an exported ``SymbolBlock``, or a hybridized block that has run) runs that
  graph rewritten with a zero input after every lookup, compiled once into its own cached op
  with the block's flags — as fast as the user's cached op, which is never touched (no
  re-trace, same ``static_alloc``/``static_shape``).
- **Everything else runs imperatively**: ``_active`` is saved and cleared on every other
  HybridBlock (via ``net.apply``) and restored afterwards (``hybridize(active=False)`` would
  drop cached ops and reset flags) — including a block hybridized but never run, which is not
  traced (tracing would change it).
- **One interception point for imperative lookups** (``gluon_trace.py``): while a forward is
  recorded, ``mx.nd.Embedding`` — where ``F.Embedding`` resolves in imperative mode — returns
  ``out + delta`` for a zero ``delta`` with ``attach_grad()``. Gradients come from
  ``autograd.grad`` w.r.t. the deltas (the graph path adds the same deltas as graph inputs),
  so parameter ``.grad`` buffers (also with ``grad_req='add'``) and ``grad_req`` are never
  touched.
- **Train mode.** MXNet 1.9.1 re-draws dropout masks on a second backward of a retained graph,
  so ``retained_backward_is_exact`` is False and every forward is re-seeded with
  ``mx.random.seed(seed)`` (the core re-runs forwards with one seed). Parameters still waiting
  for deferred initialization are initialized first by one unrecorded forward in predict mode,
  so that initialization does not consume random numbers between seed and forward. Running
  statistics (BatchNorm's ``running_mean``/``running_var``: non-differentiable parameters, or
  a graph's auxiliary states), which MXNet updates during a training-mode *backward*, are
  restored on exit.
- The backward runs in the forward's mode (``autograd.grad(train_mode=...)``): its default,
  True, makes BatchNorm's backward use batch statistics even after a predict-mode forward,
  which couples samples.

Global state changed and not restored: in ``mode="train"`` the MXNet random generator is
re-seeded (MXNet cannot read its state back).

**Threads.** Every call holds :data:`GLUON_LOCK`, one process-wide re-entrant lock, from
before the model is switched until everything is restored: Gluon calls from several threads
run one after another and return what sequential calls return. Unlocked, they fail: MXNet
1.9's imperative autograd breaks when two threads record on the same model ("The any container
is empty"), and the process-global ``mx.nd.Embedding`` replacement and the per-block
``_active`` switches of overlapping calls are restored out of order (``mx.nd.Embedding`` left
replaced). While a call runs, other threads' code outside embgrad sees the replaced
``mx.nd.Embedding``, which passes calls from any thread but the capturing one straight to the
real function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..core.contract import Backend, Capture, Forward, Mode, Replace, Session
from ..core.ops import NumpyOps, Ops
from ..errors import InputError, LossError, UnsupportedModelError
from .gluon_symbol import has_graph, intercept
from .gluon_trace import Tracer, lazy_mxnet, patched, to_numpy

__all__ = ["GLUON_LOCK", "GluonBackend", "GluonSession", "MXNetOps"]

#: Held by every embgrad call on a Gluon model, for the whole call (see "Threads" above).
#: Re-entrant, so a call made from inside another one in the same thread does not deadlock.
GLUON_LOCK = threading.RLock()


# -- arrays ----------------------------------------------------------------------------------
class MXNetOps(NumpyOps):
    """NumpyOps whose working arrays are numpy copies of MXNet NDArrays (``asnumpy``)."""

    name = "gluon"

    def work(self, x: Any) -> Any:
        return to_numpy(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return to_numpy(x)

    # -- native arrays (NDArrays) ------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, like: Any) -> Any:
        """``a`` on ``like``'s context in ``like``'s dtype."""
        return lazy_mxnet().nd.array(a, ctx=like.context, dtype=like.dtype)

    def take_rows(self, x: Any, index: np.ndarray, axis: int) -> Any:
        nd = lazy_mxnet().nd
        return nd.take(x, nd.array(np.asarray(index), ctx=x.context, dtype="int64"), axis=axis)

    def detach(self, x: Any) -> Any:
        return x.detach()

    def log_softmax_pick(self, logits: Any, index: np.ndarray) -> Any:
        nd = lazy_mxnet().nd
        lp = nd.log_softmax(logits.astype("float32"), axis=-1)
        return nd.pick(lp, nd.array(np.asarray(index), ctx=logits.context), axis=-1)

    def pick_positions(self, x: Any, index: np.ndarray) -> Any:
        nd = lazy_mxnet().nd
        n, t = int(x.shape[0]), int(x.shape[1])
        flat = np.arange(n) * t + np.asarray(index, dtype=np.int64)
        rows = nd.take(x.reshape((n * t, *x.shape[2:])), nd.array(flat, ctx=x.context), axis=0)
        return rows

    def mean_pool_normalized(self, hidden: Any, mask: Any) -> Any:
        nd = lazy_mxnet().nd
        m = mask.astype(hidden.dtype).expand_dims(-1)
        pooled = nd.sum(hidden * m, axis=1) / nd.maximum(nd.sum(m, axis=1), 1e-9)
        return pooled / nd.maximum(nd.norm(pooled, axis=1, keepdims=True), 1e-12)

    def row_dot(self, a: Any, b: Any) -> Any:
        return lazy_mxnet().nd.sum(a * b, axis=-1)

    def row_dots(self, a: Any, b: Any) -> Any:
        return lazy_mxnet().nd.dot(a, b, transpose_b=True)

    def sparse_native(self, rows: Any) -> Any:
        """An MXNet ``row_sparse`` (B·V, D) on the CPU, row key ``b*V + token``."""
        mx = lazy_mxnet()
        _, _, values = rows.numpy()
        b, v, d = rows.shape
        return mx.nd.sparse.row_sparse_array(
            (values, rows.keys()), shape=(b * v, d), ctx=mx.cpu(), dtype=values.dtype
        )


def _labelled_arrays(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(label, value) for every leaf of the inputs, descending into lists/tuples/dicts."""

    def walk(label: str, x: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(x, (list, tuple)):
            for i, y in enumerate(x):
                yield from walk(f"{label}[{i}]", y)
        elif isinstance(x, Mapping):
            for k, y in x.items():
                yield from walk(f"{label}[{k!r}]", y)
        else:
            yield label, x

    for i, a in enumerate(args):
        yield from walk(f"input {i}", a)
    for k, a in kwargs.items():
        yield from walk(f"input {k!r}", a)


def _param_contexts(params: Mapping[str, Any]) -> set[Any]:
    ctxs: set[Any] = set()
    for p in params.values():
        with contextlib.suppress(RuntimeError):  # not initialized: the forward will say so
            ctxs.update(p.list_ctx())
    return ctxs


def check_inputs(
    params: Mapping[str, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """Raise InputError for numpy inputs, empty arrays, or arrays on other contexts than the
    parameters ``params`` (or on several contexts)."""
    nd = lazy_mxnet().nd
    arrays = []
    for label, x in _labelled_arrays(args, kwargs):
        if isinstance(x, np.ndarray):
            raise InputError(
                f"{label} is a numpy array; Gluon models take mxnet NDArrays: pass "
                "mx.nd.array(x, ctx=...) on the context of the model's parameters"
            )
        if isinstance(x, nd.NDArray):
            if x.size == 0:
                raise InputError(
                    f"{label} is empty (shape {x.shape}); pass at least one sample with at "
                    "least one token"
                )
            arrays.append((label, x))
    found = {x.context for _, x in arrays}
    if len(found) > 1:
        where = ", ".join(f"{label} on {x.context}" for label, x in arrays)
        raise InputError(
            f"the inputs are on different contexts ({where}); move them to one context with "
            "x.as_in_context(ctx)"
        )
    contexts = _param_contexts(params)
    for label, x in arrays:
        if contexts and x.context not in contexts:
            raise InputError(
                f"{label} is on {x.context} but the model's parameters are on "
                f"{', '.join(map(str, sorted(contexts, key=str)))}; move the inputs with "
                "x.as_in_context(ctx) (or the model with net.collect_params().reset_ctx(ctx))"
            )


def _float_leaves(
    args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], dict[str | int, Any]]:
    """Replace real-valued top-level inputs by copies that record gradients.

    Gluon feeds ids as float32, so a floating-point input counts as real-valued only when one
    of its values is not an integer; integral float inputs (ids, valid lengths, zero states)
    get no input gradient.
    """
    nd = lazy_mxnet().nd

    def leaf(x: Any) -> Any:
        if not isinstance(x, nd.NDArray) or x.stype != "default":
            return None
        if not np.issubdtype(np.dtype(x.dtype), np.floating):
            return None
        a = x.asnumpy()
        if np.all(np.isfinite(a) & (a == np.round(a))):
            return None
        v = x.copy()
        v.attach_grad()
        return v

    floats: dict[str | int, Any] = {}
    new_args = list(args)
    for i, a in enumerate(args):
        v = leaf(a)
        if v is not None:
            new_args[i] = floats[i] = v
    new_kwargs = dict(kwargs)
    for k, a in kwargs.items():
        v = leaf(a)
        if v is not None:
            new_kwargs[k] = floats[k] = v
    return tuple(new_args), new_kwargs, floats


# -- the session -----------------------------------------------------------------------------
class GluonSession:
    """What a Block and a SymbolBlock session share: backward, conversions, input checks."""

    framework = "gluon"

    def __init__(self, model: Any, mode: Mode, params: Mapping[str, Any]) -> None:
        self.ops: Ops = MXNetOps()
        self.model = model
        self.params = params  # name -> Parameter, collected once per call
        self.train = mode == "train"
        self.retained_backward_is_exact = not self.train

    def check_inputs(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        if kwargs and isinstance(self.model, lazy_mxnet().gluon.SymbolBlock):
            names = [s.name for s in self.model._cached_graph[0]]
            raise InputError(
                f"exported models take positional inputs, in the order {names}; got keyword "
                f"input(s) {sorted(kwargs)}: pass a tuple"
            )
        check_inputs(self.params, args, kwargs)

    def seed(self, seed: int) -> None:
        """Seed MXNet's generators before a training-mode forward (dropout masks)."""
        if self.train:
            lazy_mxnet().random.seed(seed)

    def finish(
        self,
        losses: Any,
        captures: list[Capture],
        floats: dict[str | int, Any],
        unreached: set[int],
        unsplit: Mapping[str, str] | None = None,
    ) -> Forward:
        """Check what ``loss_fn`` returned and package the recorded forward (``unreached``: the
        captures whose output the losses do not reach, see ``Tracer.settle``)."""
        nd = lazy_mxnet().nd
        if not isinstance(losses, nd.NDArray):
            raise LossError(
                f"loss_fn returned {type(losses).__name__}; it must return an mxnet NDArray of "
                "per-sample losses, shape (B,), computed from the model's outputs with mxnet "
                "operations (so that it is recorded), e.g. gluon.loss.SoftmaxCELoss()(out, y)"
            )
        _check_not_reduced(losses, captures)
        return Forward(
            losses=losses.detach(),
            captures=captures,
            float_inputs=floats,
            state=_Recorded(losses, frozenset(unreached)),
            unsplit=dict(unsplit or {}),
        )

    def backward(
        self,
        fwd: Forward,
        cotangent: Any,
        select: list[int],
        *,
        inputs: bool,
        retain: bool,
    ) -> tuple[list[Any | None], dict[str | int, Any]]:
        """``autograd.grad`` of Σ cotangent_i L_i w.r.t. the deltas of ``fwd.captures[k]``, k in
        ``select`` (and the float inputs when ``inputs``) only.

        Every variable is also passed as a head with a zero head gradient, so a lookup or input
        that does not reach the loss gets a zero gradient instead of an MXNet error; lookups the
        forward found unreached (``Tracer.settle``) then come back as None.
        """
        mx = lazy_mxnet()
        recorded: _Recorded = fwd.state
        losses = recorded.losses
        wanted = list(fwd.float_inputs) if inputs else []
        # A second backward of a retained graph asks for exactly the variables of the first:
        # another set corrupts memory in MXNet 1.9.1's fused RNN backward (segfault, double
        # free, wrong numbers; see _Recorded.variables). The extra gradients are dropped.
        asked = (select, wanted)
        if recorded.variables is not None:
            asked = recorded.variables
        recorded.variables = asked if retain else None
        take, keys = asked
        captures = [fwd.captures[k] for k in take]
        variables = [c.handle for c in captures] + [fwd.float_inputs[k] for k in keys]
        zeros = [mx.nd.zeros(v.shape, ctx=v.context, dtype=v.dtype) for v in variables]
        cut = [k in recorded.unreached for k in take]
        n = len(captures)
        if all(cut):  # nothing to differentiate (the losses may not even be recorded)
            grads = [None] * n + zeros[n:]
        else:
            head = mx.nd.array(np.asarray(cotangent), ctx=losses.context, dtype=losses.dtype)
            grads = mx.autograd.grad(
                [losses, *variables],
                variables,
                head_grads=[head, *zeros],
                retain_graph=retain,
                train_mode=self.train,
            )
        by_capture = {k: None if c else g for k, c, g in zip(take, cut, grads[:n], strict=True)}
        by_input = dict(zip(keys, grads[n:], strict=True))
        return [by_capture[k] for k in select], {k: by_input[k] for k in wanted}

    def to_native(self, x: Any, like: Any) -> Any:
        a = np.asarray(x)
        return lazy_mxnet().nd.array(a, ctx=like.context, dtype=a.dtype)


@dataclasses.dataclass
class _Recorded:
    """``Forward.state`` of a Gluon forward: the recorded losses, and the captures (indices)
    whose output they do not reach through the recorded graph."""

    losses: Any
    unreached: frozenset[int]
    #: (capture indices, float-input keys) the last backward that retained the graph asked
    #: for; the next backward of this graph asks for the same (never another set: MXNet 1.9.1's
    #: fused RNN backward corrupts memory when a retained graph is differentiated w.r.t. the
    #: lookups and the float inputs, then w.r.t. the lookups only)
    variables: tuple[list[int], list[str | int]] | None = None


def _check_not_reduced(losses: Any, captures: list[Capture]) -> None:
    """MXNet's ``sum()``/``mean()`` return shape (1,), not a scalar: catch that case."""
    if tuple(losses.shape) != (1,) or not captures:
        return
    if all(1 not in tuple(c.out_shape[:-1]) for c in captures):
        raise LossError(
            "loss_fn returned shape (1,) but no lookup has a batch of 1: it looks reduced over "
            "the batch (MXNet's .sum()/.mean() return shape (1,), not a scalar). Return one "
            "loss per sample, shape (B,) (Gluon losses such as SoftmaxCELoss already do)."
        )


class BlockSession(GluonSession):
    """A Block with every lookup intercepted (inside ``GluonBackend.open``)."""

    def __init__(self, model: Any, mode: Mode, tracer: Tracer, aux: AuxSnapshot) -> None:
        super().__init__(model, mode, tracer.params)
        self.tracer = tracer
        self.aux = aux
        self._warm = False

    def forward(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loss_fn: Callable[[Any], Any],
        *,
        seed: int,
        replace: Replace | None,
    ) -> Forward:
        autograd = lazy_mxnet().autograd
        self._warm_up(args, kwargs)
        self.seed(seed)
        args, kwargs, floats = _float_leaves(args, kwargs)
        unreached: set[int] = set()
        with self.tracer.capturing(replace) as captures, autograd.record(train_mode=self.train):
            losses = loss_fn(self.model(*args, **kwargs))
            if isinstance(losses, lazy_mxnet().nd.NDArray):
                unreached = self.tracer.settle(losses)
        if self.tracer.loops:
            # MXNet's control-flow backward (foreach...) frees the loop's per-iteration states
            # even with retain_graph ("We didn't record the computation for iteration k"): a
            # further backward needs a new forward (re-seeded: exact in training mode too).
            self.retained_backward_is_exact = False
        return self.finish(losses, captures, floats, unreached, self.tracer.unsplit)

    def evaluate(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], loss_fn: Callable[[Any], Any]
    ) -> Any:
        """One unrecorded forward and ``loss_fn`` in the session's mode, nothing captured (the
        tracer passes lookups through outside ``capturing``)."""
        autograd = lazy_mxnet().autograd
        self._warm_up(args, kwargs)
        scope = autograd.train_mode() if self.train else autograd.predict_mode()
        with scope:
            losses = loss_fn(self.model(*args, **kwargs))
        if not isinstance(losses, lazy_mxnet().nd.NDArray):
            raise LossError(
                f"loss_fn returned {type(losses).__name__}; it must return an mxnet NDArray of "
                "per-sample losses, shape (B,)"
            )
        return losses

    def _warm_up(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Finish deferred initialization (unrecorded, predict mode) before any seeding."""
        if self._warm:
            return
        self._warm = True
        if any(p._data is None and p._deferred_init for p in self.params.values()):
            with lazy_mxnet().autograd.predict_mode():
                self.model(*args, **kwargs)
            self.aux.take()  # the statistics it created, before a training pass moves them
        self.tracer.index_params()


# -- state switches --------------------------------------------------------------------------
@contextlib.contextmanager
def _switched(model: Any, tracer: Tracer) -> Iterator[list[Any]]:
    """Route every lookup through embgrad for the duration; restore everything on exit.

    Blocks with a traced graph (exported SymbolBlocks, hybridized blocks that have run) run
    their rewritten graph: their ``_call_cached_op`` is shadowed by an instance attribute. Every
    other HybridBlock runs imperatively: ``_active`` saved and cleared. Yields the graph blocks.
    """
    hybrid = lazy_mxnet().gluon.HybridBlock
    saved: dict[int, tuple[Any, bool]] = {}
    graphs: dict[int, tuple[Any, Any]] = {}  # id -> (block, its own instance attribute, if any)

    def visit(block: Any) -> None:
        if id(block) in saved or id(block) in graphs:
            return
        if has_graph(block):
            graphs[id(block)] = (block, block.__dict__.get("_call_cached_op", _MISSING))
        elif isinstance(block, hybrid):
            saved[id(block)] = (block, block._active)
            block._active = False

    try:
        model.apply(visit)
        for block, _ in graphs.values():
            block.__dict__["_call_cached_op"] = intercept(block, tracer)
        yield [block for block, _ in graphs.values()]
    finally:
        for block, own in graphs.values():
            block.__dict__.pop("_call_cached_op", None)
            if own is not _MISSING:
                block.__dict__["_call_cached_op"] = own
        for block, active in saved.values():
            block._active = active


_MISSING = object()


def _aux_states(params: Mapping[str, Any], graphs: list[Any]) -> list[Any]:
    """Parameters a training-mode pass may update: BatchNorm running statistics (Blocks mark
    them non-differentiable; exported graphs list them as auxiliary states)."""
    aux = {p.name: p for p in params.values() if not p._differentiable}
    for block in graphs:
        for name in block._cached_graph[1].list_auxiliary_states():
            if name in params:
                aux[name] = params[name]
    return list(aux.values())


class AuxSnapshot:
    """In training mode, copies of the auxiliary states ``aux`` (BatchNorm running statistics,
    which MXNet updates in a training-mode backward), written back by :meth:`restore`.

    A parameter whose shape is still deferred has no value to copy when the model is opened;
    :meth:`take` is called again once the session's warm-up forward has initialized it."""

    def __init__(self, aux: list[Any], train: bool) -> None:
        self.aux = aux if train else []
        self.saved: dict[int, tuple[Any, list[Any]]] = {}
        self.take()

    def take(self) -> None:
        """Copy every auxiliary state that has a value and is not copied yet."""
        for p in self.aux:
            if id(p) not in self.saved and p._data is not None and p._stype == "default":
                self.saved[id(p)] = (p, [a.copy() for a in p.list_data()])

    def restore(self) -> None:
        for p, copies in self.saved.values():
            for dst, src in zip(p.list_data(), copies, strict=True):
                dst[:] = src


@contextlib.contextmanager
def aux_restored(aux: list[Any], train: bool) -> Iterator[AuxSnapshot]:
    """:class:`AuxSnapshot` of ``aux``, restored on exit."""
    snapshot = AuxSnapshot(aux, train)
    try:
        yield snapshot
    finally:
        snapshot.restore()


def _all_params(model: Any) -> dict[str, Any]:
    """Name -> Parameter of every block, as ``collect_params()`` gives them, without its
    per-block container check (a millisecond per call on a small model)."""
    params: dict[str, Any] = {}

    def visit(block: Any) -> None:
        params.update((p.name, p) for p in block.params.values())

    model.apply(visit)
    return params


def _refuse_numpy_interface(params: Mapping[str, Any]) -> None:
    """UnsupportedModelError under MXNet's numpy interface (``npx.set_np()``, ``mx.np`` arrays):
    its lookups (``npx.embedding``) and arrays are not those embgrad intercepts, so it would
    capture nothing and say so falsely. Checked before the model is touched."""
    mx = lazy_mxnet()
    active = bool(mx.util.is_np_array())
    np_params = [
        p.name
        for p in params.values()
        if p._data is not None and isinstance(p._data[0], mx.numpy.ndarray)
    ]
    if active or np_params:
        why = (
            "MXNet's numpy interface is active (npx.set_np() was called)"
            if active
            else f"the model's parameters are mx.np arrays ({np_params[0]}...): it was built "
            "under npx.set_np()"
        )
        raise UnsupportedModelError(
            f"{why}. embgrad's Gluon backend supports the classic NDArray interface only "
            "(mx.nd arrays, F.Embedding); under the numpy interface (mx.np arrays, "
            "npx.embedding) it cannot intercept the lookups. Build and call the model without "
            "npx.set_np() (or call npx.reset_np() first), with mx.nd.array inputs."
        )


# -- the backend -----------------------------------------------------------------------------
class GluonBackend(Backend):
    """``mxnet.gluon.Block`` models, hybridized or not, and exported ``SymbolBlock``s."""

    framework = "gluon"
    extra = "gluon"
    padding_masked_by = ("gluonnlp",)

    @staticmethod
    def accepts(model: Any) -> bool:
        mx = sys.modules.get("mxnet")
        gluon = getattr(mx, "gluon", None)
        return gluon is not None and isinstance(model, gluon.Block)

    @staticmethod
    def array_ops(array_type: type) -> Ops | None:
        mx = sys.modules.get("mxnet")
        nd = getattr(mx, "nd", None)
        return MXNetOps() if nd is not None and issubclass(array_type, nd.NDArray) else None

    @contextlib.contextmanager
    def open(self, model: Any, *, mode: Mode) -> Iterator[Session]:
        with GLUON_LOCK, contextlib.ExitStack() as stack:
            params = _all_params(model)
            _refuse_numpy_interface(params)
            tracer = Tracer(model, params)
            graphs = stack.enter_context(_switched(model, tracer))
            stack.enter_context(patched(tracer))
            aux = _aux_states(tracer.params, graphs)
            snapshot = stack.enter_context(aux_restored(aux, mode == "train"))
            yield BlockSession(model, mode, tracer, snapshot)

    def array(self, model: Any, a: Any) -> Any:
        arr = np.asarray(a)
        contexts = _param_contexts(_all_params(model))
        ctx = sorted(contexts, key=str)[0] if contexts else lazy_mxnet().cpu()
        return lazy_mxnet().nd.array(arr, ctx=ctx, dtype=arr.dtype)
