"""Issue 21 item 10: MXNet's numpy interface (``npx.set_np()``, ``mx.np`` arrays,
``nn.Embedding`` / ``npx.embedding``) is refused with an UnsupportedModelError naming
``npx.set_np`` — not the false "no embedding lookup" (imperative) nor a raw MXNet TypeError
(hybridized). The numpy mode is restored by the test (``npx.reset_np``) on every exit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as onp
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import gluon, npx  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

import embgrad  # noqa: E402

pytestmark = pytest.mark.gluon

B, T, V = 3, 5, 20


class Model(gluon.HybridBlock):
    def __init__(self, functional: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.functional = functional
        with self.name_scope():
            self.embed = nn.Embedding(V, 4)
            self.out = nn.Dense(2, flatten=False)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        if self.functional:
            h = F.npx.embedding(x, self.embed.weight.data(), input_dim=V, output_dim=4)
        else:
            h = self.embed(x)
        return self.out(h).sum(axis=(1, 2))


@pytest.fixture
def numpy_mode() -> Iterator[None]:
    was = mx.util.is_np_array()
    npx.set_np()
    try:
        yield
    finally:
        npx.reset_np()
        assert mx.util.is_np_array() == was


# (npx.embedding on a Parameter's data() is imperative only: it is not traceable)
@pytest.mark.parametrize(
    ("hybridize", "functional"), [(False, False), (True, False), (False, True)]
)
def test_numpy_interface_is_refused(numpy_mode: None, hybridize: bool, functional: bool) -> None:
    net = Model(functional)
    net.initialize()
    x = mx.np.array(onp.random.default_rng(0).integers(0, V, (B, T)), dtype="float32")
    if hybridize:
        net.hybridize()
    net(x)
    with pytest.raises(embgrad.UnsupportedModelError, match=r"npx\.set_np\(\).*reset_np"):
        embgrad.gradients(net, x, lambda o: o * o)
    assert net._active == hybridize and mx.util.is_np_array()


def test_model_built_in_numpy_mode_is_refused_afterwards() -> None:
    npx.set_np()
    try:
        net = Model(False)
        net.initialize()
        net(mx.np.zeros((B, T)))
    finally:
        npx.reset_np()
    with pytest.raises(embgrad.UnsupportedModelError, match=r"mx\.np arrays .*npx\.set_np"):
        embgrad.gradients(net, mx.nd.zeros((B, T)), lambda o: o * o)
    assert not mx.util.is_np_array()
