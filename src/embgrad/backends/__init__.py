"""The one place that tells frameworks apart (einops-style dispatch by type, lazy imports).

* :func:`backend_for` (a model → its :class:`Backend`) and :func:`ops_for` (an array → the
  :class:`~embgrad.core.ops.Ops` of its library) look the object's type up, walking its MRO,
  and cache the answer per type.
* Backends import their framework only when asked about an object, and only if that framework
  is already imported by the user (``sys.modules``): importing embgrad never imports one.

Every layer above (methods, tasks, the Explainer, data runs) asks here for array operations
instead of testing module names.

Other backends (a test double, a third framework) join with :func:`register_backend`; they are
asked before the built-in ones, and :func:`unregister_backend` takes one out again. Both clear
the per-type cache, so no model type keeps a backend chosen under the old registry.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..core.ops import NumpyOps, Ops
from ..errors import InputError, UnsupportedModelError
from .base import Backend

__all__ = [
    "Backend",
    "backend_for",
    "is_array",
    "ops_for",
    "register_backend",
    "unregister_backend",
]

_CACHE: dict[type, Backend] = {}
#: Backends added with :func:`register_backend`, asked first, in registration order.
_REGISTERED: list[type[Backend]] = []
_OPS_CACHE: dict[type, Ops | None] = {}
_NUMPY = NumpyOps()


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Add a :class:`Backend` subclass to the dispatch (idempotent); usable as a decorator."""
    if cls not in _REGISTERED:
        _REGISTERED.append(cls)
    _CACHE.clear()
    return cls


def unregister_backend(cls: type[Backend]) -> None:
    """Remove a backend added with :func:`register_backend` (no-op if it is not registered)."""
    if cls in _REGISTERED:
        _REGISTERED.remove(cls)
    _CACHE.clear()


def _candidates() -> list[type[Backend]]:
    found: list[type[Backend]] = list(_REGISTERED)
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
