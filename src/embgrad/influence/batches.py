"""The examples of an index or a query: batches numbered in order, their losses, their hashes.

A data set is one batch (an array, a tuple of arrays or a Mapping such as a ``BatchEncoding``,
as :func:`embgrad.gradients` takes) or an iterable of such batches. Batches larger than
``batch_size`` are cut along axis 0 (every array whose first axis is the batch's size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..backends import is_array, ops_for
from ..errors import InputError
from ..methods._passes import bind_rows
from ..tasks.heads import ClassLogProb

LossFn = Callable[..., Any]


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def is_one_batch(data: Any) -> bool:
    """An array, a Mapping, or a tuple of arrays (and scalars / None): one batch."""
    if isinstance(data, Mapping) or is_array(data):
        return True
    if isinstance(data, tuple):
        return any(is_array(v) for v in data) and all(is_array(v) or _scalar(v) for v in data)
    return False


def _arrays(batch: Any) -> list[Any]:
    if isinstance(batch, Mapping):
        return [v for v in batch.values() if is_array(v)]
    if isinstance(batch, tuple):
        return [v for v in batch if is_array(v)]
    return [batch] if is_array(batch) else []


def batch_len(batch: Any) -> int:
    """The number of examples of a batch: the first axis of its first array."""
    arrays = [a for a in _arrays(batch) if len(a.shape) >= 1]
    if not arrays:
        raise InputError(
            "a batch must be an array, a tuple of arrays or a Mapping of arrays (torch tensors, "
            f"MXNet NDArrays or numpy arrays), got {type(batch).__name__}; pass one batch or an "
            "iterable of batches"
        )
    return int(arrays[0].shape[0])


def _cut(batch: Any, n: int, lo: int, hi: int) -> Any:
    def one(x: Any) -> Any:
        if is_array(x) and len(x.shape) >= 1 and int(x.shape[0]) == n:
            return x[lo:hi]
        return x

    if isinstance(batch, Mapping):
        return {k: one(v) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(one(v) for v in batch)
    return one(batch)


def iter_batches(data: Any, batch_size: int) -> Iterator[tuple[Any, int]]:
    """(batch, number of examples) for every batch of ``data``, none larger than
    ``batch_size``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if is_one_batch(data):
        source: Iterable[Any] = [data]
    elif isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise InputError(
            "expected one batch (an array, a tuple of arrays, a Mapping such as a "
            f"BatchEncoding) or an iterable of batches, got {type(data).__name__}"
        )
    else:
        source = data
    for batch in source:
        if not is_one_batch(batch):
            raise InputError(
                "every batch must be an array, a tuple of arrays or a Mapping of arrays, got "
                f"{type(batch).__name__}"
            )
        n = batch_len(batch)
        if n == 0:
            continue
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            yield (batch if (lo, hi) == (0, n) else _cut(batch, n, lo, hi)), hi - lo


def count_examples(data: Any) -> int | None:
    """The number of examples when it is known without consuming ``data`` (one batch or a
    sequence of batches, or an iterable with an ``n_examples`` attribute), else None."""
    known = getattr(data, "n_examples", None)
    if isinstance(known, int):
        return known
    if is_one_batch(data):
        return batch_len(data)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return sum(batch_len(b) for b in data if is_one_batch(b))
    return None


def check_labels(labels: Any, data: Any, what: str) -> np.ndarray | None:
    """``labels`` as int64 (n,), checked against the examples' count where it is known."""
    if labels is None:
        return None
    arr = ops_for(labels).to_numpy(labels) if is_array(labels) else np.asarray(labels)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise InputError(
            f"labels for the {what} examples must be one integer class per example, got an "
            f"array of shape {arr.shape} and dtype {arr.dtype}"
        )
    n = count_examples(data)
    if n is not None and n != len(arr):
        raise InputError(
            f"{len(arr)} labels for {n} {what} examples: pass one label per example, aligned "
            "with the concatenated batches"
        )
    return arr.astype(np.int64)


def loss_for(loss_fn: LossFn | None, labels: np.ndarray | None, what: str) -> LossFn:
    """The loss as ``loss(outputs, rows)``: the user's, or cross-entropy against ``labels``."""
    if loss_fn is not None and labels is not None:
        raise InputError(f"pass either loss_fn or labels= for the {what} examples, not both")
    if loss_fn is None and labels is None:
        raise InputError(
            f"the {what} examples need a loss: pass loss_fn(outputs[, rows]) -> per-example "
            "losses (B,), or labels= (one class per example) for the cross-entropy of the "
            "model's (B, C) logits"
        )
    if labels is not None:
        return CrossEntropy(labels, what)
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    return loss_fn


class CrossEntropy:
    """-log softmax(logits)[label] per example; ``rows`` are the examples' global numbers."""

    def __init__(self, labels: np.ndarray, what: str) -> None:
        self.labels = labels
        self.what = what
        self._pick = ClassLogProb(labels)

    def __call__(self, outputs: Any, rows: np.ndarray) -> Any:
        if len(rows) and int(rows.max()) >= len(self.labels):
            raise InputError(
                f"{len(self.labels)} labels for more {self.what} examples (example "
                f"{int(rows.max())} has none): pass one label per example"
            )
        return -self._pick(outputs, rows)


def bound_loss(loss: LossFn, rows: np.ndarray) -> Callable[[Any], Any]:
    """``loss`` as a function of the outputs only, for the examples ``rows``."""
    if isinstance(loss, CrossEntropy):
        return lambda outputs: loss(outputs, rows)
    return bind_rows(loss, rows)


def batch_hash(batch: Any) -> str:
    """A content hash of a batch (keys, shapes, dtypes, values) to recognise it on resume."""
    h = hashlib.blake2b(digest_size=16)

    def add(key: str, v: Any) -> None:
        h.update(key.encode())
        if is_array(v):
            a = np.ascontiguousarray(ops_for(v).to_numpy(v))
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
        else:
            h.update(repr(v).encode())

    if isinstance(batch, Mapping):
        for k in sorted(batch, key=str):
            add(str(k), batch[k])
    elif isinstance(batch, tuple):
        for i, v in enumerate(batch):
            add(str(i), v)
    else:
        add("", batch)
    return h.hexdigest()
