"""``TorchOps``: the core's array operations on torch tensors, on the tensor's own device.

Imported only by the torch backend (which is only imported once the user has imported torch).
Accumulations (duplicate rows, squared norms) run in float32 for float16/bfloat16 inputs and in
the input's dtype otherwise; the core casts sums back to the lookup's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.ops import Ops

_HALF = (torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, else ``dtype`` itself (float32 / float64)."""
    return torch.float32 if dtype in _HALF else dtype


class TorchOps(Ops):
    """Array operations on torch tensors; every result stays on its input's device."""

    name = "torch"

    def work(self, x: Any) -> Any:
        return x

    def to_numpy(self, x: Any) -> np.ndarray:
        """A numpy copy on the host; bfloat16 (which numpy lacks) becomes float32."""
        if not isinstance(x, torch.Tensor):
            return np.asarray(x)
        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()

    def moveaxis(self, x: Any, src: int, dst: int) -> Any:
        return torch.movedim(x, src, dst)

    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any:
        return x.reshape(shape)

    def take(self, x: Any, index: int, axis: int) -> Any:
        return x.select(axis, index)

    def stack(self, xs: list[Any], axis: int) -> Any:
        return torch.stack(xs, dim=axis)

    def concat(self, xs: list[Any]) -> Any:
        return torch.cat(xs, dim=0)

    def batch_index(self, shape: tuple[int, ...], axis: int, like: Any) -> Any:
        """int64 tensor of ``shape`` holding each position's index along ``axis``."""
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return torch.arange(shape[axis], device=like.device).view(view).expand(shape)

    def full_int(self, n: int, value: int, like: Any) -> Any:
        return torch.full((n,), value, dtype=torch.int64, device=like.device)

    def as_int64(self, x: Any) -> Any:
        return x.to(torch.int64)

    def unique_inverse(self, keys: Any) -> tuple[Any, Any]:
        """Sorted unique keys (K,) and, for each of the N keys, its index in them (N,)."""
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        return uniq, inverse.reshape(-1)

    def segment_sum(self, values: Any, inverse: Any, n: int) -> Any:
        """(N, D) rows summed into (n, D) by ``inverse``, accumulated in float32 for halves."""
        acc = _acc_dtype(values.dtype)
        out = torch.zeros((n, values.shape[1]), dtype=acc, device=values.device)
        return out.index_add_(0, inverse, values.to(acc))

    def bincount_sum(self, x: Any, index: Any, n: int) -> Any:
        """(n,): ``out[k] = sum(x[index == k])``, in x's (accumulation) dtype."""
        out = torch.zeros((n,), dtype=x.dtype, device=x.device)
        return out.index_add_(0, index, x)

    def row_sq_norms(self, values: Any) -> Any:
        """(N,) squared L2 norms of the rows of (N, D), accumulated in float32 for halves."""
        v = values.to(_acc_dtype(values.dtype))
        return (v * v).sum(dim=1)

    def sqrt(self, x: Any) -> Any:
        return torch.sqrt(x)

    def cast_like(self, x: Any, like: Any) -> Any:
        return x.to(like.dtype)

    def mask(self, x: Any, keep: Any) -> Any:
        return x[keep]

    def not_equal(self, x: Any, value: int) -> Any:
        return x != value

    def nonzero_rows(self, values: Any) -> Any:
        return (values != 0).any(dim=1)

    def dense_scatter(self, shape: tuple[int, ...], sample: Any, row: Any, values: Any) -> Any:
        """Dense (B, V, D) with ``values`` at (sample, row); zeros elsewhere."""
        out = torch.zeros(shape, dtype=values.dtype, device=values.device)
        out[sample, row] = values
        return out

    def itemsize(self, x: Any) -> int:
        return int(x.element_size())

    # -- native arrays ---------------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, like: Any) -> Any:
        """``a`` on ``like``'s device in ``like``'s dtype."""
        return torch.as_tensor(np.ascontiguousarray(a), device=like.device).to(like.dtype)

    def take_rows(self, x: Any, index: np.ndarray, axis: int) -> Any:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long, device=x.device)
        return x.index_select(axis, idx)

    def detach(self, x: Any) -> Any:
        return x.detach()

    def log_softmax_pick(self, logits: Any, index: np.ndarray) -> Any:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long, device=logits.device)
        lp = torch.log_softmax(logits.float(), dim=-1)
        return lp.gather(1, idx[:, None])[:, 0]

    def pick_positions(self, x: Any, index: np.ndarray) -> Any:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long, device=x.device)
        return x[torch.arange(idx.shape[0], device=x.device), idx]

    def mean_pool_normalized(self, hidden: Any, mask: Any) -> Any:
        m = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    def row_dot(self, a: Any, b: Any) -> Any:
        return (a * b).sum(-1)

    def row_dots(self, a: Any, b: Any) -> Any:
        return a @ b.T

    def sparse_native(self, rows: Any) -> Any:
        """A coalesced sparse COO (B, V, D) on the rows' device, D a dense dimension."""
        indices = torch.stack([rows.sample, rows.row])
        # Rows are sorted by (sample, row) and unique by construction: skip the (warning)
        # invariant check.
        return torch.sparse_coo_tensor(
            indices, rows.values, rows.shape, is_coalesced=True, check_invariants=False
        )
