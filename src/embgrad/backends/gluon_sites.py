"""Who looked up what in a Gluon model: call-site names, owning blocks, table Parameters, roles.

Who looked up what: the calling block is the first ``self`` up the Python stack that is a Block;
the table Parameter is the one whose stored array *is* the weight, else (AWD-LSTM's
weight-dropped copy, SparseEmbedding's row_sparse copy) the one parameter of the calling block
with the weight's shape. Names are structured block paths (``encoder.position_weight``,
``word_embed.0``; ``#2`` for a second call); lookups made by sampled-softmax blocks get role
``"output"``.

:class:`Sites` holds what naming needs (block paths, the blocks registering each Parameter, the
Parameters' arrays by identity, the calls counted per name); the tracer (``gluon_trace``)
derives from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..core.site import guess_role
from .gluon_arrays import lazy_mxnet

__all__ = ["Site", "Sites", "calling_block", "lookup_role"]


@dataclass
class Site:
    """Where a lookup happened: its call-site name, the block and the table Parameter."""

    name: str
    owner: Any
    param: Any
    table: str
    module: str
    users: list[str]  # non-lookup blocks that also register the table (tied-decoder candidates)


class Sites:
    """Names the lookups of one model, imperative ones and those found in rewritten symbol
    graphs (``gluon_symbol.intercept``)."""

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
        self.counts: dict[str, int] = {}

    def index_params(self) -> None:
        """Remember every parameter array, to match a lookup's weight by identity."""
        for p in self.params.values():
            for arr in p._data or []:
                self.by_id[id(arr)] = (arr, p)

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


def calling_block(frame: FrameType | None) -> Any:
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


def _local_name(owner: Any, param: Any, default: str) -> str:
    """The attribute name under which ``owner`` registers ``param`` (else its full name)."""
    if owner is not None and param is not None:
        for key, p in owner._reg_params.items():
            if p.name == param.name:
                return str(key)
    return param.name if param is not None else default


def lookup_role(owner: Any, name: str, table: str) -> str:
    if owner is not None and _is_output_block(owner):
        return "output"
    role = guess_role(name)
    return role if role != "input" else guess_role(table)
