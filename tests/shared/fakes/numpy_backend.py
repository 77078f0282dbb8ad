"""A tiny numpy "framework" and its embgrad backend, to test the core with no framework at all.

* :class:`Tensor` is a minimal reverse-mode autodiff over numpy arrays (add, sub, mul, tanh,
  sum, mean, reshape, transpose, with broadcasting); :func:`vjp` is its backward.  Every rule is
  written out by hand; ``tests/core/test_core_fake.py`` checks them against finite differences
  and against closed forms.
* :class:`FakeModel` is made of :class:`FakeEmbedding` tables (numpy arrays).  Its forward looks
  the ids up (``(B, T)`` or, with ``layout="TB"``, ``(T, B)`` ids), optionally adds a position
  table looked up with broadcast ids ``(T,)`` or ``(1, T)``, optionally subtracts the batch mean
  (``couple=True``: samples interact, like BatchNorm in training mode), applies a seeded dropout
  in training mode, and multiplies by an optional float input ``x`` (B, D). ``detach=`` cuts a
  lookup's output off the graph (the losses then do not reach it: backward returns None).
* :class:`FakeBackend` / :class:`FakeSession` implement :class:`embgrad.core.contract.Backend` and
  the ``Session`` protocol (checked by mypy: see ``_SESSION_CHECK`` at the bottom).  The model
  records every open/close, forward seed and backward call, so tests can count probes and check
  that the model is restored after errors.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from embgrad.core.contract import Backend, Capture, Forward, Mode, Replace, Session
from embgrad.core.ops import NumpyOps, Ops
from embgrad.core.site import CallSite, guess_role
from embgrad.errors import InputError, LossError

Vjp = Callable[[np.ndarray], np.ndarray]


# -- the autodiff --------------------------------------------------------------------------------
def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` down to ``shape`` (the inverse of numpy broadcasting)."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for a, n in enumerate(shape):
        if n == 1 and g.shape[a] != 1:
            g = g.sum(axis=a, keepdims=True)
    return g


class Tensor:
    """A numpy array with the backward rules of the operations that produced it."""

    __array_priority__ = 1000  # ``ndarray * Tensor`` defers to Tensor.__rmul__

    def __init__(self, value: Any, parents: Sequence[tuple[Tensor, Vjp]] = ()) -> None:
        self.value = np.asarray(value)
        self.parents = tuple(parents)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def ndim(self) -> int:
        return int(self.value.ndim)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.value.dtype

    def _lift(self, other: Any) -> Tensor:
        if isinstance(other, Tensor):
            return other
        arr = np.asarray(other)
        return Tensor(arr.astype(self.dtype) if arr.dtype.kind in "fiub" else arr)

    def __add__(self, other: Any) -> Tensor:
        o = self._lift(other)
        return Tensor(
            self.value + o.value,
            [
                (self, lambda g: _unbroadcast(g, self.shape)),
                (o, lambda g: _unbroadcast(g, o.shape)),
            ],
        )

    __radd__ = __add__

    def __neg__(self) -> Tensor:
        return Tensor(-self.value, [(self, lambda g: -g)])

    def __sub__(self, other: Any) -> Tensor:
        return self + (-self._lift(other))

    def __rsub__(self, other: Any) -> Tensor:
        return self._lift(other) - self

    def __mul__(self, other: Any) -> Tensor:
        o = self._lift(other)
        a, b = self.value, o.value
        return Tensor(
            a * b,
            [
                (self, lambda g: _unbroadcast(g * b, self.shape)),
                (o, lambda g: _unbroadcast(g * a, o.shape)),
            ],
        )

    __rmul__ = __mul__

    def tanh(self) -> Tensor:
        t = np.tanh(self.value)
        return Tensor(t, [(self, lambda g: g * (1 - t * t))])

    def sum(self, axis: int | tuple[int, ...] | None = None) -> Tensor:
        axes = tuple(range(self.ndim)) if axis is None else np.atleast_1d(axis).tolist()
        axes = tuple(a % self.ndim for a in axes)

        def back(g: np.ndarray) -> np.ndarray:
            return np.broadcast_to(np.expand_dims(g, axes), self.shape).copy()

        return Tensor(self.value.sum(axis=axes), [(self, back)])

    def mean(self, axis: int, keepdims: bool = False) -> Tensor:
        n = self.shape[axis]
        s = self.sum(axis)
        out = s * (1.0 / n)
        return out.reshape(np.expand_dims(out.value, axis).shape) if keepdims else out

    def reshape(self, shape: tuple[int, ...]) -> Tensor:
        return Tensor(self.value.reshape(shape), [(self, lambda g: g.reshape(self.shape))])

    def transpose(self, axes: tuple[int, ...]) -> Tensor:
        inv = tuple(int(a) for a in np.argsort(axes))
        return Tensor(self.value.transpose(axes), [(self, lambda g: g.transpose(inv))])


def vjp(
    root: Tensor, cotangent: np.ndarray, targets: Sequence[Tensor], *, unreached: Any = "zeros"
) -> list[Any]:
    """Gradients of ``sum(cotangent * root)`` w.r.t. each target: for a target ``root`` does
    not depend on through the graph, zeros (``unreached="zeros"``) or ``unreached`` itself
    (e.g. None, as the ``Session`` protocol wants)."""
    order: list[Tensor] = []
    seen: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:  # iterative post-order: parents before children
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p, _ in node.parents)
    grads: dict[int, np.ndarray] = {id(root): np.asarray(cotangent, dtype=root.dtype)}
    for node in reversed(order):
        g = grads.get(id(node))
        if g is None:
            continue
        for parent, rule in node.parents:
            d = rule(g)
            grads[id(parent)] = grads[id(parent)] + d if id(parent) in grads else d
    return [
        grads[id(t)]
        if id(t) in grads
        else (np.zeros_like(t.value) if isinstance(unreached, str) else unreached)
        for t in targets
    ]


# -- the "framework": embedding tables and a model -----------------------------------------------
class FakeEmbedding:
    """One embedding table (V, D) with an optional padding row."""

    def __init__(
        self,
        name: str,
        vocab: int,
        dim: int,
        rng: np.random.Generator,
        dtype: Any,
        *,
        padding_idx: int | None = None,
        role: str | None = None,
    ) -> None:
        self.name = name
        self.weight = rng.normal(size=(vocab, dim)).astype(dtype)
        self.padding_idx = padding_idx
        self.role = role or guess_role(name)


class WordEmbedding(FakeEmbedding):
    pass


class PositionEmbedding(FakeEmbedding):
    pass


class _Recorder:
    """Captures every lookup of one forward; the output handed on is a fresh leaf Tensor."""

    def __init__(self, replace: Replace | None) -> None:
        self.replace = replace
        self.captures: list[Capture] = []
        self.calls: Counter[str] = Counter()

    def lookup(self, emb: FakeEmbedding, ids: np.ndarray) -> Tensor:
        out = emb.weight[ids]
        self.calls[emb.name] += 1
        n = self.calls[emb.name]
        name = emb.name if n == 1 else f"{emb.name}#{n}"
        if self.replace is not None:
            sub = self.replace(name, emb.role, out.copy())
            if sub is not None:
                if (
                    not isinstance(sub, np.ndarray)
                    or sub.shape != out.shape
                    or sub.dtype != out.dtype
                ):
                    raise InputError(
                        f"replace() for lookup {name!r} must return None or an array of shape "
                        f"{out.shape} and dtype {out.dtype}"
                    )
                out = sub
        leaf = Tensor(out.copy())
        site = CallSite(
            name=name,
            role=emb.role,
            module=type(emb).__name__,
            table=f"{emb.name}.weight",
            vocab_size=int(emb.weight.shape[0]),
            dim=int(emb.weight.shape[1]),
            owner=emb,
            padding_idx=emb.padding_idx,
        )
        self.captures.append(
            Capture(
                site=site,
                ids=ids,
                out_shape=tuple(out.shape),
                handle=leaf,
                output=out.copy(),
                weight=emb.weight,
            )
        )
        return leaf


class FakeModel:
    """``model(ids, x=None) -> h`` (B, T, D) as a :class:`Tensor` (see the module docstring).

    Args:
        vocab, dim: the word table's shape.
        layout: ``"BT"`` (ids (B, T)) or ``"TB"`` (ids (T, B): batch axis 1).
        position: None, ``"1d"`` (position ids (T,)) or ``"2d"`` (position ids (1, T)).
        couple: subtract the batch mean of the embeddings (samples interact).
        dropout: drop probability in training mode (masks drawn from the forward's seed).
        padding_idx: the word table's padding row.
        lookups: False for a model that looks nothing up (it needs ``x``).
        output_lookup: also look the ids up in a table of role ``"output"``.
        retained_exact: the session's ``retained_backward_is_exact``.
        detach: ``"word"`` / ``"position"``: that lookup's output is cut off the graph (like
            ``.detach()`` / ``no_grad`` / ``BlockGrad``): the losses do not reach it.
        fold: look the word ids up flattened, (B·T,) (or (T·B,) with ``layout="TB"``), as
            ELMo's character CNN does (a batch folded into the lookup's leading axis).
    """

    def __init__(
        self,
        vocab: int = 7,
        dim: int = 3,
        *,
        layout: str = "BT",
        position: str | None = None,
        couple: bool = False,
        dropout: float = 0.0,
        padding_idx: int | None = None,
        dtype: Any = np.float64,
        lookups: bool = True,
        output_lookup: bool = False,
        retained_exact: bool = True,
        detach: str | None = None,
        fold: bool = False,
        seed: int = 0,
    ) -> None:
        assert layout in ("BT", "TB") and position in (None, "1d", "2d")
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.word = WordEmbedding(
            "embeddings.word_embeddings", vocab, dim, rng, dtype, padding_idx=padding_idx
        )
        self.position = (
            PositionEmbedding("embeddings.position_embeddings", 16, dim, rng, dtype)
            if position
            else None
        )
        self.decoder = (
            FakeEmbedding("decoder", vocab, dim, rng, dtype, role="output")
            if output_lookup
            else None
        )
        self.layout = layout
        self.position_kind = position
        self.couple = couple
        self.dropout = dropout
        self.lookups = lookups
        self.retained_exact = retained_exact
        self.detach = detach
        self.fold = fold
        self.training = False
        self.events: list[str] = []  # "open:<mode>" / "close", from FakeBackend.open
        self.seeds: list[int] = []  # the seed of every captured forward
        self.counts: Counter[str] = Counter()  # "forward" / "backward" calls of sessions
        self._recorder: _Recorder | None = None
        self._rng: np.random.Generator | None = None

    def _lookup(self, emb: FakeEmbedding, ids: np.ndarray) -> Tensor:
        if self._recorder is None:
            return Tensor(emb.weight[ids])
        return self._recorder.lookup(emb, ids)

    def __call__(self, ids: np.ndarray, x: Tensor | np.ndarray | None = None) -> Tensor:
        if not self.lookups:
            assert x is not None
            xt = x if isinstance(x, Tensor) else Tensor(x)
            return xt.reshape((xt.shape[0], 1, xt.shape[1]))
        if self.fold:  # the batch folded into the lookup's leading axis: ids (B·T,)
            flat = self._lookup(self.word, ids.reshape(-1))
            h = flat.reshape((*ids.shape, flat.shape[-1]))
        else:
            h = self._lookup(self.word, ids)
        if self.detach == "word":
            h = Tensor(h.value)
        if self.decoder is not None:
            h = h + self._lookup(self.decoder, ids) * 0.5
        if self.layout == "TB":
            h = h.transpose((1, 0, 2))
        batch, length = h.shape[0], h.shape[1]
        if self.position is not None:
            pos = np.arange(length) if self.position_kind == "1d" else np.arange(length)[None]
            p = self._lookup(self.position, pos)
            h = h + (Tensor(p.value) if self.detach == "position" else p)
        if self.couple:
            h = h - h.mean(axis=0, keepdims=True)
        if self.training and self.dropout > 0:
            rng = self._rng if self._rng is not None else np.random.default_rng()
            keep = rng.random(h.shape) >= self.dropout
            h = h * (keep / (1.0 - self.dropout))
        if x is not None:
            xt = x if isinstance(x, Tensor) else Tensor(x)
            h = h * xt.reshape((batch, 1, xt.shape[1]))
        return h


# -- the backend ---------------------------------------------------------------------------------
class _Graph:
    """The losses of one forward; freed by a backward without ``retain`` (like torch)."""

    def __init__(self, losses: Tensor) -> None:
        self.losses = losses
        self.freed = False


class FakeSession:
    """A :class:`FakeModel` opened for capture: implements the ``Session`` protocol."""

    framework = "fake"

    def __init__(self, model: FakeModel, *, retained_backward_is_exact: bool = True) -> None:
        self.model = model
        self.ops: Ops = NumpyOps()
        self.retained_backward_is_exact = retained_backward_is_exact

    def check_inputs(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        for key, x in [*enumerate(args), *kwargs.items()]:
            if x is not None and not isinstance(x, np.ndarray):
                raise InputError(f"input {key!r} is a {type(x).__name__}, not a numpy array")

    def evaluate(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], loss_fn: Callable[[Any], Any]
    ) -> Any:
        """The losses of one forward (the fake records no graph apart from capturing)."""
        return self.forward(args, kwargs, loss_fn, seed=0, replace=None).losses

    def forward(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        loss_fn: Callable[[Any], Any],
        *,
        seed: int,
        replace: Replace | None,
    ) -> Forward:
        floats: dict[str | int, Any] = {}

        def leaf(key: str | int, x: Any) -> Any:
            if isinstance(x, np.ndarray) and x.dtype.kind == "f":
                floats[key] = Tensor(x.copy())
                return floats[key]
            return x

        new_args = tuple(leaf(i, x) for i, x in enumerate(args))
        new_kwargs = {k: leaf(k, x) for k, x in kwargs.items()}
        model = self.model
        recorder = _Recorder(replace)
        model.counts["forward"] += 1
        model.seeds.append(seed)
        model._recorder, model._rng = recorder, np.random.default_rng(seed)
        try:
            outputs = model(*new_args, **new_kwargs)
        finally:
            model._recorder, model._rng = None, None
        losses = loss_fn(outputs)
        if not isinstance(losses, Tensor):
            raise LossError(f"loss_fn returned {type(losses).__name__}, not a fake Tensor")
        return Forward(
            losses=losses.value.copy(),
            captures=recorder.captures,
            float_inputs=floats,
            state=_Graph(losses),
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
        graph: _Graph = fwd.state
        if graph.freed:
            raise RuntimeError("backward through a graph already freed (retain=False)")
        cot = np.asarray(cotangent)
        assert cot.dtype == np.float64 and cot.shape == graph.losses.shape, (cot.dtype, cot.shape)
        self.model.counts["backward"] += 1
        keys = list(fwd.float_inputs) if inputs else []
        lookups = vjp(graph.losses, cot, [fwd.captures[k].handle for k in select], unreached=None)
        floats = vjp(graph.losses, cot, [fwd.float_inputs[k] for k in keys])
        graph.freed = not retain
        return lookups, dict(zip(keys, floats, strict=True))

    def to_native(self, x: Any, like: Any) -> Any:
        return np.asarray(x)


class FakeBackend(Backend):
    """Backend for :class:`FakeModel`; ``open`` records itself in ``model.events``."""

    framework: ClassVar[str] = "fake"
    extra: ClassVar[str] = "fake"

    @staticmethod
    def accepts(model: Any) -> bool:
        return isinstance(model, FakeModel)

    @contextlib.contextmanager
    def open(self, model: Any, *, mode: Mode) -> Iterator[Session]:
        was = model.training
        model.events.append(f"open:{mode}")
        try:
            model.training = mode == "train"
            yield FakeSession(model, retained_backward_is_exact=model.retained_exact)
        finally:
            model.training = was
            model._recorder = None
            model.events.append("close")

    def array(self, model: Any, a: Any) -> Any:
        return np.asarray(a)


# -- oracles: no embgrad involved ----------------------------------------------------------------
def trace(
    model: FakeModel,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    loss_fn: Callable[[Any], Any],
    *,
    seed: int = 0,
    replace: Replace | None = None,
) -> tuple[Tensor, list[Capture], dict[str | int, Tensor]]:
    """One forward outside any session: losses, lookups, float-input leaves."""
    floats: dict[str | int, Tensor] = {}

    def leaf(key: str | int, x: Any) -> Any:
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            floats[key] = Tensor(x.copy())
            return floats[key]
        return x

    rec = _Recorder(replace)
    model._recorder, model._rng = rec, np.random.default_rng(seed)
    try:
        out = model(
            *(leaf(i, x) for i, x in enumerate(args)), **{k: leaf(k, v) for k, v in kwargs.items()}
        )
    finally:
        model._recorder, model._rng = None, None
    return loss_fn(out), rec.captures, floats


#: mypy checks that FakeSession matches the Session protocol structurally.
_SESSION_CHECK: Session = FakeSession(FakeModel())
