"""Gluon lookup interception: ``mx.nd.Embedding`` replaced, every call recorded as a Capture.

In imperative mode every lookup goes through ``mx.nd.Embedding``: ``nn.Embedding`` (also with
``sparse_grad=True``), ``contrib.nn.SparseEmbedding``, gluonnlp's direct ``F.Embedding`` on
position weights and its sampled-softmax decoders. While a forward is recorded, :func:`patched`
replaces that function by a wrapper that validates the ids (before the real lookup: MXNet would
silently clip them), calls the real lookup and returns ``out + delta`` for a zero ``delta`` with
``attach_grad()``. Forward hooks cannot do this: Gluon discards their return values.

Naming (who looked up what) lives in ``gluon_sites``; the forward's record, from which tied
tables and reach are settled after the losses, in ``gluon_forward``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

from ..core.contract import Capture
from ..core.site import CallSite
from ..errors import InputError
from .gluon_arrays import dense, lazy_mxnet, validate_ids
from .gluon_forward import ForwardRecord
from .gluon_sites import Site, calling_block, lookup_role

__all__ = ["Tracer", "patched"]


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


class Tracer(ForwardRecord):
    """Stands in for ``mx.nd.Embedding`` while a forward is recorded; one Capture per call.

    Also names the lookups found in rewritten symbol graphs (``gluon_symbol.intercept``).
    """

    def wrap(self, real: Callable[..., Any], kind: str = "Embedding") -> Callable[..., Any]:
        """A stand-in for a lookup function: ``kind`` is ``"Embedding"`` (``mx.nd.Embedding``,
        ``mx.nd.contrib.SparseEmbedding``: (data, weight)), ``"take"`` (``F.take(table, ids)``
        along axis 0) or ``"gather_nd"`` (``F.gather_nd(table, ids[None])``). ``take`` and
        ``gather_nd`` count as lookups only on a table Parameter's own array."""

        @functools.wraps(real)
        def embedding(*args: Any, **kwargs: Any) -> Any:
            if not self.capturing_here() or self._quiet:
                return real(*args, **kwargs)
            return self.lookup(real, sys._getframe(1), args, kwargs, kind)

        return embedding

    def lookup(
        self,
        real: Callable[..., Any],
        frame: FrameType,
        args: tuple[Any, ...],
        kwargs: Any,
        kind: str = "Embedding",
    ) -> Any:
        """One imperative lookup: validate, look up, return ``out + delta``, record it."""
        nd = lazy_mxnet().nd
        if kind == "Embedding":
            ids, weight = _arg(args, kwargs, 0, "data"), _arg(args, kwargs, 1, "weight")
        else:
            weight, ids = (
                _arg(args, kwargs, 0, "a" if kind == "take" else "data"),
                _arg(args, kwargs, 1, "indices"),
            )
        if not isinstance(ids, nd.NDArray) or not isinstance(weight, nd.NDArray):
            return real(*args, **kwargs)
        if kind != "Embedding" and not self._plain_rows(kind, weight, ids, args, kwargs):
            return real(*args, **kwargs)
        owner = calling_block(frame)
        param, local = self._table(weight, owner)
        site = self._site(owner, param, local)
        if kind != "Embedding":
            site.module = f"F.{kind}"
            ids = ids.reshape(ids.shape[1:]) if kind == "gather_nd" else ids
        vocab, dim = int(weight.shape[0]), int(weight.shape[-1])
        validate_ids(ids, vocab, site.name, site.table)
        out = self.substitute(site, real(*args, **kwargs))
        delta = nd.zeros(out.shape, ctx=out.context, dtype=out.dtype)
        delta.attach_grad()
        self.add(site, ids, delta, vocab, dim, output=out.detach(), weight=dense(weight))
        return out + delta

    def _plain_rows(
        self, kind: str, weight: Any, ids: Any, args: tuple[Any, ...], kwargs: Any
    ) -> bool:
        """Whether a ``take``/``gather_nd`` call gathers whole rows of a table Parameter's own
        array (2-D), i.e. is a lookup: ``take`` along axis 0, ``gather_nd`` with indices of
        shape (1, ...)."""
        hit = self.by_id.get(id(weight))
        if hit is None or hit[0] is not weight or len(weight.shape) != 2:
            return False
        if kind == "take":
            axis = _arg(args, kwargs, 2, "axis")
            return axis is None or int(axis) == 0
        return len(ids.shape) >= 2 and int(ids.shape[0]) == 1

    def substitute(self, site: Site, out: Any) -> Any:
        """``replace(name, role, out)``'s substitute for ``out`` (checked, detached), or ``out``."""
        if self.replace is None:
            return out
        sub = self.replace(site.name, lookup_role(site.owner, site.name, site.table), out.detach())
        if sub is None:
            return out
        nd = lazy_mxnet().nd
        if not isinstance(sub, nd.NDArray) or sub.shape != out.shape or sub.dtype != out.dtype:
            got = f"{sub.shape} {sub.dtype}" if isinstance(sub, nd.NDArray) else type(sub).__name__
            raise InputError(
                f"replace() for lookup {site.name!r} returned {got}; it must return None or an "
                f"NDArray of the output's shape {out.shape} and dtype {out.dtype}"
            )
        return sub.detach()

    def add(
        self,
        site: Site,
        ids: Any,
        delta: Any,
        vocab: int,
        dim: int,
        graph_tied: bool | None = None,
        output: Any = None,
        weight: Any = None,
        graph_cut: bool = False,
    ) -> None:
        """Record one lookup (its output's gradient will be the gradient w.r.t. ``delta``).

        ``graph_tied``: a graph lookup's table is used otherwise in its graph (None: imperative).
        ``graph_cut``: a graph lookup's output does not reach its graph's outputs (BlockGrad).

        ``output``/``weight`` are the lookup's values and its table (detached); when a graph
        lookup gives none, the table comes from the Parameter and the output is its gather.
        """
        if weight is None and site.param is not None:
            with self.quiet():
                weight = dense(site.param.list_data()[0])
        if output is None and weight is not None:
            output = lazy_mxnet().nd.take(weight.as_in_context(ids.context), ids, axis=0)
        self.captures.append(
            Capture(
                site=CallSite(
                    name=site.name,
                    role=lookup_role(site.owner, site.name, site.table),
                    module=site.module,
                    table=site.table,
                    vocab_size=vocab,
                    dim=dim,
                    owner=site.owner,
                    tied=bool(graph_tied),  # settled after the losses: see settle()
                ),
                ids=ids.copy(),  # the caller may refill its ids before reading table rows
                out_shape=tuple(delta.shape),
                handle=delta,
                output=output,
                weight=weight,
            )
        )
        self._sites.append((self.captures[-1], site))
        if graph_cut:
            self.cut.add(len(self.captures) - 1)


def _model_modules(model: Any) -> list[Any]:
    """The Python modules that define the classes of the model's blocks (where a user may
    have written ``from mxnet.ndarray import Embedding``)."""
    found: dict[str, Any] = {}

    def visit(block: Any) -> None:
        for cls in type(block).__mro__:
            mod = sys.modules.get(cls.__module__)
            if mod is not None and not cls.__module__.startswith(("mxnet", "builtins")):
                found.setdefault(cls.__module__, mod)

    model.apply(visit)
    return list(found.values())


@contextlib.contextmanager
def patched(tracer: Tracer) -> Iterator[None]:
    """Replace the lookup functions by the tracer's wrappers: ``mx.nd.Embedding`` (where
    ``F.Embedding`` resolves), ``mx.nd.contrib.SparseEmbedding``, ``mx.nd.take`` and
    ``mx.nd.gather_nd`` — in ``mx.nd``/``mx.nd.op``/``mx.nd.contrib`` and wherever the modules
    defining the model's blocks imported them by name (``from mxnet.ndarray import
    Embedding``)."""
    mx = lazy_mxnet()
    reals = {
        id(mx.nd.Embedding): (mx.nd.Embedding, "Embedding"),
        id(mx.nd.contrib.SparseEmbedding): (mx.nd.contrib.SparseEmbedding, "Embedding"),
        id(mx.nd.take): (mx.nd.take, "take"),
        id(mx.nd.gather_nd): (mx.nd.gather_nd, "gather_nd"),
    }
    wrappers = {key: tracer.wrap(real, kind) for key, (real, kind) in reals.items()}
    swapped: list[tuple[Any, str, Any]] = []  # (module, attribute, the real function)
    known = [(m, a) for m in (mx.nd, mx.nd.op) for a in ("Embedding", "take", "gather_nd")]
    for mod, attr in [*known, (mx.nd.contrib, "SparseEmbedding")]:
        value = getattr(mod, attr, None)
        if id(value) in reals and reals[id(value)][0] is value:
            swapped.append((mod, attr, value))
    for mod in _model_modules(tracer.model):  # the user's own modules: small namespaces
        swapped += [
            (mod, attr, value)
            for attr, value in list(vars(mod).items())
            if id(value) in reals and reals[id(value)][0] is value
        ]
    param_cls = mx.gluon.Parameter
    fetchers = {k: param_cls.__dict__[k] for k in ("data", "list_data")}
    try:
        for mod, attr, value in swapped:
            setattr(mod, attr, wrappers[id(value)])
        for k, fn in fetchers.items():
            setattr(param_cls, k, tracer.watch(fn))
        yield
    finally:
        for k, fn in fetchers.items():
            setattr(param_cls, k, fn)
        for mod, attr, value in swapped:
            setattr(mod, attr, value)
