"""MXNetOps: the core's array operations on MXNet NDArrays (working arrays are numpy copies)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.ops import NumpyOps
from .gluon_arrays import lazy_mxnet, to_numpy


class MXNetOps(NumpyOps):
    """NumpyOps whose working arrays are numpy copies of MXNet NDArrays (``asnumpy``)."""

    name = "gluon"

    def work(self, x: Any) -> Any:
        return to_numpy(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return to_numpy(x)

    # -- native arrays (NDArrays) ------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, like: Any) -> Any:
        """``a`` on ``like``'s context in ``like``'s dtype."""
        return lazy_mxnet().nd.array(a, ctx=like.context, dtype=like.dtype)

    def take_rows(self, x: Any, index: np.ndarray, axis: int) -> Any:
        nd = lazy_mxnet().nd
        return nd.take(x, nd.array(np.asarray(index), ctx=x.context, dtype="int64"), axis=axis)

    def detach(self, x: Any) -> Any:
        return x.detach()

    def log_softmax_pick(self, logits: Any, index: np.ndarray) -> Any:
        nd = lazy_mxnet().nd
        lp = nd.log_softmax(logits.astype("float32"), axis=-1)
        return nd.pick(lp, nd.array(np.asarray(index), ctx=logits.context), axis=-1)

    def pick_positions(self, x: Any, index: np.ndarray) -> Any:
        nd = lazy_mxnet().nd
        n, t = int(x.shape[0]), int(x.shape[1])
        flat = np.arange(n) * t + np.asarray(index, dtype=np.int64)
        rows = nd.take(x.reshape((n * t, *x.shape[2:])), nd.array(flat, ctx=x.context), axis=0)
        return rows

    def mean_pool_normalized(self, hidden: Any, mask: Any) -> Any:
        nd = lazy_mxnet().nd
        m = mask.astype(hidden.dtype).expand_dims(-1)
        pooled = nd.sum(hidden * m, axis=1) / nd.maximum(nd.sum(m, axis=1), 1e-9)
        return pooled / nd.maximum(nd.norm(pooled, axis=1, keepdims=True), 1e-12)

    def row_dot(self, a: Any, b: Any) -> Any:
        return lazy_mxnet().nd.sum(a * b, axis=-1)

    def row_dots(self, a: Any, b: Any) -> Any:
        return lazy_mxnet().nd.dot(a, b, transpose_b=True)

    def sparse_native(self, rows: Any) -> Any:
        """An MXNet ``row_sparse`` (B·V, D) on the CPU, row key ``b*V + token``."""
        mx = lazy_mxnet()
        _, _, values = rows.numpy()
        b, v, d = rows.shape
        return mx.nd.sparse.row_sparse_array(
            (values, rows.keys()), shape=(b * v, d), ctx=mx.cpu(), dtype=values.dtype
        )
