"""The few native-array operations the methods need, for torch tensors and MXNet NDArrays.

Methods compute in numpy once gradients are back (cheap, framework-free); only the batched
inputs and the substituted lookup outputs (integrated gradients, SmoothGrad) must stay native.
The framework is recognised by the array's module, so nothing here imports a framework that the
caller has not already imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import InputError


def framework_of(x: Any) -> str:
    """``"torch"``, ``"mxnet"`` or ``"numpy"`` for an array; ``""`` for anything else."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("mxnet"):
        return "mxnet"
    if isinstance(x, np.ndarray):
        return "numpy"
    return ""


def to_numpy(x: Any) -> np.ndarray:
    """A host numpy copy (or view) of a native array; bfloat16 becomes float32."""
    fw = framework_of(x)
    if fw == "torch":
        t = x.detach()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return np.asarray(t.cpu().numpy())
    if fw == "mxnet":
        return np.asarray(x.asnumpy())
    return np.asarray(x)


def from_numpy(a: np.ndarray, like: Any) -> Any:
    """``a`` as an array of ``like``'s framework, dtype and device."""
    fw = framework_of(like)
    if fw == "torch":
        import torch

        return torch.as_tensor(np.ascontiguousarray(a), device=like.device).to(like.dtype)
    if fw == "mxnet":
        import mxnet as mx

        return mx.nd.array(a, ctx=like.context, dtype=like.dtype)
    return np.asarray(a, dtype=np.asarray(like).dtype)


def take(x: Any, index: np.ndarray, axis: int) -> Any:
    """Rows ``index`` (int, 1-D) of a native array along ``axis`` (repeats allowed)."""
    fw = framework_of(x)
    if fw == "torch":
        import torch

        return x.index_select(axis, torch.as_tensor(index, dtype=torch.long, device=x.device))
    if fw == "mxnet":
        import mxnet as mx

        return mx.nd.take(x, mx.nd.array(index, ctx=x.context, dtype="int64"), axis=axis)
    return np.take(x, index, axis=axis)


def map_arrays(inputs: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every array among ``inputs`` (one array, a tuple or a dict of them)."""
    if isinstance(inputs, Mapping):
        return {k: fn(v) if framework_of(v) else v for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(fn(v) if framework_of(v) else v for v in inputs)
    if framework_of(inputs):
        return fn(inputs)
    raise InputError(
        "inputs must be an array, a tuple or a dict of arrays (torch tensors or MXNet NDArrays) "
        f"for this method, got {type(inputs).__name__}"
    )


def repeat_samples(inputs: Any, index: np.ndarray, batch: int, axis: int) -> Any:
    """The inputs of samples ``index`` (repeats allowed), for every array with a batch axis.

    An array is cut along ``axis`` when its size there is ``batch``, else along axis 0 when that
    has size ``batch`` (e.g. a (B,) ``valid_length``); arrays without such an axis pass as is.
    """

    def one(x: Any) -> Any:
        shape = tuple(x.shape)
        if len(shape) > axis and shape[axis] == batch:
            return take(x, index, axis)
        if shape and shape[0] == batch:
            return take(x, index, 0)
        return x

    return map_arrays(inputs, one)
