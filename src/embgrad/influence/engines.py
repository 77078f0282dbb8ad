"""Where the training examples' gradients are computed: this process (``"local"``) or a pool
of Ray actors (``"ray"``), each holding its own copy of the model and checkpoints. Both yield
the batches' segments in order, so the index (and its shards) are the same either way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal, get_args

import numpy as np

from ..backends.weights import CheckpointSlot
from ..errors import InputError
from .build import Engine, Examples, LocalEngine, LossFn

EngineName = Literal["local", "ray"]
ENGINES: tuple[str, ...] = get_args(EngineName)


def check_engine(engine: Any, workers: Any) -> None:
    if engine not in ENGINES:
        raise InputError(f"engine={engine!r}: choose one of {', '.join(map(repr, ENGINES))}")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise InputError(f"workers must be None or a positive int, got {workers!r}")


@contextlib.contextmanager
def open_engine(
    engine: str,
    model: Any,
    *,
    states: list[Any],
    layer: Any,
    skip: np.ndarray | None,
    loss: LossFn,
    top: int | None,
    workers: int | None,
) -> Iterator[Engine]:
    """The engine, with every checkpoint loaded once here first (a wrong architecture fails
    before any batch runs, and before Ray starts)."""
    check_engine(engine, workers)
    with CheckpointSlot(model) as slot:
        runner = Examples(slot, states, layer, skip)
        runner.validate()
        if engine == "local":
            yield LocalEngine(runner, loss, top)
            return
    from .ray_engine import RayEngine

    ray_engine = RayEngine(model, states, layer, skip, loss, top, workers)
    try:
        yield ray_engine
    finally:
        ray_engine.close()
