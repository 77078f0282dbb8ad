"""Gluon state switches, each restored on exit: imperative execution of hybridized blocks (or
their rewritten graphs), auxiliary states (BatchNorm running statistics), and the refusal of
the numpy interface."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import UnsupportedModelError
from .gluon_arrays import lazy_mxnet
from .gluon_compiled import has_graph
from .gluon_symbol import intercept
from .gluon_trace import Tracer


@contextlib.contextmanager
def switched(model: Any, tracer: Tracer) -> Iterator[list[Any]]:
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


def aux_states(params: Mapping[str, Any], graphs: list[Any]) -> list[Any]:
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


def all_params(model: Any) -> dict[str, Any]:
    """Name -> Parameter of every block, as ``collect_params()`` gives them, without its
    per-block container check (a millisecond per call on a small model)."""
    params: dict[str, Any] = {}

    def visit(block: Any) -> None:
        params.update((p.name, p) for p in block.params.values())

    model.apply(visit)
    return params


def refuse_numpy_interface(params: Mapping[str, Any]) -> None:
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
