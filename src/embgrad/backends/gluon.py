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
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..core.contract import Backend, Mode, Session
from ..core.ops import Ops
from .gluon_arrays import lazy_mxnet
from .gluon_inputs import param_contexts
from .gluon_ops import MXNetOps
from .gluon_session import BlockSession, GluonSession
from .gluon_state import all_params, aux_restored, aux_states, refuse_numpy_interface, switched
from .gluon_trace import Tracer, patched

__all__ = ["GLUON_LOCK", "GluonBackend", "GluonSession", "MXNetOps"]

#: Held by every embgrad call on a Gluon model, for the whole call (see "Threads" above).
#: Re-entrant, so a call made from inside another one in the same thread does not deadlock.
GLUON_LOCK = threading.RLock()


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
            params = all_params(model)
            refuse_numpy_interface(params)
            tracer = Tracer(model, params)
            graphs = stack.enter_context(switched(model, tracer))
            stack.enter_context(patched(tracer))
            aux = aux_states(tracer.params, graphs)
            snapshot = stack.enter_context(aux_restored(aux, mode == "train"))
            yield BlockSession(model, mode, tracer, snapshot)

    def array(self, model: Any, a: Any) -> Any:
        arr = np.asarray(a)
        contexts = param_contexts(all_params(model))
        ctx = sorted(contexts, key=str)[0] if contexts else lazy_mxnet().cpu()
        return lazy_mxnet().nd.array(arr, ctx=ctx, dtype=arr.dtype)
