"""Which :class:`Backend` serves a model: the frameworks' table, and backends registered by hand.

The core imports no backend. ``embgrad.backends`` installs its one table of frameworks here
(:func:`install`); each row names the module that holds the framework's backend, imported only
when the user has imported that framework (``sys.modules``), so importing embgrad never imports
one. :func:`backend_for` looks a model's type up (walking its MRO through ``accepts``) and
caches the answer per type. Other backends (a test double, a framework outside the table) join
with :func:`register_backend`; they are asked first, and :func:`unregister_backend` takes one
out again. Every change clears the per-type cache, so no type keeps a backend chosen before.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedModelError
from .contract import Backend


@dataclass(frozen=True)
class Framework:
    """One row of the frameworks' table (``embgrad.backends.FRAMEWORKS``).

    Attributes:
        name: what users call it (``framework=``, ``--framework``, ``res.framework``); the
            backend's ``framework``.
        package: the top-level module the user imports (``sys.modules`` key).
        backend: ``"module:Class"`` of its :class:`Backend`, imported when first needed.
        models: the model types it takes, for error texts (``"torch.nn.Module"``).
        models_note: what those include, for error texts (``"incl. HuggingFace models"``).
        arrays: its array type, for error texts (``"torch.Tensor"``).
        extra: the install extra (``pip install 'embgrad[extra]'``); the backend's ``extra``.
        layout: how an HF tokenizer's output feeds its models (``embgrad.models.encode``).
    """

    name: str
    package: str
    backend: str
    models: str
    models_note: str
    arrays: str
    extra: str
    layout: str

    def loaded(self) -> bool:
        """Whether the user has imported the framework (only then can objects be its own)."""
        return self.package in sys.modules

    def load(self) -> type[Backend]:
        """The backend class (imports the backend's module, not the framework)."""
        module, _, attr = self.backend.partition(":")
        cls: type[Backend] = getattr(importlib.import_module(module), attr)
        return cls

    def supported(self) -> str:
        """``torch.nn.Module (incl. …; pip install 'embgrad[torch]')``."""
        note = f"{self.models_note}; " if self.models_note else ""
        return f"{self.models} ({note}pip install 'embgrad[{self.extra}]')"


_FRAMEWORKS: list[Framework] = []
#: Backends added with :func:`register_backend`, asked first, in registration order.
_REGISTERED: list[type[Backend]] = []
_CACHE: dict[type, Backend] = {}


def install(rows: Iterable[Framework]) -> None:
    """Add the rows of a frameworks' table (a row whose name is known replaces it)."""
    for row in rows:
        known = [i for i, f in enumerate(_FRAMEWORKS) if f.name == row.name]
        if known:
            _FRAMEWORKS[known[0]] = row
        else:
            _FRAMEWORKS.append(row)
    _CACHE.clear()


def frameworks() -> tuple[Framework, ...]:
    """The installed frameworks' table, in the order backends are asked."""
    return tuple(_FRAMEWORKS)


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
    return [*_REGISTERED, *(f.load() for f in _FRAMEWORKS if f.loaded())]


def supported() -> str:
    """The model types of every installed framework, with their install commands."""
    texts = [f.supported() for f in _FRAMEWORKS]
    return ", ".join(texts[:-1]) + " and " + texts[-1] if len(texts) > 1 else "".join(texts)


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
        f"{supported()}."
    )
