"""Per-sample table gradients held sparse: only the rows each sample used.

A lookup ``out = W[ids]`` sends ``dL_i/dout`` back to the rows of ``W`` named by sample *i*'s ids.
The per-sample table gradient is conceptually (B, V, D) but has at most (number of ids of sample
i) non-zero rows per sample.  :func:`build_rows` scatters the per-position gradient vectors into
keys ``sample * V + id``, sums duplicates (a token used twice in one sample) and returns a
:class:`SparseRows`: three arrays ``sample`` (nnz,), ``row`` (nnz,), ``values`` (nnz, D), sorted by
(sample, row).  Nothing of size V is ever allocated unless a dense form is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DenseTooLargeError, InputError, missing_extra
from .ops import Array, Ops

#: Default ceiling for dense results (``to_dense`` / ``table_grad(dense=True)``): 1 GiB.
DEFAULT_MAX_BYTES = 1 << 30


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError  # pragma: no cover


class SparseRows:
    """Per-sample gradient rows of one embedding table, shape (B, V, D), stored sparse.

    Attributes:
        sample: int64 (nnz,) — the sample each stored row belongs to (sorted ascending).
        row: int64 (nnz,) — the table row (token id), ascending within a sample.
        values: (nnz, D) — the gradient rows, in the lookup output's dtype.
        shape: (B, V, D).
        per_sample: False when the lookup had no batch axis (e.g. position ids of shape (T,)):
            then B is 1 and the single "sample" holds the batch sum.

    The arrays are the backend's working arrays (numpy for MXNet, torch tensors on the lookup's
    device for PyTorch); :meth:`numpy` gives numpy copies.
    """

    def __init__(
        self,
        ops: Ops,
        sample: Array,
        row: Array,
        values: Array,
        shape: tuple[int, int, int],
        *,
        per_sample: bool = True,
    ) -> None:
        self._ops = ops
        self.sample = sample
        self.row = row
        self.values = values
        self.shape = shape
        self.per_sample = per_sample

    # -- basic facts -------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Number of stored rows."""
        return int(self.row.shape[0])

    @property
    def dense_nbytes(self) -> int:
        b, v, d = self.shape
        return b * v * d * self._ops.itemsize(self.values)

    def __repr__(self) -> str:
        b, v, d = self.shape
        return (
            f"SparseRows(shape=({b}, {v}, {d}), nnz={self.nnz}, per_sample={self.per_sample}, "
            f"dense would be {_human(self.dense_nbytes)})"
        )

    # -- reductions --------------------------------------------------------------------------
    def norms(self) -> Array:
        """L2 norm of each sample's table gradient, shape (B,), float32 (float64 for float64).

        Computed from the stored rows only; never materialises (B, V, D).
        """
        sq = self._ops.row_sq_norms(self.values)
        return self._ops.sqrt(self._ops.bincount_sum(sq, self.sample, self.shape[0]))

    def for_sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, gradient rows) of sample ``i``, as numpy arrays."""
        if not -self.shape[0] <= i < self.shape[0]:
            raise IndexError(f"sample {i} out of range for a batch of {self.shape[0]}")
        i %= self.shape[0]
        sample, row, values = self.numpy()
        sel = sample == i
        return row[sel], values[sel]

    # -- conversions -------------------------------------------------------------------------
    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sample, row, values)`` as numpy arrays (values in float32 if numpy lacks the dtype)."""
        to = self._ops.to_numpy
        return to(self.sample), to(self.row), to(self.values)

    def keys(self) -> np.ndarray:
        """Flat row keys ``sample * V + row`` for the 2-D (B·V, D) view, as numpy int64."""
        sample, row, _ = self.numpy()
        return sample * self.shape[1] + row

    def _guard(self, max_bytes: int | None) -> None:
        limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        if self.dense_nbytes > limit:
            b, v, d = self.shape
            raise DenseTooLargeError(
                f"a dense ({b}, {v}, {d}) table gradient would take {_human(self.dense_nbytes)}, "
                f"above max_bytes={limit} ({_human(limit)}). Use the sparse rows "
                "(table_grad() / .norms() / .for_sample(i)), or pass a larger max_bytes."
            )

    def to_dense(self, max_bytes: int | None = None) -> Array:
        """Dense (B, V, D) in the backend's working array type, refused above ``max_bytes``."""
        self._guard(max_bytes)
        return self._ops.dense_scatter(self.shape, self.sample, self.row, self.values)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.csr_array`` of shape (B·V, D): row ``b*V + token``."""
        try:
            import scipy.sparse as sp
        except ImportError as e:  # scipy: the sparse extra (and gluon's, whose snippet uses it)
            raise missing_extra("scipy", "sparse") from e
        _, _, values = self.numpy()
        keys = self.keys()
        b, v, d = self.shape
        indptr = np.zeros(b * v + 1, dtype=np.int64)
        np.add.at(indptr, keys + 1, d)
        np.cumsum(indptr, out=indptr)
        indices = np.tile(np.arange(d, dtype=np.int64), len(keys))
        return sp.csr_array((values.reshape(-1), indices, indptr), shape=(b * v, d))

    @property
    def framework(self) -> str:
        """The framework whose arrays hold the rows: ``"torch"``, ``"gluon"`` or ``"numpy"``."""
        return self._ops.name

    def to_native(self) -> Any:
        """The framework's own sparse form: a coalesced torch sparse COO (B, V, D), an MXNet
        ``row_sparse`` (B·V, D) with row key ``b*V + token``, or (numpy) ``to_scipy()``."""
        return self._ops.sparse_native(self)

    def to_torch(self) -> Any:
        """A coalesced ``torch.sparse_coo_tensor`` (B, V, D), D a dense dimension (torch rows)."""
        return self._native_as("torch", "to_torch")

    def to_mxnet(self) -> Any:
        """An MXNet ``row_sparse`` NDArray (B·V, D), row key ``b*V + token`` (Gluon rows)."""
        return self._native_as("gluon", "to_mxnet")

    def _native_as(self, framework: str, method: str) -> Any:
        if self.framework != framework:
            raise InputError(
                f"{method}() needs rows computed from a {framework} model; these come from "
                f"{self.framework}: use to_native(), to_scipy() or numpy()"
            )
        return self.to_native()


def build_rows(
    ops: Ops,
    chunks: Sequence[tuple[Array, Array, Array]],
    shape: tuple[int, int, int],
    *,
    padding_idx: int | None = None,
    per_sample: bool = True,
) -> SparseRows:
    """Coalesce per-position gradients into per-sample sparse rows.

    Args:
        chunks: ``(sample, ids, grads)`` triples of working arrays: ``sample`` and ``ids`` int
            (N,), ``grads`` (N, D). Duplicated (sample, id) pairs are summed.
        shape: (B, V, D) of the result.
        padding_idx: a row that receives no gradient (PyTorch's ``padding_idx``): dropped.
    """
    b, v, d = shape
    samples = [ops.as_int64(s) for s, _, _ in chunks]
    ids = [ops.as_int64(i) for _, i, _ in chunks]
    grads = [g for _, _, g in chunks]
    sample = ops.concat(samples) if len(samples) > 1 else samples[0]
    row = ops.concat(ids) if len(ids) > 1 else ids[0]
    vals = ops.concat(grads) if len(grads) > 1 else grads[0]
    if padding_idx is not None:
        keep = ops.not_equal(row, padding_idx)
        sample, row, vals = ops.mask(sample, keep), ops.mask(row, keep), ops.mask(vals, keep)
    keys = sample * v + row
    uniq, inverse = ops.unique_inverse(keys)
    summed = ops.cast_like(ops.segment_sum(vals, inverse, int(uniq.shape[0])), vals)
    return SparseRows(ops, uniq // v, uniq % v, summed, (b, v, d), per_sample=per_sample)


def combine(parts: Sequence[SparseRows]) -> SparseRows:
    """Sum several SparseRows of the same shape (one table looked up at several call sites)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    for p in parts[1:]:
        if p.shape != first.shape:
            raise ValueError(
                f"cannot combine table gradients of shapes {first.shape} and {p.shape}"
            )
    return build_rows(
        first._ops,
        [(p.sample, p.row, p.values) for p in parts],
        first.shape,
        per_sample=all(p.per_sample for p in parts),
    )
