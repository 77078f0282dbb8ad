"""The numpy fake backend, registered for the tests that ask for it (``fake_backend``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from embgrad import backends
from embgrad.core import registry
from fakes.numpy_backend import FakeBackend, FakeModel


@pytest.fixture
def fake_backend() -> Iterator[None]:
    """Register the fake for one test; afterwards the registry and the cache are as before."""
    before = list(registry._REGISTERED)
    backends.register_backend(FakeBackend)
    try:
        yield
    finally:
        backends.unregister_backend(FakeBackend)
        assert before == registry._REGISTERED
        assert FakeModel not in registry._CACHE
