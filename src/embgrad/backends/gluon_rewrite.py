"""The rewrite of a traced graph (JSON level, no MXNet needed) that makes its lookups
differentiable per sample: after every ``Embedding`` node an ``elemwise_add`` with a new zero
input variable ``__embgrad_delta{k}__`` is inserted and every consumer of the lookup reads the
sum. Lookup ids that are not graph inputs (position ids from ``arange``) become extra outputs,
so they can be validated and returned. Lookups inside control-flow bodies (subgraphs) are out of
the rewrite's reach: :func:`control_flow` lists them.

Tied tables: :func:`~.gluon_graph.fed_elsewhere` finds the variables of a graph (JSON nodes)
that reach its outputs through a path that does not enter an ``Embedding`` node as its weight —
an output projection, also behind casts, copies or weight dropout. The same test runs on the
graph the forward recorded (``autograd.get_symbol`` of the losses) for imperative lookups.

Reachability: :func:`~.gluon_graph.reaching` finds the nodes the graph's outputs depend on
through a path autograd differentiates (not through ``BlockGrad``/``stop_gradient``); a lookup
whose delta is not among them is ``cut`` (found once per graph, at the rewrite). Imperative
lookups get the same test on the graph the forward recorded (``ForwardRecord.settle``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .gluon_graph import LOOKUP_OPS, fed_elsewhere, reaching, table_input

__all__ = ["CONTROL_FLOW", "DELTA", "LookupNode", "control_flow", "rewrite"]

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
