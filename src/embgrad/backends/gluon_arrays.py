"""The mxnet module, imported on first use, and what every Gluon module does with NDArrays:
read them as numpy, take a table dense and detached, and check a lookup's ids."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["dense", "lazy_mxnet", "to_numpy", "validate_ids"]


def lazy_mxnet() -> Any:
    """The mxnet module, imported on first use (embgrad never imports a framework eagerly)."""
    import mxnet

    return mxnet


def to_numpy(x: Any) -> np.ndarray:
    """An NDArray (any storage type) or array-like as a numpy array."""
    asnumpy = getattr(x, "asnumpy", None)
    return asnumpy() if callable(asnumpy) else np.asarray(x)


def dense(weight: Any) -> Any:
    """A table as a detached dense NDArray (row_sparse weights of sparse lookups converted)."""
    if getattr(weight, "stype", "default") != "default":
        weight = weight.tostype("default")
    return weight.detach()


def validate_ids(ids: Any, vocab: int, name: str, table: str) -> None:
    """Raise InputError naming the lookup, the first bad id and the vocabulary size."""
    a = to_numpy(ids)
    rule = f"ids must be integers in [0, {vocab})"
    where = f"lookup {name!r} (table {table!r}, vocab size {vocab})"
    checks: list[tuple[np.ndarray, str]] = []
    if np.issubdtype(a.dtype, np.floating):
        checks.append(
            (~np.isfinite(a) | (a != np.round(a)), "a non-integral id (Gluon feeds ids as float)")
        )
    checks += [(a < 0, "a negative id"), (a >= vocab, "an id out of range")]
    for bad, what in checks:
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"{where} got {what}: {a[idx]:g} at index {idx}; {rule}. Check the tokenizer "
                "and that the vocabulary matches the model."
            )
