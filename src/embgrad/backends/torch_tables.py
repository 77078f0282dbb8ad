"""Naming and validating torch embedding lookups: registered table names, ids checks.

A lookup (call site) is named after the table it reads: the parameter (or buffer) name under
which the model registers the weight tensor, without its ``.weight`` suffix
(``embeddings.word_embeddings``).  A tensor registered under several names (T5's / BART's
``shared`` and ``encoder.embed_tokens`` / ``decoder.embed_tokens``, GPT-2's ``wte`` / ``lm_head``)
is one table: its call sites keep the name of the module whose forward made the call, while the
table is named by its first registration in ``named_parameters(remove_duplicate=False)`` order,
with every registered name kept as an alias.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import torch

from ..core.site import guess_role
from ..errors import InputError

_ID_DTYPES = (torch.int64, torch.int32)
#: how many frames above a lookup are searched for the module that made it
_FRAME_DEPTH = 12


class TableNames:
    """The model's registered tensors (parameters and buffers) by identity, for naming lookups."""

    def __init__(self, module: torch.nn.Module) -> None:
        """One walk over the module tree (every registration, duplicates included); it also
        lists each distinct submodule once (``submodules``) for the training-flag switch, each
        distinct parameter once (``params``) for the ``.grad`` guard, and the TorchScript
        submodules (``scripted``), which run no Python a lookup could be seen in."""
        self.module = module
        self.names: dict[int, list[str]] = {}
        self.modules: dict[int, list[str]] = {}
        self.submodules: list[torch.nn.Module] = []
        self.params: list[torch.Tensor] = []
        self._param_ids: set[int] | None = None
        self.scripted: list[str] = []
        self._words: set[int] | None = None
        script = torch.jit.ScriptModule
        # named_modules(remove_duplicate=False)'s pre-order, without its generators (this runs
        # on every call, so it is kept to plain dict and list work)
        stack: list[tuple[str, torch.nn.Module]] = [("", module)]
        while stack:
            path, mod = stack.pop()
            paths = self.modules.get(id(mod))
            if paths is None:
                self.submodules.append(mod)
                self.modules[id(mod)] = [path]
                if isinstance(mod, script):
                    self.scripted.append(path)
                    continue  # its children are script modules too
            else:
                paths.append(path)
            prefix = path + "." if path else ""
            for key, t in mod._parameters.items():
                if t is not None:
                    got = self.names.get(id(t))
                    if got is None:
                        self.names[id(t)] = [prefix + key]
                        self.params.append(t)
                    else:
                        got.append(prefix + key)
            for key, buf in mod._buffers.items():
                if buf is not None:
                    got = self.names.get(id(buf))
                    if got is None:
                        self.names[id(buf)] = [prefix + key]
                    else:
                        got.append(prefix + key)
            children = [(prefix + k, m) for k, m in mod._modules.items() if m is not None]
            stack.extend(reversed(children))

    @property
    def param_ids(self) -> set[int]:
        """ids of the distinct parameters (worked out on first use)."""
        if self._param_ids is None:
            self._param_ids = {id(p) for p in self.params}
        return self._param_ids

    def word_tables(self) -> set[int]:
        """ids of the tensors the model itself names as its input (word) embedding: the weight
        of what a HuggingFace model's ``get_input_embeddings()`` returns (worked out once)."""
        if self._words is None:
            self._words = set()
            get = getattr(self.module, "get_input_embeddings", None)
            try:
                emb = get() if callable(get) else None
            except Exception:  # e.g. CANINE: NotImplementedError; then the names decide
                emb = None
            weight = getattr(emb, "weight", None) if isinstance(emb, torch.nn.Module) else None
            if isinstance(weight, torch.Tensor):
                self._words.add(id(weight))
        return self._words

    def _caller(self) -> torch.nn.Module | None:
        """The innermost module of this model whose ``forward`` (or method) is on the stack."""
        frame: FrameType | None = sys._getframe(3)
        for _ in range(_FRAME_DEPTH):
            if frame is None:
                return None
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                owner = frame.f_locals.get("self")
                if isinstance(owner, torch.nn.Module) and id(owner) in self.modules:
                    return owner
            frame = frame.f_back
        return None

    def describe(self, weight: torch.Tensor, kind: str) -> dict[str, Any]:
        """Capture fields (name, role, module, table, aliases, owner, tied, note) of a lookup on
        ``weight``.  ``table`` is the tensor's canonical name (its first registration), the same
        for every call site; ``aliases`` are all its registered names, canonical first.

        The call site is named after the module whose forward made the call: the module that
        holds the table (``emb`` for ``emb.weight``; with a table registered under several
        names, the name under which the calling module holds it), or, when a module looks up
        another module's table functionally, ``caller:kind(table)``
        (``stage2:F.embedding(stage1.emb.weight)``; ``kind(table)`` when the caller is the root).
        ``tied`` is left False here: the recorder decides it from what ran in the forward.
        """
        names = self.names.get(id(weight))
        if names is None and weight._base is not None:
            names = self.names.get(id(weight._base))
        if not names:
            v, d = weight.shape
            return {
                "name": kind,
                "role": "input",
                "module": kind,
                "table": f"<unregistered {v}x{d} tensor>",
                "aliases": (),
                "owner": None,
                "tied": False,
                "note": "the table is not a registered parameter or buffer of the model",
            }
        aliases = tuple(dict.fromkeys(map(_plain, names)))
        table = aliases[0]
        caller = self._caller()
        own, functional = names[0], False
        if caller is not None:
            attrs = [k for k, v in caller._parameters.items() if v is weight]
            attrs += [k for k, v in caller._buffers.items() if v is weight]
            held = [
                f"{path}.{attrs[0]}" if path else attrs[0]
                for path in (self.modules[id(caller)] if attrs else [])
            ]
            held = [n for n in held if n in names]
            if held:
                own = held[0]
            else:
                functional = True
        path, _, attr = own.rpartition(".")
        owner = self.module.get_submodule(path)
        own, path = _plain(own), _plain(path)
        if functional and caller is not None:
            where = _plain(self.modules[id(caller)][0])
            site = f"{where}:{kind}({own})" if where else f"{kind}({own})"
            module, owner = kind, caller
        else:
            is_layer = attr == "weight" and isinstance(
                owner, (torch.nn.Embedding, torch.nn.EmbeddingBag)
            )
            site = path if attr == "weight" and path else own
            module = type(owner).__name__ if is_layer else kind
        role = "word" if id(weight) in self.word_tables() else guess_role(own)
        note = ""
        if len(aliases) > 1:
            note = f"table {table} is registered as {', '.join(aliases)} (looked up here as {own})"
        return {
            "name": site,
            "role": role,
            "module": module,
            "table": table,
            "aliases": aliases,
            "owner": owner,
            "tied": False,
            "note": note,
        }


def _plain(name: str) -> str:
    """A registered name without the ``_orig_mod`` segments of nested torch.compile wrappers."""
    if "_orig_mod" not in name:
        return name
    return ".".join(p for p in name.split(".") if p != "_orig_mod")


def check_dtype(site: str, ids: Any) -> None:
    """Raise InputError unless ``ids`` is an int32/int64 tensor."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in _ID_DTYPES:
        dtype = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise InputError(
            f"lookup {site!r} got ids of dtype {dtype}; embedding ids must be integer tensors "
            "(torch.int64 or torch.int32). Convert them with ids.long() — float ids are not "
            "rounded implicitly."
        )


def check_ids(site: str, ids: torch.Tensor, vocab: int) -> None:
    """Raise InputError unless ``ids`` is an int32/int64 tensor with values in [0, vocab)."""
    check_dtype(site, ids)
    if ids.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(ids)).tolist()  # one read from the device, not two
    if lo >= 0 and hi < vocab:
        return
    bad = ((ids < 0) | (ids >= vocab)).nonzero()[0]
    where = tuple(int(i) for i in bad)
    value = int(ids[where])
    raise InputError(
        f"lookup {site!r} got id {value} at position {where}, outside its table of {vocab} rows "
        f"(valid ids are 0..{vocab - 1}). Check that the tokenizer / vocabulary matches the model."
    )


def check_index_ids(site: str, ids: torch.Tensor, vocab: int) -> None:
    """Raise InputError unless ``ids`` are valid Python indices of ``vocab`` rows, in
    ``[-vocab, vocab)`` (a lookup written as indexing: negative ids wrap)."""
    if ids.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(ids)).tolist()
    if lo >= -vocab and hi < vocab:
        return
    bad = ((ids < -vocab) | (ids >= vocab)).nonzero()[0]
    where = tuple(int(i) for i in bad)
    raise InputError(
        f"lookup {site!r} got id {int(ids[where])} at position {where}, outside its table of "
        f"{vocab} rows (valid indices are {-vocab}..{vocab - 1}: the lookup is written as "
        "indexing, where negative ids count from the end). Check that the ids match the table."
    )


def norm_pad(padding_idx: int | None, vocab: int, *, negative_is_none: bool) -> int | None:
    """PyTorch's padding_idx as a row number in [0, vocab), or None."""
    if padding_idx is None or (negative_is_none and padding_idx < 0):
        return None
    return padding_idx + vocab if padding_idx < 0 else int(padding_idx)
