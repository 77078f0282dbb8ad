"""Gluon lookup interception: ``mx.nd.Embedding`` replaced, every call recorded as a Capture.

In imperative mode every lookup goes through ``mx.nd.Embedding``: ``nn.Embedding`` (also with
``sparse_grad=True``), ``contrib.nn.SparseEmbedding``, gluonnlp's direct ``F.Embedding`` on
position weights and its sampled-softmax decoders. While a forward is recorded, :func:`patched`
replaces that function by a wrapper that validates the ids (before the real lookup: MXNet would
silently clip them), calls the real lookup and returns ``out + delta`` for a zero ``delta`` with
``attach_grad()``. Forward hooks cannot do this: Gluon discards their return values.

Who looked up what: the calling block is the first ``self`` up the Python stack that is a Block;
the table Parameter is the one whose stored array *is* the weight, else (AWD-LSTM's
weight-dropped copy, SparseEmbedding's row_sparse copy) the one parameter of the calling block
with the weight's shape. Names are structured block paths (``encoder.position_weight``,
``word_embed.0``; ``#2`` for a second call); lookups made by sampled-softmax blocks get role
``"output"``.

Tied tables are found from what ran (:meth:`Tracer.settle`, after the losses): a table is tied
when, in this forward, its Parameter reaches the losses other than through lookups — in the
graph autograd recorded (``autograd.get_symbol(losses)``), or inside a rewritten symbol graph.
A block that merely registers the Parameter (gluonnlp's ``one_step_ahead_decoder``, never
called in training) does not make it tied. A frozen table (``grad_req='null'``, gluonnlp's
position constants) is not recorded by autograd: for it, ``Parameter.data``/``list_data`` are
watched during the forward, and it is tied when a block (or the loss) fetched it whose call
made no lookup on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import numpy as np

from ..core.contract import Capture, Replace
from ..core.site import CallSite, guess_role
from ..errors import InputError
from .gluon_graph import LOOKUP_OPS, fed_elsewhere, reaching, table_input

__all__ = ["Site", "Tracer", "dense", "lazy_mxnet", "patched", "to_numpy", "validate_ids"]


def lazy_mxnet() -> Any:
    """The mxnet module, imported on first use (embgrad never imports a framework eagerly)."""
    import mxnet

    return mxnet


def to_numpy(x: Any) -> np.ndarray:
    """An NDArray (any storage type) or array-like as a numpy array."""
    asnumpy = getattr(x, "asnumpy", None)
    return asnumpy() if callable(asnumpy) else np.asarray(x)


def dense(weight: Any) -> Any:
    """A table as a detached dense NDArray (row_sparse weights of sparse lookups converted)."""
    if getattr(weight, "stype", "default") != "default":
        weight = weight.tostype("default")
    return weight.detach()


def _is_embedding_block(block: Any) -> bool:
    return type(block).__name__.endswith("Embedding")


def _is_output_block(block: Any) -> bool:
    """Sampled-softmax decoders (gluonnlp ``ISDense``/``NCEDense`` and sparse variants)."""
    return any(
        c.__module__.startswith("gluonnlp.model.sampled_block") or "Sampled" in c.__name__
        for c in type(block).__mro__
    )


def _block_paths(model: Any) -> dict[int, tuple[Any, str]]:
    """id(block) -> (block, structured path such as ``encoder.0.embed``; "" for the root)."""
    paths: dict[int, tuple[Any, str]] = {}

    def walk(block: Any, path: str) -> None:
        if id(block) in paths:
            return
        paths[id(block)] = (block, path)
        for key, child in block._children.items():
            walk(child, f"{path}.{key}" if path else str(key))

    walk(model, "")
    return paths


def _param_users(paths: dict[int, tuple[Any, str]]) -> dict[str, list[tuple[Any, str]]]:
    """Parameter name -> the blocks (and their paths) that register it."""
    users: dict[str, list[tuple[Any, str]]] = {}
    for block, path in paths.values():
        for p in block._reg_params.values():
            users.setdefault(p.name, []).append((block, path))
    return users


def _calling_block(frame: FrameType | None) -> Any:
    """The innermost Block whose method is on the Python stack above ``frame`` (or None)."""
    block_type = lazy_mxnet().gluon.Block
    while frame is not None:
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            owner = frame.f_locals.get("self")
            if isinstance(owner, block_type):
                return owner
        frame = frame.f_back
    return None


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


def validate_ids(ids: Any, vocab: int, name: str, table: str) -> None:
    """Raise InputError naming the lookup, the first bad id and the vocabulary size."""
    a = to_numpy(ids)
    rule = f"ids must be integers in [0, {vocab})"
    where = f"lookup {name!r} (table {table!r}, vocab size {vocab})"
    checks: list[tuple[np.ndarray, str]] = []
    if np.issubdtype(a.dtype, np.floating):
        checks.append(
            (~np.isfinite(a) | (a != np.round(a)), "a non-integral id (Gluon feeds ids as float)")
        )
    checks += [(a < 0, "a negative id"), (a >= vocab, "an id out of range")]
    for bad, what in checks:
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"{where} got {what}: {a[idx]:g} at index {idx}; {rule}. Check the tokenizer "
                "and that the vocabulary matches the model."
            )


@dataclass
class Site:
    """Where a lookup happened: its call-site name, the block and the table Parameter."""

    name: str
    owner: Any
    param: Any
    table: str
    module: str
    users: list[str]  # non-lookup blocks that also register the table (tied-decoder candidates)


class Tracer:
    """Stands in for ``mx.nd.Embedding`` while a forward is recorded; one Capture per call.

    Also names the lookups found in rewritten symbol graphs (``gluon_symbol.intercept``).
    """

    def __init__(self, model: Any, params: Mapping[str, Any]) -> None:
        self.model = model
        self.params = dict(params)  # a plain dict: ParameterDict.get would create parameters
        self.paths = _block_paths(model)
        self.users = _param_users(self.paths)
        self.prefixes = sorted(
            ((b.prefix, b) for b, _ in self.paths.values() if b.prefix),
            key=lambda item: -len(item[0]),
        )
        self.by_id: dict[int, tuple[Any, Any]] = {}
        self.captures: list[Capture] = []
        self.counts: dict[str, int] = {}
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

    def index_params(self) -> None:
        """Remember every parameter array, to match a lookup's weight by identity."""
        for p in self.params.values():
            for arr in p._data or []:
                self.by_id[id(arr)] = (arr, p)

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
                owner = _calling_block(sys._getframe(1))
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
        owner = _calling_block(frame)
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
        sub = self.replace(site.name, _role(site.owner, site.name, site.table), out.detach())
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

    def site_of_node(self, block: Any, node: str, table: str) -> Site:
        """The site of an Embedding node of ``block``'s graph: the block whose prefix names the
        node (hybridized models), else the node itself (exported models)."""
        owner = next((b for prefix, b in self.prefixes if node.startswith(prefix)), None)
        param = self.params.get(table)
        if owner is None:
            n = self.counts[node] = self.counts.get(node, 0) + 1
            name = node if n == 1 else f"{node}#{n}"
            site = Site(name, block, param, table, "Embedding", [])
            site.users = self._tied_with(block, param)
            return site
        return self._site(owner, param, _local_name(owner, param, table))

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
                    role=_role(site.owner, site.name, site.table),
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
        if _unknown_tables(nodes, variables, set(deltas)):
            # a lookup on a variable no captured lookup names: is it a Parameter? (rare: only
            # then are all Parameters' autograd names read, ~90 µs each)
            for p in self.params.values():
                arrays = [] if p.name in params else (p._data or [])
                for arr in arrays:
                    with contextlib.suppress(mx.base.MXNetError):
                        variables[mx.autograd.get_symbol(arr).name] = p.name
        self.unsplit.update(_unsplit(nodes, variables, set(deltas)))
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

    def _site(self, owner: Any, param: Any, local: str) -> Site:
        table = param.name if param is not None else local
        module = type(owner).__name__ if owner is not None else "F.Embedding"
        return Site(
            self._name(owner, local), owner, param, table, module, self._tied_with(owner, param)
        )

    def _table(self, weight: Any, owner: Any) -> tuple[Any, str]:
        """(Parameter or None, its local name in the owner) for the weight a lookup received."""
        hit = self.by_id.get(id(weight))
        param = hit[1] if hit is not None and hit[0] is weight else None
        if param is None and owner is not None:
            shape = tuple(weight.shape)
            subtree = owner._collect_params_with_prefix().values()
            for pool in (list(owner._reg_params.values()), list(subtree)):
                same = [p for p in pool if tuple(p.shape) == shape]
                if len(same) == 1:
                    param = same[0]
                    break
        return param, _local_name(owner, param, "weight")

    def _name(self, owner: Any, local: str) -> str:
        hit = self.paths.get(id(owner)) if owner is not None else None
        path = hit[1] if hit is not None else None
        if path is None:
            base = local
        elif _is_embedding_block(owner):
            base = path or "embedding"
        else:
            base = f"{path}.{local}" if path else local
        n = self.counts[base] = self.counts.get(base, 0) + 1
        return base if n == 1 else f"{base}#{n}"

    def _tied_with(self, owner: Any, param: Any) -> list[str]:
        """Paths of non-lookup blocks that also register the lookup's table (candidates for a
        tied decoder: whether one of them used it in this forward is settled by ``settle``)."""
        if param is None:
            return []
        return [
            path or type(b).__name__
            for b, path in self.users.get(param.name, [])
            if b is not owner and not _is_embedding_block(b)
        ]


_UNSPLIT = (
    "embgrad saw this lookup in the recorded graph but could not intercept it (a lookup "
    "function embgrad does not replace, e.g. an alias bound before the call, or gather_nd "
    "with computed indices), so it has no per-sample gradient here; write it as "
    "F.Embedding(ids, weight) or F.take(weight, ids)"
)


def _unknown_tables(
    nodes: list[dict[str, Any]], variables: Mapping[str, str], deltas: set[str]
) -> bool:
    """Whether a lookup-like node (``Embedding``..., ``take``, ``gather_nd``) reads its table
    from a variable that is neither a known table nor one of embgrad's deltas."""
    for n in nodes:
        if n["op"] in LOOKUP_OPS:
            k = LOOKUP_OPS[n["op"]]
        elif n["op"] in ("take", "gather_nd"):
            k = 0
        else:
            continue
        if len(n["inputs"]) <= k:
            continue
        src = nodes[n["inputs"][k][0]]
        if src["op"] == "null" and src["name"] not in variables and src["name"] not in deltas:
            return True
    return False


def _unsplit(
    nodes: list[dict[str, Any]], variables: Mapping[str, str], deltas: set[str]
) -> dict[str, str]:
    """Lookups on a table Parameter (``Embedding``/``SparseEmbedding``, ``take`` along axis
    0, ``gather_nd``) in a recorded graph whose output is not one embgrad added a delta to:
    ``"<op>(<table>)"`` -> why. Never silent: they are reported on the result."""
    delta_idx = {i for i, n in enumerate(nodes) if n["op"] == "null" and n["name"] in deltas}
    captured: set[int] = set()
    for n in nodes:
        ins = [e[0] for e in n["inputs"]]
        if delta_idx.intersection(ins):
            captured.update(ins)
    out: dict[str, str] = {}
    for i, n in enumerate(nodes):
        k = 0 if n["op"] == "gather_nd" else table_input(n, nodes, variables)
        if k is None or i in captured or not n["inputs"]:
            continue
        src = nodes[n["inputs"][k][0]]
        table = variables.get(str(src["name"])) if src["op"] == "null" else None
        if table is not None:
            out[f"{n['op']}({table})"] = _UNSPLIT
    return out


def _frozen_table(param: Any) -> bool:
    """A differentiable 2-D Parameter with ``grad_req='null'`` (a frozen embedding table or
    projection), dense: autograd does not record its array, so embgrad hands out a view."""
    return (
        param.grad_req == "null"
        and param._differentiable
        and param._stype == "default"
        and len(param.shape or ()) == 2
    )


def _local_name(owner: Any, param: Any, default: str) -> str:
    """The attribute name under which ``owner`` registers ``param`` (else its full name)."""
    if owner is not None and param is not None:
        for key, p in owner._reg_params.items():
            if p.name == param.name:
                return str(key)
    return param.name if param is not None else default


def _role(owner: Any, name: str, table: str) -> str:
    if owner is not None and _is_output_block(owner):
        return "output"
    role = guess_role(name)
    return role if role != "input" else guess_role(table)


def _tied_note(table: str, users: list[str]) -> str:
    by = f" (registered also by {', '.join(users)})" if users else ""
    return (
        f"table {table!r} also feeds a non-lookup operation in this forward{by} (tied weights): "
        "the table gradient covers the lookup path only and differs from weight.grad() by design"
    )


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
