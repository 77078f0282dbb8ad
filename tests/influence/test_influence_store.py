"""An index stored as Parquet shards: equal to the in-memory one, resumable after SIGKILL with
every example exactly once, fingerprinted (other model / checkpoints / options refused)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyarrow")

from embgrad import InfluenceIndex  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from embgrad.influence import shards  # noqa: E402
from models_torch import TinyText  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
V, D, C = 23, 6, 3


def _model(seed: int) -> TinyText:
    torch.manual_seed(seed)
    return TinyText(vocab=V, dim=D, classes=C).eval()


def _data(n: int = 11, t: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 12, (n, t), generator=g), torch.randint(0, C, (n,), generator=g)


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(shards, "SHARD_EXAMPLES", 4)


def _examples_stored(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    out = []
    for f in sorted((path / "shards").glob("part-*.parquet")):
        t = pq.read_table(f)
        ck = t.column("checkpoint").to_numpy()
        tb = t.column("table").to_numpy(zero_copy_only=False)
        ex = t.column("example").to_numpy()
        row = t.column("row").to_numpy()
        out.append(np.stack([ck, ex, row], 1)[tb == "word.weight"])
    return np.concatenate(out)


def test_a_stored_index_equals_the_in_memory_one_and_reopens(tmp_path, small_shards):
    model, other = _model(0), _model(1)
    ids, y = _data()
    test, y_test = _data(4, 6, seed=1)
    kw = dict(labels=y, checkpoints=[model, other.state_dict()], weights=[0.5, 2.0], top_rows=3)
    mem = InfluenceIndex.build(model, ids, batch_size=3, **kw)
    disk = InfluenceIndex.build(model, ids, batch_size=3, path=tmp_path / "idx", **kw)
    assert len(list((tmp_path / "idx" / "shards").glob("part-*.parquet"))) == 2
    a, b = mem.query(test, labels=y_test), disk.query(test, labels=y_test)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(disk.self_influence(), mem.self_influence(), rtol=1e-12)
    for j in (0, 5, 10):
        assert b.by_token(2, j) == pytest.approx(a.by_token(2, j))
    again = InfluenceIndex.open(
        tmp_path / "idx", model, checkpoints=[model, other.state_dict()], weights=[0.5, 2.0]
    )
    np.testing.assert_allclose(again.query(test, labels=y_test).scores, a.scores, rtol=1e-12)
    assert again.top_rows == 3 and len(again) == 11


def test_open_and_resume_refuse_another_model_checkpoints_weights_or_options(tmp_path):
    model, other = _model(0), _model(1)
    ids, y = _data()
    path = tmp_path / "idx"
    InfluenceIndex.build(model, ids, labels=y, checkpoints=[model, other], path=path)
    ok = dict(checkpoints=[model, other])
    bad = [
        (dict(checkpoints=[model]), "checkpoint"),
        (dict(checkpoints=[other, model]), "checkpoint"),
        (dict(ok, weights=[1.0, 3.0]), "weights"),
        (dict(ok, top_rows=2), "top_rows"),
        (dict(ok, layer="position"), "layer"),
        (dict(ok, skip_special=[1]), "skip_special"),
    ]
    for kwargs, match in bad:
        with pytest.raises(InputError, match=match):
            InfluenceIndex.open(path, model, **kwargs)
    with pytest.raises(InputError, match="architecture"):
        InfluenceIndex.open(path, TinyText(vocab=V, dim=D + 2, classes=C), **ok)
    with pytest.raises(InputError, match="top_rows"):
        InfluenceIndex.build(
            model, ids, labels=y, checkpoints=[model, other], top_rows=1, path=path
        )
    ids2 = ids.clone()
    ids2[7, 0] = (ids2[7, 0] + 1) % V
    with pytest.raises(InputError, match=r"batch 0 .* differs"):
        InfluenceIndex.build(model, ids2, labels=y, checkpoints=[model, other], path=path)
    with pytest.raises(InputError, match="loss"):
        InfluenceIndex.build(
            model, ids, labels=1 - y.clamp(max=1), checkpoints=[model, other], path=path
        )
    with pytest.raises(InputError, match="no influence index"):
        InfluenceIndex.open(tmp_path / "nothing", model)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(InputError, match="non-empty folder"):
        InfluenceIndex.build(model, ids, labels=y, path=tmp_path / "busy")


SCRIPT = """
import os, signal, sys, torch
import embgrad.influence.shards as shards
from embgrad import InfluenceIndex
from models_torch import TinyText

shards.SHARD_EXAMPLES = 4
torch.manual_seed(0)
model = TinyText(vocab={V}, dim={D}, classes={C}).eval()
g = torch.Generator().manual_seed(0)
ids = torch.randint(1, 12, (17, 5), generator=g)
y = torch.randint(0, {C}, (17,), generator=g)
marker = sys.argv[2]

def loss(logits, rows):
    if rows[0] == 9 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return torch.nn.functional.cross_entropy(logits, y[torch.as_tensor(rows)], reduction="none")

InfluenceIndex.build(model, [ids[i : i + 3] for i in range(0, 17, 3)], loss, path=sys.argv[1])
print("done")
"""


def test_killed_with_sigkill_and_run_again_every_example_is_stored_exactly_once(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(SCRIPT.format(V=V, D=D, C=C)))
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests' / 'shared'}")

    def run(out: Path, marker: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), str(out), str(marker)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    killed = run(tmp_path / "idx", tmp_path / "marker")
    assert killed.returncode == -9, killed.stderr
    assert len(list((tmp_path / "idx" / "shards").glob("part-*.parquet"))) == 1  # examples 0-5
    with pytest.raises(InputError, match="incomplete"):
        InfluenceIndex.open(tmp_path / "idx", _model(0))
    resumed = run(tmp_path / "idx", tmp_path / "marker")
    assert resumed.returncode == 0 and "done" in resumed.stdout, resumed.stderr
    whole = run(tmp_path / "whole", tmp_path / "marker")  # marker exists: no kill
    assert whole.returncode == 0, whole.stderr
    got, want = _examples_stored(tmp_path / "idx"), _examples_stored(tmp_path / "whole")
    np.testing.assert_array_equal(got, want)
    per_example = np.unique(got[:, 1], return_counts=True)
    assert per_example[0].tolist() == list(range(17))
    assert not list((tmp_path / "idx" / "shards").glob(".tmp-*"))
    a = InfluenceIndex.open(tmp_path / "idx", _model(0))
    b = InfluenceIndex.open(tmp_path / "whole", _model(0))
    np.testing.assert_array_equal(a.self_influence(), b.self_influence())


def test_a_query_reads_one_shard_at_a_time_and_only_the_rows_it_needs(tmp_path, monkeypatch):
    import weakref

    monkeypatch.setattr(shards, "SHARD_EXAMPLES", 3)
    monkeypatch.setattr(shards, "ROW_GROUP", 4)
    model = _model(0)
    ids, y = _data(12, 5)
    test = torch.tensor([[1, 2, 1, 2]])
    mem = InfluenceIndex.build(model, ids, labels=y, batch_size=3)
    disk = InfluenceIndex.build(model, ids, labels=y, batch_size=3, path=tmp_path / "idx")
    read, alive, postings = shards.read_shard, [], []

    def spy(*args, **kwargs):
        assert sum(r() is not None for r in alive) <= 1  # the previous shard at most
        seg = read(*args, **kwargs)
        alive.append(weakref.ref(seg))
        postings.append(sum(len(p.example) for p in seg.postings.values()))
        return seg

    monkeypatch.setattr(shards, "read_shard", spy)
    got = disk.query(test, labels=y[:1])
    assert len(alive) == 4  # one read per shard
    np.testing.assert_allclose(got.scores, mem.query(test, labels=y[:1]).scores, rtol=1e-12)
    stored = sum(len(p.example) for p in mem._source.segment_of(0).postings.values())
    assert sum(postings) < stored  # rows 1 and 2 only, not every stored row
    assert got.by_token(0, 3) == pytest.approx(mem.query(test, labels=y[:1]).by_token(0, 3))


def test_a_shard_read_back_in_another_order_gives_the_same_postings(tmp_path, monkeypatch):
    import types

    import pyarrow as pa
    import pyarrow.parquet as pq

    model = _model(0)
    ids, y = _data(6, 5)
    InfluenceIndex.build(model, ids, labels=y, path=tmp_path / "idx")
    shard = next((tmp_path / "idx" / "shards").glob("part-*.parquet"))
    want = shards.read_shard(shard)
    rows = np.unique(np.concatenate([p.row for p in want.postings.values()]))
    perm = np.random.default_rng(0).permutation(pq.read_table(shard).num_rows)

    def shuffled(path, filters=None):
        return pq.read_table(path, filters=filters).take(pa.array(perm))

    fake = types.SimpleNamespace(read_table=shuffled, read_schema=pq.read_schema)
    monkeypatch.setattr(shards, "_pyarrow", lambda: (pa, fake))
    got = shards.read_shard(shard, rows=rows)
    assert got.postings.keys() == want.postings.keys()
    for key, p in want.postings.items():
        q = got.postings[key]
        for a, b in ((p.keys, q.keys), (p.starts, q.starts), (p.example, q.example)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(p.values, q.values)


def test_a_second_build_into_a_folder_being_written_is_refused(tmp_path):
    import fcntl

    model = _model(0)
    ids, y = _data()
    path = tmp_path / "idx"
    InfluenceIndex.build(model, ids, labels=y, path=path)
    with (path / ".lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        with pytest.raises(InputError, match="another build is writing"):
            InfluenceIndex.build(model, ids, labels=y, path=path)
    InfluenceIndex.build(model, ids, labels=y, path=path)  # released: resumes (nothing to do)


def test_a_read_only_folder_is_an_embgrad_error_not_a_traceback(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match="cannot write the index"):
            InfluenceIndex.build(_model(0), _data()[0], labels=_data()[1], path=ro / "idx")
    finally:
        ro.chmod(0o700)
