"""``Ops.pick_positions`` (one position per row) agrees across numpy, torch and MXNet, and keeps
the gradient flowing to the picked positions only."""

from __future__ import annotations

import numpy as np
import pytest

from embgrad.backends import ops_for

X = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
INDEX = np.array([3, 1])
WANT = X[[0, 1], [3, 1]]


def test_numpy():
    np.testing.assert_array_equal(ops_for(X).pick_positions(X, INDEX), WANT)


def test_torch():
    torch = pytest.importorskip("torch")
    x = torch.as_tensor(X).requires_grad_(True)
    got = ops_for(x).pick_positions(x, INDEX)
    np.testing.assert_array_equal(got.detach().numpy(), WANT)
    got.sum().backward()
    mask = np.zeros(X.shape, dtype=np.float32)
    mask[[0, 1], [3, 1]] = 1
    np.testing.assert_array_equal(x.grad.numpy(), mask)


@pytest.mark.gluon
def test_mxnet():
    mx = pytest.importorskip("mxnet")
    x = mx.nd.array(X)
    x.attach_grad()
    with mx.autograd.record():
        got = ops_for(x).pick_positions(x, INDEX)
        total = got.sum()
    total.backward()
    np.testing.assert_array_equal(got.asnumpy(), WANT)
    mask = np.zeros(X.shape, dtype=np.float32)
    mask[[0, 1], [3, 1]] = 1
    np.testing.assert_array_equal(x.grad.asnumpy(), mask)
