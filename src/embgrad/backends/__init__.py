"""Dispatch from a model object to its framework's backend (einops-style, lazy imports).

A backend is looked up by the model's type, walking its MRO, and the answer is cached per type.
Backends import their framework only when asked about an object, and only if that framework is
already imported by the user (``sys.modules``): importing embgrad never imports a framework.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import UnsupportedModelError
from .base import Backend

_CACHE: dict[type, Backend] = {}


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
