"""Issue 21 item 9: lookups written other than ``nn.Embedding``/``F.Embedding`` — ``F.take(table,
ids)``, ``F.gather_nd(table, ids[None])``, ``from mxnet.ndarray import Embedding``,
``mx.nd.contrib.SparseEmbedding`` — beside an ``nn.Embedding``: captured (per-sample table
gradients equal the per-sample oracle's, which differentiates the Parameters themselves), or,
where embgrad cannot intercept them, reported on the result (``res.notes``), never silent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import gluon, nd  # noqa: E402
from mxnet.gluon import nn  # noqa: E402
from mxnet.ndarray import Embedding  # noqa: E402  (the spelling under test)

import embgrad  # noqa: E402
import oracle_gluon as oracle  # noqa: E402

pytestmark = pytest.mark.gluon

B, T, D, V, W = 3, 5, 4, 20, 11  # pairwise different; W: the second table's rows


class TwoTables(gluon.HybridBlock):
    """(B, T) ids: an nn.Embedding word lookup plus a second table looked up by ``how``."""

    def __init__(self, how: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.how = how
        with self.name_scope():
            self.embed = nn.Embedding(V, D)
            self.extra = self.params.get("extra_weight", shape=(W, D))
            self.out = nn.Dense(2, flatten=False)

    def hybrid_forward(self, F: Any, x: Any, extra: Any) -> Any:
        ids = x % W
        if self.how == "take":
            e = F.take(extra, ids)
        elif self.how == "gather_nd":
            e = F.gather_nd(extra, ids.expand_dims(0))
        elif self.how == "alias":
            e = Embedding(ids, extra, input_dim=W, output_dim=D)
        elif self.how == "sparse":
            e = F.contrib.SparseEmbedding(ids, extra, input_dim=W, output_dim=D)
        else:  # bound before the call: nothing embgrad can replace
            e = self._bound(ids, extra, input_dim=W, output_dim=D)
        return self.out(F.tanh(self.embed(x) + e)).sum(axis=(1, 2))


def build(how: str) -> tuple[Any, Any]:
    mx.random.seed(0)
    net = TwoTables(how)
    net._bound = nd.Embedding  # only used by how="bound"
    net.initialize(mx.init.Uniform(0.5))
    x = nd.array(np.random.default_rng(0).integers(0, V, size=(B, T)))
    net(x)
    return net, x


def loss(out: Any) -> Any:
    return out * out


def check_tables(net: Any, x: Any, res: Any) -> None:
    params = [net.embed.weight, net.extra]
    want = oracle.table_grads(net, [x], loss, params)
    for p in params:
        oracle.close(res.table_grad(p.name, dense=True), want[p.name])


@pytest.mark.parametrize("how", ["take", "gather_nd", "alias", "sparse"])
def test_imperative_spellings_are_captured(how: str) -> None:
    net, x = build(how)
    res = embgrad.gradients(net, x, loss)
    assert len(res) == 2 and res.notes == []
    extra = [lk for lk in res if lk.table == net.extra.name]
    assert len(extra) == 1 and extra[0].batch_axis == 0
    if how in ("take", "gather_nd"):
        assert extra[0].module == f"F.{how}"
    check_tables(net, x, res)
    assert nd.take is mx.nd.op.take and Embedding is mx.nd.op.Embedding  # restored


@pytest.mark.parametrize("kind", ["hybrid", "exported"])
@pytest.mark.parametrize("how", ["take", "sparse"])
def test_hybridized_spellings_are_captured(how: str, kind: str, tmp_path: Path) -> None:
    net, x = build(how)
    net.hybridize(static_alloc=True)
    net(x)
    model = net
    if kind == "exported":
        net.export(str(tmp_path / "m"))
        model = gluon.SymbolBlock.imports(
            str(tmp_path / "m-symbol.json"), ["data"], str(tmp_path / "m-0000.params")
        )
    res = embgrad.gradients(model, x, loss)
    assert len(res) == 2 and res.notes == []
    check_tables(net, x, res)
    assert net._active


def test_hybridized_gather_nd_is_reported_not_silent() -> None:
    net, x = build("gather_nd")
    net.hybridize()
    net(x)
    res = embgrad.gradients(net, x, loss)
    assert [lk.table for lk in res] == [net.embed.weight.name]
    assert any(
        f"gather_nd({net.extra.name})" in n and "could not intercept" in n for n in res.notes
    )


def test_bound_function_is_reported_not_silent() -> None:
    net, x = build("bound")
    res = embgrad.gradients(net, x, loss)
    assert [lk.table for lk in res] == [net.embed.weight.name]
    assert any(f"Embedding({net.extra.name})" in n for n in res.notes), res.notes


class OnlyBound(gluon.Block):
    """Its only lookup goes through a function bound before the call."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with self.name_scope():
            self.table = self.params.get("table", shape=(W, D))
        self._bound = nd.Embedding

    def forward(self, x: Any) -> Any:
        w = self.table.data()
        return self._bound(x % W, w, input_dim=W, output_dim=D).sum(axis=(1, 2))


def test_only_lookup_uncaptured_is_named_in_the_error() -> None:
    net = OnlyBound()
    net.initialize()
    x = nd.array(np.random.default_rng(0).integers(0, V, size=(B, T)))
    with pytest.raises(embgrad.NoLookupError, match=r"could capture; it saw Embedding\(.*table"):
        embgrad.gradients(net, x, loss)


def test_sparse_ids_are_refused() -> None:
    net, x = build("take")
    with pytest.raises(embgrad.InputError, match=r"input 0 is a sparse array .*tostype"):
        embgrad.gradients(net, x.tostype("csr"), loss)
