"""The array operations embgrad needs, one implementation per array library.

The core (sparse rows, probe, exact loop) never imports a framework: it calls an :class:`Ops`
on the backend's *working* arrays (``work``). The layers above (methods, tasks, the Explainer)
call the *native* operations at the end of the class on the framework's own arrays, through
``embgrad.backends.ops_for(x)`` — the one place that tells frameworks apart. ``NumpyOps`` serves
numpy; the backends provide ``TorchOps`` (working arrays: tensors on their device) and
``MXNetOps`` (working arrays: numpy copies of NDArrays) with the same methods.

The dtype rule of :meth:`Ops.from_numpy`: the result takes ``like``'s array type, device and
dtype (``a`` is cast), so a float64 numpy constant joins a float32 or bfloat16 graph as that.
:meth:`Ops.to_numpy` gives a host numpy array; bfloat16, which numpy lacks, becomes float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any


class Ops:
    """Array operations on one library's arrays (the *working* arrays of a backend)."""

    name = "abstract"

    def work(self, x: Array) -> Array:
        """Turn a framework-native array into this ops' working array (identity by default)."""
        return x

    def to_numpy(self, x: Array) -> np.ndarray:
        """A host numpy copy (or view) of a native or working array (bfloat16 → float32)."""
        raise NotImplementedError

    def moveaxis(self, x: Array, src: int, dst: int) -> Array:
        raise NotImplementedError

    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array:
        raise NotImplementedError

    def take(self, x: Array, index: int, axis: int) -> Array:
        raise NotImplementedError

    def stack(self, xs: list[Array], axis: int) -> Array:
        raise NotImplementedError

    def concat(self, xs: list[Array]) -> Array:
        raise NotImplementedError

    def batch_index(self, shape: tuple[int, ...], axis: int, like: Array) -> Array:
        """Int64 array of ``shape`` whose value at each position is its index along ``axis``."""
        raise NotImplementedError

    def full_int(self, n: int, value: int, like: Array) -> Array:
        raise NotImplementedError

    def as_int64(self, x: Array) -> Array:
        raise NotImplementedError

    def unique_inverse(self, keys: Array) -> tuple[Array, Array]:
        """Sorted unique int64 keys and, for each input key, the index of its unique key."""
        raise NotImplementedError

    def segment_sum(self, values: Array, inverse: Array, n: int) -> Array:
        """Rows of ``values`` (N, D) summed into ``n`` rows by ``inverse``, in float32 or wider."""
        raise NotImplementedError

    def bincount_sum(self, x: Array, index: Array, n: int) -> Array:
        """1-D: ``out[k] = sum(x[index == k])`` with ``n`` bins."""
        raise NotImplementedError

    def row_sq_norms(self, values: Array) -> Array:
        """Squared L2 norm of each row, accumulated in float32 or wider."""
        raise NotImplementedError

    def sqrt(self, x: Array) -> Array:
        raise NotImplementedError

    def cast_like(self, x: Array, like: Array) -> Array:
        raise NotImplementedError

    def mask(self, x: Array, keep: Array) -> Array:
        raise NotImplementedError

    def not_equal(self, x: Array, value: int) -> Array:
        raise NotImplementedError

    def nonzero_rows(self, values: Array) -> Array:
        """Boolean (N,): rows of ``values`` (N, D) with any non-zero entry."""
        raise NotImplementedError

    def dense_scatter(
        self, shape: tuple[int, ...], sample: Array, row: Array, values: Array
    ) -> Array:
        raise NotImplementedError

    def itemsize(self, x: Array) -> int:
        raise NotImplementedError

    def sparse_native(self, rows: Any) -> Any:
        """The library's own sparse form of a :class:`~embgrad.core.sparse.SparseRows`."""
        raise NotImplementedError

    # -- native arrays (for methods, tasks and the Explainer) --------------------------------
    def from_numpy(self, a: np.ndarray, like: Array) -> Array:
        """``a`` as a native array of ``like``'s type, device and dtype (see the module doc)."""
        raise NotImplementedError

    def take_rows(self, x: Array, index: np.ndarray, axis: int) -> Array:
        """Entries ``index`` (int, 1-D, repeats allowed) of a native array along ``axis``."""
        raise NotImplementedError

    def detach(self, x: Array) -> Array:
        """``x`` cut from the autograd graph (a constant)."""
        raise NotImplementedError

    def log_softmax_pick(self, logits: Array, index: np.ndarray) -> Array:
        """(B,) ``log_softmax(logits)[i, index[i]]`` of (B, C) logits, in float32 or wider."""
        raise NotImplementedError

    def mean_pool_normalized(self, hidden: Array, mask: Array) -> Array:
        """Mean of ``hidden`` (B, T, D) where ``mask`` (B, T) is 1, L2-normalised: (B, D)."""
        raise NotImplementedError

    def pick_positions(self, x: Array, index: np.ndarray) -> Array:
        """(N, ...) ``x[i, index[i]]`` of a native (N, T, ...) array: one position per row."""
        raise NotImplementedError

    def row_dot(self, a: Array, b: Array) -> Array:
        """(B,) ``Σ_d a[i, d] · b[i, d]``."""
        raise NotImplementedError

    def row_dots(self, a: Array, b: Array) -> Array:
        """(B, K) ``Σ_d a[i, d] · b[k, d]`` of (B, D) ``a`` and (K, D) ``b``: ``a @ b.T``."""
        raise NotImplementedError


class NumpyOps(Ops):
    name = "numpy"

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)

    def moveaxis(self, x: Array, src: int, dst: int) -> Array:
        return np.moveaxis(x, src, dst)

    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array:
        return np.reshape(x, shape)

    def take(self, x: Array, index: int, axis: int) -> Array:
        return np.take(x, index, axis=axis)

    def stack(self, xs: list[Array], axis: int) -> Array:
        return np.stack(xs, axis=axis)

    def concat(self, xs: list[Array]) -> Array:
        return np.concatenate(xs, axis=0)

    def batch_index(self, shape: tuple[int, ...], axis: int, like: Array) -> Array:
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return np.broadcast_to(np.arange(shape[axis], dtype=np.int64).reshape(view), shape)

    def full_int(self, n: int, value: int, like: Array) -> Array:
        return np.full((n,), value, dtype=np.int64)

    def as_int64(self, x: Array) -> Array:
        return np.asarray(x).astype(np.int64, copy=False)

    def unique_inverse(self, keys: Array) -> tuple[Array, Array]:
        uniq, inverse = np.unique(keys, return_inverse=True)
        return uniq, inverse.reshape(-1)

    def segment_sum(self, values: Array, inverse: Array, n: int) -> Array:
        acc = np.result_type(values.dtype, np.float32)
        if n == 0:
            return np.zeros((0, values.shape[1]), dtype=acc)
        # Sort once, then one reduceat: every segment is non-empty (inverse comes from unique).
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], np.arange(n))
        return np.add.reduceat(values[order].astype(acc, copy=False), starts, axis=0)

    def bincount_sum(self, x: Array, index: Array, n: int) -> Array:
        return np.bincount(index, weights=np.asarray(x, dtype=np.float64), minlength=n)

    def row_sq_norms(self, values: Array) -> Array:
        v = values.astype(np.result_type(values.dtype, np.float32), copy=False)
        return np.einsum("nd,nd->n", v, v)

    def sqrt(self, x: Array) -> Array:
        return np.sqrt(x)

    def cast_like(self, x: Array, like: Array) -> Array:
        return np.asarray(x).astype(like.dtype, copy=False)

    def mask(self, x: Array, keep: Array) -> Array:
        return x[keep]

    def not_equal(self, x: Array, value: int) -> Array:
        return x != value

    def nonzero_rows(self, values: Array) -> Array:
        return np.any(values != 0, axis=1)

    def dense_scatter(
        self, shape: tuple[int, ...], sample: Array, row: Array, values: Array
    ) -> Array:
        out = np.zeros(shape, dtype=values.dtype)
        out[sample, row] = values
        return out

    def itemsize(self, x: Array) -> int:
        return int(np.dtype(x.dtype).itemsize)

    def sparse_native(self, rows: Any) -> Any:
        """numpy has no sparse arrays: a scipy CSR (B·V, D)."""
        return rows.to_scipy()

    def from_numpy(self, a: np.ndarray, like: Array) -> Array:
        return np.asarray(a, dtype=np.asarray(like).dtype)

    def take_rows(self, x: Array, index: np.ndarray, axis: int) -> Array:
        return np.take(x, np.asarray(index, dtype=np.int64), axis=axis)

    def detach(self, x: Array) -> Array:
        return x

    def log_softmax_pick(self, logits: Array, index: np.ndarray) -> Array:
        z = np.asarray(logits, dtype=np.result_type(logits.dtype, np.float32))
        z = z - z.max(axis=-1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return np.take_along_axis(lp, np.asarray(index, dtype=np.int64)[:, None], axis=1)[:, 0]

    def pick_positions(self, x: Array, index: np.ndarray) -> Array:
        return np.asarray(x)[np.arange(len(index)), np.asarray(index, dtype=np.int64)]

    def mean_pool_normalized(self, hidden: Array, mask: Array) -> Array:
        m = np.asarray(mask).astype(hidden.dtype)[..., None]
        pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def row_dot(self, a: Array, b: Array) -> Array:
        return (a * b).sum(-1)

    def row_dots(self, a: Array, b: Array) -> Array:
        return np.asarray(a) @ np.asarray(b).T
