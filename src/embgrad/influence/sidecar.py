"""A shard's postings as plain ``.npy`` files next to it, so a query reads only its rows.

The Parquet shard stays the record; the sidecar is a cache derived from it. For shard
``shards/part-NNNNNN.parquet`` the folder ``postings/part-NNNNNN/`` holds, per (checkpoint,
table) group ``g``: ``gG-keys.npy`` (u,) int64 the distinct rows ascending, ``gG-starts.npy``
(u + 1,) int64, ``gG-example.npy`` (n,) int64 and ``gG-values.npy`` (n, D) in the shard's value
dtype, all in the shard's (row, example) order, plus ``meta.json`` naming the shard it was built
from (size, modification time and a hash of the Parquet footer, which holds the schema, the
row-group layout and statistics and embgrad's metadata) and a hash of every small file and of
sampled blocks of the values.

:func:`ensure` validates the sidecar against the shard and the files (sizes, headers, hashes,
keys ascending, starts monotone) and builds it again, atomically (a temporary folder renamed
into place), when it is missing, stale or corrupt; a folder that cannot be written simply has no
sidecar (queries read the Parquet). :meth:`Sidecar.read` checks the shard's size and time again
on every read (a changed shard is never answered from the sidecar) and reads, with ``readinto``
at the file offsets, only the posting lists of the rows asked for: a query's I/O and memory are
the postings it touches, not the shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .segment import Postings, Segment

SIDECAR_FORMAT = "embgrad-influence-postings/1"
#: bytes of the values file hashed every ``SAMPLE_STRIDE`` bytes (a cheap corruption check)
SAMPLE_BYTES = 4096
SAMPLE_STRIDE = 1 << 20


def sidecar_dir(shard: Path) -> Path:
    return shard.parent.parent / "postings" / shard.stem


def _identity(shard: Path) -> dict[str, Any]:
    """Size, modification time and a hash of the Parquet footer of ``shard``."""
    st = shard.stat()
    with open(shard, "rb") as f:
        f.seek(max(0, st.st_size - 8))
        tail = f.read(8)
        footer = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
        f.seek(max(0, st.st_size - 8 - footer))
        h = hashlib.blake2b(f.read(footer + 8), digest_size=16).hexdigest()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "footer": h}


def _stat_key(shard: Path) -> tuple[int, int]:
    st = shard.stat()
    return st.st_size, st.st_mtime_ns


def _hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sample_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    with open(path, "rb") as f:
        for at in range(0, size, SAMPLE_STRIDE):
            f.seek(at)
            h.update(f.read(SAMPLE_BYTES))
        f.seek(max(0, size - SAMPLE_BYTES))
        h.update(f.read(SAMPLE_BYTES))
    h.update(str(size).encode())
    return h.hexdigest()


def _header(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """(data offset, shape, dtype) of a C-order ``.npy`` file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format._read_array_header(f, version)  # type: ignore[attr-defined]
        if fortran:
            raise ValueError("Fortran order")
        return f.tell(), tuple(shape), dtype


class _Group:
    """One (checkpoint, table): keys and starts in memory, example and values on disk."""

    def __init__(self, folder: Path, g: int, info: dict[str, Any]) -> None:
        self.checkpoint = int(info["checkpoint"])
        self.table = str(info["table"])
        self.dim = int(info["dim"])
        self.keys = np.load(folder / f"g{g}-keys.npy")
        self.starts = np.load(folder / f"g{g}-starts.npy")
        self.example_file = folder / f"g{g}-example.npy"
        self.values_file = folder / f"g{g}-values.npy"
        self.example_at, _, self.example_dtype = _header(self.example_file)
        self.values_at, _, self.values_dtype = _header(self.values_file)


#: what the sidecars were asked for since the process started (posting lists read, postings,
#: bytes): how a test sees that a query reads only the postings it needs
STATS = {"reads": 0, "postings": 0, "bytes": 0}


class Sidecar:
    """A validated sidecar of one shard."""

    def __init__(self, shard: Path, folder: Path, meta: dict[str, Any]) -> None:
        self.shard = shard
        self.folder = folder
        self.stat_key = (int(meta["shard"]["size"]), int(meta["shard"]["mtime_ns"]))
        self.groups = [_Group(folder, g, info) for g, info in enumerate(meta["groups"])]

    def current(self) -> bool:
        """Whether the shard is still the one the sidecar was built from (size and time)."""
        try:
            return _stat_key(self.shard) == self.stat_key
        except OSError:
            return False

    def read(self, first: int, count: int, selfsq: np.ndarray, rows: np.ndarray | None,
             example: int | None) -> Segment:  # fmt: skip
        """The shard's segment: only ``rows`` (sorted unique or not) and / or ``example``."""
        wanted = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        postings = {}
        for grp in self.groups:
            p = _read_group(grp, wanted, example)
            if p is not None:
                postings[(grp.checkpoint, grp.table)] = p
        return Segment(first, count, postings, selfsq)


def _ranges(keys: np.ndarray, starts: np.ndarray, wanted: np.ndarray | None) -> np.ndarray:
    """(k, 2) posting ranges ``[start, end)`` of the wanted keys present (all when None)."""
    if wanted is None:
        return np.asarray([[0, int(starts[-1])]], dtype=np.int64)
    pos = np.searchsorted(keys, wanted)
    ok = pos < len(keys)
    pos = pos[ok]
    pos = pos[keys[pos] == wanted[ok]]
    return np.stack([starts[pos], starts[pos + 1]], 1) if len(pos) else np.zeros((0, 2), np.int64)


def _read_ranges(path: Path, at: int, item: int, ranges: np.ndarray, out: np.ndarray) -> None:
    """``out`` ← the items of ``ranges`` of the array whose data begin at byte ``at``."""
    view = memoryview(out.reshape(-1).view(np.uint8).data)
    done = 0
    with open(path, "rb", buffering=0) as f:
        for a, b in ranges.tolist():
            n = (b - a) * item
            f.seek(at + a * item)
            got = f.readinto(view[done : done + n])
            if got != n:
                raise OSError(f"{path} is shorter than its header says")
            done += n
    STATS["bytes"] += done


def _read_group(grp: _Group, wanted: np.ndarray | None, example: int | None) -> Postings | None:
    ranges = _ranges(grp.keys, grp.starts, wanted)
    lengths = ranges[:, 1] - ranges[:, 0]
    n = int(lengths.sum())
    if wanted is None:
        keys, starts = grp.keys, grp.starts
    else:
        hit = np.isin(grp.keys, wanted)
        keys = grp.keys[hit]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ex = np.empty(n, grp.example_dtype)
    _read_ranges(grp.example_file, grp.example_at, ex.itemsize, ranges, ex)
    if example is not None:
        sel = np.flatnonzero(ex == example)
        row = np.repeat(keys, np.diff(starts))[sel]
        sub = np.empty((len(sel), grp.dim), grp.values_dtype)
        item = grp.dim * sub.itemsize
        # the example's postings are single rows scattered over the lists: read each one
        cum = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        at = np.repeat(ranges[:, 0] - cum, lengths)[sel] + sel
        _read_ranges(grp.values_file, grp.values_at, item, np.stack([at, at + 1], 1), sub)
        STATS["postings"] += len(sel)
        return Postings.from_sorted(ex[sel], row, sub)
    values = np.empty((n, grp.dim), grp.values_dtype)
    _read_ranges(grp.values_file, grp.values_at, grp.dim * values.itemsize, ranges, values)
    STATS["reads"] += 1
    STATS["postings"] += n
    return Postings(keys.astype(np.int64), starts.astype(np.int64), ex, values)


# -- building and validating -----------------------------------------------------------------
def _check(shard: Path, folder: Path) -> Sidecar | None:
    """The sidecar if it is complete, intact and built from this very shard, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != SIDECAR_FORMAT or meta.get("shard") != _identity(shard):
            return None
        for name, want in meta["files"].items():
            path = folder / name
            if path.stat().st_size != want["size"]:
                return None
            if "hash" in want and _hash_file(path) != want["hash"]:
                return None
            if "sample" in want and _sample_hash(path) != want["sample"]:
                return None
        side = Sidecar(shard, folder, meta)
        for g, info in zip(side.groups, meta["groups"], strict=True):
            n = int(info["n"])
            _, ex_shape, _ = _header(g.example_file)
            _, v_shape, _ = _header(g.values_file)
            if (
                ex_shape != (n,)
                or v_shape != (n, g.dim)
                or len(g.starts) != len(g.keys) + 1
                or int(g.starts[0]) != 0
                or int(g.starts[-1]) != n
                or np.any(np.diff(g.keys) <= 0)
                or np.any(np.diff(g.starts) <= 0)
            ):
                return None
        return side
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write(path: Path, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _build(shard: Path, folder: Path, read: Callable[[], Segment]) -> None:
    identity = _identity(shard)
    seg = read()
    tmp = folder.parent / f".tmp-{os.getpid()}-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        groups, files = [], {}
        for g, ((c, t), p) in enumerate(sorted(seg.postings.items())):
            for name, a in (
                ("keys", p.keys.astype(np.int64)),
                ("starts", p.starts.astype(np.int64)),
                ("example", p.example.astype(np.int64)),
                ("values", p.values),
            ):
                f = tmp / f"g{g}-{name}.npy"
                _write(f, a)
                check = "sample" if name == "values" else "hash"
                digest = _sample_hash(f) if name == "values" else _hash_file(f)
                files[f.name] = {"size": f.stat().st_size, check: digest}
            groups.append({"checkpoint": c, "table": t, "dim": int(p.values.shape[1]),
                           "n": len(p.example)})  # fmt: skip
        meta = {"format": SIDECAR_FORMAT, "shard": identity, "groups": groups, "files": files}
        with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        old = folder.parent / f".old-{os.getpid()}-{folder.name}"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure(shard: Path, read: Callable[[], Segment]) -> Sidecar | None:
    """The shard's valid sidecar, built (again) from ``read()`` (the whole shard read from
    Parquet) when missing, stale or corrupt; None when it cannot be written."""
    folder = sidecar_dir(shard)
    side = _check(shard, folder)
    if side is not None:
        return side
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _build(shard, folder, read)
    except OSError:
        return None
    return _check(shard, folder)


def clear(index: Path) -> None:
    """Remove every sidecar of the index in ``index`` (they are rebuilt on open)."""
    with contextlib.suppress(OSError):
        shutil.rmtree(index / "postings")
