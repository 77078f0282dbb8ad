"""The per-sample losses: their count B (from the shape alone) and the checks that read values.

Values are read only after the backward is queued: a host read before it would make a GPU wait
for the forward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import EmbgradError, InputError, LossError
from .arguments import is_sparse
from .contract import Forward, Session


def loss_count(session: Session, losses: Any) -> int:
    """B, from the losses' shape (no read of their values): LossError unless it is (B,)."""
    if is_sparse(losses):
        raise LossError(
            f"loss_fn returned a sparse array ({type(losses).__name__}); return dense per-sample "
            "losses of shape (B,) (x.to_dense() in torch, x.tostype('default') in MXNet)"
        )
    if "complex" in str(getattr(losses, "dtype", "")):
        raise LossError(
            f"loss_fn returned complex losses ({losses.dtype}); gradients are defined for real "
            "losses: return a real (B,) array, e.g. the absolute value or the real part"
        )
    shape = getattr(losses, "shape", None)
    if shape is None:
        shape = session.ops.to_numpy(session.ops.work(losses)).shape
    shape = tuple(int(n) for n in shape)
    if len(shape) == 0:
        raise LossError(
            "loss_fn returned a scalar; it must return per-sample losses of shape (B,). Do not "
            "reduce over the batch (torch: reduction='none'; Gluon losses already return (B,))."
        )
    if len(shape) != 1:
        raise LossError(
            f"loss_fn returned shape {shape}; it must return per-sample losses of "
            "shape (B,) — one number per sample (squeeze or sum the other axes inside loss_fn)."
        )
    if shape[0] == 0:
        raise InputError("the batch is empty: loss_fn returned 0 losses; pass at least 1 sample")
    return shape[0]


@contextlib.contextmanager
def bad_inputs_first(fwd: Forward) -> Iterator[None]:
    """Run the forward's deferred input checks before letting an embgrad error through, so a bad
    id is reported as such, not as what it caused (on the CPU it was refused in the forward)."""
    try:
        yield
    except EmbgradError:
        if fwd.verify is not None:
            try:
                fwd.verify()
            except EmbgradError as bad:
                raise bad from None  # the cause, without the error it caused
        raise


def verify(session: Session, fwd: Forward) -> None:
    """The checks that read values: the backend's deferred input checks (ids on a GPU), then
    the losses' finiteness."""
    if fwd.verify is not None:
        fwd.verify()
    _check_finite(session, fwd.losses)


def _check_finite(session: Session, losses: Any) -> None:
    """LossError naming the samples whose loss is NaN or infinite."""
    arr = session.ops.to_numpy(session.ops.work(losses))
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise LossError(
            f"loss_fn returned non-finite losses (NaN or inf) for sample(s) "
            f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''}; gradients would be "
            "meaningless. Check the inputs of those samples or the loss."
        )
