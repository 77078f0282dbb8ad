"""Lazy imports of the optional dependencies, with the exact install command when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import missing_extra


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingExtraError naming ``pip install 'embgrad[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra(package or module.split(".")[0], extra) from exc
