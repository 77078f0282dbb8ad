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
import importlib
import inspect
import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .._progress import bar
from .._version import __version__
from ..backends.weights import CheckpointSlot, named_values, shapes
from ..errors import EmbgradError, InputError, missing_extra
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
from .segment import Postings, Segment

FORMAT = "embgrad-influence/1"
#: examples per shard (a shard closes at the first batch boundary at or after this many)
SHARD_EXAMPLES = 2048
#: postings per Parquet row group: a query reads only the groups whose row range it touches
ROW_GROUP = 8192


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError as e:
        raise missing_extra("pyarrow", "data") from e


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


# -- the folder ------------------------------------------------------------------------------
class Folder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifest_file = path / "manifest.json"
        self.shards = path / "shards"

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            text = self.manifest_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise InputError(f"cannot read {self.manifest_file}: {e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(
                f"{self.manifest_file} is not an embgrad influence index manifest ({FORMAT}): "
                "choose another folder"
            )
        return data

    def write_manifest(self, data: dict[str, Any]) -> None:
        _atomic(self.manifest_file, json.dumps(data, indent=1).encode())

    def shard_files(self) -> list[Path]:
        if not self.shards.is_dir():
            return []
        return sorted(self.shards.glob("part-*.parquet"))

    def clean_temps(self) -> None:
        for f in self.shards.glob(".tmp-*") if self.shards.is_dir() else []:
            with contextlib.suppress(OSError):
                f.unlink()


def _atomic(target: Path, data: bytes) -> None:
    tmp = target.parent / f".tmp-{os.getpid()}-{target.name}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_dir(target.parent)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _os_error(e: OSError, path: Path) -> EmbgradError:
    return InputError(f"cannot write the index to {path}: {e.strerror or e}")


# -- shards ----------------------------------------------------------------------------------
def write_shard(
    folder: Folder,
    number: int,
    segments: list[Segment],
    hashes: list[str],
    roles: dict[str, str],
) -> None:
    """One shard of consecutive batches' segments, atomically (temp file, fsync, rename)."""
    pa, pq = _pyarrow()
    seg = Segment.merge(segments, segments[0].selfsq.shape[0])
    groups = sorted(seg.postings.items())
    dims = {t: int(p.values.shape[1]) for (_, t), p in groups}
    dtypes = [p.values.dtype for _, p in groups]
    dtype = np.result_type(np.float32, *dtypes)

    def cat(parts: list[np.ndarray], empty: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, empty)

    parts: dict[str, list[np.ndarray]] = {"c": [], "t": [], "lens": []}
    for (c, t), p in groups:
        n = len(p.example)
        parts["c"].append(np.full(n, c, np.int32))
        parts["t"].append(np.full(n, t, object))
        parts["lens"].append(np.full(n, dims[t], np.int64))
    flat = cat([p.values.astype(dtype).reshape(-1) for _, p in groups], dtype)
    offsets = np.concatenate([[0], np.cumsum(cat(parts["lens"], np.int64))])
    big = len(flat) >= 2**31
    lists = (pa.LargeListArray if big else pa.ListArray).from_arrays(
        pa.array(offsets.astype(np.int64 if big else np.int32)), pa.array(flat)
    )
    table = pa.table(
        {
            "checkpoint": pa.array(cat(parts["c"], np.int32)),
            "table": pa.array(cat(parts["t"], object), type=pa.string()),
            "row": pa.array(cat([p.row for _, p in groups], np.int64)),
            "example": pa.array(cat([p.example for _, p in groups], np.int64)),
            "values": lists,
        }
    )
    meta = {
        "first": seg.first,
        "count": seg.count,
        "hashes": hashes,
        "dims": dims,
        "roles": roles,
        "selfsq": seg.selfsq.tolist(),
    }
    table = table.replace_schema_metadata({"embgrad": json.dumps(meta)})
    folder.shards.mkdir(parents=True, exist_ok=True)
    target = folder.shards / f"part-{number:06d}.parquet"
    tmp = folder.shards / f".tmp-{os.getpid()}-{target.name}"
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_dir(folder.shards)


def shard_meta(path: Path) -> dict[str, Any]:
    """A shard's key-value metadata (first, count, hashes, dims, selfsq)."""
    _, pq = _pyarrow()
    try:
        raw = pq.read_schema(path).metadata or {}
        meta = json.loads(raw[b"embgrad"])
        int(meta["first"]), int(meta["count"]), list(meta["hashes"])
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise InputError(f"{path} is not a readable index shard ({e}): rebuild the index") from None
    return dict(meta)


def read_shard(
    path: Path,
    meta: dict[str, Any] | None = None,
    *,
    rows: np.ndarray | None = None,
    example: int | None = None,
) -> Segment:
    """A shard as a :class:`Segment` (postings per (checkpoint, table), sorted by row); only
    the table rows ``rows`` and / or the training example ``example`` when given (Parquet row
    groups whose row statistics miss every wanted row are not read)."""
    _, pq = _pyarrow()
    meta = shard_meta(path) if meta is None else meta
    selfsq = np.asarray(meta["selfsq"], dtype=np.float64).reshape(-1, int(meta["count"]))
    if rows is not None and not len(rows):
        return Segment(int(meta["first"]), int(meta["count"]), {}, selfsq)
    filters: list[tuple[str, str, Any]] = []
    if rows is not None:
        filters.append(("row", "in", np.unique(rows).tolist()))
    if example is not None:
        filters.append(("example", "==", int(example)))
    try:
        table = pq.read_table(path, filters=filters or None)
    except OSError as e:
        raise InputError(f"cannot read the index shard {path}: {e}") from None
    ckpt = table.column("checkpoint").to_numpy()
    names = table.column("table").to_numpy(zero_copy_only=False)
    row = table.column("row").to_numpy()
    ex = table.column("example").to_numpy()
    dims = np.asarray([int(meta["dims"][str(t)]) for t in names], dtype=np.int64)
    flat = table.column("values").combine_chunks().flatten().to_numpy()
    order = np.arange(len(row))
    if filters:  # keep the (checkpoint, table, row, example) order whatever the reader did
        codes = np.unique(names, return_inverse=True)[1] if len(names) else names
        order = np.lexsort((ex, row, codes, ckpt))
    if not np.array_equal(order, np.arange(len(row))):
        starts = np.concatenate([[0], np.cumsum(dims)])
        flat = np.concatenate(
            [flat[starts[i] : starts[i + 1]] for i in order.tolist()]
        ) if len(order) else flat  # fmt: skip
        ckpt, names, row, ex = ckpt[order], names[order], row[order], ex[order]
    example_ids = ex
    n = len(row)
    change = np.flatnonzero((ckpt[1:] != ckpt[:-1]) | (names[1:] != names[:-1])) + 1
    bounds = np.concatenate([[0], change, [n]]) if n else np.zeros(1, np.int64)
    postings = {}
    at = 0
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        c, t = int(ckpt[a]), str(names[a])
        d = int(meta["dims"][t])
        values = flat[at : at + (b - a) * d].reshape(b - a, d)
        at += (b - a) * d
        postings[(c, t)] = Postings.from_sorted(example_ids[a:b], row[a:b], values)
    return Segment(int(meta["first"]), int(meta["count"]), postings, selfsq)


# -- the stored index ------------------------------------------------------------------------
class ShardSource:
    """Segments read from the shards one at a time (memory bounded by one shard)."""

    def __init__(self, folder: Folder, metas: list[tuple[Path, dict[str, Any]]]) -> None:
        self.folder = folder
        self.metas = metas
        self.n_train = sum(int(m["count"]) for _, m in metas)
        self._firsts = np.asarray([int(m["first"]) for _, m in metas], dtype=np.int64)

    def segments(self, rows: np.ndarray | None = None) -> Iterator[Segment]:
        for path, meta in self.metas:
            yield read_shard(path, meta, rows=rows)

    def segment_of(self, j: int, rows: np.ndarray | None = None) -> Segment:
        k = int(np.searchsorted(self._firsts, j, side="right")) - 1
        path, meta = self.metas[k]
        return read_shard(path, meta, rows=rows, example=j)

    def self_squares(self) -> np.ndarray:
        parts = [
            np.asarray(m["selfsq"], dtype=np.float64).reshape(-1, int(m["count"]))
            for _, m in self.metas
        ]
        return np.concatenate(parts, axis=1) if parts else np.zeros((0, 0))


def _existing(folder: Folder) -> list[tuple[Path, dict[str, Any]]]:
    """The committed shards, checked to be part-000000 … in example order, contiguous."""
    out = []
    first = 0
    for k, path in enumerate(folder.shard_files()):
        meta = shard_meta(path)
        if path.name != f"part-{k:06d}.parquet" or int(meta["first"]) != first:
            raise InputError(
                f"the shards in {folder.shards} are not a contiguous series ({path.name} "
                f"starts at example {meta['first']}, expected {first}): delete the folder and "
                "build again"
            )
        first += int(meta["count"])
        out.append((path, meta))
    return out


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
        if path.is_dir() and any(path.iterdir()):
            raise InputError(
                f"{path} is a non-empty folder without an index manifest: choose a new or "
                "empty folder for the index"
            )
        manifest = {"format": FORMAT, "version": __version__, "fingerprint": fp}
        try:
            path.mkdir(parents=True, exist_ok=True)
            folder.write_manifest({**manifest, "complete": False})
        except OSError as e:
            raise _os_error(e, path) from None
    elif manifest.get("fingerprint") != fp:
        raise InputError(
            f"the index in {path} was built with another "
            f"{_describe(manifest.get('fingerprint') or {}, fp)}: use the same arguments "
            "to resume it, or another folder"
        )
    try:
        with run() as engine:
            n, roles = _fill(folder, engine, train, batch_size)
    except OSError as e:
        raise _os_error(e, path) from None
    check_count(labels, n)
    done = {**manifest, "complete": True, "n_train": n, "roles": roles}
    try:
        folder.write_manifest(done)
    except OSError as e:
        raise _os_error(e, path) from None
    return _open(cls, folder, model, states, weights, layer, top_rows, skip, tokenizer, batch_size)


def _fill(
    folder: Folder, engine: Engine, train: Any, batch_size: int
) -> tuple[int, dict[str, str]]:
    """Run the batches the committed shards do not cover, writing shards as they fill."""
    folder.clean_temps()
    existing = _existing(folder)
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
            if sum(s.count for s in pending) >= SHARD_EXAMPLES:
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
    source = ShardSource(folder, _existing(folder))
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
