"""Symbol graphs: exported ``SymbolBlock``s and hybridized blocks run their own traced graph.

An exported model (``SymbolBlock.imports(json, params)``) has no Python forward to intercept,
and a hybridized block runs its whole graph in one cached op. Either way the block's symbol
graph is rewritten once (:mod:`.gluon_rewrite`: a zero delta input after every lookup) and
compiled into embgrad's own ``CachedOp`` (:mod:`.gluon_compiled`), which this module runs in
the block's place while a tracer captures.

For the call, the block's ``_call_cached_op`` — where ``HybridBlock.forward`` and
``SymbolBlock.forward`` hand over the flattened inputs — is shadowed by an instance attribute
(removed on exit), so the model's own Python ``__call__``/``forward`` still map the user's
arguments. The user's cached op, cached graph and flags are never touched: nothing re-traces.

Names: for a hybridized block, the block path of the block whose prefix names the node
(``embed``, ``encoder.position_weight``), as in imperative mode; for an exported model (no
Python children), the graph's node name (``net0_embedding0_fwd``). The table is the weight
variable (the Parameter's name); ``tied`` is set when that variable also reaches an output
other than through lookups (e.g. through a decoder ``FullyConnected``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import InputError, UnsupportedModelError
from .gluon_arrays import lazy_mxnet, validate_ids
from .gluon_compiled import graph_for

if TYPE_CHECKING:
    from .gluon_trace import Tracer

__all__ = ["intercept"]


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
