"""Symbol graphs: exported ``SymbolBlock``s and hybridized blocks run their own traced graph.

An exported model (``SymbolBlock.imports(json, params)``) has no Python forward to intercept,
and a hybridized block runs its whole graph in one cached op. Either way the block's symbol
graph is rewritten once (JSON level, cached per graph object): after every ``Embedding`` node an
``elemwise_add`` with a new zero input variable ``__embgrad_delta{k}__`` is inserted and every
consumer of the lookup reads the sum. Lookup ids that are not graph inputs (position ids from
``arange``) become extra outputs, so they can be validated and returned. The rewritten graph is
compiled into its own ``CachedOp`` with the block's flags (``static_alloc``..., not
``static_shape``: see :func:`graph_for`), fed the block's own Parameters; gradients are taken w.r.t. the deltas with ``autograd.grad``, as for imperative
lookups. It runs at the speed of the user's cached op.

For the call, the block's ``_call_cached_op`` — where ``HybridBlock.forward`` and
``SymbolBlock.forward`` hand over the flattened inputs — is shadowed by an instance attribute
(removed on exit), so the model's own Python ``__call__``/``forward`` still map the user's
arguments. The user's cached op, cached graph and flags are never touched: nothing re-traces.

Tied tables: :func:`fed_elsewhere` finds the variables of a graph (JSON nodes) that reach its
outputs through a path that does not enter an ``Embedding`` node as its weight — an output
projection, also behind casts, copies or weight dropout. The same test runs on the graph the
forward recorded (``autograd.get_symbol`` of the losses) for imperative lookups.

Reachability: :func:`reaching` finds the nodes the graph's outputs depend on through a path
autograd differentiates (not through ``BlockGrad``/``stop_gradient``); a lookup whose delta is
not among them is ``cut`` (found once per graph, at the rewrite). Imperative lookups get the
same test on the graph the forward recorded (``ForwardRecord.settle``).

Names: for a hybridized block, the block path of the block whose prefix names the node
(``embed``, ``encoder.position_weight``), as in imperative mode; for an exported model (no
Python children), the graph's node name (``net0_embedding0_fwd``). The table is the weight
variable (the Parameter's name); ``tied`` is set when that variable also reaches an output
other than through lookups (e.g. through a decoder ``FullyConnected``).
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InputError, UnsupportedModelError
from .gluon_arrays import lazy_mxnet, validate_ids
from .gluon_graph import LOOKUP_OPS, fed_elsewhere, reaching, table_input, unsplit_lookups

if TYPE_CHECKING:
    from .gluon_trace import Tracer

__all__ = [
    "Graph",
    "LookupNode",
    "graph_for",
    "has_graph",
    "intercept",
    "rewrite",
]

DELTA = "__embgrad_delta{}__"


@dataclass(frozen=True)
class LookupNode:
    """One ``Embedding`` node of the graph, as the rewrite found it."""

    node: str
    table: str
    vocab: int
    dim: int
    tied: bool
    ids_input: str | None  # the model input feeding the ids, or None when computed
    ids_output: int | None  # index of the ids among the extra outputs when computed
    #: the graph's outputs do not depend on the lookup's output (``BlockGrad`` on every path)
    cut: bool = False


def _source_var(nodes: list[dict[str, Any]], entry: list[int]) -> str:
    """Name of the variable behind a node input, through single-input ops (casts, copies)."""
    node = nodes[entry[0]]
    while node["op"] != "null" and len(node["inputs"]) == 1:
        node = nodes[node["inputs"][0][0]]
    return str(node["name"])


#: MXNet's control-flow operators; their bodies are subgraphs (``node["subgraphs"]``).
CONTROL_FLOW = ("_foreach", "_while_loop", "_cond")


def control_flow(graph: dict[str, Any]) -> tuple[bool, list[str]]:
    """(whether the graph has a control-flow operator, the lookups inside their bodies: node
    names, as ``"<control-flow node>/<lookup node>"``), searched recursively."""
    found: list[str] = []
    has = False
    for node in graph["nodes"]:
        if node["op"] not in CONTROL_FLOW:
            continue
        has = True
        for sub in node.get("subgraphs", []):
            found += [f"{node['name']}/{n['name']}" for n in sub["nodes"] if n["op"] in LOOKUP_OPS]
            found += [f"{node['name']}/{x}" for x in control_flow(sub)[1]]
    return has, found


def rewrite(
    graph: dict[str, Any],
    input_names: list[str],
    tables: dict[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, Any], list[LookupNode], frozenset[str]]:
    """Insert ``lookup + delta_k`` after every lookup node of a symbol's JSON graph: the
    ``Embedding`` and ``SparseEmbedding`` operators, and ``take`` along axis 0 of a table
    Parameter (``tables``: name → shape).

    Returns the new JSON graph (heads: the original heads, then one per computed ids input),
    the lookups found, in graph order, and the variables also used other than by lookups.
    """
    nodes = graph["nodes"]
    tables = {k: v for k, v in (tables or {}).items() if len(v) == 2}
    elsewhere = frozenset(
        str(nodes[i]["name"]) for i in fed_elsewhere(nodes, graph["heads"], tables=tables)
    )
    new: list[dict[str, Any]] = []
    where: dict[tuple[int, int], list[int]] = {}  # old (node, output) -> new entry
    lookups: list[LookupNode] = []
    extra_heads: list[list[int]] = []

    def fix(entry: list[int]) -> list[int]:
        key = (entry[0], entry[1])
        return where.get(key, [where[(entry[0], 0)][0], entry[1], entry[2]])

    for i, node in enumerate(nodes):
        copy = {**node, "inputs": [fix(e) for e in node["inputs"]]}
        new.append(copy)
        where[(i, 0)] = [len(new) - 1, 0, 0]
        weight = table_input(node, nodes, tables)
        if weight is None:
            continue
        k = len(lookups)
        new.append({"op": "null", "name": DELTA.format(k), "inputs": []})
        new.append(
            {
                "op": "elemwise_add",
                "name": f"__embgrad_add{k}__",
                "inputs": [[len(new) - 2, 0, 0], [len(new) - 1, 0, 0]],
            }
        )
        where[(i, 0)] = [len(new) - 1, 0, 0]
        lookups.append(
            _lookup_node(nodes, i, weight, input_names, extra_heads, fix, elsewhere, tables)
        )
    heads = [fix(h) for h in graph["heads"]] + extra_heads
    reached = reaching(new, heads[: len(graph["heads"])])
    deltas = {str(n["name"]): i for i, n in enumerate(new) if n["op"] == "null"}
    lookups = [
        dataclasses.replace(lk, cut=deltas[DELTA.format(k)] not in reached)
        for k, lk in enumerate(lookups)
    ]
    out = {
        "nodes": new,
        "arg_nodes": [i for i, n in enumerate(new) if n["op"] == "null"],
        "heads": heads,
        "attrs": graph.get("attrs", {}),
    }
    return out, lookups, elsewhere


def _lookup_node(
    nodes: list[dict[str, Any]],
    i: int,
    weight: int,
    input_names: list[str],
    extra_heads: list[list[int]],
    fix: Callable[[list[int]], list[int]],
    elsewhere: frozenset[str],
    tables: dict[str, tuple[int, ...]],
) -> LookupNode:
    node = nodes[i]
    attrs = node.get("attrs", node.get("attr", {}))
    ids_entry, weight_entry = node["inputs"][1 - weight], node["inputs"][weight]
    ids_node = nodes[ids_entry[0]]
    direct = ids_node["op"] == "null" and ids_node["name"] in input_names
    if not direct:
        extra_heads.append(fix(ids_entry))
    table = _source_var(nodes, weight_entry)
    vocab, dim = (
        (int(attrs["input_dim"]), int(attrs["output_dim"]))
        if "input_dim" in attrs
        else tables[table]
    )
    return LookupNode(
        node=str(node["name"]),
        table=table,
        vocab=vocab,
        dim=dim,
        tied=table in elsewhere,
        ids_input=str(ids_node["name"]) if direct else None,
        ids_output=None if direct else len(extra_heads) - 1,
    )


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


def _flat_inputs(block: Any, args: tuple[Any, ...]) -> list[Any]:
    """The block's inputs flattened as its cached op takes them (None dropped), checked against
    the structure it was traced with (MXNet's rule: trailing None defaults may differ)."""
    from mxnet.gluon.block import _flatten

    flat, fmt = _flatten(list(args), "input")
    stored = list(block._in_format)
    fmt = list(fmt)
    n = min(len(fmt), len(stored))
    rest = fmt[n:] + stored[n:]
    if fmt[:n] != stored[:n] or any(f != -1 for f in rest):
        if isinstance(block, lazy_mxnet().gluon.SymbolBlock):
            names = [s.name for s in block._cached_graph[0]]
            raise InputError(
                f"this exported model takes {len(names)} input(s) named {names}, in that order; "
                f"got {len(args)}"
            )
        raise InputError(
            f"the inputs do not have the structure {type(block).__name__} was hybridized with "
            f"(traced format {stored}, given {fmt}); pass inputs of the same structure"
        )
    return [a for a in flat if a is not None]


def intercept(block: Any, tracer: Tracer) -> Callable[..., Any]:
    """A stand-in for ``block._call_cached_op`` running the rewritten graph while ``tracer``
    captures (the block's own cached op otherwise)."""
    from mxnet.gluon.block import _regroup

    original = type(block)._call_cached_op.__get__(block)

    def call(*args: Any) -> Any:
        if not tracer.capturing_here():
            return original(*args)
        if tracer.replace is not None:
            return _imperative(block, args)
        graph = graph_for(block)
        if graph.loops:  # its backward frees the loop's states: one backward per forward
            tracer.loops = True
        if graph.nested:  # lookups inside a loop body: run the Python forward, which sees them
            if isinstance(block, lazy_mxnet().gluon.SymbolBlock):
                raise UnsupportedModelError(
                    f"this exported model looks up embeddings inside control flow "
                    f"(F.contrib.foreach / while_loop / cond): {', '.join(graph.nested)}. "
                    "embgrad rewrites an exported graph to reach its lookups and cannot do so "
                    "inside a loop body; pass the original Block (hybridized or not), whose "
                    "Python forward runs the loop step by step"
                )
            return _imperative(block, args)
        flat = _flat_inputs(block, args)
        given = dict(zip(graph.data_names, flat, strict=True))
        sites = [tracer.site_of_node(block, lk.node, lk.table) for lk in graph.lookups]
        for lk, site in zip(graph.lookups, sites, strict=True):
            if lk.ids_input is not None:
                validate_ids(given[lk.ids_input], lk.vocab, site.name, lk.table)
        deltas = graph.deltas(flat)
        if graph.cut_inputs:
            flat = [
                a.detach() if name in graph.cut_inputs else a
                for name, a in zip(graph.data_names, flat, strict=True)
            ]
        with tracer.quiet():
            outs = graph.run(flat, deltas)
        tracer.unsplit.update(graph.unsplit)
        outs = list(outs)
        if len(set(graph.elsewhere_by_output)) > 1:
            # outputs differ in the tables they use: settle against the outputs the losses use
            for j, names in enumerate(graph.elsewhere_by_output):
                outs[j] = tracer.mark(outs[j], names)
        else:
            tracer.used_elsewhere |= graph.elsewhere
        for lk, site, delta in zip(graph.lookups, sites, deltas, strict=True):
            if lk.ids_input is not None:
                ids = given[lk.ids_input]
            else:
                ids = outs[graph.n_outputs + int(lk.ids_output or 0)].copy()
                validate_ids(ids, lk.vocab, site.name, lk.table)
            tracer.add(site, ids, delta, lk.vocab, lk.dim, graph_tied=lk.tied, graph_cut=lk.cut)
        return _regroup(outs[: graph.n_outputs], block._out_format)

    return call


def _imperative(block: Any, args: tuple[Any, ...]) -> Any:
    """Run a hybridized block's Python forward once, so ``replace=`` can substitute lookup
    outputs (a traced graph cannot); ``_active`` is restored on exit. Exported SymbolBlocks
    have no Python forward: they refuse ``replace=``."""
    if isinstance(block, lazy_mxnet().gluon.SymbolBlock):
        raise InputError(
            "replace= (used by integrated gradients and SmoothGrad) needs a Python forward, and "
            "an exported SymbolBlock has none: use the original Block, or a method that does not "
            "substitute embeddings (gradient, grad_x_input, hotflip)"
        )
    block._active = False
    try:
        return block.forward(*args)
    finally:
        block._active = True
