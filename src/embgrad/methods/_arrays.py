"""Structure-level helpers over the inputs of a model call (one array, a tuple or a dict).

Methods compute in numpy once gradients are back (cheap, framework-free); only the batched
inputs and the substituted lookup outputs (integrated gradients, SmoothGrad) stay native, and
every operation on them goes through ``ops_for`` (``embgrad.backends``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..backends import is_array, ops_for
from ..errors import InputError


def to_numpy(x: Any) -> np.ndarray:
    """A host numpy array of any array (see ``Ops.to_numpy``); other values via np.asarray."""
    return ops_for(x).to_numpy(x) if is_array(x) else np.asarray(x)


def map_arrays(inputs: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every array among ``inputs`` (one array, a tuple or a dict of them)."""
    if isinstance(inputs, Mapping):
        return {k: fn(v) if is_array(v) else v for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(fn(v) if is_array(v) else v for v in inputs)
    if is_array(inputs):
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
            return ops_for(x).take_rows(x, index, axis)
        if shape and shape[0] == batch:
            return ops_for(x).take_rows(x, index, 0)
        return x

    return map_arrays(inputs, one)
