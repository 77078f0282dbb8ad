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
#: how many frames above a lookup are searched for the module that made it (tied tables)
_FRAME_DEPTH = 12


class TableNames:
    """The model's registered tensors (parameters and buffers) by identity, for naming lookups."""

    def __init__(self, module: torch.nn.Module) -> None:
        """One walk over the module tree (every registration, duplicates included); it also
        lists each distinct submodule once (``submodules``) for the training-flag switch."""
        self.module = module
        self.names: dict[int, list[str]] = {}
        self.modules: dict[int, list[str]] = {}
        self.submodules: list[torch.nn.Module] = []
        # named_modules(remove_duplicate=False)'s pre-order, without its generators (this runs
        # on every call, so it is kept to plain dict and list work)
        stack: list[tuple[str, torch.nn.Module]] = [("", module)]
        while stack:
            path, mod = stack.pop()
            paths = self.modules.get(id(mod))
            if paths is None:
                self.submodules.append(mod)
                self.modules[id(mod)] = [path]
            else:
                paths.append(path)
            prefix = path + "." if path else ""
            for members in (mod._parameters, mod._buffers):
                for key, t in members.items():
                    if t is not None:
                        got = self.names.get(id(t))
                        if got is None:
                            self.names[id(t)] = [prefix + key]
                        else:
                            got.append(prefix + key)
            children = [(prefix + k, m) for k, m in mod._modules.items() if m is not None]
            stack.extend(reversed(children))

    def _caller_first(self, names: list[str], weight: torch.Tensor) -> list[str]:
        """``names`` with the name under which the calling module holds ``weight`` first.

        A table registered under several names (T5's ``shared`` / ``encoder.embed_tokens``,
        GPT-2's ``wte`` / ``lm_head``) is named after the module whose forward is on the stack.
        """
        frame: FrameType | None = sys._getframe(2)
        for _ in range(_FRAME_DEPTH):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, torch.nn.Module):
                attrs = [k for k, v in owner._parameters.items() if v is weight]
                for path in self.modules.get(id(owner), []) if attrs else []:
                    full = f"{path}.{attrs[0]}" if path else attrs[0]
                    if full in names:
                        return [full] + [n for n in names if n != full]
            frame = frame.f_back
        return names

    def describe(self, weight: torch.Tensor, kind: str) -> dict[str, Any]:
        """Capture fields (name, role, module, table, aliases, owner, tied, note) of a lookup on
        ``weight``.  ``table`` is the tensor's canonical name (its first registration), the same
        for every call site; ``aliases`` are all its registered names, canonical first."""
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
        own = self._caller_first(names, weight)[0] if len(names) > 1 else names[0]
        path, _, attr = own.rpartition(".")
        owner = self.module.get_submodule(path)
        own, path = _plain(own), _plain(path)
        is_layer = attr == "weight" and isinstance(
            owner, (torch.nn.Embedding, torch.nn.EmbeddingBag)
        )
        site = path if attr == "weight" and path else own
        note = ""
        if len(names) > 1:
            note = (
                f"tied weights: table {table} is registered as {', '.join(aliases)} (looked up "
                f"here as {own}); this table gradient covers this lookup's path only "
                "(Gradients.table_grad sums all captured lookups of the table), not the table's "
                "other uses"
            )
        return {
            "name": site,
            "role": guess_role(own),
            "module": type(owner).__name__ if is_layer else kind,
            "table": table,
            "aliases": aliases,
            "owner": owner,
            "tied": len(names) > 1,
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


def norm_pad(padding_idx: int | None, vocab: int, *, negative_is_none: bool) -> int | None:
    """PyTorch's padding_idx as a row number in [0, vocab), or None."""
    if padding_idx is None or (negative_is_none and padding_idx < 0):
        return None
    return padding_idx + vocab if padding_idx < 0 else int(padding_idx)
