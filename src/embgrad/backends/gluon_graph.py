"""Reachability in MXNet's JSON graphs (no MXNet needed): which variables feed the heads other
than through an ``Embedding`` node's weight input — the tables a forward also uses otherwise
(tied weights) — which nodes the heads reach along differentiable paths (not through
``BlockGrad``): lookups the losses do not reach — and which lookups on a table no delta of
embgrad's follows (not split per sample). Used by the graph rewrite (``gluon_rewrite``) and, on
the graph autograd recorded, by the imperative forward's record (``gluon_forward``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

#: Lookup operators and the position of their table input.
LOOKUP_OPS = {"Embedding": 1, "_contrib_SparseEmbedding": 1, "_npx_embedding": 1}


def table_input(
    node: dict[str, Any], nodes: list[dict[str, Any]], tables: Collection[str] = ()
) -> int | None:
    """The position of a lookup node's table input, or None when ``node`` is no lookup. Besides
    the lookup operators, ``take`` along axis 0 of a variable named in ``tables`` (a table
    Parameter: ``F.take(table, ids)``) is a lookup."""
    op = node["op"]
    if op in LOOKUP_OPS:
        return LOOKUP_OPS[op]
    if op == "take" and tables:
        src = nodes[node["inputs"][0][0]]
        attrs = node.get("attrs", node.get("attr", {}))
        if src["op"] == "null" and src["name"] in tables and str(attrs.get("axis", "0")) == "0":
            return 0
    return None


def fed_elsewhere(
    nodes: list[dict[str, Any]],
    heads: list[list[int]],
    opaque: tuple[str, ...] = (),
    tables: Collection[str] = (),
) -> set[int]:
    """Indices of the variable nodes from which some head is reachable other than through an
    ``Embedding`` node's weight input (its lookup path): the variables also used otherwise.

    Nodes whose op is in ``opaque`` (the ``_CachedOp`` of a graph analysed on its own) pass on
    nothing from the variables fed to them directly (their parameters), only what reaches their
    computed inputs. One pass in topological order (JSON graphs list inputs first).
    """
    reach: list[set[int]] = []  # per node: the variables that reach it off the lookup path
    for i, node in enumerate(nodes):
        if node["op"] == "null":
            reach.append({i})
            continue
        got: set[int] = set()
        skip_vars = node["op"] in opaque
        weight = table_input(node, nodes, tables)
        for k, entry in enumerate(node["inputs"]):
            if k == weight:
                continue  # the lookup path
            if skip_vars and nodes[entry[0]]["op"] == "null":
                continue
            got |= reach[entry[0]]
        reach.append(got)
    out: set[int] = set()
    for head in heads:
        out |= reach[head[0]]
    return {i for i in out if nodes[i]["op"] == "null"}


#: Ops that pass no gradient to their inputs (``stop_gradient`` is ``BlockGrad``'s alias).
CUT_OPS = ("BlockGrad", "stop_gradient", "_npx_stop_gradient")


def reaching(
    nodes: list[dict[str, Any]], heads: list[list[int]], cut: tuple[str, ...] = CUT_OPS
) -> set[int]:
    """Indices of the nodes from which some head is reached along a path autograd
    differentiates: not into a ``BlockGrad``/``stop_gradient`` node's input. One walk back from
    the heads (a node's inputs are listed before it)."""
    seen: set[int] = set()
    stack = [h[0] for h in heads]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if nodes[i]["op"] not in cut:
            stack.extend(e[0] for e in nodes[i]["inputs"])
    return seen


#: why a lookup seen in a recorded graph has no per-sample gradient (see unsplit_lookups)
_UNSPLIT = (
    "embgrad saw this lookup in the recorded graph but could not intercept it (a lookup "
    "function embgrad does not replace, e.g. an alias bound before the call, or gather_nd "
    "with computed indices), so it has no per-sample gradient here; write it as "
    "F.Embedding(ids, weight) or F.take(weight, ids)"
)


def unknown_tables(
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


def unsplit_lookups(
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
