"""Model weights for the product layer: named values, and checkpoints loaded without touching
the user's model (influence sums over checkpoints of one training run).

* :func:`named_values` — every parameter (and PyTorch buffer) of a model as host numpy arrays,
  under the names the framework saves them by (``state_dict`` keys; Gluon's structural names
  as in ``save_parameters``).
* :class:`CheckpointSlot` — ``slot.load(state)`` returns a model holding ``state``'s weights:
  a checkpoint that is itself a model is used as it is; a state dict is loaded into a private
  copy (PyTorch: ``copy.deepcopy`` once, then ``load_state_dict(strict=True)``) or, for Gluon,
  swapped into the model's parameters under :data:`GLUON_LOCK` and the originals put back by
  ``close()`` on every exit. A state of another architecture is an :class:`InputError`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedModelError
from . import backend_for


def framework(model: Any) -> str:
    """``"torch"`` or ``"gluon"`` (UnsupportedModelError otherwise)."""
    return backend_for(model).framework


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a model some backend accepts."""
    try:
        backend_for(obj)
    except UnsupportedModelError:
        return False
    return True


def _gluon_params(model: Any) -> dict[str, Any]:
    """Gluon parameters by structural name (``embed.weight``), as ``save_parameters`` writes."""
    return dict(model._collect_params_with_prefix())


def _host(x: Any) -> np.ndarray:
    if hasattr(x, "asnumpy"):
        return np.asarray(x.asnumpy())
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _native(model: Any) -> list[tuple[str, Any]]:
    if framework(model) == "torch":
        items = list(model.state_dict().items())
    else:
        items = [(n, p.data()) for n, p in _gluon_params(model).items()]
    return sorted(items, key=lambda kv: kv[0])


def named_values(model: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(name, host numpy copy) of every parameter and buffer, sorted by name."""
    for name, value in _native(model):
        yield name, _host(value)


def shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Name → shape of every parameter and buffer (the architecture, as far as weights say)."""
    return {name: tuple(int(d) for d in v.shape) for name, v in _native(model)}


def _state_items(state: Mapping[str, Any], fw: str, model: Any) -> dict[str, Any]:
    """A Gluon state dict keyed by structural names (full ``collect_params`` names accepted)."""
    if fw != "gluon":
        return dict(state)
    structural = _gluon_params(model)
    by_full = {p.name: n for n, p in structural.items()}
    return {by_full.get(k, k): v for k, v in state.items()}


def check_state(model: Any, state: Mapping[str, Any], what: str) -> None:
    """InputError unless ``state`` has exactly ``model``'s names and shapes."""
    fw = framework(model)
    want = shapes(model)
    got = {
        k: tuple(int(d) for d in getattr(v, "shape", np.shape(v)))
        for k, v in _state_items(state, fw, model).items()
    }
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if extra:
            parts.append(f"unexpected {extra[:5]}")
        if wrong:
            parts.append(
                "other shapes " + ", ".join(f"{k}: {got[k]} vs {want[k]}" for k in wrong[:5])
            )
        raise InputError(
            f"{what} is not a checkpoint of the model's architecture ({'; '.join(parts)}): "
            "pass checkpoints (models or state dicts) of the same architecture as `model`"
        )


class CheckpointSlot:
    """Hands out ``model`` with a checkpoint's weights; the user's model stays as it was.

    Use as a context manager (``close()`` restores a Gluon model's swapped parameters).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.framework = framework(model)
        self._copy: Any = None
        self._saved: dict[str, Any] | None = None
        self._stack = ExitStack()
        self._current: Any = None
        self._checked: set[int] = set()

    def __enter__(self) -> CheckpointSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, state: Any, what: str = "a checkpoint") -> Any:
        """The model to run for ``state``: ``state`` itself if it is a model (checked against
        the architecture), else ``model`` or a private copy with ``state``'s values."""
        if state is None:
            self._restore()
            return self.model
        if is_model(state):
            if state is not self.model and id(state) not in self._checked:
                if framework(state) != self.framework:
                    raise InputError(
                        f"{what} is a {framework(state)} model but `model` is {self.framework}"
                    )
                check_state(self.model, dict(_native(state)), what)
                self._checked.add(id(state))
            self._restore()
            return state
        if not isinstance(state, Mapping):
            raise InputError(
                f"{what} must be a model or a state dict (a mapping of parameter names to "
                f"arrays), got {type(state).__name__}"
            )
        if self._current is not None and self._current[0] is state:
            return self._current[1]
        check_state(self.model, state, what)
        model = self._load_torch(state) if self.framework == "torch" else self._load_gluon(state)
        self._current = (state, model)
        return model

    def _load_torch(self, state: Mapping[str, Any]) -> Any:
        if self._copy is None:
            self._copy = copy.deepcopy(self.model)
        try:
            self._copy.load_state_dict(dict(state), strict=True)
        except RuntimeError as e:  # pragma: no cover - check_state catches names and shapes
            raise InputError(f"cannot load the checkpoint: {e}") from None
        return self._copy

    def _load_gluon(self, state: Mapping[str, Any]) -> Any:
        from .gluon import GLUON_LOCK
        from .gluon_arrays import lazy_mxnet

        params = _gluon_params(self.model)
        if self._saved is None:
            self._stack.enter_context(GLUON_LOCK)
            self._saved = {n: p.data().copy() for n, p in params.items()}
        nd = lazy_mxnet().nd
        for name, value in _state_items(state, "gluon", self.model).items():
            p = params[name]
            arr = value if isinstance(value, nd.NDArray) else nd.array(np.asarray(value))
            p.set_data(arr.astype(p.dtype))
        return self.model

    def _restore(self) -> None:
        self._current = None
        if self._saved is not None:
            params = _gluon_params(self.model)
            for name, value in self._saved.items():
                params[name].set_data(value)
            self._saved = None
            self._stack.close()

    def close(self) -> None:
        """Put the user's parameter values back (Gluon) and drop the private copy (PyTorch)."""
        try:
            self._restore()
        finally:
            self._copy = None
