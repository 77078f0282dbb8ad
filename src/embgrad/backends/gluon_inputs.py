"""Gluon inputs: checks before the forward (numpy arrays, empty arrays, contexts) and the
floating-point inputs that get gradients."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import InputError
from .gluon_arrays import lazy_mxnet


def _labelled_arrays(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(label, value) for every leaf of the inputs, descending into lists/tuples/dicts."""

    def walk(label: str, x: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(x, (list, tuple)):
            for i, y in enumerate(x):
                yield from walk(f"{label}[{i}]", y)
        elif isinstance(x, Mapping):
            for k, y in x.items():
                yield from walk(f"{label}[{k!r}]", y)
        else:
            yield label, x

    for i, a in enumerate(args):
        yield from walk(f"input {i}", a)
    for k, a in kwargs.items():
        yield from walk(f"input {k!r}", a)


def param_contexts(params: Mapping[str, Any]) -> set[Any]:
    ctxs: set[Any] = set()
    for p in params.values():
        with contextlib.suppress(RuntimeError):  # not initialized: the forward will say so
            ctxs.update(p.list_ctx())
    return ctxs


def check_inputs(
    params: Mapping[str, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """Raise InputError for numpy inputs, empty arrays, or arrays on other contexts than the
    parameters ``params`` (or on several contexts)."""
    nd = lazy_mxnet().nd
    arrays = []
    for label, x in _labelled_arrays(args, kwargs):
        if isinstance(x, np.ndarray):
            raise InputError(
                f"{label} is a numpy array; Gluon models take mxnet NDArrays: pass "
                "mx.nd.array(x, ctx=...) on the context of the model's parameters"
            )
        if isinstance(x, nd.NDArray):
            if x.size == 0:
                raise InputError(
                    f"{label} is empty (shape {x.shape}); pass at least one sample with at "
                    "least one token"
                )
            arrays.append((label, x))
    found = {x.context for _, x in arrays}
    if len(found) > 1:
        where = ", ".join(f"{label} on {x.context}" for label, x in arrays)
        raise InputError(
            f"the inputs are on different contexts ({where}); move them to one context with "
            "x.as_in_context(ctx)"
        )
    contexts = param_contexts(params)
    for label, x in arrays:
        if contexts and x.context not in contexts:
            raise InputError(
                f"{label} is on {x.context} but the model's parameters are on "
                f"{', '.join(map(str, sorted(contexts, key=str)))}; move the inputs with "
                "x.as_in_context(ctx) (or the model with net.collect_params().reset_ctx(ctx))"
            )


def float_leaves(
    args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], dict[str | int, Any]]:
    """Replace real-valued top-level inputs by copies that record gradients.

    Gluon feeds ids as float32, so a floating-point input counts as real-valued only when one
    of its values is not an integer; integral float inputs (ids, valid lengths, zero states)
    get no input gradient.
    """
    nd = lazy_mxnet().nd

    def leaf(x: Any) -> Any:
        if not isinstance(x, nd.NDArray) or x.stype != "default":
            return None
        if not np.issubdtype(np.dtype(x.dtype), np.floating):
            return None
        a = x.asnumpy()
        if np.all(np.isfinite(a) & (a == np.round(a))):
            return None
        v = x.copy()
        v.attach_grad()
        return v

    floats: dict[str | int, Any] = {}
    new_args = list(args)
    for i, a in enumerate(args):
        v = leaf(a)
        if v is not None:
            new_args[i] = floats[i] = v
    new_kwargs = dict(kwargs)
    for k, a in kwargs.items():
        v = leaf(a)
        if v is not None:
            new_kwargs[k] = floats[k] = v
    return tuple(new_args), new_kwargs, floats
