"""One recorded Gluon forward, and which of its tables are tied (found from what ran).

Tied tables are found from what ran (:meth:`ForwardRecord.settle`, after the losses): a table is
tied when, in this forward, its Parameter reaches the losses other than through lookups — in the
graph autograd recorded (``autograd.get_symbol(losses)``), or inside a rewritten symbol graph.
A block that merely registers the Parameter (gluonnlp's ``one_step_ahead_decoder``, never
called in training) does not make it tied. A frozen table (``grad_req='null'``, gluonnlp's
position constants) is not recorded by autograd: for it, ``Parameter.data``/``list_data`` are
watched during the forward, and it is tied when a block (or the loss) fetched it whose call
made no lookup on it.

:class:`ForwardRecord` is what the tracer (``gluon_trace``) records into: the captures and their
sites, per thread and per forward (:meth:`ForwardRecord.capturing`), the tables' fetches, views
and markers, and :meth:`ForwardRecord.settle`, which decides ``tied`` and reach after the losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..core.contract import Capture, Replace
from .gluon_arrays import lazy_mxnet
from .gluon_graph import fed_elsewhere, reaching, unknown_tables, unsplit_lookups
from .gluon_sites import Site, Sites, calling_block

__all__ = ["ForwardRecord"]


class ForwardRecord(Sites):
    """One forward's lookups and the other uses of their tables; ``tied`` settled after it."""

    def __init__(self, model: Any, params: Mapping[str, Any]) -> None:
        super().__init__(model, params)
        self.captures: list[Capture] = []
        self.thread: int | None = None
        self.replace: Replace | None = None  # the current forward's replace= (see capturing)
        #: Parameter names that reach outputs other than through lookups, per forward
        self.used_elsewhere: set[str] = set()
        self._sites: list[tuple[Capture, Site]] = []  # this forward's captures and their sites
        #: Parameter name -> ids of the blocks (0: none) that fetched its data in this forward
        self.fetched: dict[str, set[int]] = {}
        #: this forward's captures (indices) cut off inside their own graph (see add)
        self.cut: set[int] = set()
        #: a graph with control flow ran: its backward can run once per forward
        self.loops = False
        #: lookups seen in this forward and not split per sample: description -> why
        self.unsplit: dict[str, str] = {}
        #: id(frozen table array) -> (array, its recorded view, Parameter), this forward
        self.views: dict[int, tuple[Any, Any, Any]] = {}
        #: graph outputs' markers and the tables they use other than by lookups (see mark)
        self.markers: list[tuple[Any, frozenset[str]]] = []
        self._quiet = False

    @contextlib.contextmanager
    def capturing(self, replace: Replace | None) -> Iterator[list[Capture]]:
        """Capture this thread's lookups for one forward, substituting outputs by ``replace``."""
        self.captures, self.counts = [], {}
        self.used_elsewhere, self._sites, self.fetched, self.cut = set(), [], {}, set()
        for _, view, _ in self.views.values():
            self.by_id.pop(id(view), None)
        self.unsplit, self.views, self.markers = {}, {}, []
        self.thread = threading.get_ident()
        self.replace = replace
        try:
            yield self.captures
        finally:
            self.thread = None
            self.replace = None

    def capturing_here(self) -> bool:
        return self.thread == threading.get_ident()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """embgrad's own Parameter fetches (graph inputs, table values) are not model uses."""
        self._quiet, before = True, self._quiet
        try:
            yield
        finally:
            self._quiet = before

    def watch(self, real: Callable[..., Any]) -> Callable[..., Any]:
        """``Parameter.data``/``list_data`` recording which block fetched what (frozen tables)."""

        @functools.wraps(real)
        def fetch(param: Any, *args: Any, **kwargs: Any) -> Any:
            out = real(param, *args, **kwargs)
            if not self._quiet and self.capturing_here():
                owner = calling_block(sys._getframe(1))
                self.fetched.setdefault(param.name, set()).add(id(owner) if owner else 0)
                if _frozen_table(param):
                    out = (
                        [self._view(param, a) for a in out]
                        if isinstance(out, list)
                        else (self._view(param, out))
                    )
            return out

        return fetch

    def mark(self, out: Any, tables: frozenset[str]) -> Any:
        """``out + 0`` through a fresh variable: :meth:`settle` counts ``tables`` (used other
        than by lookups to compute ``out``) as used when the losses reach that variable."""
        nd = lazy_mxnet().nd
        marker = nd.zeros(out.shape, ctx=out.context, dtype=out.dtype)
        marker.attach_grad()
        self.markers.append((marker, tables))
        return out + marker

    def _view(self, param: Any, arr: Any) -> Any:
        """A frozen table's array as this forward's models see it: a view of the same memory
        (``detach()``) marked as an autograd variable with ``grad_req='null'`` (no gradient
        buffer, nothing written), so that the recorded graph shows every use of the table —
        a projection beside a lookup in the same block included (:meth:`settle`)."""
        hit = self.views.get(id(arr))
        if hit is not None and hit[0] is arr:
            return hit[1]
        view = arr.detach()
        view.attach_grad(grad_req="null")
        self.views[id(arr)] = (arr, view, param)
        self.by_id[id(view)] = (view, param)
        return view

    def settle(self, losses: Any) -> set[int]:
        """Set ``tied`` and its note on this forward's captures from what ran: a table is tied
        when its Parameter reaches ``losses`` other than through lookups. Returns the indices of
        the captures whose output ``losses`` does not reach through the recorded graph.

        Imperative uses are read from the graph autograd recorded (the Parameters' arrays are
        autograd variables, named by ``get_symbol``); rewritten symbol graphs report theirs
        while they run (``used_elsewhere``). Reachability: a lookup's delta (an autograd
        variable) must be among the recorded graph's nodes the losses depend on other than
        through ``BlockGrad`` (absent when detached or looked up under ``autograd.pause``), and
        a graph lookup must not be cut inside its graph. Costs one ``get_symbol(losses)`` and
        its JSON, and one walk over its nodes.
        """
        mx = lazy_mxnet()

        params = {s.param.name: s.param for _, s in self._sites if s.param is not None}
        variables: dict[str, str] = {}  # autograd variable name -> Parameter name
        for p in params.values():
            for arr in p._data or []:
                with contextlib.suppress(mx.base.MXNetError):  # not recorded: grad_req='null'
                    variables[mx.autograd.get_symbol(arr).name] = p.name
        for _, view, p in self.views.values():  # frozen tables, seen through their views
            with contextlib.suppress(mx.base.MXNetError):
                variables[mx.autograd.get_symbol(view).name] = p.name
        graph: dict[str, Any] = {"nodes": [], "heads": []}
        # (with no capture too: the "no lookup" error then names the lookups it saw)
        with contextlib.suppress(mx.base.MXNetError):  # losses depend on nothing recorded
            graph = json.loads(mx.autograd.get_symbol(losses).tojson())
        nodes = graph["nodes"]
        if variables:
            opaque = ("_CachedOp",)
            for i in fed_elsewhere(nodes, graph["heads"], opaque=opaque, tables=variables):
                name = variables.get(str(nodes[i]["name"]))
                if name is not None:
                    self.used_elsewhere.add(name)
        reached = {str(nodes[i]["name"]) for i in reaching(nodes, graph["heads"])}
        for marker, tables in self.markers:
            if mx.autograd.get_symbol(marker).name in reached:
                self.used_elsewhere |= tables
        deltas = [mx.autograd.get_symbol(capture.handle).name for capture, _ in self._sites]
        unreached = {k for k, name in enumerate(deltas) if k in self.cut or name not in reached}
        if unknown_tables(nodes, variables, set(deltas)):
            # a lookup on a variable no captured lookup names: is it a Parameter? (rare: only
            # then are all Parameters' autograd names read, ~90 µs each)
            for p in self.params.values():
                arrays = [] if p.name in params else (p._data or [])
                for arr in arrays:
                    with contextlib.suppress(mx.base.MXNetError):
                        variables[mx.autograd.get_symbol(arr).name] = p.name
        self.unsplit.update(unsplit_lookups(nodes, variables, set(deltas)))
        recorded = set(variables.values())
        lookups: dict[str, set[int]] = {}  # Parameter name -> ids of the blocks that looked up
        for _, site in self._sites:
            if site.param is not None:
                lookups.setdefault(site.param.name, set()).add(id(site.owner) if site.owner else 0)
        for capture, site in self._sites:
            p = site.param
            if p is None:
                tied = capture.tied  # the graph's own finding, or nothing to tie
            elif p.name in self.used_elsewhere:
                tied = True
            elif p.name in recorded:
                tied = False
            else:  # frozen, invisible to autograd: fetched by a block that made no lookup on it
                tied = bool(self.fetched.get(p.name, set()) - lookups[p.name])
            note = _tied_note(site.table, site.users) if tied else ""
            capture.site = dataclasses.replace(capture.site, tied=tied, note=note)
        return unreached


def _frozen_table(param: Any) -> bool:
    """A differentiable 2-D Parameter with ``grad_req='null'`` (a frozen embedding table or
    projection), dense: autograd does not record its array, so embgrad hands out a view."""
    return (
        param.grad_req == "null"
        and param._differentiable
        and param._stype == "default"
        and len(param.shape or ()) == 2
    )


def _tied_note(table: str, users: list[str]) -> str:
    by = f" (registered also by {', '.join(users)})" if users else ""
    return (
        f"table {table!r} also feeds a non-lookup operation in this forward{by} (tied weights): "
        "the table gradient covers the lookup path only and differs from weight.grad() by design"
    )
