"""The frameworks' table (``embgrad.backends.FRAMEWORKS``) is the one list of frameworks: the
dispatch, the ``--framework`` choices, the text layouts and the error texts all read it."""

from __future__ import annotations

import pytest

from embgrad import backends
from embgrad.core import registry
from embgrad.errors import InputError, UnsupportedModelError
from embgrad.models import encode, load


@pytest.mark.parametrize("row", backends.FRAMEWORKS, ids=lambda f: f.name)
def test_each_row_names_a_backend_that_agrees_with_it(row):
    cls = row.load()  # imports the backend's module, not the framework
    assert issubclass(cls, backends.Backend)
    assert (cls.framework, cls.extra) == (row.name, row.extra)
    assert encode.LAYOUTS[row.name] is encode._BY_NAME[row.layout]


def test_the_core_dispatches_over_the_table():
    assert registry.frameworks() == backends.FRAMEWORKS
    assert (
        load.FRAMEWORKS == backends.framework_names() == tuple(f.name for f in backends.FRAMEWORKS)
    )


def test_error_texts_list_every_framework_of_the_table():
    with pytest.raises(UnsupportedModelError) as model_err:
        backends.backend_for(object())
    with pytest.raises(InputError) as array_err:
        backends.ops_for(object())
    for row in backends.FRAMEWORKS:
        assert row.models in str(model_err.value) and f"embgrad[{row.extra}]" in str(
            model_err.value
        )
        assert row.arrays in str(array_err.value)
    with pytest.raises(InputError, match="'jax' is not one of 'gluon', 'torch'"):
        load.check_spec(None, "jax")
