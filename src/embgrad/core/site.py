"""The record of one embedding-lookup call site, shared by every layer that talks about it.

A backend fills one :class:`CallSite` per lookup call it sees; the core's :class:`Capture`
(what the forward recorded) and the user's :class:`~embgrad.core.results.LookupGrad` (what one
call computed) both carry the same frozen record instead of copying its fields.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# Roles a lookup can have; "output" lookups (sampled-softmax decoders) are not model inputs.
ROLES = ("word", "position", "token_type", "input", "output")

_ROLE_WORDS = (
    ("position", ("position", "wpe", "pos_emb", "pos_embed", "positional", "relative_attention")),
    ("token_type", ("token_type", "segment", "type_emb")),
    (
        "word",
        ("word", "wte", "tok", "shared", "embed_tokens", "input_embed", "embed_in", "hashbucket"),
    ),
)


@functools.lru_cache(maxsize=4096)  # a model's few table names, asked on every call
def guess_role(name: str) -> str:
    """Role of a lookup from its table's name: 'position', 'token_type', 'word' or 'input'.

    Names come second: a backend first asks the model which table is its input embedding
    (HuggingFace's ``get_input_embeddings()``); ``embed_in`` (GPT-NeoX) and ``hashbucket``
    (CANINE's hash embeddings, which ``get_input_embeddings`` does not name) are word tables.
    """
    low = name.lower()
    for role, words in _ROLE_WORDS:
        if any(w in low for w in words):
            return role
    return "input"


@dataclass(frozen=True, eq=False)
class CallSite:
    """Who looked up which table: one entry per call site and call of a forward.

    Attributes:
        name: unique call-site name (module path; ``#2`` for a second call of the same block).
        role: ``"word"``, ``"position"``, ``"token_type"``, ``"input"`` or ``"output"``.
        module: type name of the block/module (or ``"F.embedding"``) that did the lookup.
        table: canonical name of the embedding table (parameter) that was looked up.
        vocab_size, dim: the table's shape (V, D).
        owner: the block/module object that did the lookup (for ``layers=SomeClass``), or None.
        padding_idx: the row that receives no gradient (PyTorch's ``padding_idx``), else None.
        tied: the table also feeds something other than a lookup (a tied output projection).
        note: a human-readable remark about the lookup ("" when none).
        aliases: every registered name of the table, the canonical ``table`` first.
    """

    name: str
    role: str
    module: str
    table: str
    vocab_size: int
    dim: int
    owner: Any = None
    padding_idx: int | None = None
    tied: bool = False
    note: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def table_names(self) -> tuple[str, ...]:
        """The canonical table name followed by its other registered names."""
        return (self.table, *(a for a in self.aliases if a != self.table))


class SiteView:
    """Read-only access to a record's :class:`CallSite` fields (``x.name`` for ``x.site.name``)."""

    site: CallSite

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def role(self) -> str:
        return self.site.role

    @property
    def module(self) -> str:
        return self.site.module

    @property
    def table(self) -> str:
        return self.site.table

    @property
    def vocab_size(self) -> int:
        return self.site.vocab_size

    @property
    def dim(self) -> int:
        return self.site.dim

    @property
    def owner(self) -> Any:
        return self.site.owner

    @property
    def padding_idx(self) -> int | None:
        return self.site.padding_idx

    @property
    def tied(self) -> bool:
        return self.site.tied

    @property
    def aliases(self) -> tuple[str, ...]:
        """Every registered name of the table, the canonical ``table`` first."""
        return self.site.table_names
