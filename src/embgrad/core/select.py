"""Which captured lookups ``layers=`` selects: by name, glob, role, table name or module class."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from ..errors import InputError, NoLookupError
from .arguments import LayerSpec
from .contract import Capture


def _matches(c: Capture, spec: LayerSpec) -> bool:
    if isinstance(spec, type):
        return isinstance(c.owner, spec)
    if isinstance(spec, str):
        return spec in (c.role, c.table, *c.aliases) or fnmatchcase(c.name, spec)
    raise InputError(
        f"layers= takes names, globs, roles or classes, got {type(spec).__name__}: {spec!r}"
    )


def select_lookups(
    captures: list[Capture],
    layers: LayerSpec | Sequence[LayerSpec],
    unsplit: Mapping[str, str] | None = None,
) -> list[int]:
    if not captures and unsplit:
        raise NoLookupError(
            "the forward performed no embedding lookup embgrad could capture; it saw "
            f"{', '.join(unsplit)}, which it could not split per sample: {next(iter(unsplit.values()))}."
        )
    if not captures:
        raise NoLookupError(
            "the forward performed no embedding lookup, so there is nothing to differentiate "
            "against. embgrad needs a model whose inputs pass through an embedding lookup "
            "(Gluon nn.Embedding / F.Embedding, torch nn.Embedding / F.embedding / EmbeddingBag)."
        )
    if isinstance(layers, str) and layers == "auto":
        sel = [i for i, c in enumerate(captures) if c.role != "output"]
    else:
        specs: list[Any] = (
            [layers]  # a bare non-spec (an int) is refused by _matches with InputError
            if isinstance(layers, (str, type)) or not isinstance(layers, Iterable)
            else list(layers)
        )
        sel = [i for i, c in enumerate(captures) if any(_matches(c, s) for s in specs)]
    if not sel:
        found = ", ".join(f"{c.name} ({c.role}, {c.module})" for c in captures)
        raise NoLookupError(f"layers={layers!r} selects none of the captured lookups: {found}")
    return sel
