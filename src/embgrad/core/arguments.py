"""The arguments of ``gradients``, checked before the model is touched: options, inputs, seeds."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np

from ..errors import InputError
from .contract import Mode

Check = Literal["auto", "probe", "exact", "off"]
LayerSpec = str | type
BatchAxis = int | str | None | Mapping[str, int | str | None]

CHECKS: tuple[str, ...] = get_args(Check)
MODES: tuple[str, ...] = get_args(Mode)


#: ``batch_axis`` value (alone or per lookup) for ids whose leading axis holds the batch folded
#: with another axis: B·k rows, rows b·k … (b+1)·k − 1 belonging to sample b (ELMo's character
#: CNN looks up ids reshaped from (B, T, C) to (B·T, C)).
FOLDED = "folded"


def check_args(
    check: str, mode: str, loss_fn: Any, batch_axis: Any, replace: Any, input_grads: Any
) -> None:
    _check_batch_axis(batch_axis)
    if replace is not None and not callable(replace):
        raise InputError(
            f"replace= must be None or a callable replace(name, role, output) -> substitute or "
            f"None, got {replace!r}"
        )
    if not isinstance(input_grads, (bool, np.bool_)):
        raise InputError(f"input_grads= must be True or False, got {input_grads!r}")
    if check not in CHECKS:
        raise InputError(f"check={check!r} is not one of {', '.join(map(repr, CHECKS))}")
    if mode not in MODES:
        raise InputError(f"mode={mode!r} is not one of {', '.join(map(repr, MODES))}")
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable (outputs -> (B,) losses), got {loss_fn!r}")


def axis_value(value: Any, where: str) -> int | str | None:
    """A ``batch_axis`` value as the core uses it: an int (numpy integers too), None or
    ``"folded"``; InputError for anything else (True is not an axis)."""
    if value is None or value == FOLDED:
        return value  # type: ignore[no-any-return]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InputError(
            f"batch_axis{where}={value!r} is not an axis: pass an int (the axis of the ids that "
            f"indexes samples), None (the ids have no batch axis) or {FOLDED!r} (a batch folded "
            "into the leading axis, B·k rows, k consecutive rows per sample)"
        )
    return int(value)


def _check_batch_axis(batch_axis: Any) -> None:
    """The type of ``batch_axis``, checked before the model is touched."""
    if isinstance(batch_axis, Mapping):
        for key, value in batch_axis.items():
            if not isinstance(key, str):
                raise InputError(
                    f"batch_axis keys are lookup names (str), got {key!r}: e.g. "
                    "batch_axis={'embed': 1}"
                )
            axis_value(value, f"[{key!r}]")
    else:
        axis_value(batch_axis, "")


def is_sparse(x: Any) -> bool:
    """A sparse array, framework-free: torch's sparse layouts, MXNet's csr/row_sparse, scipy."""
    if getattr(x, "is_sparse", False) is True or getattr(x, "is_sparse_csr", False) is True:
        return True
    layout = getattr(x, "layout", None)
    if layout is not None and str(layout).startswith("torch.sparse"):
        return True
    stype = getattr(x, "stype", None)
    return (isinstance(stype, str) and stype != "default") or hasattr(x, "tocsr")


def check_dense(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """InputError for sparse inputs (ids or floats): lookups and their gradients need dense
    arrays. Checked before the model is touched."""
    for key, x in [*enumerate(args), *kwargs.items()]:
        if is_sparse(x):
            label = f"input {key!r}" if isinstance(key, str) else f"input {key}"
            raise InputError(
                f"{label} is a sparse array ({type(x).__name__}); embgrad needs dense ids and "
                "inputs: pass x.to_dense() (torch) or x.tostype('default') (MXNet)"
            )


def split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, Mapping):
        bad = [k for k in inputs if not isinstance(k, str)]
        if bad:
            raise InputError(f"keyword inputs must have str keys, got {bad!r}")
        return (), dict(inputs)
    if isinstance(inputs, tuple):
        return inputs, {}
    return (inputs,), {}


def seeds(seed: int | None) -> tuple[np.random.Generator | None, int]:
    """(the probe's generator, the forwards' seed). With ``seed`` both come from one generator
    (reproducible); without, the forward seed is drawn from the OS and the generator is made only
    if the call probes (a generator costs ~50 µs, a visible share of a small call)."""
    if seed is None:
        return None, int.from_bytes(os.urandom(4), "little") % (2**31 - 1)
    rng = np.random.default_rng(seed)
    return rng, int(rng.integers(2**31 - 1))
