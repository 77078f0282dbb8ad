"""``engine="ray"``: a pool of Ray actors builds the same index as the local engine, in memory
and as shards (one local Ray, 2 CPUs, started by the test)."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ray")
pytest.importorskip("pyarrow")

import models_torch  # noqa: E402
from embgrad import InfluenceIndex  # noqa: E402
from embgrad.errors import InputError  # noqa: E402
from embgrad.influence import shards  # noqa: E402
from models_torch import TinyText  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    from embgrad.influence.ray_engine import _ray

    ray = _ray()
    ray.cloudpickle.register_pickle_by_value(models_torch)  # the test's model, for the actors
    temp = tempfile.mkdtemp(prefix="embgrad-ray-test-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def test_the_ray_engine_builds_the_local_engines_index(local_ray, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_EXAMPLES", 5)
    torch.manual_seed(0)
    model, other = TinyText(vocab=23, dim=6, classes=3), TinyText(vocab=23, dim=6, classes=3)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(1, 12, (3, t), generator=g) for t in (5, 7, 4, 6)]
    y = torch.randint(0, 3, (12,), generator=g)
    test = torch.randint(1, 12, (2, 5), generator=g)
    kw = dict(labels=y, checkpoints=[model, other.state_dict()], weights=[1.0, 0.5], top_rows=3)
    local = InfluenceIndex.build(model, batches, **kw)
    on_ray = InfluenceIndex.build(model, batches, engine="ray", workers=2, **kw)
    stored = InfluenceIndex.build(
        model, batches, engine="ray", workers=2, path=tmp_path / "idx", **kw
    )
    ref = local.query(test, labels=y[:2]).scores
    for idx in (on_ray, stored):
        np.testing.assert_allclose(
            idx.query(test, labels=y[:2]).scores, ref, rtol=1e-12, atol=1e-18
        )
        np.testing.assert_allclose(idx.self_influence(), local.self_influence(), rtol=1e-12)
    assert len(list((tmp_path / "idx" / "shards").glob("part-*.parquet"))) == 2
    with pytest.raises(InputError, match="engine="):
        InfluenceIndex.build(model, batches, engine="spark", **kw)


def test_a_model_the_workers_cannot_import_is_a_clear_error(local_ray, tmp_path):
    import sys
    import types

    mod = types.ModuleType("h19_private_models")  # exists in this process only
    exec(
        "import torch\nclass Private(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.word = torch.nn.Embedding(9, 3)\n        self.out = torch.nn.Linear(3, 2)\n    def forward(self, ids):\n        return self.out(self.word(ids).mean(1))\n",
        mod.__dict__,
    )
    sys.modules[mod.__name__] = mod
    try:
        model = mod.Private()
        with pytest.raises(InputError, match="could not start"):
            InfluenceIndex.build(
                model, torch.randint(0, 9, (4, 3)), labels=[0, 1, 0, 1], engine="ray"
            )
    finally:
        del sys.modules[mod.__name__]
