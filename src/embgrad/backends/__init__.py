"""The one place that tells frameworks apart (einops-style dispatch by type, lazy imports).

:data:`FRAMEWORKS` is the one table of the frameworks embgrad supports: for each, the module
holding its :class:`Backend` (which provides the framework's array operations, its array types
and the mode/lookup switches), the model and array types named in error texts, the install
extra and the text-input layout. Everything that lists or tells frameworks apart reads it: the
core's dispatch (installed into :mod:`embgrad.core.registry`, so the core imports nothing above
it), the ``--framework`` choices, the layouts of tokenized texts and every error text. A new
framework is one row here plus one backend module (docs/design.md, "Adding a backend").

* :func:`backend_for` (a model → its :class:`Backend`) and :func:`ops_for` (an array → the
  :class:`~embgrad.core.ops.Ops` of its library) look the object's type up, walking its MRO,
  and cache the answer per type.
* Backends import their framework only when asked about an object, and only if that framework
  is already imported by the user (``sys.modules``): importing embgrad never imports one.

Every layer above (methods, tasks, the Explainer, data runs) asks here for array operations
instead of testing module names.

Other backends (a test double) join with :func:`register_backend`; they are asked before the
built-in ones, and :func:`unregister_backend` takes one out again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.contract import Backend
from ..core.ops import NumpyOps, Ops
from ..core.registry import (
    Framework,
    backend_for,
    frameworks,
    install,
    register_backend,
    unregister_backend,
)
from ..errors import InputError

__all__ = [
    "FRAMEWORKS",
    "Backend",
    "Framework",
    "backend_for",
    "framework_names",
    "is_array",
    "ops_for",
    "register_backend",
    "unregister_backend",
]

#: The supported frameworks, in the order a model is offered to them.
FRAMEWORKS: tuple[Framework, ...] = (
    Framework(
        name="gluon",
        package="mxnet",
        backend=f"{__name__}.gluon:GluonBackend",
        models="mxnet.gluon.Block",
        models_note="incl. HybridBlock and SymbolBlock",
        arrays="mxnet NDArray",
        extra="gluon",
        layout="bert_tuple",
    ),
    Framework(
        name="torch",
        package="torch",
        backend=f"{__name__}.torch:TorchBackend",
        models="torch.nn.Module",
        models_note="incl. HuggingFace models",
        arrays="torch.Tensor",
        extra="torch",
        layout="hf",
    ),
)
install(FRAMEWORKS)

_OPS_CACHE: dict[type, Ops | None] = {}
_NUMPY = NumpyOps()


def framework_names() -> tuple[str, ...]:
    """The names of the supported frameworks (``framework=``, ``--framework``)."""
    return tuple(f.name for f in frameworks())


def _array_ops(cls: type) -> Ops | None:
    if issubclass(cls, np.ndarray):
        return _NUMPY
    for f in frameworks():
        if f.loaded():
            ops = f.load().array_ops(cls)
            if ops is not None:
                return ops
    return None


def _lookup(x: Any) -> Ops | None:
    cls = type(x)
    if cls not in _OPS_CACHE:
        _OPS_CACHE[cls] = _array_ops(cls)
    return _OPS_CACHE[cls]


def is_array(x: Any) -> bool:
    """Whether ``x`` is an array embgrad knows: numpy or one of a supported framework's."""
    return _lookup(x) is not None


def ops_for(x: Any) -> Ops:
    """The array operations for ``x``'s library (numpy or a framework's); InputError otherwise."""
    ops = _lookup(x)
    if ops is None:
        cls = type(x)
        kinds = ["numpy.ndarray", *(f.arrays for f in frameworks())]
        raise InputError(
            f"expected an array ({', '.join(kinds[:-1])} or {kinds[-1]}), got "
            f"{cls.__module__}.{cls.__qualname__}"
        )
    return ops
