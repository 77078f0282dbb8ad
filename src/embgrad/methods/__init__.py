"""Attribution methods over embedding-lookup outputs, in a registry.

Each method is one class with the same call shape,
``Method(model, layer="word").attribute(inputs, loss_fn, **options) -> Scores``, registered by
name with :func:`register`; :func:`list_methods` and the CLI's help are built from the registry.
Every method runs on ``embgrad.gradients`` and so works for PyTorch and MXNet Gluon alike.
"""

from __future__ import annotations

from . import (  # noqa: F401  (register)
    grad_x_input,
    gradient,
    hotflip,
    hotflip_search,
    integrated_gradients,
    smoothgrad,
)
from .api import attribute_task
from .base import Method, Scores, get_method, list_methods, register
from .gen_result import GenerationAttribution
from .result import Attribution, TokenAttribution

__all__ = [
    "Attribution",
    "GenerationAttribution",
    "Method",
    "Scores",
    "TokenAttribution",
    "attribute_task",
    "get_method",
    "list_methods",
    "register",
]
