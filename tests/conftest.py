"""Shared test set-up: offline model hubs, quiet frameworks, a private MXNet home."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parent.parent
# tests/shared holds the slow oracles, model builders and fakes every test folder uses
sys.path.insert(0, str(Path(__file__).resolve().parent / "shared"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MXNET_HOME", str(_ROOT / ".cache" / "mxnet"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def local_ray() -> Iterator[Any]:
    """One local Ray (2 CPUs) for the whole session: Ray can be started once per process, so
    every test that runs in-process Ray engines shares it. The tests' own model and stand-in
    modules travel to the actors by value."""
    pytest.importorskip("ray")
    import data_fakes
    from embgrad.data.ray_engine import import_ray

    ray = import_ray()
    ray.cloudpickle.register_pickle_by_value(data_fakes)
    if importlib.util.find_spec("torch") is not None:
        import models_torch

        ray.cloudpickle.register_pickle_by_value(models_torch)
    temp = tempfile.mkdtemp(prefix="embgrad-ray-test-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
