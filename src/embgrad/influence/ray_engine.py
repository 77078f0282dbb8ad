"""Index building on Ray: a pool of actors, each with its own copy of the model and the
checkpoints (shipped once with ``ray.put``), runs the batches; the driver gets the segments
back in batch order (at most two jobs per actor in flight, so memory stays bounded) and writes
them as the local engine does. PyTorch models only (Gluon blocks do not pickle)."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..backends.weights import CheckpointSlot, framework
from ..errors import InputError, missing_extra
from .build import Examples, Job, LossFn, make_segment
from .segment import Segment


def _ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        return importlib.import_module("ray")
    except ImportError as e:
        raise missing_extra("ray", "ray") from e


class _Worker:
    """One actor: the model, its checkpoint slot and the loss; ``run`` makes one segment."""

    def __init__(self, payload: tuple[Any, ...]) -> None:
        model, states, layer, skip, loss, top = payload
        self.slot = CheckpointSlot(model)
        self.runner = Examples(self.slot, states, layer, skip)
        self.loss: LossFn = loss
        self.top: int | None = top

    def run(self, batch: Any, first: int, count: int) -> Segment:
        per_ckpt = self.runner.run(batch, self.loss, first, count)
        return make_segment(per_ckpt, first, count, self.top, self.runner.roles)


class RayEngine:
    """Segments from a pool of Ray actors, in job order."""

    def __init__(
        self,
        model: Any,
        states: list[Any],
        layer: Any,
        skip: np.ndarray | None,
        loss: LossFn,
        top: int | None,
        workers: int | None,
    ) -> None:
        if framework(model) != "torch":
            raise InputError(
                "engine='ray' needs a PyTorch model (Gluon blocks cannot be sent to Ray "
                "workers); use engine='local'"
            )
        ray = _ray()
        self._ray = ray
        self._temp: str | None = None
        if not ray.is_initialized():
            self._temp = tempfile.mkdtemp(prefix="embgrad-ray-")
            ray.init(
                num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                log_to_driver=False, logging_level=logging.WARNING, _temp_dir=self._temp,
            )  # fmt: skip
        n = workers or max(1, int(ray.available_resources().get("CPU", 2)) // 2)
        cpus = max(0.1, min(1.0, float(ray.available_resources().get("CPU", 2)) / (n + 1)))
        payload = ray.put((model, states, layer, skip, loss, top))
        actor = ray.remote(num_cpus=cpus)(_Worker)
        self._actors = [actor.remote(payload) for _ in range(n)]

    def map(self, jobs: Iterable[Job]) -> Iterator[Segment]:
        try:
            yield from self._map(jobs)
        except self._ray.exceptions.ActorDiedError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise InputError(
                f"a Ray worker could not start ({first}): the workers must be able to import "
                "the model's code (install its package where Ray runs, or register its module "
                "with ray.cloudpickle.register_pickle_by_value), or use engine='local'"
            ) from None

    def _map(self, jobs: Iterable[Job]) -> Iterator[Segment]:
        from ray.util import ActorPool

        pool = ActorPool(self._actors)
        in_flight: deque[None] = deque()
        for job in jobs:
            while len(in_flight) >= 2 * len(self._actors):
                in_flight.popleft()
                yield pool.get_next()
            pool.submit(lambda a, j: a.run.remote(*j), job)
            in_flight.append(None)
        while pool.has_next():
            yield pool.get_next()

    def close(self) -> None:
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []
        if self._temp is not None:
            self._ray.shutdown()
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None
