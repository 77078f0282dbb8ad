"""The postings sidecar of a stored index: queries read only the posting lists they need,
bit-for-bit what the Parquet gives; it is rebuilt when missing, stale or corrupt, never used
for a shard that changed, and a query's memory is bounded by what it touches."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyarrow")

import mounts  # noqa: E402
from embgrad import InfluenceIndex  # noqa: E402
from embgrad.influence import shards, sidecar  # noqa: E402
from models_torch import TinyText  # noqa: E402

V, D, C = 23, 6, 3


def _model(seed: int) -> TinyText:
    torch.manual_seed(seed)
    return TinyText(vocab=V, dim=D, classes=C).eval()


def _data(n: int = 13, t: int = 5, seed: int = 0, high: int = 12):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, high, (n, t), generator=g), torch.randint(0, C, (n,), generator=g)


def _parquet_scores(idx, test, y):
    """The same query answered from the Parquet shards alone (no sidecar)."""
    saved = dict(shards._SIDECARS)
    shards._SIDECARS.clear()
    try:
        return idx.query(test, labels=y).scores
    finally:
        shards._SIDECARS.update(saved)


@pytest.fixture
def built(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_EXAMPLES", 4)
    model, other = _model(0), _model(1)
    ids, y = _data()
    kw = dict(labels=y, checkpoints=[model, other.state_dict()], weights=[0.5, 2.0])
    path = tmp_path / "idx"
    mem = InfluenceIndex.build(model, ids, batch_size=3, **kw)
    disk = InfluenceIndex.build(model, ids, batch_size=3, path=path, **kw)

    def reopen():
        return InfluenceIndex.open(path, model, checkpoints=kw["checkpoints"], weights=[0.5, 2.0])

    return path, mem, disk, reopen


def _sidecars(path: Path) -> list[Path]:
    return sorted(p for p in (path / "postings").iterdir() if p.name.startswith("part-"))


def test_queries_come_from_the_sidecar_bit_for_bit(built):
    path, mem, disk, _ = built
    test, y = _data(3, 6, seed=1)
    shard_files = sorted((path / "shards").glob("part-*.parquet"))
    assert [p.name for p in _sidecars(path)] == [p.stem for p in shard_files]
    assert all(p in shards._SIDECARS for p in shard_files)
    before = dict(sidecar.STATS)
    got = disk.query(test, labels=y)
    assert sidecar.STATS["reads"] > before["reads"]
    np.testing.assert_array_equal(got.scores, _parquet_scores(disk, test, y))
    np.testing.assert_allclose(got.scores, mem.query(test, labels=y).scores, rtol=1e-12)
    for j in (0, 6, 12):
        assert got.by_token(1, j) == pytest.approx(mem.query(test, labels=y).by_token(1, j))
    for j in (0, 5, 12):
        a, b = disk.train_rows(j), mem.train_rows(j)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key][0], b[key][0])
            np.testing.assert_array_equal(a[key][1], b[key][1])


def test_a_query_reads_only_the_posting_lists_of_its_rows(built):
    path, _, disk, _ = built
    test = torch.tensor([[3, 5, 3]])
    before = dict(sidecar.STATS)
    disk.query(test, labels=[0])
    read = sidecar.STATS["bytes"] - before["bytes"]
    want = 0
    total = 0
    for side in (shards._SIDECARS[p] for p in sorted((path / "shards").glob("*.parquet"))):
        for g in side.groups:
            total += int(g.starts[-1]) * (8 + 4 * g.dim)
            for r in (3, 5):
                u = np.searchsorted(g.keys, r)
                if u < len(g.keys) and g.keys[u] == r:
                    want += int(g.starts[u + 1] - g.starts[u]) * (8 + 4 * g.dim)
    assert 0 < read == want < total / 2


@pytest.mark.parametrize("damage", ["missing", "meta", "truncated", "keys", "values"])
def test_a_missing_or_corrupt_sidecar_is_rebuilt_on_open(built, damage):
    path, _, disk, reopen = built
    test, y = _data(3, 6, seed=1)
    want = disk.query(test, labels=y).scores
    folder = _sidecars(path)[1]
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    if damage == "missing":
        shutil.rmtree(folder)
    elif damage == "meta":
        (folder / "meta.json").write_text("{not json")
    elif damage == "truncated":
        f = folder / "g0-values.npy"
        f.write_bytes(f.read_bytes()[:-24])
    else:  # one flipped byte in the data part of a file (past the .npy header)
        f = folder / f"g0-{damage}.npy"
        raw = bytearray(f.read_bytes())
        raw[-1] ^= 0xFF
        f.write_bytes(bytes(raw))
    again = reopen()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == good
    np.testing.assert_array_equal(again.query(test, labels=y).scores, want)


def test_a_changed_shard_is_never_answered_from_its_old_sidecar(built, tmp_path, monkeypatch):
    path, _, _, reopen = built
    idx = reopen()
    test, y = _data(3, 6, seed=1)
    # another index with the same layout but other training data: its shard 0 replaces ours
    model, other = _model(0), _model(1)
    ids, labels = _data(seed=5)
    kw = dict(labels=labels, checkpoints=[model, other.state_dict()], weights=[0.5, 2.0])
    InfluenceIndex.build(model, ids, batch_size=3, path=tmp_path / "other", **kw)
    shards._SIDECARS.pop(tmp_path / "other" / "shards" / "part-000000.parquet", None)
    src = tmp_path / "other" / "shards" / "part-000000.parquet"
    dst = path / "shards" / "part-000000.parquet"
    shutil.copyfile(src, dst)
    os.utime(dst, ns=(1, 1))  # even with an old time: the size or the time differs
    got = idx.query(test, labels=y).scores
    np.testing.assert_array_equal(got, _parquet_scores(idx, test, y))
    meta = json.loads((path / "postings" / "part-000000" / "meta.json").read_text())
    assert meta["shard"] != sidecar._identity(dst)  # the old sidecar is still there, unused
    again = reopen()  # open rebuilds it from the new shard
    meta = json.loads((path / "postings" / "part-000000" / "meta.json").read_text())
    assert meta["shard"] == sidecar._identity(dst)
    np.testing.assert_array_equal(again.query(test, labels=y).scores, got)


def test_an_unwritable_index_folder_is_queried_from_the_parquet(tmp_path):
    model = _model(0)
    ids, y = _data()
    test, yt = _data(3, 6, seed=1)
    mem = InfluenceIndex.build(model, ids, labels=y)
    InfluenceIndex.build(model, ids, labels=y, path=tmp_path / "ro" / "idx")
    sidecar.clear(tmp_path / "ro" / "idx")
    with mounts.read_only(tmp_path / "ro"):
        idx = InfluenceIndex.open(tmp_path / "ro" / "idx", model)
        assert not (tmp_path / "ro" / "idx" / "postings").exists()
        assert not any(p in shards._SIDECARS for p in (tmp_path / "ro").rglob("*.parquet"))
        got = idx.query(test, labels=yt).scores
    np.testing.assert_allclose(got, mem.query(test, labels=yt).scores, rtol=1e-12)


def test_a_query_holds_one_shards_touched_postings_not_the_index(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_EXAMPLES", 20)
    torch.manual_seed(0)
    model = TinyText(vocab=40, dim=64, classes=C).eval()
    ids, y = _data(960, 9, high=40)
    idx = InfluenceIndex.build(model, ids, labels=y, batch_size=20, path=tmp_path / "idx")
    total = sum(p.stat().st_size for p in (tmp_path / "idx" / "postings").rglob("*-values.npy"))
    test = torch.arange(1, 41).clamp(max=39).reshape(4, 10)  # every row: every posting list
    idx.query(test, labels=[0] * 4)
    tracemalloc.start()
    try:
        idx.query(test, labels=[0] * 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(_sidecars(tmp_path / "idx")) == 48
    assert peak < total / 4  # about one shard's postings at a time (+ the test's rows)
