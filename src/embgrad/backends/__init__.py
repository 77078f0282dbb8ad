"""The one place that tells frameworks apart (einops-style dispatch by type, lazy imports).

* :func:`backend_for` (a model → its :class:`Backend`) and :func:`ops_for` (an array → the
  :class:`~embgrad.core.ops.Ops` of its library) look the object's type up, walking its MRO,
  and cache the answer per type.
* Backends import their framework only when asked about an object, and only if that framework
  is already imported by the user (``sys.modules``): importing embgrad never imports one.

Every layer above (methods, tasks, the Explainer, data runs) asks here for array operations
instead of testing module names.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..core.ops import NumpyOps, Ops
from ..errors import InputError, UnsupportedModelError
from .base import Backend

__all__ = ["Backend", "backend_for", "is_array", "ops_for"]

_CACHE: dict[type, Backend] = {}
_OPS_CACHE: dict[type, Ops | None] = {}
_NUMPY = NumpyOps()


def _candidates() -> list[type[Backend]]:
    found: list[type[Backend]] = []
    if "mxnet" in sys.modules:
        from .gluon import GluonBackend

        found.append(GluonBackend)
    if "torch" in sys.modules:
        from .torch import TorchBackend

        found.append(TorchBackend)
    return found


def backend_for(model: Any) -> Backend:
    """The backend for ``model``; raises UnsupportedModelError naming the supported types."""
    cls = type(model)
    if cls in _CACHE:
        return _CACHE[cls]
    for backend_cls in _candidates():
        if backend_cls.accepts(model):
            backend = backend_cls()
            _CACHE[cls] = backend
            return backend
    raise UnsupportedModelError(
        f"embgrad does not know models of type {cls.__module__}.{cls.__qualname__}. Supported: "
        "mxnet.gluon.Block (incl. HybridBlock and SymbolBlock; pip install 'embgrad[gluon]') and "
        "torch.nn.Module (incl. HuggingFace models; pip install 'embgrad[torch]')."
    )


def _array_ops(cls: type) -> Ops | None:
    if issubclass(cls, np.ndarray):
        return _NUMPY
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(cls, torch.Tensor):
        from .torch_ops import TorchOps

        return TorchOps()
    mx = sys.modules.get("mxnet")
    if mx is not None and issubclass(cls, mx.nd.NDArray):
        from .gluon import MXNetOps

        return MXNetOps()
    return None


def _lookup(x: Any) -> Ops | None:
    cls = type(x)
    if cls not in _OPS_CACHE:
        _OPS_CACHE[cls] = _array_ops(cls)
    return _OPS_CACHE[cls]


def is_array(x: Any) -> bool:
    """Whether ``x`` is an array embgrad knows: numpy, a torch tensor or an MXNet NDArray."""
    return _lookup(x) is not None


def ops_for(x: Any) -> Ops:
    """The array operations for ``x``'s library (numpy, torch or MXNet); InputError otherwise."""
    ops = _lookup(x)
    if ops is None:
        cls = type(x)
        raise InputError(
            f"expected an array (numpy.ndarray, torch.Tensor or mxnet NDArray), got "
            f"{cls.__module__}.{cls.__qualname__}"
        )
    return ops
