"""Several checkpoints given as state dicts: the build loads each once per group of batches
(checkpoints outermost), not once per batch, with the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from embgrad import InfluenceIndex  # noqa: E402
from embgrad.backends import weights  # noqa: E402
from embgrad.influence import build  # noqa: E402
from models_torch import TinyText  # noqa: E402

V, D, C = 23, 6, 3


def _model(seed: int) -> TinyText:
    torch.manual_seed(seed)
    return TinyText(vocab=V, dim=D, classes=C).eval()


def test_each_checkpoint_loads_once_per_group_with_the_same_scores(monkeypatch):
    model = _model(0)
    states = [_model(s).state_dict() for s in (1, 2, 3)]
    g = torch.Generator().manual_seed(0)
    ids, y = torch.randint(1, 12, (13, 5), generator=g), torch.randint(0, C, (13,), generator=g)
    test = torch.randint(1, 12, (2, 7), generator=g)
    loads = []
    real = weights.CheckpointSlot._load_torch

    def counted(self, state):
        loads.append(id(state))
        return real(self, state)

    monkeypatch.setattr(weights.CheckpointSlot, "_load_torch", counted)
    kw = dict(labels=y, checkpoints=states, weights=[0.5, 1.0, 2.0], batch_size=3)
    monkeypatch.setattr(build, "GROUP", 1)
    one = InfluenceIndex.build(model, ids, **kw)
    per_batch = len(loads)
    loads.clear()
    monkeypatch.setattr(build, "GROUP", 2)  # 5 batches: groups of 2, 2, 1
    grouped = InfluenceIndex.build(model, ids, **kw)
    # validation, then each batch alone: the checkpoint at each boundary is shared (one
    # checkpoint for every batch, as before, would be 3 + 5 * 3)
    assert per_batch == 3 + 5 * 2
    assert len(loads) == 3 + 3 * 2  # validation, then 3 groups sharing the boundary one
    a, b = one.query(test, labels=[0, 1]), grouped.query(test, labels=[0, 1])
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(one.self_influence(), grouped.self_influence())
