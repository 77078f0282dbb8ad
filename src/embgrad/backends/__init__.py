"""Dispatch from a model object to its framework's backend (einops-style, lazy imports).

A backend is looked up by the model's type, walking its MRO, and the answer is cached per type.
Backends import their framework only when asked about an object, and only if that framework is
already imported by the user (``sys.modules``): importing embgrad never imports a framework.

Other backends (a test double, a third framework) join with :func:`register_backend`; they are
asked before the built-in ones, and :func:`unregister_backend` takes one out again. Both clear
the per-type cache, so no model type keeps a backend chosen under the old registry.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import UnsupportedModelError
from .base import Backend

_CACHE: dict[type, Backend] = {}
#: Backends added with :func:`register_backend`, asked first, in registration order.
_REGISTERED: list[type[Backend]] = []


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
