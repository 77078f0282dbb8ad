"""Index shards on disk: the folder (manifest, lock, atomic writes), Parquet shards sorted by
(checkpoint, table, row, example) with their metadata, and reading them back as segments, one
at a time and only the rows a query touches."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .._locks import exclusive
from ..errors import EmbgradError, InputError, missing_extra
from . import sidecar
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

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the folder while building (released even on kill -9)."""
        with exclusive(
            self.path / ".lock",
            f"another build is writing the index in {self.path}; wait for it to end",
        ):
            yield

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


def os_error(e: OSError, path: Path) -> EmbgradError:
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
    groups whose row statistics miss every wanted row are not read). When the shard has a
    valid sidecar (:func:`open_sidecars`), and the shard is unchanged since, the postings are
    read from it: only the posting lists of ``rows``, no decoding."""
    meta = shard_meta(path) if meta is None else meta
    selfsq = np.asarray(meta["selfsq"], dtype=np.float64).reshape(-1, int(meta["count"]))
    if rows is not None and not len(rows):
        return Segment(int(meta["first"]), int(meta["count"]), {}, selfsq)
    side = _SIDECARS.get(path)
    if side is not None and side.current():
        try:
            return side.read(int(meta["first"]), int(meta["count"]), selfsq, rows, example)
        except OSError:
            _SIDECARS.pop(path, None)  # gone or cut since validated: the Parquet answers
    return _read_parquet(path, meta, selfsq, rows=rows, example=example)


#: shard path → its validated sidecar (filled by :func:`open_sidecars`)
_SIDECARS: dict[Path, sidecar.Sidecar] = {}


def open_sidecars(metas: list[tuple[Path, dict[str, Any]]]) -> None:
    """Validate (building again where missing, stale or corrupt) every shard's sidecar."""
    for path, meta in metas:
        selfsq = np.asarray(meta["selfsq"], dtype=np.float64).reshape(-1, int(meta["count"]))
        side = sidecar.ensure(path, functools.partial(_read_parquet, path, meta, selfsq))
        if side is None:
            _SIDECARS.pop(path, None)
        else:
            _SIDECARS[path] = side


def _read_parquet(
    path: Path,
    meta: dict[str, Any],
    selfsq: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    example: int | None = None,
) -> Segment:
    _, pq = _pyarrow()
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
        open_sidecars(metas)

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


def existing_shards(folder: Folder) -> list[tuple[Path, dict[str, Any]]]:
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
