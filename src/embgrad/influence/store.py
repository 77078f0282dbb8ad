"""An index on disk: Parquet shards written atomically, resumable, fingerprinted.

Layout of ``IDX/``::

    manifest.json            format, fingerprint (architecture, each checkpoint's weights hash,
                             weights, layer, top_rows, skip_special, loss, batch_size);
                             "complete" with n_train and table roles once every batch is in
    shards/part-NNNNNN.parquet  consecutive batches: one row per stored (checkpoint, table,
                             row, example) with the gradient row as a list; the key-value
                             metadata holds the examples covered, each batch's content hash
                             and each example's squared norms per checkpoint

A shard is written to a temp file, synced and renamed, so a visible shard is complete. Building
again into the same folder with the same arguments skips the batches its shards cover (checking
each one's content hash against the shard's) and goes on: killed at any moment and run again,
every example is stored exactly once. A different model, checkpoint set, weights, layer,
top_rows, skip_special, loss or batch size is refused, by the build and by :func:`open_stored`.
A query reads one shard at a time, so memory is bounded by a shard, not by the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import bar
from .._version import __version__
from ..backends.weights import CheckpointSlot, named_values, shapes
from ..errors import InputError
from . import shards
from .batches import CrossEntropy, batch_hash, count_examples, iter_batches
from .build import (
    KEEP,
    Engine,
    Job,
    check_count,
    check_top_rows,
    checkpoints_and_weights,
)
from .rows import special_ids
from .segment import Segment
from .shards import FORMAT, Folder, ShardSource, existing_shards, os_error, write_shard


# -- fingerprints ----------------------------------------------------------------------------
def weights_hash(model: Any) -> str:
    """A hash of every parameter and buffer of ``model`` (names, shapes, dtypes, values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, value in named_values(model):
        a = np.ascontiguousarray(value)
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _architecture(model: Any) -> str:
    return hashlib.blake2b(repr(sorted(shapes(model).items())).encode(), digest_size=16).hexdigest()


def _layer_key(layer: Any) -> Any:
    if isinstance(layer, (list, tuple)):
        return [_layer_key(x) for x in layer]
    if isinstance(layer, type):
        return f"class:{layer.__qualname__}"
    return str(layer)


def _loss_key(loss: Any, labels: np.ndarray | None) -> str:
    if isinstance(loss, CrossEntropy) and labels is not None:
        return "labels:" + hashlib.blake2b(labels.tobytes(), digest_size=16).hexdigest()
    code = getattr(loss, "__code__", None) or getattr(type(loss).__call__, "__code__", None)
    name = getattr(loss, "__qualname__", type(loss).__qualname__)
    try:
        src = inspect.getsource(loss)
    except (OSError, TypeError):
        src = "" if code is None else code.co_code.hex()
    return f"fn:{name}:" + hashlib.blake2b(src.encode(), digest_size=16).hexdigest()


def model_fingerprint(model: Any, slot: CheckpointSlot, states: list[Any], w: list[float]) -> dict:
    """What identifies the models the sum runs over: architecture, weights hashes, weights."""
    hashes = [weights_hash(slot.load(s, f"checkpoint {c}")) for c, s in enumerate(states)]
    return {"architecture": _architecture(model), "checkpoints": hashes, "weights": w}


def _describe(old: dict, new: dict) -> str:
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    names = {"checkpoints": "checkpoint weights (model or checkpoint set)"}
    return ", ".join(names.get(k, k) for k in diff)


def fingerprint(
    model: Any, slot: CheckpointSlot, *, states: list[Any], weights: list[float], layer: Any,
    top_rows: int | None, skip: np.ndarray | None,
) -> dict[str, Any]:  # fmt: skip
    """Everything a stored index's scores depend on, except the loss and the batching."""
    return {
        **model_fingerprint(model, slot, states, weights),
        "layer": _layer_key(layer),
        "top_rows": top_rows,
        "skip_special": None if skip is None else skip.tolist(),
    }


def build_stored(
    cls: Any, model: Any, train: Any, loss: Any, labels: np.ndarray | None, path: Path,
    run: Callable[[], contextlib.AbstractContextManager[Engine]], *,
    states: list[Any], weights: list[float], layer: Any, top_rows: int | None,
    skip: np.ndarray | None, tokenizer: Any, batch_size: int,
) -> Any:  # fmt: skip
    """Build (or resume building) the index in ``path``; returns the opened index."""
    folder = Folder(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a folder: choose a folder for the index")
    with CheckpointSlot(model) as slot:
        fp = fingerprint(
            model, slot, states=states, weights=weights, layer=layer, top_rows=top_rows, skip=skip
        )
    fp["loss"] = _loss_key(loss, labels)
    fp["batch_size"] = batch_size
    manifest = folder.read_manifest()
    if manifest is None:
        if path.is_dir() and any(p.name != ".lock" for p in path.iterdir()):
            raise InputError(
                f"{path} is a non-empty folder without an index manifest: choose a new or "
                "empty folder for the index"
            )
        manifest = {"format": FORMAT, "version": __version__, "fingerprint": fp}
    elif manifest.get("fingerprint") != fp:
        raise InputError(
            f"the index in {path} was built with another "
            f"{_describe(manifest.get('fingerprint') or {}, fp)}: use the same arguments "
            "to resume it, or another folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with folder.lock():
            if not folder.manifest_file.exists():
                folder.write_manifest({**manifest, "complete": False})
            with run() as engine:
                n, roles = _fill(folder, engine, train, batch_size)
            check_count(labels, n)
            folder.write_manifest({**manifest, "complete": True, "n_train": n, "roles": roles})
    except OSError as e:
        raise os_error(e, path) from None
    return _open(cls, folder, model, states, weights, layer, top_rows, skip, tokenizer, batch_size)


def _fill(
    folder: Folder, engine: Engine, train: Any, batch_size: int
) -> tuple[int, dict[str, str]]:
    """Run the batches the committed shards do not cover, writing shards as they fill."""
    folder.clean_temps()
    existing = existing_shards(folder)
    done_hashes = [h for _, m in existing for h in m["hashes"]]
    roles: dict[str, str] = {}
    for _, m in existing:
        roles.update(m.get("roles", {}))
    seen = {"examples": 0, "batches": 0}
    hashes: deque[str] = deque()

    def jobs(shown: Any) -> Iterator[Job]:
        for b, (batch, count) in enumerate(iter_batches(train, batch_size)):
            h = batch_hash(batch)
            first = seen["examples"]
            seen["examples"] += count
            seen["batches"] = b + 1
            if b < len(done_hashes):
                if h != done_hashes[b]:
                    raise InputError(
                        f"batch {b} (examples from {first}) differs from the one the index in "
                        f"{folder.path} was built from: resume with the same data, or use "
                        "another folder"
                    )
                shown.update(count)
                continue
            hashes.append(h)
            yield batch, first, count
            shown.update(count)

    number = len(existing)
    pending: list[Segment] = []
    pending_hashes: list[str] = []
    with bar(count_examples(train) or 0, "influence index", "ex") as shown:
        for seg in engine.map(jobs(shown)):
            pending.append(seg)
            pending_hashes.append(hashes.popleft())
            roles.update(seg.roles)
            if sum(s.count for s in pending) >= shards.SHARD_EXAMPLES:
                write_shard(folder, number, pending, pending_hashes, roles)
                number, pending, pending_hashes = number + 1, [], []
    if seen["batches"] < len(done_hashes):
        raise InputError(
            f"the data have {seen['batches']} batches but the index in {folder.path} already "
            f"holds {len(done_hashes)}: resume with the same data, or use another folder"
        )
    if pending:
        write_shard(folder, number, pending, pending_hashes, roles)
    return seen["examples"], roles


def open_stored(
    cls: Any, path: Path, model: Any, *, checkpoints: Any, weights: Any, layer: Any,
    top_rows: Any, skip_special: Any, tokenizer: Any, batch_size: int | None,
) -> Any:  # fmt: skip
    """Open a complete stored index, refusing other models, checkpoints, weights, options."""
    folder = Folder(path)
    manifest = folder.read_manifest()
    if manifest is None:
        raise InputError(f"no influence index in {path} (no manifest.json): build one first")
    if not manifest.get("complete"):
        raise InputError(
            f"the index in {path} is incomplete (its build stopped): run the build again with "
            "the same arguments to finish it"
        )
    stored = manifest["fingerprint"]
    states, w = checkpoints_and_weights(model, checkpoints, weights)
    use_layer = stored["layer"] if layer is KEEP else layer
    top = stored["top_rows"] if top_rows is KEEP else check_top_rows(top_rows)
    if skip_special is KEEP:
        skip = None if stored["skip_special"] is None else np.asarray(stored["skip_special"])
    else:
        skip = special_ids(skip_special, tokenizer)
    with CheckpointSlot(model) as slot:
        fp = fingerprint(
            model, slot, states=states, weights=w, layer=use_layer, top_rows=top, skip=skip
        )
    mine = {k: stored.get(k) for k in fp}
    if mine != fp:
        raise InputError(
            f"the index in {path} was built with another {_describe(mine, fp)}: open it with "
            "the model, checkpoints, weights and options it was built with"
        )
    if isinstance(use_layer, str) and use_layer.startswith("class:"):
        raise InputError(f"the index in {path} selects lookups by class: pass layer= the class")
    size = int(stored.get("batch_size", 32)) if batch_size is None else batch_size
    return _open(cls, folder, model, states, w, use_layer, top, skip, tokenizer, size)


def _open(
    cls: Any, folder: Folder, model: Any, states: list[Any], weights: list[float], layer: Any,
    top: int | None, skip: np.ndarray | None, tokenizer: Any, batch_size: int,
) -> Any:  # fmt: skip
    manifest = folder.read_manifest() or {}
    source = ShardSource(folder, existing_shards(folder))
    if source.n_train != manifest.get("n_train"):
        raise InputError(
            f"the index in {folder.path} lists {manifest.get('n_train')} examples but its "
            f"shards hold {source.n_train}: build it again"
        )
    return cls(
        model, states=states, weights=weights, layer=layer, top_rows=top, skip=skip,
        tokenizer=tokenizer, batch_size=batch_size, source=source,
        roles=manifest.get("roles", {}), path=folder.path,
    )  # fmt: skip
