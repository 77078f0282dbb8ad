"""The rewritten graph of a block (see :mod:`.gluon_rewrite`) compiled into its own
``CachedOp`` with the block's flags (``static_alloc``..., not ``static_shape``: see
:func:`graph_for`), fed the block's own Parameters, and cached per graph object: :class:`Graph`
makes the zero deltas (gradients are taken w.r.t. them with ``autograd.grad``, as for imperative
lookups) and runs the graph at the speed of the user's cached op.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import Any

from .gluon_arrays import lazy_mxnet
from .gluon_graph import fed_elsewhere, reaching, unsplit_lookups
from .gluon_rewrite import DELTA, LookupNode, control_flow, rewrite

__all__ = ["Graph", "graph_for", "has_graph"]


@dataclass
class Graph:
    """A block's traced graph with a zero input after every lookup, compiled as one CachedOp."""

    op: Any
    symbol: Any
    spec: list[tuple[str, Any]]  # per op input: ("data", i) | ("delta", k) | ("param", Parameter)
    data_names: list[str]
    n_outputs: int
    lookups: list[LookupNode]
    params: dict[str, Any]
    #: variables (Parameter names) that reach the outputs other than through lookups
    elsewhere: frozenset[str]
    #: the graph has a control-flow operator (foreach / while_loop / cond), whose backward
    #: frees its per-iteration states: the graph cannot be differentiated twice
    loops: bool = False
    #: lookups inside control-flow bodies (the rewrite cannot reach them), as "loop/lookup"
    nested: list[str] = field(default_factory=list)
    #: lookups the rewrite does not split (gather_nd on a table): description -> why
    unsplit: dict[str, str] = field(default_factory=dict)
    #: data inputs the outputs do not depend on differentiably (``BlockGrad`` inside): fed
    #: detached, so that the recorded graph shows the cut to lookups made before the block
    cut_inputs: frozenset[str] = frozenset()
    #: per output of the block: the variables that reach it other than through lookups (the
    #: losses may use only some outputs: ``tied`` is settled against what they use)
    elsewhere_by_output: list[frozenset[str]] = field(default_factory=list)
    shapes: dict[tuple[Any, ...], list[tuple[int, ...]]] = field(default_factory=dict)

    def deltas(self, flat: list[Any]) -> list[Any]:
        """Zero arrays recording gradients, one per lookup output, on the inputs' context."""
        nd = lazy_mxnet().nd
        out = []
        for lk, shape in zip(self.lookups, self._shapes(flat), strict=True):
            p = self.params.get(lk.table)
            d = nd.zeros(shape, ctx=flat[0].context, dtype=p.dtype if p is not None else "float32")
            d.attach_grad()
            out.append(d)
        return out

    def _shapes(self, flat: list[Any]) -> list[tuple[int, ...]]:
        """Lookup output shapes, inferred once per input shapes."""
        key = tuple(tuple(a.shape) for a in flat)
        if not self.lookups:
            return []
        if key not in self.shapes:
            known = {n: tuple(a.shape) for n, a in zip(self.data_names, flat, strict=True)}
            for name, p in self.params.items():
                if p._data:
                    known[name] = tuple(p._data[0].shape)
            arg_shapes, _, _ = self.symbol.infer_shape_partial(**known)
            by_name = dict(zip(self.symbol.list_arguments(), arg_shapes, strict=True))
            self.shapes[key] = [tuple(by_name[DELTA.format(k)]) for k in range(len(self.lookups))]
        return self.shapes[key]

    def run(self, flat: list[Any], deltas: list[Any]) -> list[Any]:
        """The rewritten graph's outputs: the block's own, then the computed ids."""
        args = [
            flat[i] if kind == "data" else deltas[i] if kind == "delta" else i.data()
            for kind, i in self.spec
        ]
        out = self.op(*args)
        return out if isinstance(out, list) else [out]


def has_graph(block: Any) -> bool:
    """Whether ``block`` runs a traced graph embgrad can rewrite: an exported SymbolBlock, or a
    hybridized block that has already run (its graph traced), not partitioned for a backend."""
    gluon = lazy_mxnet().gluon
    if isinstance(block, gluon.SymbolBlock):
        return True
    return (
        isinstance(block, gluon.HybridBlock)
        and bool(block._active)
        and bool(block._cached_graph)
        and not getattr(block, "_backend", None)
    )


def _params_of(block: Any) -> dict[str, Any]:
    """Parameter name -> Parameter for the graph's inputs (the cached op's, when built)."""
    found = {p.name: p for is_arg, p in block._cached_op_args if not is_arg}
    return found or {p.name: p for p in block.collect_params().values()}


# block -> (the graph object it was built from, the rewritten Graph)
_GRAPHS: weakref.WeakKeyDictionary[Any, tuple[Any, Graph]] = weakref.WeakKeyDictionary()


def graph_for(block: Any) -> Graph:
    """The (cached) rewritten graph of a block for which :func:`has_graph` holds."""
    mx = lazy_mxnet()
    data_syms, out = block._cached_graph
    hit = _GRAPHS.get(block)
    if hit is not None and hit[0] is out:
        return hit[1]
    data_names = [s.name for s in data_syms]
    original = json.loads(out.tojson())
    loops, nested = control_flow(original)
    params = _params_of(block)
    shapes = {  # a loaded SymbolBlock knows its values' shapes before its Parameters' do
        name: tuple(p._data[0].shape) if p._data else tuple(p.shape)
        for name, p in params.items()
        if p._data or p.shape
    }
    graph_json, lookups, elsewhere = rewrite(original, data_names, shapes)
    symbol = mx.sym.load_json(json.dumps(graph_json))
    onodes = original["nodes"]
    # data inputs the block's outputs do not depend on differentiably (BlockGrad inside)
    nodes = graph_json["nodes"]
    reached = reaching(nodes, graph_json["heads"][: len(original["heads"])])
    cut_inputs = frozenset(
        str(n["name"])
        for i, n in enumerate(nodes)
        if n["op"] == "null" and n["name"] in data_names and i not in reached
    )
    index = {n: i for i, n in enumerate(data_names)}
    deltas = {DELTA.format(k): k for k in range(len(lookups))}
    spec: list[tuple[str, Any]] = []
    data_idx, param_idx = [], []
    for i, name in enumerate(symbol.list_inputs()):
        if name in index or name in deltas:
            spec.append(("data", index[name]) if name in index else ("delta", deltas[name]))
            data_idx.append(i)
        else:
            spec.append(("param", params[name]))
            param_idx.append(i)
    # static_shape is left out: with it, MXNet 1.9.1's backward w.r.t. a data input fails at
    # random (vector::_M_range_check; 16 of 30 runs of a small LSTM classifier, 0 without it).
    own = [(k, v) for k, v in block._flags if k != "static_shape"]
    flags = [("data_indices", data_idx), ("param_indices", param_idx), *own]
    graph = Graph(
        mx.nd.CachedOp(symbol, flags),
        symbol,
        spec,
        data_names,
        len(out.list_outputs()),
        lookups,
        params,
        elsewhere,
        loops,
        nested,
        {
            k: v
            for k, v in unsplit_lookups(original["nodes"], {n: n for n in params}, set()).items()
            if k.startswith("gather_nd(")
        },
        cut_inputs,
        [
            frozenset(str(onodes[i]["name"]) for i in fed_elsewhere(onodes, [h], tables=shapes))
            for h in original["heads"]
        ],
    )
    _GRAPHS[block] = (out, graph)
    return graph
