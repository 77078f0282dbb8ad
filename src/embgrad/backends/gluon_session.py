"""Gluon sessions: the recorded forward with every lookup captured, and the backward w.r.t. the
lookups' deltas (``autograd.grad`` in the forward's mode; see ``gluon.py`` for why)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..core.contract import Capture, Forward, Mode, Replace
from ..core.ops import Ops
from ..errors import InputError, LossError
from .gluon_arrays import lazy_mxnet
from .gluon_inputs import check_inputs, float_leaves
from .gluon_ops import MXNetOps
from .gluon_state import AuxSnapshot
from .gluon_trace import Tracer


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
        args, kwargs, floats = float_leaves(args, kwargs)
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
